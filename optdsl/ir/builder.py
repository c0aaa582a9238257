"""Builds Graphs. Interning (op, args, attr) means equal expressions are one value: CSE by
construction, in every rewrite that rebuilds a graph through a Builder."""

from __future__ import annotations

import math

from optdsl.errors import Span, located
from optdsl.ir.nodes import Eq, Graph
from optdsl.ir.ops import LEAF, OPS, PARAM_FACTS, Kind, Level, result_kind

_LEAF_KINDS = {
    "w": Kind(Level.TENSOR),
    "g": Kind(Level.TENSOR),
    "t": Kind(Level.PARAM),
    "hyper": Kind(Level.GROUP),
    "inv_grad_scale": Kind(Level.GROUP),
    **{fact: Kind(Level.PARAM) for fact in PARAM_FACTS},
}


def const_key(value: float) -> tuple:
    """Interning key of a constant that tells -0.0 from 0.0 and treats every NaN as one."""
    if math.isnan(value):
        return ("nan",)
    return (value, math.copysign(1.0, value))


class Builder:
    def __init__(self) -> None:
        self.eqs: list[Eq] = []
        self._interned: dict[tuple, int] = {}

    def _intern(self, key: tuple, make) -> int:
        found = self._interned.get(key)
        if found is not None:
            return found
        self.eqs.append(make())
        self._interned[key] = len(self.eqs) - 1
        return len(self.eqs) - 1

    def const(self, value: float, span: Span | None = None) -> int:
        value = float(value)
        return self._intern(("const", const_key(value)),
                            lambda: Eq("const", (), value, Kind(Level.CONST), span))

    def leaf(self, op: str, attr: object = None, kind: Kind | None = None,
             span: Span | None = None) -> int:
        kind = kind or _LEAF_KINDS[op]
        return self._intern((op, attr, kind), lambda: Eq(op, (), attr, kind, span))

    def op(self, name: str, args: tuple[int, ...] | list[int], span: Span | None = None,
           attr: object = None) -> int:
        args = tuple(args)
        info = OPS[name]
        kind = result_kind(info, [self.eqs[a].kind for a in args])
        return self._intern((name, args, attr), lambda: Eq(name, args, attr, kind, span))

    def kind(self, value: int) -> Kind:
        return self.eqs[value].kind

    def graph(self, outputs: list[tuple[str, int]]) -> Graph:
        return Graph(tuple(self.eqs), tuple(outputs))


def rebuild(graph: Graph, rewrite) -> Graph:
    """Copy a graph through a fresh Builder, calling ``rewrite(builder, eq, new_args)`` for each
    live equation; it returns the new value id (or None to copy the equation as is). Dead
    values are dropped and equal values merged on the way. A failure inside a rewrite is
    reported at the equation's span (optdsl.errors.located)."""
    builder = Builder()
    alive = graph.live()
    new_id: dict[int, int] = {}
    for i, eq in enumerate(graph.eqs):
        if not alive[i]:
            continue
        args = tuple(new_id[a] for a in eq.args)
        with located(eq.span):
            result = rewrite(builder, eq, args)
            if result is None:
                result = copy_eq(builder, eq, args)
        new_id[i] = result
    return builder.graph([(name, new_id[v]) for name, v in graph.outputs])


def copy_eq(builder: Builder, eq: Eq, args: tuple[int, ...]) -> int:
    if eq.op == "const":
        return builder.const(eq.attr, eq.span)
    if not args and OPS[eq.op].category == LEAF:
        return builder.leaf(eq.op, eq.attr, eq.kind, eq.span)
    return builder.op(eq.op, args, eq.span, eq.attr)


def pruned(graph: Graph) -> Graph:
    """The graph without its dead values (and with equal values merged)."""
    return rebuild(graph, lambda builder, eq, args: None)
