"""Which values a library stage computes, and when each value can be computed.

Element-wise work on parameter-shaped values runs in fused sweeps over the elements. Matrix
work runs in *library stages* between sweeps (torch: BLAS or cuBLAS for the products), the
way Inductor treats extern kernels: matrix products, transposes, row and column statistics,
anything of another shape than the parameter's, anything computed in bfloat16, reductions
of those, and the element-wise values in between (a value with a library argument that
feeds a library value, or that broadcasts a row or column statistic). A parameter-shaped
element-wise value computed from parameter-shaped library values and read only by element
code is computed by the next sweep, which reads the library values from memory: sweeps only
ever read parameter-shaped memory.

Time orders the stages: sweep k runs at time 2k, library stage k at time 2k + 1. A value's
time is the earliest at which it can be computed: a sweep's reductions are ready for the
next library stage and the host code after it, and for the sweep after that; a library
value is ready for the next sweep. Host scalars are computed between stages, as soon as
their arguments are ready.

A schedule for a back end without element sweeps (``library_only``: the torch back end,
optdsl.codegen.torch_step) puts every tensor-level value in library stages, element-wise
ones and per-parameter reductions included: its sweeps then only copy outputs that are
inputs (``prev = g``). Group-wide reductions still need a sweep.

A back end whose sweeps accumulate row and column statistics (``fuse_stats``: the C and
Triton back ends') has the sweep before a library stage compute the statistics that stage
reads of an element value or an input (``fused_stats``): a row or column sum, mean or 2-norm of a
parameter-shaped value that no library stage computes, neither a mask nor bfloat16. The value
stays a library value (the stage reads it from the sweep's result, and computes it itself
for a parameter the sweep could not: see optdsl.runtime.c_runner, device_stats), so every other decision
here is the same with and without fusion.
"""

from __future__ import annotations

from optdsl.ir.nodes import Graph
from optdsl.ir.ops import GLOBAL, LEAF, OPS, Level

# Row and column statistics a sweep can accumulate: op -> (axis, map, finish). The axis is
# what is reduced away ("row": each row over its columns, "col": each column over its
# rows); the map is the per-element value ("x" or its "square"), summed in float64; the
# finish is the sum's ("none"), divided by the count ("mean"), or its square root ("sqrt"),
# as ops.py defines the ops.
STATS: dict[str, tuple[str, str, str]] = {
    "rowsum": ("row", "x", "none"), "rowmean": ("row", "x", "mean"),
    "rownorm": ("row", "square", "sqrt"),
    "colsum": ("col", "x", "none"), "colmean": ("col", "x", "mean"),
    "colnorm": ("col", "square", "sqrt"),
}


def library_values(graph: Graph, library_only: bool = False) -> frozenset[int]:
    """The values a library stage computes (see the module docstring); ``library_only``:
    every tensor-level value and every per-parameter reduction."""
    eqs = graph.eqs
    users = graph.users()
    chosen: set[int] = set()
    candidates: list[int] = []  # values with a library argument, in order
    pending: set[int] = set()
    for i, eq in enumerate(eqs):
        info = OPS[eq.op]
        if info.category == LEAF:
            continue
        if info.matrix or eq.kind.shaped or eq.kind.bf16 or (library_only and (
                eq.kind.level == Level.TENSOR or (info.is_reduction and info.category != GLOBAL))):
            chosen.add(i)
        elif any(a in chosen or a in pending for a in eq.args):
            candidates.append(i)
            pending.add(i)
    # an element-wise parameter-shaped value stays in element code unless a library value
    # reads it (decided from the last value back: its readers are decided first)
    for i in reversed(candidates):
        eq = eqs[i]
        element = (eq.kind.level == Level.TENSOR and not eq.kind.shaped
                   and OPS[eq.op].reduction is None and eq.op not in ("reduce", "reduce_group")
                   and not any(eqs[a].kind.shaped or (a in chosen and not
                                                      eqs[a].kind.is_tensor)
                               for a in eq.args))
        if element and not any(u in chosen for u in users[i]):
            pending.discard(i)
        else:
            chosen.add(i)
    return frozenset(chosen | pending)


def fused_stats(graph: Graph, library: frozenset[int]) -> tuple[int, ...]:
    """The row and column statistics a sweep can accumulate (see the module docstring), in
    graph order."""
    eqs = graph.eqs
    out = []
    for v in sorted(library):
        eq = eqs[v]
        if eq.op not in STATS or eq.kind.bf16:
            continue
        x = eqs[eq.args[0]]
        if (eq.args[0] not in library and x.kind.is_tensor and not x.kind.shaped
                and not x.kind.mask and not x.kind.bf16):
            out.append(v)
    return tuple(out)


def is_sweep_reduction(graph: Graph, v: int, library: frozenset[int]) -> bool:
    return OPS[graph.eqs[v].op].is_reduction and v not in library


def times(graph: Graph, library: frozenset[int]) -> list[int]:
    """Each value's earliest time (see the module docstring)."""
    eqs = graph.eqs
    time = [0] * len(eqs)
    for i, eq in enumerate(eqs):
        info = OPS[eq.op]
        if info.category == LEAF:
            continue
        in_library = i in library
        tensor = eq.kind.level == Level.TENSOR
        need = 0
        for a in eq.args:
            need = max(need, _ready(graph, a, time, library, in_library, tensor))
        if in_library:
            time[i] = need | 1  # the next library stage
        elif info.is_reduction:
            time[i] = time[eq.args[0]] if eq.args else need  # produced by its input's sweep
        elif tensor:
            time[i] = need + (need & 1)  # the next sweep
        else:
            time[i] = need  # host code, as soon as its arguments are ready
    return time


def _ready(graph: Graph, a: int, time: list[int], library: frozenset[int], for_library: bool,
           for_tensor: bool) -> int:
    """The earliest time a value reading ``a`` can be computed, as far as ``a`` goes."""
    eq = graph.eqs[a]
    info = OPS[eq.op]
    if info.category == LEAF:
        return 0
    t = time[a]
    if a in library:
        return t if for_library else t + 1
    if info.is_reduction:  # produced at the end of sweep t
        return t + 2 if (for_tensor and not for_library) else t + 1
    if eq.kind.level == Level.TENSOR:  # element value of sweep t
        return t + 1 if for_library else t
    return t  # a host scalar
