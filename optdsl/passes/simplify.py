"""Algebraic simplification that is exact under IEEE 754.

Before: any verified graph. After: the identities below are applied bottom-up. Each holds
bit for bit for every input, NaN, infinities and signed zeros included:

  x * 1 = 1 * x = x      x / 1 = x      x - 0 = x      -(-x) = x      x ^ 1 = x
  x ^ 2 = x * x (NumPy and Triton both compute the square exactly rounded once)
  where(true, a, b) = a     where(false, a, b) = b      where(m, a, a) = a

Not applied, because they are wrong for some inputs: x*0 = 0 (NaN, inf, -0.0), x+0 = x
(-0.0 + 0 = +0.0), x^0.5 = sqrt(x) (-0.0, -inf), x - x = 0 (NaN, inf).
"""

from __future__ import annotations

import math

from optdsl.ir.builder import Builder, rebuild
from optdsl.ir.nodes import Eq, Graph
from optdsl.ir.ops import OPS, result_kind


def _const(builder: Builder, v: int) -> float | None:
    eq = builder.eqs[v]
    return eq.attr if eq.op == "const" else None


def _is(value: float | None, target: float) -> bool:
    return value is not None and value == target and math.copysign(1, value) > 0


def simplify(graph: Graph) -> Graph:
    def rewrite(builder: Builder, eq: Eq, args: tuple[int, ...]) -> int | None:
        consts = [_const(builder, a) for a in args]
        op = eq.op
        if op == "mul":
            if _is(consts[1], 1.0):
                return args[0]
            if _is(consts[0], 1.0):
                return args[1]
        elif op == "div" and _is(consts[1], 1.0):
            return args[0]
        elif op == "sub" and consts[1] is not None and consts[1] == 0.0 and \
                math.copysign(1, consts[1]) > 0:
            return args[0]
        elif op == "neg" and builder.eqs[args[0]].op == "neg":
            return builder.eqs[args[0]].args[0]
        elif op == "pow":
            if _is(consts[1], 1.0):
                return args[0]
            if _is(consts[1], 2.0):
                return builder.op("square", (args[0],), eq.line)
        elif op == "where":
            # A branch replaces the where only if it has the where's kind: where(g > 0, t, t)
            # is a tensor (t broadcast), and a reduction of it must still see a tensor.
            kind = result_kind(OPS["where"], [builder.kind(a) for a in args])
            if args[1] == args[2] and builder.kind(args[1]) == kind:
                return args[1]
            mask = builder.eqs[args[0]]
            if mask.args and all(builder.eqs[a].op == "const" for a in mask.args):
                chosen = OPS[mask.op].evaluate(*[builder.eqs[a].attr for a in mask.args])
                branch = args[1] if chosen else args[2]
                if builder.kind(branch) == kind:
                    return branch
        return None

    return rebuild(graph, rewrite)
