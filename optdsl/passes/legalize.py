"""Legalize for one back end: what it cannot spell is expanded into what it can.

Before: an optimized graph. After: every equation is a leaf, an op the back end spells at
its level (host scalar code, or element code for tensor values), a matrix op (spelled by
the library stage, optdsl.codegen.library), or a lowered reduction: each reduction
``r(args)`` of element values becomes ``reduce(m)`` (``reduce_group(m)`` for group-wide
ones), where ``m`` is its descriptor's per-element map built from ordinary ops and the
attribute names the descriptor (optdsl.ir.reductions); a reduction of matrix values stays
as it is (a library stage reduces it as torch does). Ops are expanded through the op table's
decompositions, recursively; an op that a back end neither spells nor can expand is a
compiler bug, which the coverage test (tests/test_extension.py) rules out for the
registered back ends.
"""

from __future__ import annotations

from typing import Callable

from optdsl.errors import Span
from optdsl.ir.builder import Builder, rebuild
from optdsl.ir.nodes import Eq, Graph
from optdsl.ir.ops import GLOBAL, LEAF, OPS, Expr
from optdsl.ir.reductions import REDUCTIONS

# spells(op name, tensor): whether the back end writes that op for a tensor (element code)
# or scalar (host code) value.
Spells = Callable[[str, bool], bool]


class NotSpelled(Exception):
    """The back end can neither spell nor expand this op."""


def legalize(graph: Graph, spells: Spells) -> Graph:
    matrix: set[int] = set()  # new values a library stage may compute (optdsl.ir.stages)

    def rewrite(builder: Builder, eq: Eq, args: tuple[int, ...]) -> int | None:
        info = OPS[eq.op]
        if info.category == LEAF or eq.op in ("reduce", "reduce_group"):
            return None
        on_matrix = info.matrix or eq.kind.shaped or eq.kind.bf16 or \
            any(a in matrix for a in args)
        if info.reduction is not None and on_matrix:
            value = builder.op(eq.op, args, eq.span)  # a library stage reduces it as torch does
        elif info.reduction is not None:
            desc = REDUCTIONS[info.reduction]
            mapped = _build(builder, desc.map, args, spells, eq.span)
            lowered = "reduce_group" if info.category == GLOBAL else "reduce"
            value = builder.op(lowered, (mapped,), eq.span, attr=desc.name)
        elif info.matrix:
            value = builder.op(eq.op, args, eq.span)  # spelled by the library stage
        else:
            value = _emit(builder, eq.op, args, spells, eq.span)
        if on_matrix:
            matrix.add(value)
        return value

    return rebuild(graph, rewrite)


def _emit(builder: Builder, name: str, args: tuple[int, ...], spells: Spells,
          span: Span | None) -> int:
    """``name(args)`` as the back end can write it."""
    info = OPS[name]
    tensor = any(builder.kind(a).is_tensor for a in args)
    if spells(name, tensor):
        return builder.op(name, args, span)
    if info.decompose is None:
        where = "element" if tensor else "host"
        raise NotSpelled(f"this back end has no {where} spelling of `{name}` and the op has "
                         f"no decomposition")
    return _build(builder, info.decompose, args, spells, span)


def _build(builder: Builder, expr: Expr, args: tuple[int, ...], spells: Spells,
           span: Span | None) -> int:
    if isinstance(expr, bool):
        raise TypeError("a decomposition argument is an index (int) or a constant (float)")
    if isinstance(expr, int):
        return args[expr]
    if isinstance(expr, float):
        return builder.const(expr, span)
    name, *parts = expr
    built = tuple(_build(builder, p, args, spells, span) for p in parts)
    return _emit(builder, name, built, spells, span)
