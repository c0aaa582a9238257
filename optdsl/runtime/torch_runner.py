"""Runs one param group's step through the generated torch code (optdsl.codegen.torch_step)
on the parameters' own tensors, on any device (CPU or CUDA).

Each parameter's ``p.tensors`` are its tensors themselves (w, g, each tensor state, in the
order of TENSORS) in the compute dtype: float64 tensors compute in float64, every other
dtype in float32 (a float16 or bfloat16 tensor is read as a float32 copy, as the other back
ends stage it). The library stages never write them: they hand back new tensors
(``p.commits``), which this runner writes once every stage has run, rounding to nearest into
the tensors' own dtypes; a parameter with an fp32 master weight is stepped on the master,
then the master is copied (rounded to nearest) into it. Stochastic rounding and DTensor
shards are refused for now, with what to use instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from optdsl.codegen.contract import GeneratedModule, ParamSlot
from optdsl.runtime.library_stage import machine_eps
from optdsl.runtime.step import Entry, OneStepAtATime, StepContext, StepOptions


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class TorchRunner:
    """One optimizer's runner of a program's generated torch steps."""

    def __init__(self, program) -> None:
        self.program = program
        self.state_keys = [(s.key, s.tensor) for s in program.states.values()]
        self._busy = OneStepAtATime()

    def forget(self) -> None:
        """Nothing is kept between steps (the tensors are read afresh each step)."""

    def run(self, variant, entries: Sequence[Entry], options: StepOptions) -> None:
        """Step every entry in place. ``options.copies``: per entry, None or the tensor that
        receives a rounded copy of the updated parameter (the entry's parameter is then its
        fp32 master weight)."""
        _refuse(options)
        with self._busy, torch.no_grad():
            module = variant.generated("torch")
            slots = []
            for entry in entries:
                variant.check_states(entry.state)
                slots.append(self._slot(module, entry))

            def run_sweep(k: int, params) -> list:
                kernel = module.sweeps[k].kernel
                if kernel is not None:
                    kernel(params)
                return [[] for _ in params]

            def own_tensors(index: int, slot) -> list:  # (set by _slot: the entry's own)
                return slot.tensors

            numel = [entry.param.numel() for entry in entries]
            ctx = StepContext(module, options.hyper, options.inv_grad_scale, run_sweep, numel,
                              None, own_tensors)
            module.step(ctx, slots)
            copies = options.copies or [None] * len(entries)
            for entry, slot, copy in zip(entries, slots, copies):
                self._commit(entry, slot, copy)

    def _slot(self, module: GeneratedModule, entry: Entry) -> ParamSlot:
        param, grad, state, t = entry
        compute = compute_dtype(param.dtype)
        slot = ParamSlot(t, [None if is_tensor else np.float64(state[key].item())
                             for key, is_tensor in self.state_keys], module.num_reductions)
        slot.set_facts(tuple(param.shape), machine_eps(param.dtype))
        tensors = [param.detach().to(compute), grad.detach().to(compute)]
        for key, is_tensor in self.state_keys:
            if is_tensor:
                value = state.get(key)
                tensors.append(None if value is None else value.detach().to(compute))
        for _ in module.scratch:  # (a library_only schedule stores nothing between stages)
            tensors.append(torch.empty_like(tensors[0]))
        slot.tensors = tensors
        return slot

    def _commit(self, entry: Entry, slot: ParamSlot, copy: torch.Tensor | None) -> None:
        """Write what the stages computed into the parameter and its states, the scalar
        states, and the master weight's copy."""
        targets = {"w": entry.param}
        for j, (key, is_tensor) in enumerate(self.state_keys):
            if is_tensor and entry.state.get(key) is not None:
                targets[j] = entry.state[key]
        storages = {_storage(x) for x in targets.values()}
        # a value that is (a view of) a tensor being written is copied first
        values = {j: v.clone() if _storage(v) in storages else v
                  for j, v in slot.commits.items()}
        for j, value in values.items():
            target = targets[j]
            target.copy_(value.to(target.dtype).view(target.shape))
        slot.commits = {}
        slot.kept = {}
        if copy is not None:
            copy.copy_(entry.param)
        for (key, is_tensor), value in zip(self.state_keys, slot.states):
            if not is_tensor:
                # through a float64 tensor: a float32 state overflows to inf
                entry.state[key].fill_(torch.tensor(float(value), dtype=torch.float64))


def _storage(x: torch.Tensor) -> int:
    return x.untyped_storage().data_ptr()


def _refuse(options: StepOptions) -> None:
    if options.rounding_seed is not None:
        raise ValueError("backend='torch' does not round stochastically yet "
                         "(stochastic_rounding=True); use backend='numpy' (CPU) or 'triton' "
                         "(GPU), or stochastic_rounding=False")
    if options.combine is not None:
        raise ValueError("backend='torch' does not step DTensor shards (FSDP2) yet; use "
                         "backend='numpy' (CPU) or 'triton' (GPU)")
