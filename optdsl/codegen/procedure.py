"""Host code of closure-driven steps: each host expression as a small Python function (the
host spelling every back end shares, optdsl.codegen.host), and a readable listing of the
procedure for ``optdsl show``.

A host expression's leaves are Refs' keys (validated identifiers such as ``h_lr``,
``v_n``, ``ro__at__i``); the function reads them from the mapping it is given. Nothing else
of the program's text reaches the generated source.
"""

from __future__ import annotations

from optdsl.codegen.buffer import CodeBuffer
from optdsl.codegen.host import SPELLING
from optdsl.ir import procedure as ir
from optdsl.ir.nodes import Graph
from optdsl.ir.numbers import format_float


def host_function(name: str, graph: Graph) -> str:
    """``def <name>(V): ...`` computing the graph's output "value" from ``V[key]``."""
    out = CodeBuffer()
    with out.block(f"def {name}(V):"):
        texts: list[str] = []
        for i, eq in enumerate(graph.eqs):
            if eq.op == "const":
                text = format_float(eq.attr)
                texts.append(f"np.float64({text})")
                continue
            if eq.op == "hyper":
                texts.append(f"V[{eq.attr!r}]")
                continue
            line = SPELLING[eq.op].format(*[texts[a] for a in eq.args])
            out.line(f"x{i} = {line}")
            texts.append(f"x{i}")
        (_, value), = graph.outputs
        out.line(f"return {texts[value]}")
    return out.text()


def listing(procedure: ir.Procedure, title: str, source: str = "") -> str:
    """The host procedure, one line per statement citing the program line it comes from,
    for reading (phases by number)."""
    out = CodeBuffer()
    out.line(f"The closure-driven step of {title}: host statements around compiled phases.")
    out.line("Each `phase k` is an ordinary step (its generated code follows); the host runs")
    out.line("the rest (optdsl.runtime.procedure).")
    out.line()
    lines = source.splitlines()
    _statements(out, procedure.body, procedure, lines)
    return out.text()


def _statements(out: CodeBuffer, body, procedure: ir.Procedure, lines: list[str]) -> None:
    if not body:
        out.line("pass")
    for stmt in body:
        _statement(out, stmt, procedure, lines)


def _cite(stmt, lines: list[str]) -> str | None:
    """The program line a statement comes from (its number only: generated text holds no
    program text but validated names and numbers)."""
    line = getattr(stmt, "line", 0)
    return f"line {line}" if line else None


def _statement(out: CodeBuffer, stmt, procedure: ir.Procedure, lines: list[str]) -> None:
    cite = _cite(stmt, lines)
    if isinstance(stmt, ir.RunPhase):
        phase = procedure.phases[stmt.phase]
        wrote = [key for key, _ in phase.writes] + (["w"] if phase.writes_w else [])
        gave = [ref.key for _, ref, _ in phase.results]
        out.line(f"phase {stmt.phase}  # writes {', '.join(wrote) or 'nothing'}; "
                 f"gives {', '.join(gave) or 'nothing'}", cite)
    elif isinstance(stmt, ir.SetScalar):
        out.line(f"{stmt.target.key} = ...", cite)
    elif isinstance(stmt, ir.Call):
        targets = ", ".join(r.key for r in stmt.targets)
        out.line(f"{targets + ' = ' if targets else ''}{stmt.function}(...)", cite)
    elif isinstance(stmt, ir.Dense):
        out.line(f"{stmt.target.key} = ...  (dense: torch on the host)", cite)
    elif isinstance(stmt, ir.HistoryOp):
        out.line(f"{stmt.op}({stmt.history}{', ...' if stmt.op == 'push' else ''})", cite)
    elif isinstance(stmt, ir.If):
        (_, then), = stmt.branches
        with out.block("if ...:", cite):
            _statements(out, then, procedure, lines)
        if stmt.orelse:
            with out.block("else:"):
                _statements(out, stmt.orelse, procedure, lines)
    elif isinstance(stmt, ir.While):
        if stmt.prelude:
            _statements(out, stmt.prelude, procedure, lines)
        with out.block("while ...:", cite):
            _statements(out, stmt.body, procedure, lines)
    elif isinstance(stmt, ir.Loop):
        head = (f"for {stmt.var} in {'reversed(' + stmt.over + ')' if stmt.reverse else stmt.over}:"
                if stmt.over else f"for {stmt.var} in range(...):" if stmt.var
                else "repeat ...:")
        with out.block(head, cite):
            _statements(out, stmt.body, procedure, lines)
    elif isinstance(stmt, ir.Break):
        out.line("break", cite)
    elif isinstance(stmt, ir.Return):
        out.line("return", cite)
