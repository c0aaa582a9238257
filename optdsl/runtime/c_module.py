"""A generated C step, loaded: the shared object's entry points and the contract read from
its verified source, as a module of the contract (optdsl.codegen.contract).

``TENSORS``, ``NUM_REDUCTIONS`` and ``SWEEPS`` come from the source's contract line; a
sweep's kernel is the index the shared object's ``optdsl_sweep(args, k)`` runs. ``step``
is the host step compiled in (``optdsl_step``) driven through the contract: with a context
of the C runner (``ctx.args``, its tables) it runs every sweep through ``ctx.sweep`` (a
callback from the C host step), so the runtime finishes reductions and combines shards'
partials, and copies what they gave back into the C tables.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from optdsl.codegen.contract import GeneratedModule, ParamSlot
from optdsl.runtime import c_build
from optdsl.runtime.c_abi import Args, SweepCallback, read_contract


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

    def step(self, ctx: Any, params: Sequence[ParamSlot]) -> None:
        """The host step (the contract's ``step``) with every sweep run by ``ctx.sweep``."""
        tables = ctx.tables
        failures: list[BaseException] = []

        def on_sweep(k: int) -> int:
            try:
                ctx.sweep(k, params)
                tables.take_finished(self.SWEEPS[k][2], params, ctx.totals)
                return 0
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the C returns
                failures.append(exc)
                return 1

        callback = SweepCallback(on_sweep)
        tables.args.sweep_cb = callback
        try:
            rc = self.optdsl_step(ctypes.byref(tables.args))
        finally:
            tables.args.sweep_cb = SweepCallback()
        if failures:
            raise failures[0]
        if rc:
            raise RuntimeError(f"the generated C step failed (code {rc})")


def load(source: str, tag: str) -> GeneratedModule:
    """The registry's loader of the C back end."""
    return GeneratedModule.of(CLibrary(source, tag))
