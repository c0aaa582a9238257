"""Readable text of a Graph, one equation a line, citing the DSL line each came from."""

from __future__ import annotations

from optdsl.ir.nodes import Graph
from optdsl.ir.numbers import format_float


def format_value(graph: Graph, v: int) -> str:
    eq = graph.eqs[v]
    if eq.op == "const":
        return format_float(eq.attr)
    return f"%{v}"


def print_graph(graph: Graph, title: str = "step") -> str:
    lines = [f"graph {title}:"]
    for i, eq in enumerate(graph.eqs):
        if eq.op == "const":
            continue
        if eq.op in ("hyper", "state"):
            rhs = f"{eq.op} {eq.attr}"
        elif not eq.args:
            rhs = {"w": "param w", "g": "grad g", "t": "step t"}.get(eq.op, f"fact {eq.op}")
        else:
            rhs = f"{eq.op} " + ", ".join(format_value(graph, a) for a in eq.args)
        where = f"    # line {eq.line}" if eq.line else ""
        lines.append(f"  %{i} : {eq.kind} = {rhs}{where}")
    outs = ", ".join(f"{name} = {format_value(graph, v)}" for name, v in graph.outputs)
    lines.append(f"  return {outs}")
    return "\n".join(lines)
