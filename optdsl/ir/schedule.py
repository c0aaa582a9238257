"""Splits a lowered Graph into what runs where and when; shared by every code generator.

A step is a sequence of sweeps over the parameters' elements. Reductions split it: a value
that needs a reduction cannot be computed in the sweep that feeds the reduction. ``phase[v]``
counts the reductions between the inputs and ``v``; sweep ``p`` computes the reductions of
phase ``p + 1``, and the last sweep (``final``) computes the outputs. Only the last sweep
writes, so earlier sweeps read unchanged inputs and recompute the cheap element-wise values
they need instead of storing them.

Recomputation is bounded: when a sweep would recompute more than ``RECOMPUTE_BUDGET``
element-wise ops that an earlier sweep already computed (a chain such as
``x2 = x1 / norm(x1)``, ``x3 = x2 / norm(x2)``, ... makes every sweep recompute the whole
chain, so code and work would grow with the square of the program), the values at the edge
of what it would recompute are stored instead: the first sweep that computes such a value
writes it to a per-parameter scratch tensor (in the compute dtype: 4 bytes per element for
float32 parameters), and later sweeps load it. Optimizers of ordinary size never reach the
budget (LAMB's final sweep recomputes 9 ops), so they store nothing.

Within a sweep, values are split by level (how often they change): group-level scalars are
computed once per group, param-level scalars once per parameter, tensor-level values per
element. Where a scalar is computed is its placement, a separate property: by default on the
host (``Placement.HOST``), handed to the element code in a per-parameter row; a schedule made
with ``device_scalars`` (the Triton back end's) places every scalar but the constants on the
device (``Placement.DEVICE``): each kernel program computes the scalars its tensor needs in
its prologue, from device tables of hypers, step counts, scalar states and reductions, so a
step never waits on the host.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum

from optdsl.ir.nodes import Graph
from optdsl.ir.ops import LEAF, OPS, Level


class Placement(Enum):
    """Where a scalar value is computed."""

    HOST = "host"
    DEVICE = "device"


RECOMPUTE_BUDGET = 16  # element-wise ops a sweep may recompute from earlier sweeps


@dataclass(frozen=True)
class Sweep:
    index: int
    tensor: tuple[int, ...]  # tensor-level values computed (or loaded) per element, in order
    reductions: tuple[int, ...]  # reductions this sweep produces (empty in the final one)
    scalars_in: tuple[int, ...]  # scalar values (group or param level) the element code reads
    final: bool
    loads: tuple[int, ...] = ()  # stored values this sweep reads from their scratch tensors
    saves: tuple[int, ...] = ()  # values this sweep writes to their scratch tensors


@dataclass(frozen=True)
class Schedule:
    graph: Graph
    phase: tuple[int, ...]
    sweeps: tuple[Sweep, ...]
    group_values: tuple[tuple[int, ...], ...]  # per sweep: group scalars first needed there
    tensor_outputs: tuple[tuple[str, int], ...]  # w and tensor states that change
    scalar_outputs: tuple[tuple[str, int], ...]  # scalar states
    device_scalars: bool = False  # scalars are computed on the device (see placement)

    @property
    def final(self) -> Sweep:
        return self.sweeps[-1]

    def placement(self, v: int) -> Placement:
        """Where scalar value ``v`` is computed: on the device for a schedule with
        ``device_scalars`` (every group- and param-level value, leaves included: hypers are
        read from a device table, ``t`` from the step counts), else on the host. Constants
        are spelled where they are used, on either side."""
        eq = self.graph.eqs[v]
        if self.device_scalars and eq.op != "const" and eq.kind.level <= Level.PARAM:
            return Placement.DEVICE
        return Placement.HOST

    @functools.cached_property
    def stored(self) -> tuple[int, ...]:
        """The values kept in scratch tensors between sweeps (see RECOMPUTE_BUDGET)."""
        return tuple(sorted(v for sweep in self.sweeps for v in sweep.saves))

    @functools.cached_property
    def reductions(self) -> tuple[int, ...]:
        """Every reduction of the step, in sweep order: the index of one is its slot."""
        return tuple(r for sweep in self.sweeps for r in sweep.reductions)

    @functools.cached_property
    def live_states(self) -> frozenset[str]:
        """The tensor states the step reads or changes. The others (Adam's max_exp_avg_sq
        without amsgrad, once the switch is compiled away) need no memory at all."""
        eqs = self.graph.eqs
        read = {eqs[v].attr for sw in self.sweeps for v in sw.tensor if eqs[v].op == "state"}
        return frozenset(read | {n for n, _ in self.tensor_outputs if n != "w"})


def schedule(graph: Graph, tensor_states: set[str], device_scalars: bool = False) -> Schedule:
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

    sweeps = _sweeps(graph, phase, final_phase, tensor_outputs)
    # Group-level scalars (hypers, constants' combinations, global reductions) are computed
    # once, before the first sweep that needs them (directly or through param-level values).
    placed: set[int] = set()
    group_values = []
    for sw in sweeps:
        needed = set(sw.scalars_in)
        if sw.final:
            needed |= {v for _, v in scalar_outputs}
        reach = graph.ancestors(list(needed),
                         lambda v: is_tensor(v) or OPS[eqs[v].op].is_reduction)
        here = sorted(v for v in reach if eqs[v].kind.level <= Level.GROUP
                      and OPS[eqs[v].op].category != LEAF and eqs[v].op != "const"
                      and v not in placed)
        placed.update(here)
        group_values.append(tuple(here))
    return Schedule(graph, tuple(phase), tuple(sweeps), tuple(group_values), tensor_outputs,
                    scalar_outputs, device_scalars)


def _sweeps(graph: Graph, phase: list[int], final_phase: int,
            tensor_outputs: tuple[tuple[str, int], ...]) -> list[Sweep]:
    """The sweeps, in order, each with what it computes, loads and saves."""
    eqs = graph.eqs

    def is_tensor(v: int) -> bool:
        return eqs[v].kind.level == Level.TENSOR

    stored: dict[int, int] = {}  # value -> the sweep that saves it
    first: dict[int, int] = {}  # tensor value -> the first sweep that computes it
    plans = []
    for p in range(final_phase + 1):
        if p == final_phase:
            roots = [v for _, v in tensor_outputs]
            reductions: list[int] = []
        else:
            reductions = [i for i, eq in enumerate(eqs)
                          if OPS[eq.op].is_reduction and phase[i] == p + 1]
            roots = [a for r in reductions for a in eqs[r].args]

        def needed() -> list[int]:
            reach = graph.ancestors(roots, lambda v: not is_tensor(v) or v in stored)
            return sorted(v for v in reach if is_tensor(v))

        tensor = needed()
        again = {v for v in tensor if v in first and v not in stored
                 and OPS[eqs[v].op].category != LEAF}
        if len(again) > RECOMPUTE_BUDGET:  # store the edge of what would be recomputed
            used_fresh = {a for v in tensor if v not in again for a in eqs[v].args}
            for v in again & (used_fresh | set(roots)):
                stored[v] = first[v]
            tensor = needed()
        for v in tensor:
            first.setdefault(v, p)
        plans.append((p, tensor, reductions, roots))
    sweeps = []
    for p, tensor, reductions, roots in plans:
        loads = tuple(v for v in tensor if stored.get(v, p) < p)
        computed = [v for v in tensor if v not in loads]
        scalars = sorted({a for v in computed for a in eqs[v].args if not is_tensor(a)} |
                         {v for v in roots if not is_tensor(v)})
        saves = tuple(sorted(v for v, q in stored.items() if q == p))
        sweeps.append(Sweep(p, tuple(tensor), tuple(reductions), tuple(scalars),
                            p == final_phase, loads, saves))
    return sweeps


def param_scalars(schedule: Schedule, roots: list[int]) -> list[int]:
    """Param-level scalar values needed to compute ``roots`` (in order), stopping at
    reductions (loaded, not recomputed) and at group-level values (already computed)."""
    eqs = schedule.graph.eqs
    reach = schedule.graph.ancestors(roots,
                     lambda v: eqs[v].kind.level != Level.PARAM or OPS[eqs[v].op].is_reduction
                     or OPS[eqs[v].op].category == LEAF)
    return sorted(v for v in reach if eqs[v].kind.level == Level.PARAM)

