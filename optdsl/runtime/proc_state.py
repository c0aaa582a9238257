"""The state of a closure-driven step, kept as torch.optim.LBFGS keeps its own: one dict (the
state of the group's first parameter) holding numbers, flat vectors and lists.

A number is kept as an int while it is integral and its declaration was an integer
(torch's counters ``func_evals``, ``n_iter``), else as a float; a vector as a flat tensor of
the parameters' dtype; a history as a list, oldest first (flat tensors, or numbers); an array
as a list of its capacity (None until set); a dense matrix as a 2-D tensor. A checkpoint of
torch's (0-d tensors where this keeps floats) reads the same. A state exists from the first
step that reads or sets it: a read before any set sees its declared initial value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from optdsl.ir.procedure import ARRAY, HISTORY, MATRIX, SCALAR, VECTOR, StateInfo
from optdsl.runtime.vectors import Layout, Vector


class States:
    """A step's view of the state dict (``store``), by state name."""

    def __init__(self, infos: tuple[StateInfo, ...], store: dict, layout: Layout,
                 evaluate: Callable[[Any], float]) -> None:
        self.infos = {info.name: info for info in infos}
        self.store = store
        self.layout = layout
        self.evaluate = evaluate  # a HostExpr's value (initial values, capacities)

    def capacity(self, name: str) -> int:
        value = self.evaluate(self.infos[name].init)
        if not np.isfinite(value) or value < 0 or value != int(value):
            raise ValueError(f"the capacity of `{name}` must be a whole number >= 0, got "
                             f"{float(value)!r}")
        return int(value)

    # -- reading ---------------------------------------------------------------------------------
    def get(self, name: str):
        info = self.infos[name]
        if info.key not in self.store:
            self.store[info.key] = self.initial(info)
        value = self.store[info.key]
        if info.kind == SCALAR:
            return np.float64(float(value))
        if info.kind == VECTOR:
            if not torch.is_tensor(value):
                raise RuntimeError(f"state[{info.key!r}] must be a tensor, got "
                                   f"{type(value).__name__}")
            return self.layout.wrap(self._placed(info, value), owned=True)
        return value

    def _placed(self, info: StateInfo, value: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        if value.dtype != layout.dtype or value.device != layout.device or \
                not value.is_contiguous():
            value = value.to(layout.device, layout.dtype).contiguous()
            self.store[info.key] = value
        return value

    def initial(self, info: StateInfo):
        layout = self.layout
        if info.kind == SCALAR:
            value = float(self.evaluate(info.init))
            return int(value) if info.integer and value.is_integer() else value
        if info.kind == VECTOR:
            if info.copies_w:
                return torch.cat([p.detach().reshape(-1) for p in layout.params])
            value = float(self.evaluate(info.init)) if info.init is not None else 0.0
            return torch.full((layout.total,), value, dtype=layout.dtype, device=layout.device)
        if info.kind == HISTORY:
            return []
        if info.kind == ARRAY:
            return [None] * self.capacity(info.name)
        assert info.kind == MATRIX
        return torch.eye(layout.total, dtype=layout.dtype, device=layout.device)

    def item(self, name: str, index: int):
        """Entry ``index`` of a history or an array."""
        entries = self.get(name)
        if not 0 <= index < len(entries):
            raise IndexError(f"`{name}[{index}]`: `{name}` has {len(entries)} entries")
        value = entries[index]
        if value is None:
            raise IndexError(f"`{name}[{index}]` is read before it is set")
        if torch.is_tensor(value) and value.dim() == 1 and value.numel() == self.layout.total:
            return self.layout.wrap(self._entry(entries, index), owned=False)
        return np.float64(float(value))

    def _entry(self, entries: list, index: int) -> torch.Tensor:
        value = entries[index]
        layout = self.layout
        if value.dtype != layout.dtype or value.device != layout.device:
            value = entries[index] = value.to(layout.device, layout.dtype).contiguous()
        return value

    # -- writing ---------------------------------------------------------------------------------
    def set(self, name: str, value) -> None:
        info = self.infos[name]
        if info.kind == SCALAR:
            number = float(value)
            self.store[info.key] = (int(number) if info.integer and number.is_integer()
                                    else number)
        elif info.kind == VECTOR:
            self.store[info.key] = self._vector_buffer(value)
        elif info.kind == MATRIX:
            self.store[info.key] = value
        else:
            raise AssertionError(info.kind)

    def _vector_buffer(self, value) -> torch.Tensor:
        if isinstance(value, Vector):
            if value.flat is None or not value.owned:
                value = self.layout.owned_copy(value)
            return value.flat
        return torch.as_tensor(value, dtype=self.layout.dtype).expand(self.layout.total).clone()

    def set_item(self, name: str, index: int, value) -> None:
        entries = self.get(name)
        if not 0 <= index < len(entries):
            raise IndexError(f"`{name}[{index}] = `: `{name}` has {len(entries)} entries")
        if isinstance(value, Vector):
            entries[index] = self.layout.adopt(value)
        else:
            entries[index] = float(value)

    def push(self, name: str, value) -> None:
        """Append to a history, dropping its oldest entry when it is full."""
        entries = self.get(name)
        capacity = self.capacity(name)
        entry = self.layout.adopt(value) if isinstance(value, Vector) else float(value)
        if capacity == 0:
            return
        while len(entries) >= capacity:
            self.layout.release(entries.pop(0))
        entries.append(entry)

    def clear(self, name: str) -> None:
        self.store[self.infos[name].key] = []
