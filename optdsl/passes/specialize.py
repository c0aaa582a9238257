"""Specialization on flags: where() whose mask depends only on hypers picks its branch.

Optimizers have switches (`amsgrad`, `nesterov`, `maximize`) written as
``where(flag != 0, a, b)``. Such a mask has one value for a whole param group, so the step
can be compiled for that value: the chosen branch replaces the where, the other branch dies,
and a state that a switch leaves unchanged is neither read nor written. The runtime computes
the group's flag values each step (a few scalar operations) and keeps one compiled variant
per combination it has seen.

Before: an optimized graph. After: no where() reads a mask listed in ``choice``.
"""

from __future__ import annotations

import numpy as np

from optdsl.ir.builder import Builder, copy_eq
from optdsl.ir.nodes import Graph
from optdsl.ir.ops import COMPARE, OPS, Level


def flag_masks(graph: Graph) -> tuple[int, ...]:
    """Group-level comparisons read as the mask of some where(): the program's switches."""
    read_as_mask = {eq.args[0] for eq in graph.eqs if eq.op == "where"}
    return tuple(v for v in sorted(read_as_mask)
                 if OPS[graph.eqs[v].op].category == COMPARE
                 and graph.eqs[v].kind.level <= Level.GROUP)


def flag_values(graph: Graph, masks: tuple[int, ...], hyper: dict[str, float]
                ) -> tuple[bool, ...]:
    """Evaluate the switches for one group's hyper values."""
    if not masks:
        return ()
    values: dict[int, object] = {}
    needed = sorted(_ancestors(graph, masks))
    with np.errstate(all="ignore"):
        for v in needed:
            eq = graph.eqs[v]
            if eq.op == "const":
                values[v] = np.float64(eq.attr)
            elif eq.op == "hyper":
                values[v] = np.float64(hyper[eq.attr])
            else:
                values[v] = OPS[eq.op].evaluate(*[values[a] for a in eq.args])
    return tuple(bool(values[m]) for m in masks)


def _ancestors(graph: Graph, roots) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            stack.extend(graph.eqs[v].args)
    return seen


def specialize(graph: Graph, choice: dict[int, bool]) -> Graph:
    """Replace where(m, a, b) by a or b for every mask m in ``choice``."""

    # Map old ids to new ones while rewriting; a where over a chosen mask becomes its branch.
    builder = Builder()
    alive = _live_with_choice(graph, choice)
    new_id: dict[int, int] = {}
    for i, eq in enumerate(graph.eqs):
        if not alive[i]:
            continue
        if eq.op == "where" and eq.args[0] in choice:
            new_id[i] = new_id[eq.args[1] if choice[eq.args[0]] else eq.args[2]]
            continue
        new_id[i] = copy_eq(builder, eq, tuple(new_id[a] for a in eq.args))
    return builder.graph([(name, new_id[v]) for name, v in graph.outputs], graph.meta)


def _live_with_choice(graph: Graph, choice: dict[int, bool]) -> list[bool]:
    alive = [False] * len(graph.eqs)
    for _, v in graph.outputs:
        alive[v] = True
    for i in range(len(graph.eqs) - 1, -1, -1):
        if not alive[i]:
            continue
        eq = graph.eqs[i]
        if eq.op == "where" and eq.args[0] in choice:
            alive[eq.args[1] if choice[eq.args[0]] else eq.args[2]] = True
        else:
            for a in eq.args:
                alive[a] = True
    return alive



INV_GRAD_SCALE = "__inv_grad_scale"  # user names cannot start with "__" (the checker says so)


def unscale_gradient(graph: Graph) -> Graph:
    """Read every gradient as ``g * __inv_grad_scale``: torch's GradScaler protocol, where the
    step divides the scaled gradients by the scale itself (nothing is written to .grad)."""
    builder = Builder()
    new_id: dict[int, int] = {}
    for i, eq in enumerate(graph.eqs):
        if eq.op == "g":
            grad = builder.leaf("g")
            new_id[i] = builder.op("mul", (grad, builder.leaf("hyper", INV_GRAD_SCALE)))
            continue
        new_id[i] = copy_eq(builder, eq, tuple(new_id[a] for a in eq.args))
    return builder.graph([(name, new_id[v]) for name, v in graph.outputs], graph.meta)
