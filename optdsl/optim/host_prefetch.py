"""Prefetching the host objects a steady step reads, before it reads them.

On a training step every host object a step's checks read (each parameter, its tensor's
metadata and storage, its state dict, each state value's metadata and storage, the
parameter's record; optdsl.optim.step_checks) has been evicted from the caches by the
model's backward or the previous step's kernel, and Python reads them one at a time, each
miss waiting for the one before. A steady step of the C back end therefore first hands the
addresses of those objects to its C library (``optdsl_prefetch``, in the generated
prelude), which asks for all of them at once, so that their misses overlap.

A prefetch is only a hint: it reads nothing a program sees and never faults, so an address
that is no longer an object's costs nothing but the hint. The table is made from a group's
records after a steady step and dropped whenever a record is made or a checkpoint loads
(the optimizer's ``_host_prefetch``). Gradients are not in it: backward makes new ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

LINES = 3  # cache lines asked for at each address (a record, a tensor's metadata)


def _tensor_addresses(tensor: torch.Tensor) -> list[int]:
    """The tensor's Python object, its TensorImpl and its StorageImpl (where this torch
    tells them: ``_cdata``)."""
    out = [id(tensor)]
    impl = getattr(tensor, "_cdata", None)
    if isinstance(impl, int):
        out.append(impl)
    try:
        storage = tensor.untyped_storage()._cdata
    except (AttributeError, RuntimeError, TypeError):
        storage = None
    if isinstance(storage, int):
        out.append(storage)
    return out


class HostPrefetch:
    """The addresses of one group's steady host objects, and the call that prefetches them."""

    def __init__(self, prefetch: Callable[[int, int, int], None], items: list,
                 states: list, records: list) -> None:
        addresses: list[int] = []
        for (param, _), state, record in zip(items, states, records):
            addresses += _tensor_addresses(param)
            addresses += [id(state), id(record), id(record.expect), id(record.shape)]
            for value in record.values:
                addresses += _tensor_addresses(value)
        self.addresses = np.array(addresses, dtype=np.int64)
        self._call = prefetch
        self._pointer = self.addresses.ctypes.data
        self._count = len(addresses)

    def __call__(self) -> None:
        self._call(self._pointer, self._count, LINES)
