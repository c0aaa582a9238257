"""Splits an optimized Graph into what runs where and when; shared by both code generators.

A step is a sequence of passes over the parameters' elements. Reductions split it: a value
that needs a reduction cannot be computed in the pass that feeds the reduction. ``phase[v]``
counts the reductions between the inputs and ``v``; pass ``p`` computes the reductions of
phase ``p + 1``, and the last pass (``final``) computes the outputs. Only the last pass
writes, so earlier passes read unchanged inputs and recompute the cheap element-wise values
they need instead of storing them.

Within a pass, values are split by level: group-level scalars are computed once per group,
param-level scalars once per parameter (host code), tensor-level values per element.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from optdsl.ir.nodes import Graph
from optdsl.ir.ops import LEAF, OPS, Level


@dataclass(frozen=True)
class Pass:
    index: int
    tensor: tuple[int, ...]  # tensor-level values computed per element, in order
    reductions: tuple[int, ...]  # REDUCE/GLOBAL values this pass produces (empty in the final)
    scalars_in: tuple[int, ...]  # scalar values (group or param level) the element code reads
    final: bool


@dataclass(frozen=True)
class Schedule:
    graph: Graph
    phase: tuple[int, ...]
    passes: tuple[Pass, ...]
    group_values: tuple[tuple[int, ...], ...]  # per pass: group scalars first needed there
    tensor_outputs: tuple[tuple[str, int], ...]  # w and tensor states that change
    scalar_outputs: tuple[tuple[str, int], ...]  # scalar states

    @property
    def final(self) -> Pass:
        return self.passes[-1]

    @functools.cached_property
    def live_states(self) -> frozenset[str]:
        """The tensor states the step reads or changes. The others (Adam's max_exp_avg_sq
        without amsgrad, once the switch is compiled away) need no memory at all."""
        eqs = self.graph.eqs
        read = {eqs[v].attr for ps in self.passes for v in ps.tensor if eqs[v].op == "state"}
        return frozenset(read | {n for n, _ in self.tensor_outputs if n != "w"})


def schedule(graph: Graph, tensor_states: set[str]) -> Schedule:
    eqs = graph.eqs
    phase = [0] * len(eqs)
    for i, eq in enumerate(eqs):
        base = max((phase[a] for a in eq.args), default=0)
        phase[i] = base + 1 if OPS[eq.op].is_reduction else base
    def unchanged(name: str, v: int) -> bool:  # an output that is its own input
        eq = eqs[v]
        return eq.op == "w" if name == "w" else (eq.op == "state" and eq.attr == name)

    tensor_outputs = tuple((n, v) for n, v in graph.outputs
                           if (n == "w" or n in tensor_states) and not unchanged(n, v))
    scalar_outputs = tuple((n, v) for n, v in graph.outputs if n != "w" and n not in tensor_states)
    final_phase = max((phase[v] for _, v in graph.outputs), default=0)

    def is_tensor(v: int) -> bool:
        return eqs[v].kind.level == Level.TENSOR

    passes = []
    for p in range(final_phase + 1):
        final = p == final_phase
        if final:
            roots = [v for _, v in tensor_outputs]
            reductions: list[int] = []
        else:
            reductions = [i for i, eq in enumerate(eqs)
                          if OPS[eq.op].is_reduction and phase[i] == p + 1]
            roots = [a for r in reductions for a in eqs[r].args]
        tensor = sorted(v for v in graph.ancestors(roots, lambda v: not is_tensor(v))
                        if is_tensor(v))
        scalars = sorted({a for v in tensor for a in eqs[v].args if not is_tensor(a)} |
                         {v for v in roots if not is_tensor(v)})
        passes.append(Pass(p, tuple(tensor), tuple(reductions), tuple(scalars), final))

    # Group-level scalars (hypers, constants' combinations, global reductions) are computed
    # once, before the first pass that needs them (directly or through param-level values).
    placed: set[int] = set()
    group_values = []
    for ps in passes:
        needed = set(ps.scalars_in)
        if ps.final:
            needed |= {v for _, v in scalar_outputs}
        reach = graph.ancestors(list(needed),
                         lambda v: is_tensor(v) or OPS[eqs[v].op].is_reduction)
        here = sorted(v for v in reach if eqs[v].kind.level <= Level.GROUP
                      and OPS[eqs[v].op].category != LEAF and eqs[v].op != "const"
                      and v not in placed)
        placed.update(here)
        group_values.append(tuple(here))
    return Schedule(graph, tuple(phase), tuple(passes), tuple(group_values), tensor_outputs,
                    scalar_outputs)


def param_scalars(schedule: Schedule, roots: list[int]) -> list[int]:
    """Param-level scalar values needed to compute ``roots`` (in order), stopping at
    reductions (loaded, not recomputed) and at group-level values (already computed)."""
    eqs = schedule.graph.eqs
    reach = schedule.graph.ancestors(roots,
                     lambda v: eqs[v].kind.level != Level.PARAM or OPS[eqs[v].op].is_reduction
                     or OPS[eqs[v].op].category == LEAF)
    return sorted(v for v in reach if eqs[v].kind.level == Level.PARAM)

