"""What a runner does around a library stage (optdsl.codegen.library): hand the generated
torch code each parameter's tensors in the parameter's shape, and, at the end of the step,
commit the shaped states the stages computed.

The columns a stage reads are the parameter (or its fp32 master weight), its gradient, its
tensor states and the scratch tensors of values stored between stages (TENSORS). A
parameter-shaped column is the memory the sweeps work on (a NumPy array viewed as a torch
tensor, or the device tensor); a shaped state (a row or column statistic) is its own tensor,
read in the compute dtype; stages never write the parameter or a state in place.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from optdsl.codegen.contract import ParamSlot
from optdsl.ir.ops import facts_of


def machine_eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def tensor_facts(param: torch.Tensor) -> dict[str, float]:
    """A tensor's facts, as the IR reads them (optdsl.ir.ops.PARAM_FACTS)."""
    return facts_of(param.shape, machine_eps(param.dtype))


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
