"""The device tables of one param group's Triton step, built once per set of tensors and kept
by that optimizer's runner (optdsl.runtime.triton_runner).

A ``DeviceBatch`` is what the optimizer hands over for a group's step: lists of tensors and
the group's hyper values, no per-parameter objects. A ``DevicePlan`` holds, per bucket (the
tensors of one launch: one device, the same dtypes), a pointer table (one int64 row per
tensor: w, g, each tensor state and scratch column, the master weight's copy, the step count,
each scalar state), sizes, the block map of the sweeps, and each tensor's first block; per
device, the group's tables: hyper values (float64, the module's HYPERS), element counts,
raw and finished reductions (a row per tensor, bucket after bucket) and group totals.

In a steady-state step the plan is checked (the same tensors: identities of parameters and
states, data pointers and layouts of parameters and states, the parameters' shapes, data
pointers of gradients) and only two things may be written: the
gradient column, when gradients moved (after ``zero_grad()`` they are new tensors), and the
hyper table, when a hyper's value changed (compared on the host: hypers are Python numbers;
a hyper given as a tensor on the parameters' device is copied on the device every step, so
changing it in place needs no recompilation and no synchronisation). On a GPU both updates
go through pinned buffers from torch's caching host allocator, which keeps a buffer until
its copy has run. While a CUDA graph is being captured, nothing may need an update: the step
then raises instead of recording a copy from host memory that the graph would replay.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from optdsl.codegen.triton import dtype_param
from optdsl.codegen.triton_prologue import scalar_dtype_param

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SCALAR_DTYPES = (torch.float32, torch.float64)

_dtype_of = operator.attrgetter("dtype")
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous


@dataclass
class DeviceBatch:
    """One param group's step, as the optimizer hands it to a device runner."""

    number: int  # the param group's index: plans are kept per group
    params: list  # per tensor: w (the fp32 master weight where there is one)
    grads: list
    states: list  # per tensor: its state dict
    hyper: dict  # the group's hypers: numbers, or one-element tensors read on the device
    copies: list | None = None  # per tensor: None or the low-precision parameter of a master
    grad_scale: Any = None  # torch.amp's scale tensor, when the step unscales
    found_inf: Any = None  # torch.amp's found_inf tensor: the step is skipped on the device
    combine: Any = None  # optdsl.optim.distributed.ShardCombiner, for DTensor shards
    seed_of: Callable[[int], int] | None = None  # stochastic rounding: the group's seed
    capturable: bool = False  # refuse anything a CUDA graph could not replay


def tl_dtypes() -> dict:
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float16: tl.float16,
            torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}


def capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def upload(dst: torch.Tensor, values: np.ndarray) -> None:
    """Copy host ``values`` into device table ``dst`` without waiting for the device."""
    if capturing():
        raise RuntimeError("a CUDA graph is being captured, but the optimizer's device tables "
                           "need an update (new tensors, gradients that moved, or a hyper "
                           "given as a number that changed): run the step once outside the "
                           "capture with the same tensors and values, and give hypers that "
                           "change between replays as tensors (lr=torch.tensor(...))")
    src = torch.from_numpy(np.ascontiguousarray(values))
    if dst.device.type == "cuda":
        src = src.pin_memory()  # (a caching-allocator block, kept until its copy has run)
        dst.copy_(src.view(dst.shape), non_blocking=True)
    else:
        dst.copy_(src.view(dst.shape))


def device_table(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A new device tensor holding ``values`` (built with a plan, not in a steady state)."""
    out = torch.empty(values.shape, dtype=torch.from_numpy(values[:0]).dtype, device=device)
    upload(out, values)
    return out


class Bucket:
    """The tensors of one launch (one device, the same dtypes) and their tables."""

    def __init__(self, device: torch.device, dtypes: tuple, members: list[int],
                 rows: list[list[int]], sizes: list[int], block: int, constexprs: dict,
                 offset: int) -> None:
        self.device = device
        self.dtypes = dtypes
        self.members = members  # the batch's indices of its tensors
        self.offset = offset  # its first row in the group's tables
        self.rows = np.asarray(rows, dtype=np.int64).reshape(len(members), -1)
        self.sizes_host = np.asarray(sizes, dtype=np.int64)
        self.constexprs = constexprs
        self.stats = None  # its tiles and statistics (optdsl.runtime.device_stats)
        counts = -(-self.sizes_host // block)
        first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
        start = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)
        self.num_blocks = int(counts.sum())
        self.ptrs = device_table(self.rows, device)
        self.sizes = device_table(self.sizes_host, device)
        self.firsts = device_table(first, device)
        blocks = np.stack([tensor, start * block], axis=1) if self.num_blocks else \
            np.zeros((1, 2), dtype=np.int64)
        self.blocks = device_table(np.ascontiguousarray(blocks), device)


class GroupTables:
    """One device's copy of a group's tables (hypers, counts, reductions)."""

    def __init__(self, device: torch.device, num_hypers: int, rows: int, width: int,
                 counts: np.ndarray) -> None:
        self.hyp = torch.zeros(max(num_hypers, 1), dtype=torch.float64, device=device)
        self.cnt = device_table(np.asarray(counts, dtype=np.float64).reshape(-1)
                                if rows else np.zeros(1), device)
        self.raw = torch.zeros((max(rows, 1), max(width, 1)), dtype=torch.float64,
                               device=device)
        self.fin = torch.zeros_like(self.raw)
        self.tot = torch.zeros(max(width, 1), dtype=torch.float64, device=device)
        self.one = torch.ones(1, dtype=torch.float32, device=device)  # no grad scale
        self.zero = torch.zeros(1, dtype=torch.float32, device=device)  # no found_inf
        self.views: dict[int, tuple] = {}

    def at(self, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw, fin, cnt) from a bucket's first row (views, made once)."""
        found = self.views.get(offset)
        if found is None:
            found = (self.raw[offset:], self.fin[offset:], self.cnt[offset:])
            self.views[offset] = found
        return found


@dataclass
class DevicePlan:
    """How one group's set of tensors is launched, and what a step checks it against."""

    module: Any
    params: list  # the objects that identify the tensors (see still_valid)
    copies: list | None
    param_ptrs: list[int]
    grad_ptrs: list[int]
    grad_types: list
    state_values: list[tuple]
    buckets: list[Bucket] = field(default_factory=list)
    tables: dict = field(default_factory=dict)  # device -> GroupTables
    home: torch.device | None = None  # where group-wide reductions are finished
    hyper_values: tuple | None = None  # the hyper table's numbers, and which hypers are tensors
    tensor_hypers: tuple = ()  # (index, tensor): hypers read from tensors every step
    writeback: list = field(default_factory=list)  # (original, staged)
    staged_grads: list = field(default_factory=list)  # (original, staged), refreshed each step
    keep: list = field(default_factory=list)  # tensors the pointer tables point into
    direct: bool = True  # no staged copies: the plan is kept between steps
    sharded: bool = False  # made for DTensor shards (stepped through run_device only)
    count: int | None = None  # the group's update count (stochastic rounding's seeds)
    step_versions: list = field(default_factory=list)  # the step tensors' when it was read
    stepped: list = field(default_factory=list)  # the tensors stepped (masters, local shards)
    watch_keys: list = field(default_factory=list)  # per tensor: its plain-tensor states
    watch_ptrs: list = field(default_factory=list)  # their data pointers
    param_shapes: list = field(default_factory=list)  # the stepped tensors' (their facts)
    red: dict = field(default_factory=dict)  # id(bucket) -> its partials buffer
    row_of: list = field(default_factory=list)  # batch index -> row of the group tables
    collectives: dict = field(default_factory=dict)  # sweep -> its all-reduces (FSDP2)
    columns: dict = field(default_factory=dict)  # batch index -> (its columns, step & scalars)
    slots: list = field(default_factory=list)  # per tensor: its library stages' ``p``
    known: tuple | None = None  # the key of the tensors it was last found valid for

    def still_valid(self, owners: tuple[list, list], stepped: list, states: list,
                    copies: list | None) -> bool:
        """Whether a step's tensors are this plan's (gradients may have moved: see
        ``grads_moved``): ``owners``, the parameters and state dicts that identify them, are
        the same objects with the same values; ``stepped`` (the tensors stepped: master
        weights, local shards) and the tensors among ``states`` kept their storage."""
        params, owner_states = owners
        if len(params) != len(self.params) or not all(map(operator.is_, params, self.params)):
            return False
        for state, kept in zip(owner_states, self.state_values):
            values = tuple(state.values())
            if len(values) != len(kept) or not all(map(operator.is_, values, kept)):
                return False
        if (copies is None) != (self.copies is None) or (
                copies is not None and not all(map(operator.is_, copies, self.copies))):
            return False
        if ([p.data_ptr() for p in stepped] != self.param_ptrs
                or [p.shape for p in stepped] != self.param_shapes
                or not all(p.is_contiguous() for p in stepped)):
            return False  # (`p.t_()` keeps the storage, `.data = p.data.view(...)` too)
        # (the same tensors may have new storage: `.data =`, share_memory_(); or be
        # transposed in place)
        watched = [s[k] for s, keys in zip(states, self.watch_keys) for k in keys]
        return ([x.data_ptr() for x in watched] == self.watch_ptrs
                and all(x.is_contiguous() for x in watched))

    def grads_moved(self, grads: list) -> bool | None:
        """False when the gradients are where the pointer table says; True when they moved
        but can be pointed at (contiguous, of the planned dtypes); None when the plan must be
        rebuilt."""
        if list(map(_dtype_of, grads)) != self.grad_types:
            return None
        ptrs = list(map(_data_ptr, grads))
        if not all(map(_is_contiguous, grads)):
            return None
        if ptrs == self.grad_ptrs:
            return False
        if not self._aligned(ptrs):
            return None  # (a launch compiled for 16-byte aligned pointers: ALIGNED)
        self.grad_ptrs = ptrs
        return True

    def _aligned(self, grad_ptrs: list[int]) -> bool:
        """Whether gradients at ``grad_ptrs`` keep every bucket's alignment promise: a bucket
        whose pointers were all 16-byte aligned was compiled with ALIGNED, which tells the
        compiler so (tl.multiple_of); a gradient moved to a view at another offset (of a
        flat buffer) would break it."""
        ptrs = np.asarray(grad_ptrs, dtype=np.int64)
        for bucket in self.buckets:
            if bucket.constexprs.get("ALIGNED") and np.any(
                    (ptrs[bucket.members] % 16 != 0) & (bucket.sizes_host > 0)):
                return False
        return True

    def point_at_grads(self) -> None:
        """Rewrite the gradient column of every bucket's pointer table (one upload each)."""
        for bucket in self.buckets:
            bucket.rows[:, 1] = [self.grad_ptrs[i] for i in bucket.members]
            upload(bucket.ptrs, bucket.rows)

    def write_hypers(self, hypers: tuple[str, ...], hyper: dict) -> None:
        """Bring the hyper tables up to date: numbers when they changed, tensors always (on
        the device)."""
        numbers, tensors = [], []
        for j, name in enumerate(hypers):
            value = hyper[name]
            if torch.is_tensor(value):
                tensors.append((j, value))
                numbers.append(0.0)
            else:
                numbers.append(float(value))
        values = tuple(numbers)
        # (which hypers are tensors is part of the key: a tensor's slot holds its last value,
        # not the 0.0 written for it, so a number 0.0 given in its place must be uploaded)
        key = (values, tuple(j for j, _ in tensors))
        if key != self.hyper_values:
            for tables in self.tables.values():
                upload(tables.hyp[:len(values)] if values else tables.hyp,
                       np.asarray(values or (0.0,), dtype=np.float64))
            self.hyper_values = key
        for j, value in tensors:
            for device, tables in self.tables.items():
                tables.hyp[j:j + 1].copy_(value.detach().reshape(1).to(device, non_blocking=True))


def constexprs_of(columns: tuple[str, ...], scalars: tuple[str, ...], dtypes: tuple,
                  block: int, aligned: bool) -> dict:
    """A bucket's compile-time parameters: each column's dtype, the copy's, the step
    count's and each scalar state's, the compute dtype, the block, alignment, COPY."""
    tl_types = tl_dtypes()
    n = len(columns)
    col_types, copy_type = dtypes[:n], dtypes[n]
    scalar_types = dtypes[n + 1:]
    compute = torch.float64 if col_types[0] == torch.float64 else torch.float32
    out = {dtype_param(c): tl_types[d or torch.float32] for c, d in zip(columns, col_types)}
    out["DT_wcopy"] = tl_types[copy_type or col_types[0]]
    for name, d in zip(("step",) + scalars, scalar_types):
        out[scalar_dtype_param(name)] = tl_types[d]
    out["CT"] = tl_types[compute]
    out["BLOCK"] = block
    out["ALIGNED"] = aligned
    out["COPY"] = copy_type is not None
    return out
