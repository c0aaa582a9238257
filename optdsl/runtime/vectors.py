"""Vectors of a closure-driven step: the group's elements as one tensor per parameter.

A ``Layout`` is the group's parameters in order (torch.optim.LBFGS's flattening order: each
parameter's elements in its own order, parameters one after another), all of one dtype on
one device. A ``Vector`` is a value over that layout: either views of one flat buffer (the
program's vectors, its states as torch keeps them: flat tensors) or separate tensors, one per
parameter (the closure's gradients, Hessian-vector products). Phases read and write the
per-parameter parts; dense code and checkpoints see the flat tensor (a gathered copy when
there is none).

Ownership: a vector written in place must be *owned* (no one else reads its memory). The
closure's gradients are not owned (the next closure call may overwrite them); a vector
pushed into a history is handed over and becomes read-only for the variable that held it.
Buffers of history entries that drop out are reused for new vectors (no allocation, no page
faults on the next write) unless ``state_dict()`` was taken since they were made, as a
caller may still hold them.
"""

from __future__ import annotations

import numpy as np
import torch

_NUMPY = (torch.float32, torch.float64)


class Vector:
    """A vector over a Layout: ``parts[j]`` is parameter j's tensor (numel of parameter j),
    ``flat`` the buffer they view (None for separate tensors)."""

    __slots__ = ("__weakref__", "_arrays", "_pointers", "epoch", "flat", "gradient", "owned",
                 "parts")

    def __init__(self, parts: list, flat: torch.Tensor | None, owned: bool,
                 gradient: bool = False, epoch: int = 0) -> None:
        self.parts = parts
        self.flat = flat
        self.owned = owned
        self.gradient = gradient  # the closure's gradients, read in place
        self.epoch = epoch  # the layout's state_dict epoch when the buffer was made
        self._arrays: list | None = None
        self._pointers: tuple | None = None

    def arrays(self) -> list | None:
        """Zero-copy flat NumPy views of the parts (None unless every part is a contiguous
        float32/float64 CPU tensor), made once per vector."""
        if self._arrays is None:
            if not all(p.device.type == "cpu" and p.dtype in _NUMPY and p.is_contiguous()
                       for p in self.parts):
                return None
            self._arrays = [p.detach().reshape(-1).numpy() for p in self.parts]
        return self._arrays

    def pointers(self) -> tuple[np.ndarray, torch.dtype] | None:
        """The parts' data pointers (int64, one per parameter) and their one dtype, for a
        compiled phase's pointer table (optdsl.runtime.proc_c); None unless every part is a
        contiguous CPU tensor of that dtype. Made once per vector."""
        if self._pointers is None:
            parts = self.parts
            dtype = parts[0].dtype if parts else None
            if not all(p.device.type == "cpu" and p.dtype == dtype and p.is_contiguous()
                       for p in parts):
                return None
            self._pointers = (np.array([p.data_ptr() for p in parts], dtype=np.int64), dtype)
        return self._pointers


class Layout:
    """The parameters of a group, as the vectors of a closure-driven step see them."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.numels = [p.numel() for p in params]
        self.offsets = []
        total = 0
        for n in self.numels:
            self.offsets.append(total)
            total += n
        self.total = total
        self.dtype = params[0].dtype
        self.device = params[0].device
        self.epoch = 0  # bumped by state_dict(): buffers made before may be held outside
        self._free: list[torch.Tensor] = []
        self._zeros: list | None = None
        self._index: Vector | None = None
        self._wrapped: dict[int, Vector] = {}
        self._parameters: tuple | None = None

    # -- making vectors -------------------------------------------------------------------------
    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[o:o + n] for o, n in zip(self.offsets, self.numels)]

    def new(self) -> Vector:
        """An owned vector with uninitialised contents (a reused buffer when one is free)."""
        flat = self._free.pop() if self._free else torch.empty(
            self.total, dtype=self.dtype, device=self.device)
        return Vector(self.views(flat), flat, True, epoch=self.epoch)

    def wrap(self, flat: torch.Tensor, owned: bool = True) -> Vector:
        """The vector of a flat tensor (a state as torch keeps it); the same Vector while the
        tensor is the same object."""
        found = self._wrapped.get(id(flat))
        if found is None or found.flat is not flat:
            if flat.dim() != 1 or flat.numel() != self.total:
                raise RuntimeError(f"a vector state has shape {tuple(flat.shape)}, but the "
                                   f"parameters have {self.total} elements in all")
            found = Vector(self.views(flat), flat, owned, epoch=-1)
            self._wrapped[id(flat)] = found
            if len(self._wrapped) > 4096:  # histories come and go: forget the oldest
                self._wrapped.pop(next(iter(self._wrapped)))
        return found

    def gradients(self) -> Vector:
        """The parameters' gradients as they are (zeros where a parameter has none)."""
        parts = []
        for j, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                grad = self.zeros()[j]
            elif grad.layout is not torch.strided:
                grad = grad.to_dense()
            parts.append(grad.detach())
        return Vector(parts, None, False, gradient=True)

    def zeros(self) -> list[torch.Tensor]:
        if self._zeros is None:
            self._zeros = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                           for p in self.params]
        return self._zeros

    def parameters(self) -> Vector:
        """The parameters as a vector (kept while their storage is the same)."""
        pointers = tuple(p.data_ptr() for p in self.params)
        if self._parameters is None or self._parameters[0] != pointers:
            self._parameters = (pointers, Vector([p.detach() for p in self.params], None, True))
        return self._parameters[1]

    def index(self) -> Vector:
        """The elements' positions 0, 1, ..., n-1 (exact in the parameters' dtype)."""
        if self._index is None:
            exact = {torch.float16: 2**11, torch.bfloat16: 2**8, torch.float32: 2**24}
            limit = exact.get(self.dtype, 2**53)
            if self.total > limit:
                raise RuntimeError(f"index() counts {self.total} elements, more than "
                                   f"{self.dtype} holds exactly ({limit})")
            flat = torch.arange(self.total, dtype=self.dtype, device=self.device)
            self._index = Vector(self.views(flat), flat, False)
        return self._index

    # -- reading and releasing ------------------------------------------------------------------
    def flat(self, vector: Vector) -> torch.Tensor:
        """The flat tensor of a vector (gathered when its parts are separate)."""
        if vector.flat is not None:
            return vector.flat
        return torch.cat([part.reshape(-1) for part in vector.parts])

    def owned_copy(self, vector: Vector) -> Vector:
        out = self.new()
        for dst, src in zip(out.parts, vector.parts):
            dst.copy_(src.reshape(-1))
        return out

    def from_flat(self, flat: torch.Tensor) -> Vector:
        """A new owned vector holding ``flat`` (a dense result)."""
        flat = flat.to(dtype=self.dtype, device=self.device).reshape(-1).contiguous()
        return Vector(self.views(flat), flat, True, epoch=self.epoch)

    def recycle(self, vector: Vector) -> None:
        """A buffer of this step's own (made by ``new``) that is no longer used."""
        if vector.owned and vector.flat is not None and vector.epoch == self.epoch \
                and len(self._free) < 4:
            self._free.append(vector.flat)

    def release(self, flat) -> None:
        """A history entry dropped out: reuse its buffer if no one outside may hold it."""
        vector = self._wrapped.pop(id(flat), None) if torch.is_tensor(flat) else None
        epoch = vector.epoch if vector is not None else -1
        if torch.is_tensor(flat) and epoch == self.epoch and len(self._free) < 4 \
                and flat.numel() == self.total and flat.dtype == self.dtype:
            self._free.append(flat)

    def adopt(self, vector: Vector) -> torch.Tensor:
        """The flat tensor a state or history keeps for ``vector``, made read-only for its
        variable (a copy when the vector has no buffer of its own)."""
        if vector.flat is None or not vector.owned:
            vector = self.owned_copy(vector)
        vector.owned = False
        self._wrapped[id(vector.flat)] = vector
        return vector.flat
