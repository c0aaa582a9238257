"""THE op table: what every operation of the language and IR means, described once.

A row says how many arguments an op takes, its category (from which its result kind
follows), what it means (a NumPy function: the constant folder and the reference evaluator
use it, so there is one meaning of each op), and its algebraic traits: whether it commutes,
its identities (``x * 1 = x``), whether it undoes itself (``-(-x) = x``), and optionally a
decomposition into other ops. Rows hold no spelling: each code generator has its own table
of how it writes the ops it can emit, and the legalize rewrite (optdsl.passes.legalize)
expands the others through their decompositions. An op with a decomposition and no NumPy
function of its own means exactly its decomposition.

Reductions are rows too (category ``reduce`` or ``global``); what they compute is their
descriptor in optdsl.ir.reductions, which registers their rows.

Adding an element-wise function is one ``register(Op(...))`` call: with a decomposition it
runs on every back end at once; a back end that spells it natively only gets faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Union

import numpy as np

from optdsl.ir import shapes
from optdsl.ir.shapes import P, Shape, ShapeError, broadcast, show


class Level(IntEnum):
    """How often a value changes: once ever, once per group, once per parameter, or per
    element. (Where a value is computed, host or device, is the schedule's placement.)"""

    CONST = 0
    GROUP = 1
    PARAM = 2
    TENSOR = 3


@dataclass(frozen=True)
class Kind:
    """The type of an IR value: its level, whether it is a mask (a comparison result), the
    shape of a tensor value relative to its parameter (optdsl.ir.shapes; None: the
    parameter's own), and whether it is computed in bfloat16 (torch's bf16 arithmetic:
    each operation rounded to bfloat16) rather than the parameter's compute dtype."""

    level: Level
    mask: bool = False
    shape: Shape | None = None
    bf16: bool = False

    @property
    def is_tensor(self) -> bool:
        return self.level == Level.TENSOR

    @property
    def dims(self) -> Shape:
        """A tensor value's shape (the parameter's own when not shaped)."""
        return self.shape or P

    @property
    def shaped(self) -> bool:
        """A tensor value whose shape is not the parameter's own."""
        return self.is_tensor and self.dims != P

    def __str__(self) -> str:
        base = {Level.CONST: "const", Level.GROUP: "group", Level.PARAM: "param",
                Level.TENSOR: "tensor"}[self.level]
        if self.shaped:
            base += show(self.shape).replace(" ", "")
        return base + ("-mask" if self.mask else "") + ("-bf16" if self.bf16 else "")


# Op categories
LEAF = "leaf"  # const and inputs
ARITH = "arith"  # element-wise numeric -> numeric
COMPARE = "compare"  # numeric x numeric -> mask
LOGIC = "logic"  # masks -> mask (and, or, not)
SELECT = "select"  # where(mask, a, b)
REDUCE = "reduce"  # tensor -> per-parameter scalar
GLOBAL = "global"  # tensor -> per-group scalar (over every parameter of the group)

# A decomposition: an op name and its arguments, each an argument index of the decomposed
# op (int), a constant (float) or another decomposition.
Expr = Union[int, float, tuple]


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    category: str
    evaluate: Callable | None = None  # NumPy meaning (None: that of `decompose`)
    dsl: str | None = None  # the function name users call, if any
    symbol: str | None = None  # the infix spelling, for the IR printer
    commutative: bool = False
    identity: float | None = None  # op(x, e) == x for every x, bit for bit
    left_identity: float | None = None  # op(e, x) == x for every x, bit for bit
    involution: bool = False  # op(op(x)) == x for every x
    decompose: Expr | None = None  # the same value from other ops
    reduction: str | None = None  # REDUCE/GLOBAL: the descriptor's name (ir.reductions)
    shape_rule: Callable | None = None  # matrix ops: the result's shape from the tensor args'
    matrix: bool = False  # computed by a library (torch) stage, not by element code

    @property
    def is_reduction(self) -> bool:
        return self.category in (REDUCE, GLOBAL)

    def meaning(self, *args):
        """The op's value on NumPy arguments (arrays or float64 scalars)."""
        if self.evaluate is not None:
            return self.evaluate(*args)
        if self.decompose is None:
            raise TypeError(f"op {self.name!r} has no meaning: give it evaluate or decompose")
        return evaluate_expr(self.decompose, args)


def evaluate_expr(expr: Expr, args: tuple):
    """The value of a decomposition on NumPy arguments, op by op with each op's meaning."""
    if isinstance(expr, bool):
        raise TypeError("a decomposition argument is an index (int) or a constant (float)")
    if isinstance(expr, int):
        return args[expr]
    if isinstance(expr, float):
        return np.float64(expr)
    name, *parts = expr
    return OPS[name].meaning(*[evaluate_expr(p, args) for p in parts])


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


OPS: dict[str, Op] = {}
FUNCTIONS: dict[str, Op] = {}  # the functions programs may call, by name (kept by register)


def register(op: Op) -> Op:
    """Add a row to the table (an extension point: a new function is one call)."""
    if op.name in OPS or (op.dsl and op.dsl in FUNCTIONS):
        raise ValueError(f"op {op.name!r} is already in the table")
    if op.evaluate is None and op.decompose is None and op.category not in (LEAF, REDUCE,
                                                                              GLOBAL):
        raise ValueError(f"op {op.name!r} needs a NumPy meaning or a decomposition")
    OPS[op.name] = op
    if op.dsl:
        FUNCTIONS[op.dsl] = op
    return op


def unregister(name: str) -> None:
    """Remove a row (for tests that register throwaway ops)."""
    op = OPS.pop(name)
    if op.dsl:
        FUNCTIONS.pop(op.dsl, None)


# Leaves: the constant and the inputs. ``inv_grad_scale`` is the inverse of torch.amp's
# GradScaler scale, read by the step that unscales gradients itself. The parameter's facts
# (its rows and columns, number of dimensions, element count, and the machine epsilon of
# its dtype) are fixed for a parameter: masks of them and of hypers are switches compiled
# per parameter.
for _leaf in ("const", "hyper", "w", "g", "t", "state", "inv_grad_scale"):
    register(Op(_leaf, 0, LEAF))
PARAM_FACTS = ("rows", "cols", "ndim", "numel", "dtype_eps")


def facts_of(shape, eps: float) -> dict[str, float]:
    """The facts of a parameter of ``shape`` whose dtype's machine epsilon is ``eps``: its
    matrix view's rows and columns (1 and n for a vector, 1 and 1 for a scalar), dimensions,
    elements. Every back end reads a parameter's facts from here."""
    shape = tuple(int(n) for n in shape)
    rows, cols = (shape[-2], shape[-1]) if len(shape) >= 2 else (1, shape[0] if shape else 1)
    numel = 1
    for n in shape:
        numel *= n
    return {"rows": float(rows), "cols": float(cols), "ndim": float(len(shape)),
            "numel": float(numel), "dtype_eps": float(eps)}

for _leaf in PARAM_FACTS:
    register(Op(_leaf, 0, LEAF))

# Element-wise arithmetic. (x + 0 is not x: -0.0 + 0.0 = +0.0; x + -0.0 is x for every x.)
register(Op("neg", 1, ARITH, np.negative, symbol="-", involution=True))
register(Op("add", 2, ARITH, np.add, symbol="+", commutative=True, identity=-0.0,
            left_identity=-0.0))
register(Op("sub", 2, ARITH, np.subtract, symbol="-", identity=0.0))
register(Op("mul", 2, ARITH, np.multiply, symbol="*", commutative=True, identity=1.0,
            left_identity=1.0))
register(Op("div", 2, ARITH, np.divide, symbol="/", identity=1.0))
register(Op("pow", 2, ARITH, _pow, symbol="^", identity=1.0))
register(Op("square", 1, ARITH, np.square, dsl="square", decompose=("mul", 0, 0)))
register(Op("sqrt", 1, ARITH, np.sqrt, dsl="sqrt"))
register(Op("rsqrt", 1, ARITH, dsl="rsqrt", decompose=("div", 1.0, ("sqrt", 0))))
register(Op("exp", 1, ARITH, np.exp, dsl="exp"))
register(Op("log", 1, ARITH, np.log, dsl="log"))
register(Op("abs", 1, ARITH, np.abs, dsl="abs"))
register(Op("sign", 1, ARITH, np.sign, dsl="sign"))
register(Op("floor", 1, ARITH, np.floor, dsl="floor"))
register(Op("ceil", 1, ARITH, np.ceil, dsl="ceil"))
register(Op("tanh", 1, ARITH, np.tanh, dsl="tanh"))
register(Op("min", 2, ARITH, np.minimum, dsl="min", commutative=True))
register(Op("max", 2, ARITH, np.maximum, dsl="max", commutative=True))
register(Op("clamp", 3, ARITH, dsl="clamp", decompose=("min", ("max", 0, 1), 2)))
register(Op("atan2", 2, ARITH, np.arctan2, dsl="atan2"))
register(Op("sigmoid", 1, ARITH, dsl="sigmoid",
            decompose=("div", 1.0, ("add", 1.0, ("exp", ("neg", 0))))))
register(Op("softsign", 1, ARITH, dsl="softsign",
            decompose=("div", 0, ("add", 1.0, ("abs", 0)))))
register(Op("lerp", 3, ARITH, dsl="lerp", decompose=("add", 0, ("mul", 2, ("sub", 1, 0)))))

# Comparisons (masks), mask logic and selection.
for _name, _fn, _sym in (("lt", "less", "<"), ("le", "less_equal", "<="),
                         ("gt", "greater", ">"), ("ge", "greater_equal", ">="),
                         ("eq", "equal", "=="), ("ne", "not_equal", "!=")):
    register(Op(_name, 2, COMPARE, getattr(np, _fn), symbol=_sym,
                commutative=_name in ("eq", "ne")))
register(Op("and", 2, LOGIC, np.logical_and, symbol="and", commutative=True))
register(Op("or", 2, LOGIC, np.logical_or, symbol="or", commutative=True))
register(Op("not", 1, LOGIC, np.logical_not, symbol="not", involution=True))
register(Op("where", 3, SELECT, np.where, dsl="where"))


# Matrix operations (optdsl.ir.shapes): computed by a library stage (torch: BLAS or cuBLAS
# for the products) between the fused element-wise sweeps.
def _round_bf16(x):
    """x rounded to the nearest bfloat16 (ties to even), as a float32 array: torch's
    bfloat16 arithmetic rounds every result so."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return np.where(np.isnan(x), x, rounded.view(np.float32))


def _swap(x):
    return np.swapaxes(x, -1, -2)


def _wide(x):
    return _swap(x) if x.shape[-2] > x.shape[-1] else x


def _unwide(x, rows, cols):
    return _swap(x) if rows > cols else x


def _norm_along(axis: int):
    def norm(x):
        return np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True))
    return norm


register(Op("matmul", 2, ARITH, np.matmul, symbol="@", shape_rule=shapes.matmul, matrix=True))
register(Op("transpose", 1, ARITH, _swap, dsl="transpose", shape_rule=shapes.transpose,
            matrix=True, involution=True))
register(Op("wide", 1, ARITH, _wide, dsl="wide", shape_rule=shapes.wide, matrix=True))
register(Op("unwide", 3, ARITH, _unwide, dsl="unwide",  # (x, and the parameter's rows, cols)
            shape_rule=lambda x, *facts: shapes.unwide(x), matrix=True))
register(Op("bf16", 1, ARITH, _round_bf16, dsl="bf16", matrix=True))
# x computed on in the parameter's compute dtype again (float32; float64 for float64 ones)
register(Op("precise", 1, ARITH, lambda x: np.asarray(x, dtype=np.float32)
            if np.asarray(x).dtype == np.float32 else x, dsl="precise"))
for _name, _fn, _rule in (
        ("rowsum", lambda x: np.sum(x, axis=-1, keepdims=True), shapes.along_rows),
        ("rowmean", lambda x: np.mean(x, axis=-1, keepdims=True), shapes.along_rows),
        ("rownorm", _norm_along(-1), shapes.along_rows),
        ("colsum", lambda x: np.sum(x, axis=-2, keepdims=True), shapes.along_cols),
        ("colmean", lambda x: np.mean(x, axis=-2, keepdims=True), shapes.along_cols),
        ("colnorm", _norm_along(-2), shapes.along_cols)):
    register(Op(_name, 1, ARITH, _fn, dsl=_name, shape_rule=_rule, matrix=True))


def functions() -> dict[str, Op]:
    """The functions a program may call, by name (built-in and registered ones)."""
    return FUNCTIONS


KEYWORDS = frozenset({"optimizer", "hyper", "state", "in", "as", "inf", "nan", "and", "or",
                      "not", "require"})


def result_kind(op: Op, kinds: list[Kind]) -> Kind:
    """The kind of an op's result from its arguments' kinds (arguments already checked for
    masks). Shapes that do not fit raise ShapeError."""
    tensors = [k for k in kinds if k.is_tensor]
    bf16 = ((all(k.bf16 for k in tensors) if tensors else any(k.bf16 for k in kinds))
            or op.name == "bf16") and op.name != "precise"
    if op.category == REDUCE:
        return Kind(Level.PARAM, bf16=bf16)
    if op.category == GLOBAL:
        if any(k.shaped for k in tensors):
            raise ShapeError(f"`{op.dsl or op.name}()` reduces parameter-shaped values, not "
                             f"{show(next(k.shape for k in tensors if k.shaped))}")
        return Kind(Level.GROUP, bf16=bf16)
    level = max((k.level for k in kinds), default=Level.CONST)
    shape = None
    if op.shape_rule is not None:
        try:
            shape = op.shape_rule(*[k.dims for k in tensors])
        except TypeError:  # a scalar where the rule wants a matrix
            raise ShapeError(f"`{op.dsl or op.symbol or op.name}` takes matrices (tensor "
                             f"values), not scalars; multiply scalars with `*`") from None
    elif tensors:
        shape = broadcast([k.dims for k in tensors])
    if shape == P:
        shape = None
    return Kind(Level(level), mask=op.category in (COMPARE, LOGIC), shape=shape, bf16=bf16)


# The reductions' rows (imported last: it registers them in OPS).
from optdsl.ir import reductions as _reductions  # noqa: E402,F401
