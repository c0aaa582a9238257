"""Algebraic simplification that is exact under IEEE 754, driven by the op table's traits.

Before: any verified graph. After: applied bottom-up, each holding bit for bit for every
input, NaN, infinities and signed zeros included:

  op(x, e) = x   where e is the op's identity (x * 1, x / 1, x - 0, x + -0.0, x ^ 1)
  op(e, x) = x   where e is its left identity (1 * x, -0.0 + x)
  op(op(x)) = x  for an involution (-(-x), not not m)
  x ^ 2 = square(x) (NumPy and Triton both compute the square exactly rounded once)
  where(true, a, b) = a     where(false, a, b) = b      where(m, a, a) = a

Identities are matched with their sign: x + 0.0 is not x (-0.0 + 0.0 = +0.0), x - -0.0 is
not x. Not applied, because they are wrong for some inputs: x*0 = 0 (NaN, inf, -0.0),
x^0.5 = sqrt(x) (-0.0, -inf), x - x = 0 (NaN, inf).
"""

from __future__ import annotations

import math

from optdsl.ir.builder import Builder, rebuild
from optdsl.ir.nodes import Eq, Graph
from optdsl.ir.ops import OPS, result_kind


def _const(builder: Builder, v: int) -> float | None:
    eq = builder.eqs[v]
    return eq.attr if eq.op == "const" else None


def _same(value: float | None, target: float | None) -> bool:
    """``value`` is exactly ``target``, sign of zero included."""
    return (value is not None and target is not None and value == target
            and math.copysign(1, value) == math.copysign(1, target))


def simplify(graph: Graph) -> Graph:
    def rewrite(builder: Builder, eq: Eq, args: tuple[int, ...]) -> int | None:
        info = OPS[eq.op]
        if len(args) == 2:
            consts = [_const(builder, a) for a in args]
            if _same(consts[1], info.identity):
                return args[0]
            if _same(consts[0], info.left_identity):
                return args[1]
        if info.involution and builder.eqs[args[0]].op == eq.op:
            return builder.eqs[args[0]].args[0]
        if eq.op == "pow" and _same(_const(builder, args[1]), 2.0):
            return builder.op("square", (args[0],), eq.span)
        if eq.op == "where":
            return _simplify_where(builder, args)
        return None

    return rebuild(graph, rewrite)


def _simplify_where(builder: Builder, args: tuple[int, ...]) -> int | None:
    # A branch replaces the where only if it has the where's kind: where(g > 0, t, t) is a
    # tensor (t broadcast), and a reduction of it must still see a tensor.
    kind = result_kind(OPS["where"], [builder.kind(a) for a in args])
    if args[1] == args[2] and builder.kind(args[1]) == kind:
        return args[1]
    mask = builder.eqs[args[0]]
    if mask.args and all(builder.eqs[a].op == "const" for a in mask.args):
        chosen = OPS[mask.op].meaning(*[builder.eqs[a].attr for a in mask.args])
        branch = args[1] if chosen else args[2]
        if builder.kind(branch) == kind:
            return branch
    return None
