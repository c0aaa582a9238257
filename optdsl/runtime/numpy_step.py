"""Runs a program's generated NumPy step on flat arrays, with per-dtype scratch buffers.

``Slot`` is one parameter's view for one step (the contract of optdsl.codegen.numpy);
``NumpyStep`` compiles the generated source once and keeps the chunk buffers, allocated once
per dtype and reused by every step. ``run(..., threads=k)`` splits the elements of the
slots into k equal parts (a parameter may be cut) stepped by k threads, each with its own
buffers (NumPy releases the GIL inside its ufuncs). Only a step without reductions is split:
a reduction must see the whole tensor. Element-wise results do not depend on the split.
"""

from __future__ import annotations

import linecache
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Slot:
    """One parameter's arrays and numbers for one step of the generated NumPy code."""

    __slots__ = ("t", "w", "g", "states", "red", "buffers", "masks")

    def __init__(self, t: float, w: np.ndarray, g: np.ndarray, states: list) -> None:
        self.t = t
        self.w = w
        self.g = g
        self.states = states
        self.red: list = []
        self.buffers: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []


COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MIN_PER_THREAD = 1 << 18  # elements: below this a thread costs more than it saves


def split_slots(slots: list[Slot], parts: int) -> tuple[list[list[Slot]], list[Slot]]:
    """``parts`` lists of slots holding equal numbers of elements (a parameter may be cut
    into slices), and for each slot the part-slot holding its first elements."""
    total = sum(slot.w.shape[0] for slot in slots)
    bounds = [total * (i + 1) // parts for i in range(parts)]
    out: list[list[Slot]] = [[] for _ in range(parts)]
    firsts: list[Slot] = []
    done, k = 0, 0
    for slot in slots:
        n, lo = slot.w.shape[0], 0
        first = None
        while True:
            hi = n if k == parts - 1 else max(lo, min(n, bounds[k] - done))
            if hi > lo or (n == 0 and first is None):
                if lo == 0 and hi == n:
                    piece = slot
                else:
                    piece = Slot(slot.t, slot.w[lo:hi], slot.g[lo:hi],
                                 [x[lo:hi] if isinstance(x, np.ndarray) and x.ndim else x
                                  for x in slot.states])
                out[k].append(piece)
                first = first or piece
            if hi >= n:
                break
            k += 1
            lo = hi
        firsts.append(first)
        done += n
    return out, firsts


class NumpyStep:
    def __init__(self, source: str, title: str) -> None:
        filename = f"<optdsl-numpy:{title}>"
        namespace: dict = {"__name__": f"optdsl_generated_{abs(hash(source)) & 0xFFFFFF:x}"}
        code = compile(source, filename, "exec")
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(code, namespace)
        self.source = source
        self._step = namespace["step"]
        self.chunk = namespace["CHUNK"]
        self.num_buffers = namespace["NUM_BUFFERS"]
        self.num_masks = namespace["NUM_MASKS"]
        self.num_reductions = namespace["NUM_REDUCTIONS"]
        self._scratch: dict[np.dtype, list[np.ndarray]] = {}
        self._masks: list[np.ndarray] = [np.empty(self.chunk, dtype=bool)
                                         for _ in range(self.num_masks)]
        self._helpers: list[NumpyStep] = []  # one per extra thread, each with its buffers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._lock = threading.Lock()

    def buffers(self, dtype: np.dtype) -> list[np.ndarray]:
        found = self._scratch.get(dtype)
        if found is None:
            found = [np.empty(self.chunk, dtype=dtype) for _ in range(self.num_buffers)]
            self._scratch[dtype] = found
        return found

    def run(self, hyper: dict[str, float], slots: list[Slot], threads: int = 1) -> None:
        """Update every slot in place (one param group), in ``threads`` threads if the step
        has no reductions and there are at least MIN_PER_THREAD elements a thread."""
        if threads > 1 and self.num_reductions == 0:
            total = sum(slot.w.shape[0] for slot in slots)
            threads = min(threads, total // MIN_PER_THREAD)
            if threads > 1:
                self._run_threaded(hyper, slots, threads)
                return
        self._run_here(hyper, slots)

    def _run_threaded(self, hyper: dict[str, float], slots: list[Slot], threads: int) -> None:
        with self._lock:
            while len(self._helpers) < threads - 1:
                self._helpers.append(NumpyStep(self.source, f"thread{len(self._helpers) + 1}"))
            if self._pool is None or self._pool_size < threads - 1:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="optdsl-step")
                self._pool_size = threads - 1
        parts, firsts = split_slots(slots, threads)
        futures = [self._pool.submit(helper._run_here, hyper, part)
                   for helper, part in zip(self._helpers, parts[1:])]
        self._run_here(hyper, parts[0])
        for future in futures:
            future.result()
        # Scalar states: every part of a parameter computed the same new values; take its
        # first part's.
        for slot, first in zip(slots, firsts):
            if first is not slot:
                slot.states = [x if isinstance(x, np.ndarray) and x.ndim else y
                               for x, y in zip(slot.states, first.states)]

    def _run_here(self, hyper: dict[str, float], slots: list[Slot]) -> None:
        for slot in slots:
            dtype = slot.w.dtype
            if dtype not in COMPUTE_DTYPES:
                raise TypeError(f"the NumPy step computes in float32 or float64, got {dtype}")
            slot.buffers = self.buffers(dtype)
            slot.masks = self._masks
            slot.red = [None] * self.num_reductions
        with np.errstate(all="ignore"):
            self._step(hyper, slots)
