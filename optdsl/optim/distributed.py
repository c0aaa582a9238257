"""Parameters sharded across processes as DTensors (FSDP2's fully_shard, tensor parallelism).

The optimizer updates the shard each rank holds: ``localize`` turns a param group's entries
into their local shards (``param.to_local()``, the gradient's and every tensor state's local
shard; writes go through, they share storage) and returns a ``ShardCombiner`` for the runner.
Element-wise work needs nothing more. Reductions do: a rank computes each parameter's raw
partial (sum, sum of squares, dot product, max |x|) over its own shard, and the combiner
all-reduces the partials of sharded parameters over the mesh dimensions the parameter is
sharded on (SUM, or MAX for maxabs), then finishes them (``sqrt`` for norm, division by the
full tensor's element count for mean). Group-wide reductions (global_norm, global_sum) are
summed over parameters afterwards by the generated code, from these per-parameter totals, so
a replicated (plain) parameter in the same group is counted once. One collective per pass,
process group and operator: every partial of the pass travels in one float64 tensor.

Every rank runs the same collectives in the same order, including a rank whose local shards
are empty (zero-size shards when a tensor has fewer rows than ranks): its partials are 0.

Matrix work (library stages: row and column statistics, matrix products) needs the whole
matrix. The combiner also gathers: for each sharded parameter, the library stage's
parameter-shaped inputs are all-gathered (``gather``), the stage runs on the whole matrices
on every rank alike, and each rank keeps its own shard of what the stage hands the sweeps
(``shard``: a local slice, no collective); optdsl.runtime.library_stage does this, one
parameter at a time. The parameter's facts (``w.rows``, ``w.numel`` ...) are the whole
tensor's (``whole_shape``). Row and column statistics (``state s = 0 per row|col``) are
kept whole on every rank, as DTensors replicated over the parameter's mesh: every rank
computes the same values from the same gathered inputs, so they need no collective of their
own, and state_dict, torch.distributed.checkpoint and resharding treat them as any
replicated tensor (``whole_statistic`` replicates one loaded in another layout, once).

Decisions to skip a step are agreed across ranks too, so that every rank skips or steps
alike: ``skip_nonfinite`` (``all_finite``) and torch.amp.GradScaler's ``found_inf``
(``agreed_found_inf``: it may reflect only this rank's shards) each all-reduce a flag with
MIN over the process groups of the DTensors (``all_ranks``): an inf or NaN on one rank skips
the step on all of them.

Nothing here runs, nor is ``torch.distributed.tensor`` imported, unless a parameter is a
DTensor; ``DTensor`` can only exist once that module has been imported by someone else.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch


def _dtensor_class() -> type | None:
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def dtensor_class() -> type | None:
    """torch's DTensor class, once someone imported it (None before: there are none)."""
    return _dtensor_class()


def is_dtensor(x: Any) -> bool:
    cls = _dtensor_class()
    return cls is not None and isinstance(x, cls)


def shard_coordinates(params: list) -> tuple[int, ...]:
    """This rank's coordinates along the mesh dimensions that DTensor ``params`` are sharded
    on, when they all share one mesh and placements; () otherwise, and for dimensions they
    are replicated on (ranks holding one replica must round it alike). Stochastic rounding
    hashes them into its seed, so the shards of a tensor round independently."""
    cls = _dtensor_class()
    layouts = {(id(p.device_mesh), tuple(p.placements)) for p in params
               if cls is not None and isinstance(p, cls)}
    if len(layouts) != 1:
        return ()
    param = next(p for p in params if isinstance(p, cls))
    coordinate = param.device_mesh.get_coordinate() or ()
    return tuple(int(coordinate[d]) for d, placement in enumerate(param.placements)
                 if placement.is_shard() and d < len(coordinate))


def local_tensor(x: Any) -> Any:
    """A DTensor's local shard; anything else as it is."""
    return x.to_local() if is_dtensor(x) else x


def like_param(param, local: torch.Tensor):
    """A DTensor sharded as ``param`` whose local shard is ``local`` (new optimizer state)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def replicated(param, whole: torch.Tensor):
    """A DTensor holding ``whole`` on every rank of ``param``'s mesh (a row or column
    statistic of a sharded parameter: see the module docstring)."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = param.device_mesh
    return DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)


def whole_statistic(param, state: dict, key: str) -> torch.Tensor:
    """The whole value of row or column statistic ``state[key]`` of DTensor ``param`` (this
    rank's replica, sharing its storage). A statistic that is not replicated over the
    parameter's mesh (a plain tensor, e.g. from an unsharded checkpoint loaded with
    ``load_state_dict``, or a DTensor of another layout) is made so first, in ``state``."""
    value = state[key]
    mesh = param.device_mesh
    if is_dtensor(value) and value.device_mesh == mesh and all(
            placement.is_replicate() for placement in value.placements):
        return value.to_local()
    whole = value.full_tensor() if is_dtensor(value) else value.detach().clone()
    state[key] = replicated(param, whole.contiguous())
    return state[key].to_local()


class _Sharding:
    """How one parameter is sharded: the process groups to reduce its partials over, and its
    mesh, placements and whole shape, to gather and slice its matrices."""

    __slots__ = ("device", "groups", "key", "mesh", "placements", "shape", "stride")

    def __init__(self, param) -> None:
        mesh = param.device_mesh
        dims = [d for d, placement in enumerate(param.placements) if placement.is_shard()]
        self.groups = tuple(mesh.get_group(d) for d in dims)
        self.key = (id(mesh), tuple(dims))
        self.device = torch.device(mesh.device_type)  # where the backend wants collectives
        self.mesh = mesh
        self.placements = tuple(param.placements)
        self.shape = tuple(param.shape)
        self.stride = tuple(param.stride())

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The whole tensor of which ``local`` is this rank's shard (an all-gather)."""
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local, self.mesh, self.placements, run_check=False,
                                  shape=self.shape, stride=self.stride).full_tensor()

    def shard(self, whole: torch.Tensor) -> torch.Tensor:
        """This rank's shard of ``whole`` (a slice: no collective)."""
        from torch.distributed.tensor import DTensor, Replicate

        mesh = self.mesh
        copy = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
        return copy.redistribute(mesh, self.placements).to_local()


class ShardCombiner:
    """Combines one param group's raw reduction partials across ranks.

    Called as ``combiner(raw, combines)`` after each reduction sweep, where ``raw[i][j]`` is
    entry i's raw partial of reduction j over its local shard and ``combines[j]`` is how
    that reduction's partials combine ("add" or "max", its descriptor's); the partials of
    sharded parameters are all-reduced in place (SUM or MAX), in one collective per
    sharding and operator. The runtime then finishes
    them (optdsl.runtime.reduce) with ``numel``, the full tensors' element counts.
    """

    def __init__(self, shardings: list[_Sharding | None], numel: list[int]) -> None:
        self.shardings = shardings
        self.numel = numel  # the full tensor's element count, for mean

    # -- matrix work: whole matrices for library stages (optdsl.runtime.library_stage) ------
    def is_shard(self, index: int) -> bool:
        """Whether entry ``index`` is a shard of a parameter sharded over some mesh dim."""
        sharding = self.shardings[index]
        return sharding is not None and bool(sharding.groups)

    def whole_shape(self, index: int, tensor) -> tuple[int, ...]:
        """The shape of entry ``index``'s whole parameter (``tensor``'s, if not a shard)."""
        sharding = self.shardings[index]
        return tuple(tensor.shape) if sharding is None else sharding.shape

    def gather(self, index: int, local: torch.Tensor) -> torch.Tensor:
        """The whole of a parameter-shaped tensor whose shard entry ``index`` holds."""
        return self.shardings[index].gather(local)

    def shard(self, index: int, whole: torch.Tensor) -> torch.Tensor:
        """Entry ``index``'s shard of a parameter-shaped ``whole`` tensor."""
        return self.shardings[index].shard(whole)

    def __call__(self, raw: list[list], combines) -> None:
        import torch.distributed as dist

        batches: dict = {}
        for index, sharding in enumerate(self.shardings):
            if sharding is None or not sharding.groups:
                continue
            for j, op in enumerate(combines):
                _, items = batches.setdefault((sharding.key, op), (sharding, []))
                items.append((index, j))
        for (_, op), (sharding, items) in batches.items():
            values = torch.tensor([float(raw[i][j]) for i, j in items],
                                  dtype=torch.float64).to(sharding.device)
            reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
            for group in sharding.groups:
                dist.all_reduce(values, op=reduce_op, group=group)
            for (i, j), value in zip(items, values.cpu().tolist()):
                raw[i][j] = np.float64(value)


def all_ranks(flag: bool, tensors: list) -> bool | None:
    """Whether ``flag`` holds on every rank holding a shard of one of the DTensors among
    ``tensors`` (a MIN all-reduce of the flag over each process group they are sharded on:
    one small collective per sharding), for a decision every rank must take alike; None
    when none of them is a DTensor (nothing runs then)."""
    cls = _dtensor_class()
    if cls is None or not any(isinstance(t, cls) for t in tensors):
        return None
    import torch.distributed as dist

    batches: dict = {}
    for t in tensors:
        if isinstance(t, cls):
            sharding = _Sharding(t)
            batches.setdefault(sharding.key, sharding)
    for sharding in batches.values():
        value = torch.tensor([1.0 if flag else 0.0]).to(sharding.device)
        for group in sharding.groups:
            dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
        flag = bool(value.item())
    return flag


def all_finite(grads: list) -> bool | None:
    """Whether every gradient is finite on every rank holding a shard of it, when some are
    DTensors (every rank must take the same decision: a rank that skips a step would leave
    the others waiting in the step's collectives); None when none is a DTensor."""
    cls = _dtensor_class()
    if cls is None or not any(isinstance(g, cls) for g in grads):
        return None
    finite = all(bool(torch.isfinite(g.to_local() if isinstance(g, cls) else g).all())
                 for g in grads)
    return all_ranks(finite, grads)


def agreed_found_inf(found: Any, params: list) -> bool:
    """Whether to skip the step for torch.amp.GradScaler's ``found_inf``: this rank's flag,
    or, when some parameter is a DTensor, whether any rank holding a shard of one had it set,
    so that every rank skips or steps alike (the parameters' shards stay in step and no rank
    leaves the others waiting in a reduction's collective). torch's GradScaler reduces
    found_inf over the mesh of the first gradient it unscales (DTensor's handler of
    ``_amp_foreach_non_finite_check_and_unscale_``); an unscaler that checks local shards
    (or gradients on several meshes) gives each rank its own."""
    found = float(found) != 0
    agreed = all_ranks(not found, params)
    return found if agreed is None else not agreed


def agreed_found_inf_tensor(found: Any, params: list) -> Any:
    """``agreed_found_inf`` on the device: the flag as a tensor that a device step reads,
    MAX-all-reduced over the process groups of the DTensors among ``params`` (so every rank
    skips or steps alike), with nothing read on the host; ``found`` itself without
    DTensors."""
    cls = _dtensor_class()
    if cls is None or not any(isinstance(p, cls) for p in params):
        return found
    import torch.distributed as dist

    batches: dict = {}
    for p in params:
        if isinstance(p, cls):
            sharding = _Sharding(p)
            batches.setdefault(sharding.key, sharding)
    flag = found.detach().reshape(1).to(torch.float32, copy=True)
    for sharding in batches.values():
        value = flag.to(sharding.device)
        for group in sharding.groups:
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
        flag = value.to(flag.device)
    return flag


def _local(param, value: torch.Tensor, what: str) -> torch.Tensor:
    if not is_dtensor(value):
        raise RuntimeError(f"{what} of a DTensor parameter is a plain tensor of shape "
                           f"{tuple(value.shape)}; it must be a DTensor sharded like the "
                           f"parameter (load sharded checkpoints with torch.distributed."
                           f"checkpoint's set_optimizer_state_dict)")
    if value.device_mesh != param.device_mesh or value.placements != param.placements:
        if what != "the gradient":  # state is written through its local shard
            raise RuntimeError(f"{what} is sharded as {value.placements} on "
                               f"{value.device_mesh}, its parameter as {param.placements} "
                               f"on {param.device_mesh}")
        value = value.redistribute(param.device_mesh, param.placements)
    return value.to_local()


def localize(entries: list, state_keys: list[tuple[str, bool]],
             statistics: frozenset[str] = frozenset()) -> tuple[list, ShardCombiner | None]:
    """The entries on local shards and their combiner; ``(entries, None)`` when no parameter
    is a DTensor (the usual case, which costs one isinstance per parameter). The states
    keyed in ``statistics`` (rows or columns of a matrix) are handed whole (see the module
    docstring)."""
    cls = _dtensor_class()
    if cls is None or not any(isinstance(entry[0], cls) for entry in entries):
        return entries, None
    from optdsl.runtime.step import Entry

    local, shardings, numel = [], [], []
    for param, grad, state, t in entries:
        if not isinstance(param, cls):
            local.append(Entry(param, grad, state, t))
            shardings.append(None)
            numel.append(param.numel())
            continue
        view = dict(state)  # scalar states: the same tensors, updated in place by the runner
        for key, is_tensor in state_keys:
            if is_tensor and state.get(key) is not None:  # (one the step does not use: absent)
                if key in statistics:
                    view[key] = whole_statistic(param, state, key)
                else:
                    view[key] = _local(param, state[key], f"state[{key!r}]")
        local.append(Entry(param.to_local(), _local(param, grad, "the gradient"), view, t))
        shardings.append(_Sharding(param))
        numel.append(param.numel())
    return local, ShardCombiner(shardings, numel)
