"""Row and column statistics fused into a Triton sweep (optdsl.codegen.triton: a sweep with
``Sweep.stats``), planned per bucket of a device step (optdsl.runtime.triton_runner).

A sweep that accumulates statistics runs over tiles instead of flat blocks: each tensor is
viewed as a stack of ``B`` matrices of ``R`` rows and ``C`` columns (its last two
dimensions; a vector is one row, a 0-dim tensor one element), cut into TR x TC tiles of
``TILE`` elements (TC a power of two, at most ``MAX_TC`` and not above the bucket's widest
matrix, TR = TILE / TC: not the runner's block size, so that the sums do not depend on it;
the launch has ``NUM_WARPS`` warps whatever the block), one program per tile, numbered
matrix by matrix, row of tiles by row of tiles. A tile sums the mapped values (float64) of
each of its rows over its columns, and of each of its columns over its rows, and stores
them, no atomics, into the statistic's float64 partials, laid out
[part, output]: a row statistic's outputs are the B * R rows and its parts the tiles across
a matrix; a column statistic's outputs the B * C columns and its parts the tiles down a
matrix. Then ``stats_finish`` (one launch per bucket) adds each output's parts in order, one
at a time, finishes the sum (mean: over the count; norm: its square root) and stores it, in
the compute dtype, in the tensor the library stage reads (``p.stats[slot]``). Nothing is
read back to the host; the partials of one launch are the same bits on every run.

Which tensors the sweep computes a statistic for is the C back end's rule
(optdsl.runtime.c_runner): not in a sharded step (FSDP2: the stage gathers the whole
matrix), not for a 0-dim tensor, not a column statistic of a vector (zero-size tensors have
no tiles); there ``sp`` holds 0 and the stage computes the statistic in torch.

The tiles' reduction partials (the sweep's other reductions) are one per program, as the
flat blocks' are: the sweep's combine kernel counts a tensor's programs from ``sizes``
(tiles times BLOCK here) and finds its first from ``firsts``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from optdsl.runtime.device_tables import device_table, tl_dtypes

TILE = 1024  # elements of a tile
MAX_TC = 64  # columns of a tile, at most
NUM_WARPS = 4  # of a tiled sweep's launch
CHUNK = 1024  # outputs of one stats_finish program
_FINISH = {"none": 0, "mean": 1, "sqrt": 2}


def view_of(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A tensor's matrix view: (matrices, rows, columns)."""
    if len(shape) == 0:
        return 1, 1, 1
    if len(shape) == 1:
        return 1, 1, shape[0]
    return math.prod(shape[:-2]), shape[-2], shape[-1]


class BucketStats:
    """One bucket's tiles, statistic partials and finished statistics."""

    def __init__(self, stats: tuple, params: list[torch.Tensor], block: int,
                 device: torch.device, fuse: bool) -> None:
        views = [view_of(tuple(p.shape)) for p in params]
        widest = max((c for _, _, c in views), default=1)
        self.tc = max(2, min(MAX_TC, 1 << max(widest - 1, 0).bit_length()))
        self.tr = TILE // self.tc
        counts = np.array([0 if p.numel() == 0 else
                           b * -(-r // self.tr) * -(-c // self.tc)
                           for p, (b, r, c) in zip(params, views)], dtype=np.int64)
        first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        self.num_tiles = int(counts.sum())
        tensor = np.repeat(np.arange(len(params), dtype=np.int64), counts)
        tile = np.arange(self.num_tiles, dtype=np.int64) - np.repeat(first, counts)
        blocks = np.stack([tensor, tile], axis=1) if self.num_tiles else \
            np.zeros((1, 2), dtype=np.int64)
        self.blocks = device_table(np.ascontiguousarray(blocks), device)
        # (a tensor's programs, as the combine kernel counts them in BLOCK-element blocks)
        self.sizes = device_table(counts * block, device)
        self.firsts = device_table(first, device)
        self.shp = device_table(np.asarray(views, dtype=np.int64).reshape(-1, 3), device)
        # per tensor, per statistic: the finished tensor (None: the stage computes it)
        self.outs: list[list] = [[None] * len(stats) for _ in params]
        pointers = np.zeros((max(len(params), 1), max(len(stats), 1)), dtype=np.int64)
        rows, self.keep = [], []
        for i, (p, (b, r, c)) in enumerate(zip(params, views)):
            compute = torch.float64 if p.dtype == torch.float64 else torch.float32
            for j, (_, axis, finish) in enumerate(stats):
                if not fuse or p.numel() == 0 or p.dim() < (1 if axis == "row" else 2):
                    continue
                shape = tuple(p.shape)
                if axis == "row":
                    out = torch.empty(shape[:-1] + (1,), dtype=compute, device=device)
                    outputs, parts, count = b * r, -(-c // self.tc), c
                else:
                    out = torch.empty(shape[:-2] + (1, c), dtype=compute, device=device)
                    outputs, parts, count = b * c, -(-r // self.tr), r
                part = torch.empty(parts * outputs, dtype=torch.float64, device=device)
                self.keep.append(part)
                self.outs[i][j] = out
                pointers[i, j] = part.data_ptr()
                rows.append([part.data_ptr(), out.data_ptr(), outputs, parts, _FINISH[finish],
                             count])
        self.sp = device_table(pointers, device)
        self.finish_rows = len(rows)
        self.finish = device_table(np.asarray(rows or [[0] * 6], dtype=np.int64), device)
        self.out_tl = None  # the statistics' dtype (a bucket's tensors share their compute dtype)
        if rows:
            (dtype,) = {o.dtype for outs in self.outs for o in outs if o is not None}
            self.out_tl = tl_dtypes()[dtype]
        self.chunks = max((-(-row[2] // CHUNK) for row in rows), default=1)
