"""The reduction descriptors: what each reduction of the language computes, described once.

A reduction maps each element to a value (``map``, a decomposition over the reduction's
arguments, computed in the parameters' compute dtype), combines those values in float64
(``combine``: "add" or "max", starting from ``identity``, which is also what padding and an
empty tensor contribute), and finishes the combined total with the element count
(``finish``). ``scope`` says whether it reduces one tensor (a scalar per parameter) or every
parameter of the param group (a scalar per group).

Every consumer reads these rows: the reference evaluator, each back end (which computes the
mapped values with its element code and combines partials with ``combine``), and the
distributed combiner (which all-reduces raw partials with ``combine``). Finishing happens in
one place, ``Reduction.finish``, called by the runtime (optdsl.runtime.reduce) and the
evaluator. Adding a reduction is one ``register_reduction(Reduction(...))`` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from optdsl.ir.ops import GLOBAL, OPS, REDUCE, Expr, Op, evaluate_expr, register, unregister

TENSOR_SCOPE = "tensor"
GROUP_SCOPE = "group"

# How a combined total is finished, as an expression over (total, n) in the op table's ops
# (optdsl.ir.ops.Expr: 0 is the total, 1 the element count as a float64): the host evaluates
# it with the ops' NumPy meanings, a device back end spells it with its own spelling table,
# so the two cannot drift. Over no elements the total is the identity: 0 / 0 is NaN.
FINISH_EXPRS: dict[str, Expr] = {
    "none": 0,
    "sqrt": ("sqrt", 0),
    "mean": ("div", 0, 1),
    "rms": ("sqrt", ("div", 0, 1)),
}
_COMBINES = {"add": np.add, "max": np.maximum}


@dataclass(frozen=True)
class Reduction:
    name: str
    arity: int
    scope: str  # TENSOR_SCOPE or GROUP_SCOPE
    map: Expr  # the per-element value, over argument indices (0: identity map of one arg)
    combine: str  # "add" or "max" (max propagates NaN)
    identity: float
    finish: str  # "none", "sqrt", "mean" (total / n), "rms" (sqrt(total / n))
    empty: float  # the value on an empty tensor (what finish gives for (identity, 0))

    def combine_ufunc(self):
        return _COMBINES[self.combine]

    @property
    def finish_expr(self) -> Expr:
        """The finish as an expression over (total, n) (see FINISH_EXPRS)."""
        return FINISH_EXPRS[self.finish]

    def finished(self, total, n: int) -> np.float64:
        """The reduction's value from its combined float64 ``total`` over ``n`` elements:
        the one place where reductions are finished (a device back end spells the same
        ``finish_expr``)."""
        with np.errstate(all="ignore"):
            return np.float64(evaluate_expr(self.finish_expr,
                                            (np.float64(total), np.float64(int(n)))))

    def mapped(self, args: tuple):
        """The per-element values (NumPy meaning of the map)."""
        return evaluate_expr(self.map, args)

    def evaluate(self, *args) -> np.float64:
        """The reduction of whole NumPy arrays (the reference meaning)."""
        values = np.asarray(self.mapped(tuple(args)))
        n = values.size
        if self.combine == "add":
            total = np.sum(values, dtype=np.float64)
        else:
            total = np.float64(np.max(values)) if n else np.float64(self.identity)
            total = np.maximum(total, np.float64(self.identity))
        return self.finished(total, n)


REDUCTIONS: dict[str, Reduction] = {}


def register_reduction(desc: Reduction) -> Reduction:
    """Add a reduction: its descriptor and the op row programs call it by."""
    if desc.name in REDUCTIONS or desc.name in OPS:
        raise ValueError(f"reduction {desc.name!r} already exists")
    if desc.combine not in _COMBINES or desc.finish not in FINISH_EXPRS:
        raise ValueError(f"reduction {desc.name!r}: combine must be one of {list(_COMBINES)} "
                         f"and finish one of {list(FINISH_EXPRS)}")
    empty = desc.finished(desc.identity, 0)
    if not (empty == desc.empty or (math.isnan(empty) and math.isnan(desc.empty))):
        raise ValueError(f"reduction {desc.name!r}: finishing the identity over no elements "
                         f"gives {empty}, not the declared empty value {desc.empty}")
    REDUCTIONS[desc.name] = desc
    category = REDUCE if desc.scope == TENSOR_SCOPE else GLOBAL
    register(Op(desc.name, desc.arity, category, desc.evaluate, dsl=desc.name,
                reduction=desc.name))
    return desc


def unregister_reduction(name: str) -> None:
    """Remove a reduction (for tests that register throwaway ones)."""
    REDUCTIONS.pop(name)
    unregister(name)


for _desc in (
    Reduction("sum", 1, TENSOR_SCOPE, 0, "add", 0.0, "none", 0.0),
    Reduction("mean", 1, TENSOR_SCOPE, 0, "add", 0.0, "mean", math.nan),
    Reduction("norm", 1, TENSOR_SCOPE, ("square", 0), "add", 0.0, "sqrt", 0.0),
    Reduction("rms", 1, TENSOR_SCOPE, ("square", 0), "add", 0.0, "rms", math.nan),
    Reduction("maxabs", 1, TENSOR_SCOPE, ("abs", 0), "max", 0.0, "none", 0.0),
    Reduction("dot", 2, TENSOR_SCOPE, ("mul", 0, 1), "add", 0.0, "none", 0.0),
    Reduction("global_norm", 1, GROUP_SCOPE, ("square", 0), "add", 0.0, "sqrt", 0.0),
    Reduction("global_sum", 1, GROUP_SCOPE, 0, "add", 0.0, "none", 0.0),
    Reduction("global_maxabs", 1, GROUP_SCOPE, ("abs", 0), "max", 0.0, "none", 0.0),
):
    register_reduction(_desc)

# The lowered form (optdsl.passes.legalize): a reduction of already-mapped values, its
# descriptor's name in the equation's attribute. Back ends emit only these.
register(Op("reduce", 1, REDUCE))
register(Op("reduce_group", 1, GLOBAL))
