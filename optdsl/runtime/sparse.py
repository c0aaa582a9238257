"""Sparse (COO) gradients: a group's step run on the elements at the gradients' indices only.

A program that says ``sparse`` (optdsl.frontend.sparse) is element-wise, so its step on the
elements a sparse gradient holds is the step of those elements alone. For each parameter with
a sparse gradient the gradient is coalesced (duplicate indices summed, as torch.optim does:
the update is not linear), and the rows it indexes are gathered into dense scratch of its
number of stored values: the parameter (or its fp32 master weight), each tensor state the
step uses, and the low-precision copy of a master weight. The runner then runs the program's
ordinary compiled step on those scratch tensors, as on any dense parameter (the same
generated code on every back end), and the rows are scattered back. Scalar states and the
step count are the parameter's own. The gradient is never made dense: memory and work grow
with its number of values, not with the parameter's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from optdsl.runtime.rounding import derive_seed
from optdsl.runtime.step import Entry, StepOptions

_SPARSE_SEED_TAG = 0x5350  # the seed of the scratch's rounding differs from the dense call's


def is_sparse(grad: torch.Tensor) -> bool:
    return grad.layout is torch.sparse_coo


class Rows:
    """The rows a coalesced sparse gradient indexes, and how to gather and scatter them: an
    index tensor per sparse dimension (a parameter with none is one row)."""

    def __init__(self, grad: torch.Tensor) -> None:
        grad = grad.coalesce()
        self.values = grad._values().detach()
        indices = grad._indices()
        self.lifted = grad.sparse_dim() == 0  # values hold the whole tensor, 0 or 1 times
        if self.lifted:
            indices = torch.zeros((1, self.values.shape[0]), dtype=torch.int64,
                                  device=indices.device)
        self.index = tuple(indices)

    def _rows_of(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        return tensor.unsqueeze(0) if self.lifted else tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The indexed rows of ``tensor`` (a tensor of the parameter's shape), as a new
        contiguous tensor of shape (nnz, *dense shape)."""
        return self._rows_of(tensor)[self.index].contiguous()

    def scatter(self, tensor: torch.Tensor, rows: torch.Tensor) -> None:
        """Write ``rows`` (from ``gather``) back into ``tensor``, in place."""
        self._rows_of(tensor)[self.index] = rows


class Gathered:
    """A sparse-gradient entry's dense scratch (``entry``, ``copy``) and its way back."""

    def __init__(self, entry: Entry, state_keys: Sequence[tuple[str, bool]],
                 copy: torch.Tensor | None) -> None:
        self.rows = Rows(entry.grad)
        gather = self.rows.gather
        state: dict = {}
        self.pairs = []  # (the tensor of the parameter's shape, its gathered rows)
        for key, is_tensor in state_keys:
            value = entry.state.get(key)
            if value is None:
                continue
            # a scalar state is one number per parameter: the parameter's own tensor
            state[key] = gather(value) if is_tensor else value
            if is_tensor:
                self.pairs.append((value, state[key]))
        self.entry = Entry(gather(entry.param), self.rows.values, state, entry.t)
        self.pairs.append((entry.param, self.entry.param))
        self.copy = None if copy is None else gather(copy)
        if copy is not None:
            self.pairs.append((copy, self.copy))

    def scatter(self) -> None:
        for target, scratch in self.pairs:
            self.rows.scatter(target, scratch)


def run(runner, variant, entries: Sequence[Entry], options: StepOptions,
        state_keys: Sequence[tuple[str, bool]]) -> None:
    """Step ``entries`` (some with sparse gradients) with ``runner``: the dense ones as they
    are, then the sparse ones on their gathered rows, scattered back afterwards."""
    copies = options.copies or [None] * len(entries)
    dense = [i for i, e in enumerate(entries) if not is_sparse(e.grad)]
    if dense:
        runner.run(variant, [entries[i] for i in dense],
                   _subset(options, [copies[i] for i in dense], options.rounding_seed,
                           options.transient))
    made = [Gathered(e, state_keys, copies[i]) for i, e in enumerate(entries)
            if is_sparse(e.grad)]
    if not made:
        return
    seed = options.rounding_seed
    runner.run(variant, [m.entry for m in made],
               _subset(options, [m.copy for m in made],
                       None if seed is None else derive_seed(seed, _SPARSE_SEED_TAG), True))
    for gathered in made:
        gathered.scatter()


def _subset(options: StepOptions, copies: list, seed: int | None,
            transient: bool) -> StepOptions:
    """The options of one runner call over some of the entries (``transient``: its entries
    are scratch made for this step, which runners must not keep)."""
    kept = copies if any(c is not None for c in copies) else None
    return dataclasses.replace(options, copies=kept, rounding_seed=seed, transient=transient)
