"""What a runner does around a library stage (optdsl.codegen.library): hand the generated
torch code each parameter's tensors in the parameter's shape, and, at the end of the step,
commit the shaped states the stages computed.

The columns a stage reads are the parameter (or its fp32 master weight), its gradient, its
tensor states and the scratch tensors of values stored between stages (TENSORS). A
parameter-shaped column is the memory the sweeps work on (a NumPy array viewed as a torch
tensor, or the device tensor); a shaped state (a row or column statistic) is its own tensor,
read in the compute dtype; stages never write the parameter or a state in place.

Sharded parameters (FSDP2's DTensors: the runner's entries are local shards, and the step's
``combine`` knows how each is sharded): a row or column statistic or a matrix product needs
the whole matrix, so for a shard ``run`` gathers the parameter-shaped columns the stage
reads (``LibraryInfo.reads``) across ranks, runs the stage on the whole matrices (every rank
computes the same thing, as Moonlight's distributed Muon orthogonalises the full matrix),
and keeps this rank's shard of the scratch columns it writes for the sweeps. Shaped states
are whole on every rank already (optdsl.optim.distributed). One parameter at a time, in
the entries' order (the same on every rank: the gathers are collectives), so no more than
one parameter's whole columns exist at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from optdsl.codegen.contract import GeneratedModule, LibraryInfo, ParamSlot
from optdsl.ir.ops import facts_of


def machine_eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def tensor_facts(param: torch.Tensor, shape: tuple[int, ...] | None = None
                 ) -> dict[str, float]:
    """A tensor's facts, as the IR reads them (optdsl.ir.ops.PARAM_FACTS); ``shape``: the
    whole parameter's, when ``param`` is a shard of it."""
    return facts_of(param.shape if shape is None else shape, machine_eps(param.dtype))


def as_tensor(x, shape) -> torch.Tensor:
    """A parameter-shaped column (a flat NumPy array or a torch tensor) in the parameter's
    shape."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.view(shape)


def commit(slots: Sequence[ParamSlot], states: Sequence[dict],
           state_keys: Sequence[tuple[str, bool]]) -> None:
    """Write each stage-computed shaped state into its state tensor (once every stage of
    the step has run: a stage never sees a state it changed)."""
    for slot, state in zip(slots, states):
        for j, value in slot.commits.items():
            key = state_keys[j][0]
            state[key].copy_(value.to(state[key].dtype).view(state[key].shape))
        slot.commits = {}
        slot.kept = {}


def run(module: GeneratedModule, stage: LibraryInfo, params: Sequence[ParamSlot],
        tensors_of: Callable[[int, ParamSlot], list], combine: Any = None) -> None:
    """Run ``stage`` for every parameter, each handed ``p.tensors = tensors_of(i, p)``; an
    entry that is a shard (``combine.is_shard(i)``) runs on its whole matrices (see the
    module docstring)."""
    for i, p in enumerate(params):
        p.tensors = tensors_of(i, p)
    shards = [] if combine is None else [i for i in range(len(params)) if combine.is_shard(i)]
    if not shards:
        stage.function(params)
        return
    sharded = set(shards)
    whole = [p for i, p in enumerate(params) if i not in sharded]
    if whole:
        stage.function(whole)
    shaped = {module.columns.index(name) for name in module.shaped}
    for i in shards:
        _run_whole(stage, params[i], i, combine, shaped)


def _run_whole(stage: LibraryInfo, p: ParamSlot, index: int, combine: Any,
               shaped: set[int]) -> None:
    """Run ``stage`` for shard ``index`` on the whole matrices, keeping its shard of what
    the stage writes."""
    local = p.tensors
    whole = list(local)
    for c in stage.reads:
        if c not in shaped and local[c] is not None:
            whole[c] = combine.gather(index, local[c])
    for c in stage.writes:
        whole[c] = torch.empty(combine.whole_shape(index, local[c]), dtype=local[c].dtype,
                               device=local[c].device)
    p.tensors = whole
    try:
        stage.function([p])
        for c in stage.writes:
            local[c].copy_(combine.shard(index, whole[c]))
    finally:
        p.tensors = local
