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

import dataclasses

import numpy as np

from optdsl.ir.builder import Builder, copy_eq
from optdsl.ir.nodes import Graph
from optdsl.ir.ops import OPS, PARAM_FACTS, Level


def flag_masks(graph: Graph) -> tuple[int, ...]:
    """Group-level masks (comparisons, or masks combined with and/or/not) read as the mask of
    some where(): the program's switches."""
    read_as_mask = {eq.args[0] for eq in graph.eqs if eq.op == "where"}
    return tuple(v for v in sorted(read_as_mask)
                 if graph.eqs[v].kind.mask
                 and graph.eqs[v].kind.level <= Level.GROUP
                 and not any(OPS[graph.eqs[a].op].is_reduction  # global_norm is group-level
                             for a in graph.ancestors([v])))


def param_flag_masks(graph: Graph) -> tuple[int, ...]:
    """Param-level masks read by some where() that depend only on hypers and the
    parameter's facts (`w.ndim > 1`, `w.rows > w.cols`): switches compiled per parameter."""
    read_as_mask = {eq.args[0] for eq in graph.eqs if eq.op == "where"}
    out = []
    for v in sorted(read_as_mask):
        eq = graph.eqs[v]
        if not eq.kind.mask or eq.kind.level != Level.PARAM:
            continue
        leaves = {graph.eqs[a].op for a in graph.ancestors([v]) if not graph.eqs[a].args}
        if leaves <= {"const", "hyper", *PARAM_FACTS}:
            out.append(v)
    return tuple(out)


def flag_values(graph: Graph, masks: tuple[int, ...], hyper: dict[str, float]
                ) -> tuple[bool, ...]:
    """Evaluate the switches for one group's hyper values."""
    if not masks:
        return ()
    values: dict[int, object] = {}
    needed = sorted(graph.ancestors(masks))
    with np.errstate(all="ignore"):
        for v in needed:
            eq = graph.eqs[v]
            if eq.op == "const":
                values[v] = np.float64(eq.attr)
            elif eq.op == "hyper":
                values[v] = np.float64(hyper[eq.attr])
            elif eq.op in PARAM_FACTS:
                values[v] = np.float64(hyper[eq.op])
            else:
                values[v] = OPS[eq.op].meaning(*[values[a] for a in eq.args])
    return tuple(bool(values[m]) for m in masks)


def specialize(graph: Graph, choice: dict[int, bool]) -> Graph:
    """Replace where(m, a, b) by a or b for every mask m in ``choice`` (unless the branch is
    of a lower level than the where, e.g. a scalar branch of a tensor where: a reduction
    of it must still see a tensor, so that where stays)."""
    picked = _picks(graph, choice)
    alive = [False] * len(graph.eqs)
    for _, v in graph.outputs:
        alive[v] = True
    for i in range(len(graph.eqs) - 1, -1, -1):
        if alive[i]:
            for a in (picked[i],) if i in picked else graph.eqs[i].args:
                alive[a] = True
    builder = Builder()
    new_id: dict[int, int] = {}
    for i, eq in enumerate(graph.eqs):
        if not alive[i]:
            continue
        if i in picked:
            new_id[i] = new_id[picked[i]]
        else:
            new_id[i] = copy_eq(builder, eq, tuple(new_id[a] for a in eq.args))
    return builder.graph([(name, new_id[v]) for name, v in graph.outputs])


def _picks(graph: Graph, choice: dict[int, bool]) -> dict[int, int]:
    """For each where() that can be resolved, the value it becomes."""
    picked = {}
    for i, eq in enumerate(graph.eqs):
        if eq.op == "where" and eq.args[0] in choice:
            branch = eq.args[1] if choice[eq.args[0]] else eq.args[2]
            # (a bfloat16 branch may replace the where: the values after it are rebuilt,
            # and their kinds say bfloat16 again where it flows, as `bf16` would have)
            if dataclasses.replace(graph.eqs[branch].kind, bf16=False) == \
                    dataclasses.replace(eq.kind, bf16=False):
                picked[i] = branch
    return picked


def unscale_gradient(graph: Graph) -> Graph:
    """Read every gradient as ``g * inv_grad_scale``: torch's GradScaler protocol for a step
    that unscales the scaled gradients itself (torch's fused=True), in the same pass, so
    unscaling costs no extra sweep over memory (nothing is written to .grad)."""
    builder = Builder()
    new_id: dict[int, int] = {}
    for i, eq in enumerate(graph.eqs):
        if eq.op == "g":
            grad = builder.leaf("g")
            new_id[i] = builder.op("mul", (grad, builder.leaf("inv_grad_scale")))
            continue
        new_id[i] = copy_eq(builder, eq, tuple(new_id[a] for a in eq.args))
    return builder.graph([(name, new_id[v]) for name, v in graph.outputs])
