"""Phases of closure-driven steps on the C back end: one foreign call a phase, its pointer
table written from the vectors' cached pointers instead of rebuilt.

A phase's C step (optdsl.codegen.c; the ABI: optdsl.runtime.c_abi) reads a table with a row
per parameter and a column per tensor (w, g, each vector the phase reads or writes, then
scratch columns). The C runner (optdsl.runtime.c_runner) builds that table from a list of
Entries and keeps it while the same tensors come back; a phase inside a loop over a history
binds other vectors on every call, so there it rebuilt the table (a Python loop over
parameters and columns) every time. Here the table is built once per phase and layout, by
the C runner's own ``CTables`` (sizes, facts, block map, scratch columns, the buffers the C
code writes), and a call then writes each column's pointers from its vector (one NumPy
assignment per column), the hypers and torch's thread count, and runs ``optdsl_step``. The
phase's scalar outputs are its scalar states: float64 cells, a row per parameter, each given
the same group-wide value; the first row is read back. Results are those of the C runner's
path bit for bit, whatever the thread count (blocks combine in block order).

Not for every phase: a vector whose parts are not contiguous CPU tensors of the parameters'
dtype, or a step that does not finish its reductions in C, goes through the C runner
(``run`` returns None).
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from optdsl.runtime.c_runner import TORCH_DTYPE_CODES, CTables
from optdsl.runtime.step import Entry
from optdsl.runtime.vectors import Layout, Vector


class _Plan:
    """One phase's table over one layout, and where each vector goes in it."""

    def __init__(self, lib, runner, layout: Layout, handles: dict[str, Vector],
                 names: list[str]) -> None:
        params = layout.params
        self.layout = layout
        self.cells = torch.zeros((len(params), len(names) + 1), dtype=torch.float64)
        entries = []
        for j, param in enumerate(params):
            state = {key: handle.parts[j] for key, handle in handles.items()}
            state.update({name: self.cells[j, k] for k, name in enumerate(names)})
            state["step"] = self.cells[j, len(names)]
            entries.append(Entry(param, param, state, 1.0))
        self.tables = CTables(lib, entries, runner.tensor_keys, runner.scalar_keys,
                              [None] * len(params))
        ncol = self.tables.ncol
        self.grid = self.tables.ptr.reshape(len(params), ncol)  # a view: rows are parameters
        self.columns = [(key, 2 + c) for c, key in enumerate(runner.tensor_keys)]
        self.tables.t[:] = 1.0
        # the table keeps the tensors it points into; of this call's vectors it needs none
        # (they are written afresh on every call), only its scratch columns and the cells
        given = {int(p) for _, v in handles.items() for p in v.pointers()[0]}
        self.tables.keep = [x for x in self.tables.keep if x.data_ptr() not in given]
        self.names = names

    def bind(self, layout: Layout, handles: dict[str, Vector], dtype: torch.dtype) -> bool:
        """Point the table at this call's parameters and vectors; False when one of them
        cannot be read in place."""
        found = layout.parameters().pointers()
        if found is None or found[1] != dtype:
            return False
        grid = self.grid
        grid[:, 0] = found[0]
        grid[:, 1] = found[0]  # (phases read the closure's gradient as a vector column)
        for key, column in self.columns:
            found = handles[key].pointers()
            if found is None or found[1] != dtype:
                return False
            grid[:, column] = found[0]
        return True


class CPhases:
    """One Machine's direct runner of phases on the C back end (plans per phase program)."""

    def __init__(self) -> None:
        self._plans: dict[int, tuple[Any, _Plan]] = {}

    def run(self, runner, variant, spec, scalars: dict[str, float], layout: Layout,
            handles: dict[str, Vector]) -> list[float] | None:
        """Run the phase; its scalar results in ``spec.results`` order, or None when it must
        go through the C runner instead."""
        params = layout.params
        dtype = layout.dtype
        if not params or layout.device.type != "cpu" or dtype not in TORCH_DTYPE_CODES:
            return None
        found = layout.parameters().pointers()
        if found is None or found[1] != dtype:  # (a parameter that is not contiguous)
            return None
        lib = variant.generated("c").module
        if not lib.FINISHES_IN_C:
            return None
        plan = self._plan(lib, runner, variant, spec, layout, handles, dtype)
        if plan is None or not plan.bind(layout, handles, dtype):
            return None
        tables = plan.tables
        tables.set_scalars(lib, scalars, 1.0)
        tables.args.sr = 0
        rc = lib.optdsl_step(ctypes.byref(tables.args))
        if rc:
            raise RuntimeError(f"the generated C step failed (code {rc})")
        return plan.cells[0, :len(plan.names)].tolist()

    def _plan(self, lib, runner, variant, spec, layout: Layout, handles: dict[str, Vector],
              dtype: torch.dtype) -> _Plan | None:
        key = id(variant)
        found = self._plans.get(key)
        if found is not None and found[0] is variant and found[1].layout is layout:
            return found[1]
        if any(v.pointers() is None or v.pointers()[1] != dtype for v in handles.values()):
            return None
        plan = _Plan(lib, runner, layout, handles, [name for name, _, _ in spec.results])
        if plan.tables.writeback or plan.tables.scalar_writeback:  # staged: not in place
            return None
        self._plans[key] = (variant, plan)
        return plan

