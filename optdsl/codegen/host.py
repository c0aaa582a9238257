"""Host (scalar) code shared by both back ends: group- and param-level values as Python over
NumPy float64 scalars, computed once per group or once per parameter, never per element.

Names in generated code never contain user text except validated identifiers behind a
prefix: hypers are ``h_<name>``, states ``s_<name>``, values ``v<number>``.
"""

from __future__ import annotations

from optdsl.codegen.buffer import CodeBuffer
from optdsl.ir.nodes import Graph
from optdsl.ir.numbers import format_float
from optdsl.ir.ops import OPS


def hyper_name(name: str) -> str:
    return f"h_{name}"


def state_name(name: str) -> str:
    return f"s_{name}"


def value_name(v: int) -> str:
    return f"v{v}"


def scalar_ref(graph: Graph, v: int) -> str:
    """How host code refers to scalar value v."""
    eq = graph.eqs[v]
    if eq.op == "const":  # every scalar op has a float64 argument besides, after folding
        text = format_float(eq.attr)
        return f"({text})" if text.startswith("-") else text  # (-1.0) ** t, not -(1.0 ** t)
    if eq.op == "hyper":
        return hyper_name(eq.attr)
    if eq.op == "state":
        return state_name(eq.attr)
    if eq.op == "t":
        return "t"
    return value_name(v)


def emit_scalar(out: CodeBuffer, graph: Graph, v: int) -> None:
    """One line computing scalar value v from its (already computed) arguments."""
    eq = graph.eqs[v]
    template = OPS[eq.op].scalar
    assert template is not None, f"{eq.op} has no scalar form"
    args = [scalar_ref(graph, a) for a in eq.args]
    out.line(f"{value_name(v)} = {template.format(*args)}", f"line {eq.line}" if eq.line else None)
