"""Splits a lowered Graph into what runs where and when; shared by every code generator.

A step is a sequence of stages: sweeps over the parameters' elements, and, for programs with
matrix work, library stages between them (optdsl.ir.stages: which values they compute and
each value's earliest time). Reductions split sweeps: a value that needs a reduction cannot
be computed in the sweep that feeds it; sweep k computes the reductions of its time, and the
last sweep (``final``) computes the outputs. Only the last sweep writes the parameter and
its states (library stages compute shaped states into new tensors, committed at the end of
the step), so earlier sweeps read unchanged inputs and recompute the cheap element-wise
values they need instead of storing them.

Recomputation is bounded: when a sweep would recompute more than ``RECOMPUTE_BUDGET``
element-wise ops that an earlier sweep already computed (a chain such as
``x2 = x1 / norm(x1)``, ``x3 = x2 / norm(x2)``, ... makes every sweep recompute the whole
chain, so code and work would grow with the square of the program), the values at the edge
of what it would recompute are stored instead: the first sweep that computes such a value
writes it to a per-parameter scratch tensor (in the compute dtype: 4 bytes per element for
float32 parameters), and later sweeps load it. Optimizers of ordinary size never reach the
budget (LAMB's final sweep recomputes 9 ops), so they store nothing. The same scratch
tensors carry element values into library stages and library values into sweeps.

Within a stage, values are split by level (how often they change): group-level scalars are
computed once per group, param-level scalars once per parameter, tensor-level values per
element. Where a scalar is computed is its placement, a separate property: by default on the
host (``Placement.HOST``), handed to the element code in a per-parameter row; a schedule made
with ``device_scalars`` (the Triton back end's) places every scalar but the constants on the
device (``Placement.DEVICE``): each kernel program computes the scalars its tensor needs in
its prologue, from device tables of hypers, step counts, scalar states and reductions, so a
step never waits on the host.

A schedule made with ``fuse_stats`` (the C and Triton back ends') has each sweep also accumulate the
row and column statistics the next library stage reads of its element values or inputs
(``Sweep.stats``; optdsl.ir.stages.fused_stats): the sweep computes their argument, and the
stage reads the statistic instead of computing it (or computes it, for a parameter the
sweep could not: the runtime decides, optdsl.runtime.c_runner and device_stats).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum

from optdsl.ir.nodes import Graph
from optdsl.ir.ops import LEAF, OPS, Level
from optdsl.ir.stages import fused_stats, is_sweep_reduction, library_values, times


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
    time: int = 0
    stats: tuple[int, ...] = ()  # row and column statistics it accumulates (fuse_stats)


@dataclass(frozen=True)
class Library:
    """A library stage: matrix work between two sweeps, one parameter at a time."""

    index: int
    values: tuple[int, ...]  # the values it computes, in order
    scalars_in: tuple[int, ...]  # host scalars it reads (the parameter's row)
    writes: tuple[int, ...]  # values later sweeps read (it writes their scratch tensors)
    keeps: tuple[int, ...]  # values later library stages read (kept for the step)
    # shaped states (and, library_only, w and every tensor state it computes), committed at
    # the end of the step
    commits: tuple[tuple[str, int], ...]
    time: int = 1


@dataclass(frozen=True)
class Schedule:
    graph: Graph
    time: tuple[int, ...]
    sweeps: tuple[Sweep, ...]
    group_values: tuple[tuple[int, ...], ...]  # per stage: group scalars first needed there
    tensor_outputs: tuple[tuple[str, int], ...]  # w and parameter-shaped states that change
    scalar_outputs: tuple[tuple[str, int], ...]  # scalar states
    libraries: tuple[Library, ...] = ()
    library: frozenset[int] = frozenset()  # every value a library stage computes
    device_scalars: bool = False  # scalars are computed on the device (see placement)
    fused: tuple[int, ...] = ()  # the statistics sweeps accumulate, in order: index = slot

    @property
    def final(self) -> Sweep:
        return self.sweeps[-1]

    def stat_sweep(self, v: int) -> int:
        """The index of the sweep that accumulates fused statistic ``v``."""
        return next(s.index for s in self.sweeps if v in s.stats)

    @functools.cached_property
    def stages(self) -> tuple[Sweep | Library, ...]:
        """Sweeps and library stages in the order they run."""
        return tuple(sorted(self.sweeps + self.libraries, key=lambda s: s.time))

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
        """The values kept in scratch tensors between stages (see RECOMPUTE_BUDGET)."""
        saved = {v for sweep in self.sweeps for v in sweep.saves}
        saved |= {v for lib in self.libraries for v in lib.writes}
        return tuple(sorted(saved))

    @functools.cached_property
    def reductions(self) -> tuple[int, ...]:
        """Every sweep reduction of the step, in order: the index of one is its slot."""
        return tuple(r for sweep in self.sweeps for r in sweep.reductions)

    @functools.cached_property
    def live_states(self) -> frozenset[str]:
        """The tensor states the step reads or changes. The others (Adam's max_exp_avg_sq
        without amsgrad, once the switch is compiled away) need no memory at all."""
        eqs = self.graph.eqs
        read = {eqs[v].attr for sw in self.sweeps for v in sw.tensor if eqs[v].op == "state"}
        for lib in self.libraries:
            read |= {eqs[a].attr for v in lib.values for a in eqs[v].args
                     if eqs[a].op == "state"}
            read |= {name for name, _ in lib.commits if name != "w"}
        return frozenset(read | {n for n, _ in self.tensor_outputs if n != "w"})


def schedule(graph: Graph, tensor_states: set[str], device_scalars: bool = False,
             library_only: bool = False, fuse_stats: bool = False) -> Schedule:
    """``library_only``: every tensor-level value runs in library stages, which also
    commit the parameter-shaped outputs (optdsl.ir.stages); ``fuse_stats``: sweeps
    accumulate the row and column statistics they can (see the module docstring)."""
    eqs = graph.eqs
    library = library_values(graph, library_only)
    time = times(graph, library)
    stats = fused_stats(graph, library) if fuse_stats and not library_only else ()

    def unchanged(name: str, v: int) -> bool:  # an output that is its own input
        eq = eqs[v]
        return eq.op == "w" if name == "w" else (eq.op == "state" and eq.attr == name)

    changed = [(n, v) for n, v in graph.outputs
               if (n == "w" or n in tensor_states) and not unchanged(n, v)]
    committed = [(n, v) for n, v in changed
                 if eqs[v].kind.shaped or (library_only and v in library)]
    shaped = tuple(committed)
    tensor_outputs = tuple((n, v) for n, v in changed if (n, v) not in committed)
    scalar_outputs = tuple((n, v) for n, v in graph.outputs if n != "w" and n not in tensor_states)
    final_time = max([_output_time(graph, v, time, library) for _, v in tensor_outputs]
                     + [time[v] + 1 for _, v in shaped if v in library]
                     + [time[v] + (1 if OPS[eqs[v].op].is_reduction or v in library else 0)
                        for _, v in scalar_outputs] + [0])
    final_time += final_time & 1
    sweeps = _sweeps(graph, time, library, final_time, tensor_outputs, stats)
    libraries = _libraries(graph, time, library, sweeps, shaped)
    stages = sorted(sweeps + libraries, key=lambda s: s.time)
    group_values = _group_values(graph, stages, scalar_outputs)
    fused = tuple(v for sweep in sweeps for v in sweep.stats)
    return Schedule(graph, tuple(time), tuple(sweeps), group_values, tensor_outputs,
                    scalar_outputs, tuple(libraries), library, device_scalars, fused)


def _output_time(graph: Graph, v: int, time: list[int], library: frozenset[int]) -> int:
    """The earliest sweep that can write output value ``v``."""
    eq = graph.eqs[v]
    if OPS[eq.op].category == LEAF:
        return 0
    if v in library:
        return time[v] + 1
    if OPS[eq.op].is_reduction:
        return time[v] + 2
    return time[v]


def _sweeps(graph: Graph, time: list[int], library: frozenset[int], final_time: int,
            tensor_outputs: tuple[tuple[str, int], ...], stats: tuple[int, ...] = ()
            ) -> list[Sweep]:
    """The sweeps, in order, each with what it computes, loads, saves and accumulates (a
    statistic of ``stats``: in the sweep just before the library stage that reads it)."""
    eqs = graph.eqs

    def is_tensor(v: int) -> bool:
        return eqs[v].kind.level == Level.TENSOR

    lib_reads: dict[int, set[int]] = {}  # sweep time -> element values a library stage reads
    for x in library:
        for a in eqs[x].args:
            if a not in library and is_tensor(a) and OPS[eqs[a].op].category != LEAF:
                lib_reads.setdefault(time[x] - 1, set()).add(a)
    stored: dict[int, int] = {}  # value -> the sweep time that saves it
    first: dict[int, int] = {}  # tensor value -> the first sweep time that computes it
    plans = []
    for p in range(0, final_time + 1, 2):
        if p == final_time:
            roots = [v for _, v in tensor_outputs]
            reductions: list[int] = []
        else:
            reductions = [i for i, eq in enumerate(eqs)
                          if is_sweep_reduction(graph, i, library) and time[i] == p]
            roots = [a for r in reductions for a in eqs[r].args]
        handed = sorted(lib_reads.get(p, ()))
        for v in handed:
            stored[v] = p
        here_stats = [v for v in stats if time[v] - 1 == p]
        roots = roots + handed + [eqs[v].args[0] for v in here_stats]

        def needed(roots=roots, p=p) -> list[int]:
            reach = graph.ancestors(roots, lambda v: not is_tensor(v) or v in library
                                    or (v in stored and stored[v] < p))
            return sorted(v for v in reach if is_tensor(v))

        tensor = needed()
        again = {v for v in tensor if v in first and v not in stored and v not in library
                 and OPS[eqs[v].op].category != LEAF}
        if len(again) > RECOMPUTE_BUDGET:  # store the edge of what would be recomputed
            used_fresh = {a for v in tensor if v not in again for a in eqs[v].args}
            for v in again & (used_fresh | set(roots)):
                stored[v] = first[v]
            tensor = needed()
        for v in tensor:
            first.setdefault(v, p)
        plans.append((p, tensor, reductions, roots, here_stats))
    sweeps = []
    for number, (p, tensor, reductions, roots, here_stats) in enumerate(plans):
        loads = tuple(v for v in tensor if v in library or stored.get(v, p) < p)
        computed = [v for v in tensor if v not in loads]
        scalars = sorted({a for v in computed for a in eqs[v].args if not is_tensor(a)} |
                         {v for v in roots if not is_tensor(v)})
        saves = tuple(sorted(v for v, q in stored.items() if q == p and v in computed))
        sweeps.append(Sweep(number, tuple(tensor), tuple(reductions), tuple(scalars),
                            p == final_time, loads, saves, p, tuple(here_stats)))
    return sweeps


def _libraries(graph: Graph, time: list[int], library: frozenset[int], sweeps: list[Sweep],
               shaped: tuple[tuple[str, int], ...]) -> list[Library]:
    """The library stages, in order, each with what it computes, reads and hands on."""
    eqs = graph.eqs
    read_by_sweep = {v for sweep in sweeps for v in sweep.loads if v in library}
    out = []
    for number, t in enumerate(sorted({time[v] for v in library})):
        values = tuple(v for v in sorted(library) if time[v] == t)
        here = set(values)
        scalars = sorted({a for v in values for a in eqs[v].args
                          if a not in library and eqs[a].kind.level != Level.TENSOR
                          and eqs[a].op != "const"})
        keeps = tuple(v for v in values if any(v in eqs[u].args for u in library
                                               if time[u] > t))
        writes = tuple(v for v in values if v in read_by_sweep)
        commits = tuple((name, v) for name, v in shaped if v in here)
        out.append(Library(number, values, tuple(scalars), writes, keeps, commits, t))
    return out


def _group_values(graph: Graph, stages: list, scalar_outputs) -> tuple[tuple[int, ...], ...]:
    """Group-level scalars (hypers, constants' combinations, global reductions), each
    computed once, before the first stage that needs it (directly or through param-level
    values)."""
    eqs = graph.eqs

    def stop(v: int) -> bool:
        return eqs[v].kind.level == Level.TENSOR or OPS[eqs[v].op].is_reduction

    placed: set[int] = set()
    group_values = []
    for stage in stages:
        needed = set(stage.scalars_in)
        if isinstance(stage, Sweep) and stage.final:
            needed |= {v for _, v in scalar_outputs}
        reach = graph.ancestors(list(needed), stop)
        here = sorted(v for v in reach if eqs[v].kind.level <= Level.GROUP
                      and OPS[eqs[v].op].category != LEAF and eqs[v].op != "const"
                      and v not in placed)
        placed.update(here)
        group_values.append(tuple(here))
    return tuple(group_values)


def param_scalars(schedule: Schedule, roots: list[int]) -> list[int]:
    """Param-level scalar values needed to compute ``roots`` (in order), stopping at
    reductions (loaded, not recomputed), at library values and at group-level values
    (already computed)."""
    eqs = schedule.graph.eqs
    reach = schedule.graph.ancestors(roots,
                     lambda v: eqs[v].kind.level != Level.PARAM or OPS[eqs[v].op].is_reduction
                     or OPS[eqs[v].op].category == LEAF or v in schedule.library)
    return sorted(v for v in reach if eqs[v].kind.level == Level.PARAM
                  and v not in schedule.library)
