"""``sparse`` statements: whether a program takes sparse gradients, and when.

    sparse                      # sparse (COO) gradients are accepted
    sparse only, "SparseAdam does not support dense gradients, please consider Adam instead"
    sparse require weight_decay == 0, "weight_decay option is not compatible with sparse gradients"

The step of a sparse gradient updates only the elements at the gradient's indices (after
duplicate indices are summed); every other element of the parameter and of its tensor states
keeps its value. That is the step run on those elements alone, so it is only the program's
meaning when each element's new values depend on nothing but its own values (``w``, ``g``,
tensor states), hypers, ``t`` and scalar state: a program that says ``sparse`` must be
element-wise, and a reduction (``norm``, ``global_norm``, ...) or any other op that reads
other elements is a positioned DslError. ``sparse only`` refuses dense gradients (with the
message, if given); ``sparse require`` gives conditions on hypers that a param group with a
sparse gradient must meet (checked at each such step, with its message, as torch.optim
checks them). ``lower_sparse`` gives the program's SparseRule.
"""

from __future__ import annotations

from dataclasses import dataclass

from optdsl.frontend import ast
from optdsl.frontend.requirements import lower_requirement
from optdsl.frontend.signature import Requirement
from optdsl.ir.nodes import Eq, Graph
from optdsl.ir.ops import ARITH, COMPARE, GLOBAL, LEAF, LOGIC, OPS, REDUCE, SELECT

# The op categories that read only the element's own values (and scalars). Whatever is not
# listed (reductions, and any category added later) makes a program dense-only.
ELEMENT_WISE = frozenset({LEAF, ARITH, COMPARE, LOGIC, SELECT})


@dataclass(frozen=True)
class SparseRule:
    """What a program says about sparse gradients (``Program.sparse``)."""

    allowed: bool = False  # it has a `sparse` statement
    only: bool = False  # `sparse only`: dense gradients are refused
    dense_message: str | None = None  # the message of `sparse only, "..."`
    requirements: tuple[Requirement, ...] = ()  # `sparse require ...`, per param group
    # why a program without `sparse` could not take them (its first non-element-wise op,
    # e.g. "`norm()` at line 21"), for the optimizer's error; None when it is element-wise
    blocker: str | None = None


def lower_sparse(checker, statements: list[ast.Sparse], graph: Graph) -> SparseRule:
    """The SparseRule of a program from its ``sparse`` statements and its step graph;
    positioned DslErrors for misuse. ``checker`` is the frontend's _Checker."""
    blocking = _first_blocking(graph)
    blocker = None if blocking is None else _describe(blocking)
    if not statements:
        return SparseRule(blocker=blocker)
    first = statements[0]
    if blocking is not None:
        raise checker.error(
            f"{_name(blocking)} {_reads(blocking)}, but this program takes sparse gradients "
            f"(`sparse` at line {first.span.line}), whose step updates only the elements at "
            f"the gradient's indices, each from its own values; remove `sparse` or this "
            f"operation", blocking.span)
    only = [s for s in statements if s.only]
    if len(only) > 1:
        raise checker.error("a program says `sparse only` once", only[1].span)
    requirements = tuple(lower_requirement(checker, s) for s in statements if s.conditions)
    message = only[0].message if only else None
    return SparseRule(True, bool(only), message, requirements, None)


def _first_blocking(graph: Graph) -> Eq | None:
    """The first value the step uses that is not element-wise, or None."""
    live = graph.live()
    for alive, eq in zip(live, graph.eqs):
        if alive and OPS[eq.op].category not in ELEMENT_WISE:
            return eq
    return None


def _name(eq: Eq) -> str:
    op = OPS[eq.op]
    return f"`{op.dsl}()`" if op.dsl else f"`{op.name}`"


def _reads(eq: Eq) -> str:
    category = OPS[eq.op].category
    if category == REDUCE:
        return "reduces over the whole tensor"
    if category == GLOBAL:
        return "reduces over every parameter of the group"
    return "reads other elements than its own"


def _describe(eq: Eq) -> str:
    return f"{_name(eq)} at line {eq.line}" if eq.line else _name(eq)
