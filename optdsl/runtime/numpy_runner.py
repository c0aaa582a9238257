"""Runs one param group's step on CPU torch tensors through the generated NumPy code.

float32 and float64 tensors that are contiguous are updated in place through zero-copy
NumPy views. Other dtypes (float16, bfloat16) and non-contiguous tensors are staged: copied
to a contiguous float32 (or float64) array, updated, and copied back, rounded to nearest or,
with a rounding seed, bfloat16 ones rounded stochastically (optdsl.optim.precision). A parameter
with an fp32 master weight is stepped on the master, then the master is copied into it.

A parameter whose tensors are all viewed in place keeps its Slot between steps (views of w
and its tensor states) in a ``views`` dict the optimizer owns (so they die with it):
building NumPy views costs a few microseconds a tensor, a tenth of a step of a model of
~100 tensors. The Slot is rebuilt when the parameter's storage, size or layout changes or a
state tensor is replaced or moves; the gradient, a new tensor after zero_grad, is viewed
afresh every step and not kept.
"""

from __future__ import annotations

import numpy as np
import torch

from optdsl.passes.specialize import INV_GRAD_SCALE
from optdsl.runtime.numpy_step import Slot
from optdsl.runtime.rounding import round_bf16_stochastic

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


class _Views:
    """A parameter's Slot of zero-copy views and what it was built from."""

    __slots__ = ("param", "ptr", "numel", "states", "ptrs", "slot")

    def __init__(self, param: torch.Tensor, states: tuple, slot: Slot) -> None:
        self.param = param
        self.ptr = param.data_ptr()
        self.numel = param.numel()
        self.states = states
        self.ptrs = _pointers(states)
        self.slot = slot


def _pointers(tensors: tuple) -> tuple:
    return tuple(0 if x is None else x.data_ptr() for x in tensors)


def _in_place(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.dtype == dtype and t.is_contiguous()


class NumpyRunner:
    def __init__(self, program) -> None:
        self.program = program

    def _kept_slot(self, kept: dict, param: torch.Tensor, grad: torch.Tensor, state: dict,
                   t: float, state_keys: list[tuple[str, bool]]) -> Slot | None:
        """The parameter's Slot kept in ``kept`` (id(param) -> _Views), updated for this
        step; None when some tensor must be staged (then the general path runs)."""
        dtype = param.dtype
        if dtype not in _NATIVE or not _in_place(grad, dtype):
            return None
        tensors = tuple(state.get(key) for key, is_tensor in state_keys if is_tensor)
        views = kept.get(id(param))
        if (views is None or views.param is not param or views.ptr != param.data_ptr()
                or views.numel != param.numel() or not param.is_contiguous()
                or any(a is not b for a, b in zip(views.states, tensors))
                or views.ptrs != _pointers(tensors)):
            if not (param.is_contiguous()
                    and all(x is None or _in_place(x, dtype) for x in tensors)):
                return None
            arrays = iter([None if x is None else x.detach().view(-1).numpy()
                           for x in tensors])
            states = [next(arrays) if is_tensor else None for _, is_tensor in state_keys]
            slot = Slot(t, param.detach().view(-1).numpy(), None, states)
            views = _Views(param, tensors, slot)
            kept[id(param)] = views
        slot = views.slot
        slot.t = t
        slot.g = grad.detach().view(-1).numpy()
        for j, (key, is_tensor) in enumerate(state_keys):
            if not is_tensor:
                slot.states[j] = np.float64(state[key].item())
        return slot

    def run(self, hyper: dict[str, float], entries: list, state_keys: list[tuple[str, bool]],
            combine=None, copies: list | None = None, rounding_seed: int | None = None,
            views: dict | None = None) -> None:
        """entries: (param, grad, state dict, t) for each parameter that has a gradient.
        ``combine``: a distributed.ShardCombiner when some parameters are local shards.
        ``copies``: per entry, None or the tensor that receives a rounded copy of the updated
        parameter (the entry's parameter is then its fp32 master weight).
        ``rounding_seed``: round bfloat16 writes stochastically from this seed.
        ``views``: where to keep the parameters' Slots between steps (None: not kept)."""
        slots, written = ([], []) if combine is None else (_Slots(combine), [])
        variant = self.program.variant(hyper, unscale=INV_GRAD_SCALE in hyper)
        for param, grad, state, t in entries:
            variant.check_states(state)
            if views is not None:
                slot = self._kept_slot(views, param, grad, state, t, state_keys)
                if slot is not None:
                    slots.append(slot)
                    continue
            compute = compute_dtype(param.dtype)
            w = _Staged(param.detach(), compute)
            g = _Staged(grad.detach(), compute)
            states: list = []
            for key, is_tensor in state_keys:
                value = state.get(key)
                if is_tensor and value is None:  # a state this step neither reads nor writes
                    states.append(None)
                elif is_tensor:
                    staged = _Staged(value, compute)
                    states.append(staged.array)
                    written.append(staged)
                else:
                    states.append(np.float64(value.item()))
            slots.append(Slot(t, w.array, g.array, states))
            written.append(w)
        variant.numpy_step.run(hyper, slots)
        # (NumPy's generator hashes its seed, so consecutive seeds give unrelated streams)
        for i, staged in enumerate(written):
            staged.flush(None if rounding_seed is None else rounding_seed + i)
        for i, copy in enumerate(copies or ()):
            if copy is not None:
                seed = None if rounding_seed is None else rounding_seed + len(written) + i
                write_rounded(copy, slots[i].w, seed)
        for (param, grad, state, t), slot in zip(entries, slots):
            slot.g = None  # a kept Slot must not keep the gradient alive
            for (key, is_tensor), value in zip(state_keys, slot.states):
                if not is_tensor:
                    # through a float64 tensor: a float32 state overflows to inf (fill_ of
                    # a Python float too large for the state's dtype raises)
                    state[key].fill_(torch.tensor(float(value), dtype=torch.float64))
