"""Library stages in a device step (optdsl.runtime.triton_runner): what each tensor's stage
reads, kept with the plan, and the commits at the end of the step, with nothing read back.

A stage (optdsl.codegen.library, for a schedule whose scalars are on the device) computes
its scalars itself from what the kernels read; its per-tensor ``p`` is a ``DeviceSlot``,
made once per plan: the tensor's columns viewed in its shape (the plan's own tensors, which
the sweeps read and write: w, g, the tensor states, the scratch columns), its step count
and scalar states' tensors, its row of the finished reductions table (``fin``, which also
receives the scalars the stage hands to later kernels) and the group's totals, and its
facts (Python numbers, the whole parameter's for a shard). Each step brings the new
gradient and the hypers (numbers as given; a hyper given as a tensor is read from the
device hyper table); a column whose dtype is not the compute dtype (a bfloat16 parameter)
is read as a compute-dtype copy made that step, as the other back ends stage it.

`per row` / `per col` states (``SHAPED``) have no column in the pointer table: the stage
reads them from the state dict and hands their new values back (``p.commits``), written at
the end of the step (a stage never sees a state it changed in this step), on the device:
when torch.amp's found_inf skips the step, the old values are kept, decided on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optdsl.runtime.library_stage import tensor_facts


class DeviceSlot:
    """One tensor's ``p`` in the library stages of a device step."""

    __slots__ = ("tensors", "kept", "commits", "hyper", "step", "states", "fin", "tot",
                 "grad_scale", "rows", "cols", "ndim", "numel", "dtype_eps", "sources",
                 "convert", "shaped", "shape", "compute", "device", "stats")

    def __init__(self, sources: list, shaped: dict[int, str], step: torch.Tensor,
                 states: list, fin: torch.Tensor, tot: torch.Tensor, param: torch.Tensor,
                 whole_shape: tuple[int, ...] | None) -> None:
        self.shape = tuple(param.shape)
        self.compute = torch.float64 if param.dtype == torch.float64 else torch.float32
        self.device = param.device
        self.sources = sources  # per column: the plan's tensor (None: unused or shaped)
        self.shaped = shaped  # column -> the state key of a `per row` / `per col` state
        # columns read through a compute-dtype copy made each step
        self.convert = [c for c, x in enumerate(sources)
                        if x is not None and x.dtype != self.compute]
        self.tensors = [None if x is None or c in self.convert else x.view(self.shape)
                        for c, x in enumerate(sources)]
        self.step = step
        self.states = states  # per state of the program: a scalar state's tensor, or None
        self.fin = fin
        self.tot = tot
        self.grad_scale: Any = None
        self.hyper: dict = {}
        self.kept: dict = {}
        self.commits: dict = {}
        # per fused row or column statistic: the tensor the sweep finishes it into, or None
        # (the stage computes it: optdsl.runtime.device_stats)
        self.stats: list = []
        for name, value in tensor_facts(param, whole_shape).items():
            setattr(self, name, value)

    def refresh(self, grad: torch.Tensor | None, state: dict, hyper: dict,
                grad_scale: torch.Tensor) -> None:
        """This step's inputs: the gradient (None: the planned one), the shaped states, the
        hypers and torch.amp's scale."""
        if grad is not None:
            self.sources[1] = grad
            if grad.dtype == self.compute and 1 in self.convert:
                self.convert.remove(1)
            elif grad.dtype != self.compute and 1 not in self.convert:
                self.convert.append(1)
            if 1 not in self.convert:
                self.tensors[1] = grad.view(self.shape)
        for c in self.convert:
            self.tensors[c] = self.sources[c].to(self.compute).view(self.shape)
        for c, key in self.shaped.items():
            self.tensors[c] = state[key].to(self.compute)
        self.hyper = hyper
        self.grad_scale = grad_scale


def stage_hypers(names: Sequence[str], hyper: dict, table: torch.Tensor) -> dict:
    """The hypers a stage reads: numbers as given, a tensor hyper as its 0-dim view of the
    device hyper ``table`` (in the order of ``names``, the module's HYPERS)."""
    return {name: table[j] if torch.is_tensor(hyper[name]) else float(hyper[name])
            for j, name in enumerate(names)}


def commit(slots: Sequence[DeviceSlot], states: Sequence[dict],
           state_keys: Sequence[tuple[str, bool]], found_inf: dict | None) -> None:
    """Write each stage-computed shaped state into its state tensor, at the end of the step;
    ``found_inf`` (per device, torch.amp's): where it is set, the old values stay."""
    for slot, state in zip(slots, states):
        for j, value in slot.commits.items():
            target = state[state_keys[j][0]]
            value = value.to(target.dtype).view(target.shape)
            if found_inf is not None:
                skip = found_inf[slot.device].reshape(()) != 0
                value = torch.where(skip, target, value)
            target.copy_(value)
        slot.commits = {}
        slot.kept = {}
