"""A generated C step, loaded: the shared object's entry points and the contract read from
its verified source, as a module of the contract (optdsl.codegen.contract).

``TENSORS``, ``NUM_REDUCTIONS`` and ``SWEEPS`` come from the source's contract line; a
sweep's kernel is the index the shared object's ``optdsl_sweep(args, k)`` runs. ``step``
is the host step compiled in (``optdsl_step``) driven through the contract: with a context
of the C runner (``ctx.tables``, its tables) it runs every sweep through ``ctx.sweep`` (a
callback from the C host step), so the runtime finishes reductions and combines shards'
partials, and copies what they gave back into the C tables.

Library stages (matrix work): ``LIBRARIES`` and ``SHAPED`` come from the Python module the
source ends with (optdsl.codegen.c, ``optdsl-library``), loaded from the same verified
text. The C host step calls ``a->library_cb(k)`` for stage k on either path (``run``): each
parameter's slot gets its row of host scalars from the C tables, ``ctx.library`` runs the
stage (optdsl.runtime.library_stage), and the scalars it hands to host code go back into
the tables' ``lib`` rows.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from optdsl.codegen.c import LIBRARY_HEADER
from optdsl.codegen.contract import GeneratedModule, ParamSlot
from optdsl.runtime import c_build
from optdsl.runtime.c_abi import Args, SweepCallback, read_contract
from optdsl.runtime.loader import load_python


def library_source(source: str) -> str:
    """The Python module of a generated C source's library stages ('' if it has none)."""
    start = source.find("\n" + LIBRARY_HEADER + "\n")
    if start < 0:
        return ""
    start += len(LIBRARY_HEADER) + 2
    end = source.find("\n*/", start)
    if end < 0:
        raise ValueError("a generated C step whose library module is not closed")
    return source[start:end + 1]


class CLibrary:
    """A loaded C step: its contract and entry points."""

    def __init__(self, source: str, tag: str) -> None:
        self.contract = read_contract(source)
        self.lib = c_build.load(source, tag)
        self.optdsl_step = self.lib.optdsl_step
        self.optdsl_step.argtypes = [ctypes.POINTER(Args)]
        self.optdsl_step.restype = ctypes.c_int
        self.optdsl_sweep = self.lib.optdsl_sweep
        self.optdsl_sweep.argtypes = [ctypes.POINTER(Args), ctypes.c_int64]
        self.optdsl_sweep.restype = ctypes.c_int
        self.optdsl_prefetch = self.lib.optdsl_prefetch
        self.optdsl_prefetch.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        self.optdsl_prefetch.restype = None
        c = self.contract
        self.TENSORS = tuple(c["tensors"])
        self.NUM_REDUCTIONS = int(c["num_reductions"])
        self.SWEEPS = tuple((k if runs else None, width, tuple(tuple(r) for r in reds))
                            for k, (runs, width, reds) in enumerate(c["sweeps"]))
        self.HYPERS = tuple(c["hypers"])
        self.SCALAR_STATES = tuple(c["scalar_states"])
        self.ROW = int(c["row"])
        self.STATE_COLUMNS = int(c["state_columns"])
        self.FINISHES_IN_C = bool(c["finishes_in_c"])
        self.MAX_SWEEP_REDUCTIONS = max((len(r) for _, _, r in self.SWEEPS), default=0)
        self.HANDED = tuple(tuple(int(v) for v in h) for h in c.get("handed", ()))
        self.NUM_HANDED = sum(len(h) for h in self.HANDED)
        # per fused row or column statistic: (the sweep that accumulates it, "row"/"col")
        self.STATS = tuple((int(k), str(axis)) for k, axis in c.get("stats", ()))
        python = library_source(source)
        if python:
            stages = load_python(python, f"c-library:{tag}")
            self.LIBRARIES = stages.LIBRARIES
            self.SHAPED = stages.SHAPED

    def step(self, ctx: Any, params: Sequence[ParamSlot]) -> None:
        """The host step (the contract's ``step``) with every sweep run by ``ctx.sweep``."""
        self.run(ctx, params, sweeps_by_runtime=True)

    def run(self, ctx: Any, params: Sequence[ParamSlot], sweeps_by_runtime: bool) -> None:
        """The host step, its library stages run by ``ctx.library``; its sweeps run by
        ``ctx.sweep`` (``sweeps_by_runtime``) or in C."""
        tables = ctx.tables
        failures: list[BaseException] = []

        def guarded(work) -> SweepCallback:
            """A callback for the C host step: 0, or 1 with the exception kept for later."""
            def call(k: int) -> int:
                try:
                    work(k)
                    return 0
                except BaseException as exc:  # noqa: BLE001 - re-raised below, after the C returns
                    failures.append(exc)
                    return 1
            return SweepCallback(call)

        def on_sweep(k: int) -> None:
            ctx.sweep(k, params)
            tables.take_finished(self.SWEEPS[k][2], params, ctx.totals)

        args = tables.args
        callbacks = (guarded(on_sweep) if sweeps_by_runtime else SweepCallback(),
                     guarded(lambda k: self._library(ctx, k, params)))
        args.sweep_cb, args.library_cb = callbacks
        try:
            rc = self.optdsl_step(ctypes.byref(args))
        finally:
            args.sweep_cb = args.library_cb = SweepCallback()
        if failures:
            raise failures[0]
        if rc:
            raise RuntimeError(f"the generated C step failed (code {rc})")

    def _library(self, ctx: Any, k: int, params: Sequence[ParamSlot]) -> None:
        """Library stage k: each parameter's row from the tables, the stage, and the scalars
        it hands to host code back into the tables."""
        tables = ctx.tables
        n = len(params)
        width = self.LIBRARIES[k][1]
        rows = tables.rows[:n * self.ROW].reshape(n, self.ROW)[:, :width].tolist()
        for p, row in zip(params, rows):
            p.scalars = row
        ctx.library(k, params)
        handed = self.HANDED[k]
        if handed:
            first = sum(len(h) for h in self.HANDED[:k])
            lib = tables.lib[:n * self.NUM_HANDED].reshape(n, self.NUM_HANDED)
            for i, p in enumerate(params):
                for j, v in enumerate(handed):
                    lib[i, first + j] = p.lib[v]


def load(source: str, tag: str) -> GeneratedModule:
    """The registry's loader of the C back end."""
    return GeneratedModule.of(CLibrary(source, tag))
