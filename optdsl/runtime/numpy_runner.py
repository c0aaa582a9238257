"""Runs one param group's step on CPU torch tensors through the generated NumPy code.

float32 and float64 tensors that are contiguous are updated in place through zero-copy
NumPy views. Other dtypes (float16, bfloat16) and non-contiguous tensors are staged: copied
to a contiguous float32 (or float64) array, updated, and copied back, rounded to nearest or,
with a rounding seed, bfloat16 ones rounded stochastically (optdsl.precision). A parameter
with an fp32 master weight is stepped on the master, then the master is copied into it.
"""

from __future__ import annotations

import numpy as np
import torch

from optdsl.passes.specialize import INV_GRAD_SCALE
from optdsl.precision import round_bf16_stochastic
from optdsl.runtime.numpy_step import Slot

_NATIVE = (torch.float32, torch.float64)


class _Staged:
    """A tensor viewed as a flat NumPy array, copied back on ``flush`` if it was staged."""

    __slots__ = ("tensor", "array", "staged")

    def __init__(self, tensor: torch.Tensor, compute: torch.dtype) -> None:
        self.tensor = tensor
        if tensor.dtype == compute and tensor.is_contiguous():
            self.array = tensor.view(-1).numpy()
            self.staged = False
        else:
            self.array = tensor.detach().to(compute).contiguous().view(-1).numpy()
            self.staged = True

    def flush(self, seed: int | None = None) -> None:
        if self.staged:
            write_rounded(self.tensor, self.array, seed)


def write_rounded(tensor: torch.Tensor, array: np.ndarray, seed: int | None) -> None:
    """Copy a flat compute-dtype ``array`` into ``tensor``; with a seed, a bfloat16 tensor
    gets the values rounded stochastically (others round to nearest)."""
    if seed is not None and tensor.dtype == torch.bfloat16:
        array = round_bf16_stochastic(array, seed)
    tensor.copy_(torch.from_numpy(array).view(tensor.shape))


class _Slots(list):
    """The slots of a distributed step: the generated code calls ``combine`` after each
    reduction pass (see optdsl.codegen.numpy)."""

    def __init__(self, combine) -> None:
        super().__init__()
        self.combine = combine


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class NumpyRunner:
    def __init__(self, program) -> None:
        self.program = program

    def run(self, hyper: dict[str, float], entries: list, state_keys: list[tuple[str, bool]],
            combine=None, copies: list | None = None, rounding_seed: int | None = None) -> None:
        """entries: (param, grad, state dict, t) for each parameter that has a gradient.
        ``combine``: a distributed.ShardCombiner when some parameters are local shards.
        ``copies``: per entry, None or the tensor that receives a rounded copy of the updated
        parameter (the entry's parameter is then its fp32 master weight).
        ``rounding_seed``: round bfloat16 writes stochastically from this seed."""
        slots, written = ([], []) if combine is None else (_Slots(combine), [])
        for param, grad, state, t in entries:
            compute = compute_dtype(param.dtype)
            w = _Staged(param.detach(), compute)
            g = _Staged(grad.detach(), compute)
            states: list = []
            for key, is_tensor in state_keys:
                value = state[key]
                if is_tensor:
                    staged = _Staged(value, compute)
                    states.append(staged.array)
                    written.append(staged)
                else:
                    states.append(np.float64(value.item()))
            slots.append(Slot(t, w.array, g.array, states))
            written.append(w)
        variant = self.program.variant(hyper, unscale=INV_GRAD_SCALE in hyper)
        variant.numpy_step.run(hyper, slots)
        for i, staged in enumerate(written):
            staged.flush(None if rounding_seed is None else rounding_seed + i)
        for i, copy in enumerate(copies or ()):
            if copy is not None:
                seed = None if rounding_seed is None else rounding_seed + len(written) + i
                write_rounded(copy, slots[i].w, seed)
        for (param, grad, state, t), slot in zip(entries, slots):
            for (key, is_tensor), value in zip(state_keys, slot.states):
                if not is_tensor:
                    # through a float64 tensor: a float32 state overflows to inf (fill_ of
                    # a Python float too large for the state's dtype raises)
                    state[key].fill_(torch.tensor(float(value), dtype=torch.float64))
