"""THE op table: every operation of the language and IR, described once.

Each row says how many arguments an op takes, how its result kind follows from its
arguments' kinds, what it means (a NumPy function, used by the constant folder and the
reference evaluator), and how each code generator spells it:

- ``scalar``: a Python expression over NumPy float64 scalars (host code, once per step),
- ``numpy``: lines computing into a preallocated chunk buffer ``{out}`` (element-wise code),
- ``triton``: a Triton expression (element-wise code inside a kernel); the helpers it names
  (``_div _sqrt _pow _exp _log _tanh _atan2 _sign``) are defined by optdsl.codegen.triton.

Adding a function to the language is one row here plus tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Callable

import numpy as np


class Level(IntEnum):
    """Where a value lives: computed once ever, once per group, once per parameter, or per
    element."""

    CONST = 0
    GROUP = 1
    PARAM = 2
    TENSOR = 3


@dataclass(frozen=True)
class Kind:
    """The type of an IR value: its level and whether it is a mask (a comparison result)."""

    level: Level
    mask: bool = False

    @property
    def is_tensor(self) -> bool:
        return self.level == Level.TENSOR

    @property
    def is_scalar(self) -> bool:
        return self.level < Level.TENSOR

    def __str__(self) -> str:
        base = "tensor" if self.is_tensor else "scalar"
        if self.level == Level.CONST:
            base = "const"
        elif self.level == Level.GROUP:
            base = "group"
        elif self.level == Level.PARAM:
            base = "param"
        return base + ("-mask" if self.mask else "")


# Op categories
LEAF = "leaf"  # const and inputs
ARITH = "arith"  # element-wise numeric -> numeric
COMPARE = "compare"  # numeric x numeric -> mask
SELECT = "select"  # where(mask, a, b)
REDUCE = "reduce"  # tensor -> per-parameter scalar
GLOBAL = "global"  # tensor -> per-group scalar (over every parameter of the group)


def _rsqrt(x):
    return np.divide(1.0, np.sqrt(x))


def _clamp(x, lo, hi):
    return np.minimum(np.maximum(x, lo), hi)


def _sum(x):
    return np.sum(x, dtype=np.float64)


def _mean(x):
    return np.float64(np.sum(x, dtype=np.float64) / x.size) if x.size else np.float64("nan")


def _norm(x):
    return np.sqrt(np.sum(np.square(x, dtype=np.float64)))


def _maxabs(x):
    return np.float64(np.max(np.abs(x))) if x.size else np.float64(0.0)


def _dot(a, b):
    return np.sum(np.multiply(a, b, dtype=np.float64))


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    category: str
    evaluate: Callable | None  # NumPy meaning; also the constant folder
    scalar: str | None = None  # host expression over {0}, {1}, ...
    numpy: str | None = None  # chunk statement(s) writing {out}; {0}.. are arrays or scalars
    triton: str | None = None  # Triton expression over {0}, {1}, ...
    dsl: str | None = None  # the function name users call, if any
    symbol: str | None = None  # the infix spelling, for the IR printer

    @property
    def is_reduction(self) -> bool:
        return self.category in (REDUCE, GLOBAL)


def _pow(x, y):
    """C's pow: the meaning of `^`, as torch.pow, libdevice's pow and the host's `x ** y` on
    NumPy scalars. NumPy's power ufunc on 0-d operands departs from it on some CPUs
    ((-inf)^0.5 gives nan, (-0.0)^0.5 gives -0.0), so scalars take NumPy's scalar `**` (C's
    pow); arrays take the ufunc, as the generated NumPy step does (C's values for these
    special cases, within an ulp otherwise)."""
    if np.ndim(x) == 0 and np.ndim(y) == 0:
        dtype = np.result_type(x, y)
        with np.errstate(all="ignore"):
            return dtype.type(x) ** dtype.type(y)
    return np.power(x, y)


def _ufunc(name: str, arity: int) -> str:
    args = ", ".join("{%d}" % i for i in range(arity))
    return f"np.{name}({args}, out={{out}})"


_NAN = "tl.PropagateNan.ALL"

OPS: dict[str, Op] = {}


def _row(op: Op) -> None:
    OPS[op.name] = op


# Leaves: the constant and the inputs. Their numpy/triton forms are handled by the generators.
for _leaf in ("const", "hyper", "w", "g", "t", "state"):
    _row(Op(_leaf, 0, LEAF, None))

# Element-wise arithmetic.
# Triton negates as 0 - x up to 3.6 (so -(+0.0) is +0.0); x * -1.0 flips the sign in every
# version.
_row(Op("neg", 1, ARITH, np.negative, "(-{0})", _ufunc("negative", 1), "({0} * -1.0)",
        symbol="-"))
_row(Op("add", 2, ARITH, np.add, "({0} + {1})", _ufunc("add", 2), "{0} + {1}", symbol="+"))
_row(Op("sub", 2, ARITH, np.subtract, "({0} - {1})", _ufunc("subtract", 2), "{0} - {1}",
        symbol="-"))
_row(Op("mul", 2, ARITH, np.multiply, "({0} * {1})", _ufunc("multiply", 2), "{0} * {1}",
        symbol="*"))
_row(Op("div", 2, ARITH, np.divide, "({0} / {1})", _ufunc("divide", 2), "_div({0}, {1})",
        symbol="/"))
_row(Op("pow", 2, ARITH, _pow, "({0} ** {1})", _ufunc("power", 2), "_pow({0}, {1})",
        symbol="^"))
_row(Op("square", 1, ARITH, np.square, "({0} * {0})", _ufunc("square", 1), "{0} * {0}"))
_row(Op("sqrt", 1, ARITH, np.sqrt, "np.sqrt({0})", _ufunc("sqrt", 1), "_sqrt({0})",
        dsl="sqrt"))
_row(Op("rsqrt", 1, ARITH, _rsqrt, "(1.0 / np.sqrt({0}))",
        "np.sqrt({0}, out={out}); np.divide(1.0, {out}, out={out})", "_div(1.0, _sqrt({0}))",
        dsl="rsqrt"))
_row(Op("exp", 1, ARITH, np.exp, "np.exp({0})", _ufunc("exp", 1), "_exp({0})", dsl="exp"))
_row(Op("log", 1, ARITH, np.log, "np.log({0})", _ufunc("log", 1), "_log({0})", dsl="log"))
_row(Op("abs", 1, ARITH, np.abs, "np.abs({0})", _ufunc("absolute", 1), "tl.abs({0})",
        dsl="abs"))
_row(Op("sign", 1, ARITH, np.sign, "np.sign({0})", _ufunc("sign", 1), "_sign({0})", dsl="sign"))
_row(Op("floor", 1, ARITH, np.floor, "np.floor({0})", _ufunc("floor", 1), "tl.floor({0})",
        dsl="floor"))
_row(Op("ceil", 1, ARITH, np.ceil, "np.ceil({0})", _ufunc("ceil", 1), "tl.ceil({0})",
        dsl="ceil"))
_row(Op("tanh", 1, ARITH, np.tanh, "np.tanh({0})", _ufunc("tanh", 1), "_tanh({0})", dsl="tanh"))
_row(Op("min", 2, ARITH, np.minimum, "np.minimum({0}, {1})", _ufunc("minimum", 2),
        f"tl.minimum({{0}}, {{1}}, propagate_nan={_NAN})", dsl="min"))
_row(Op("max", 2, ARITH, np.maximum, "np.maximum({0}, {1})", _ufunc("maximum", 2),
        f"tl.maximum({{0}}, {{1}}, propagate_nan={_NAN})", dsl="max"))
_row(Op("clamp", 3, ARITH, _clamp, "np.minimum(np.maximum({0}, {1}), {2})",
        "np.maximum({0}, {1}, out={out}); np.minimum({out}, {2}, out={out})",
        f"tl.minimum(tl.maximum({{0}}, {{1}}, propagate_nan={_NAN}), {{2}}, propagate_nan={_NAN})",
        dsl="clamp"))
_row(Op("atan2", 2, ARITH, np.arctan2, "np.arctan2({0}, {1})", _ufunc("arctan2", 2),
        "_atan2({0}, {1})", dsl="atan2"))

# Comparisons (masks) and selection.
for _name, _fn, _sym in (("lt", "less", "<"), ("le", "less_equal", "<="),
                         ("gt", "greater", ">"), ("ge", "greater_equal", ">="),
                         ("eq", "equal", "=="), ("ne", "not_equal", "!=")):
    _row(Op(_name, 2, COMPARE, getattr(np, _fn), f"bool({{0}} {_sym} {{1}})", _ufunc(_fn, 2),
            f"{{0}} {_sym} {{1}}", symbol=_sym))
_row(Op("where", 3, SELECT, np.where, "np.float64({1} if {0} else {2})",
        "np.copyto({out}, {2}); np.copyto({out}, {1}, where={0})", "tl.where({0}, {1}, {2})",
        dsl="where"))

# Reductions: per tensor (a scalar per parameter) and over the group.
_row(Op("sum", 1, REDUCE, _sum, dsl="sum"))
_row(Op("mean", 1, REDUCE, _mean, dsl="mean"))
_row(Op("norm", 1, REDUCE, _norm, dsl="norm"))
_row(Op("maxabs", 1, REDUCE, _maxabs, dsl="maxabs"))
_row(Op("dot", 2, REDUCE, _dot, dsl="dot"))
_row(Op("global_norm", 1, GLOBAL, _norm, dsl="global_norm"))
_row(Op("global_sum", 1, GLOBAL, _sum, dsl="global_sum"))

FUNCTIONS: dict[str, Op] = {op.dsl: op for op in OPS.values() if op.dsl}
RESERVED_NAMES = frozenset({"w", "g", "t"}) | frozenset(FUNCTIONS)
KEYWORDS = frozenset({"optimizer", "hyper", "state", "in", "as", "inf", "require"})


def result_kind(op: Op, kinds: list[Kind]) -> Kind:
    """The kind of an op's result from its arguments' kinds (arguments already checked)."""
    if op.category == REDUCE:
        return Kind(Level.PARAM)
    if op.category == GLOBAL:
        return Kind(Level.GROUP)
    level = max((k.level for k in kinds), default=Level.CONST)
    return Kind(Level(level), mask=op.category == COMPARE)
