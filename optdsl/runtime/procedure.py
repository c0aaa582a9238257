"""Runs closure-driven steps: the host statements of a Procedure (optdsl.ir.procedure) around
its compiled phases.

The host part is interpreted (a few dozen statements a step: control, float64 scalars, calls
of the closure, the line search, histories, dense algebra); each phase runs as a plain
program's step does, through the chosen back end's runner, over the group's parameters with
the vectors it reads and writes as its tensor columns (optdsl.runtime.vectors) and the host
values it reads as its hypers. Values: locals in a dict, states in the first parameter's
state dict (optdsl.runtime.proc_state), hypers as the group's. A mistake only a run can show
(no closure for `evaluate()`, an index past a history's end) is a DslError at the program's
line that is also the TypeError / RuntimeError / IndexError a Python caller expects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from optdsl.errors import DslError, Span
from optdsl.ir import procedure as ir
from optdsl.runtime import backends
from optdsl.runtime.numpy_runner import NumpySlot
from optdsl.runtime.proc_c import CPhases
from optdsl.runtime.proc_calls import Calls
from optdsl.runtime.proc_state import States
from optdsl.runtime.step import Entry, OneStepAtATime, StepOptions
from optdsl.runtime.vectors import Layout, Vector

BREAK, RETURN = "break", "return"


class ClosureRequired(DslError, TypeError):
    """A construct that calls the closure was reached by a step given none."""


class StepFailed(DslError, RuntimeError):
    """A closure-driven step could not go on (raised at the program's line)."""


class IndexFailed(DslError, IndexError):
    """A history or array was read past its end."""


class Machine:
    """One optimizer's runner of a closure-driven program's steps on one back end."""

    def __init__(self, program, backend: str) -> None:
        self.program = program  # its procedure, phase programs, host functions and text
        self.procedure: ir.Procedure = program.procedure
        self.backend = backend
        self._runners: dict[int, Any] = {}
        self.layout: Layout | None = None
        self._busy = OneStepAtATime()
        self.c_phases = CPhases() if backend == "c" else None  # (its tables kept per phase)

    def layout_of(self, params: list[torch.Tensor]) -> Layout:
        layout = self.layout
        if layout is None or len(layout.params) != len(params) or any(
                a is not b or a.numel() != n for a, b, n in zip(layout.params, params,
                                                                 layout.numels)):
            layout = self.layout = Layout(params)
        return layout

    def runner(self, phase) -> Any:
        key = id(phase)
        found = self._runners.get(key)
        if found is None:
            found = self._runners[key] = backends.get(self.backend).make_runner(phase)
        return found

    def step(self, params: list[torch.Tensor], store: dict, hyper: dict[str, float],
             closure: Callable[[], Any] | None):
        """Run one step; returns what the closure returned at its first call (or None)."""
        with self._busy:
            frame = Frame(self, self.layout_of(params), store, hyper, closure)
            try:
                frame.block(self.procedure.body)
            finally:
                frame.calls.finish()
            return frame.calls.first_loss


class Frame:
    """One step's values and the execution of its statements."""

    def __init__(self, machine: Machine, layout: Layout, store: dict, hyper: dict[str, float],
                 closure) -> None:
        self.machine = machine
        self.layout = layout
        self.hyper = hyper
        self.locals: dict[str, Any] = {}
        self.states = States(machine.procedure.states, store, layout, self.host)
        self.calls = Calls(self, closure)
        self.line = 0

    def error(self, cls, message: str, line: int | None = None, column: int = 1):
        program = self.machine.program
        return cls(message, Span(line or self.line or 1, column), filename=program.filename,
                   source=program.text)

    # -- values ----------------------------------------------------------------------------------
    def host(self, expr: ir.HostExpr):
        values = {ref.key: self.read(ref) for ref in expr.refs}
        value = self.machine.program.host_function(expr)(values)
        return bool(value) if expr.mask else np.float64(value)

    def read(self, ref: ir.Ref):
        kind = ref.kind
        if kind == "hyper":
            return np.float64(self.hyper[ref.name])
        if kind == "local":
            if ref.name == "g" and "g" not in self.locals:
                self.locals["g"] = self.calls.entry_gradient()
            return self.locals[ref.name]
        if kind == "state":
            return self.states.get(ref.name)
        if kind == "w":
            return self.layout.parameters()
        try:
            return self.states.item(ref.name, self.index(ref))
        except IndexError as exc:
            raise self.error(IndexFailed, str(exc)) from None

    def index(self, ref: ir.Ref) -> int:
        value = self.locals[ref.index]
        if not float(value).is_integer():
            raise self.error(StepFailed, f"the index of `{ref.name}` is {float(value)!r}, not "
                             f"a whole number")
        return int(value)

    def write(self, ref: ir.Ref, value) -> None:
        kind = ref.kind
        if kind == "local":
            self.locals[ref.name] = value
        elif kind == "state":
            self.states.set(ref.name, value)
        elif kind == "item":
            try:
                self.states.set_item(ref.name, self.index(ref), value)
            except IndexError as exc:
                raise self.error(IndexFailed, str(exc)) from None
        elif kind == "w":
            for param, part in zip(self.layout.params, value.parts):
                param.detach().copy_(part.reshape(param.shape))
        else:
            raise AssertionError(ref)

    def current_vector(self, ref: ir.Ref) -> Vector | None:
        """The vector a ref holds now, or None (a local not set yet, a state not made)."""
        if ref.kind == "local":
            return self.locals.get(ref.name) if ref.name != "g" else self.read(ref)
        if ref.kind == "state":
            info = self.states.infos[ref.name]
            return self.states.get(ref.name) if info.key in self.states.store else None
        return None

    # -- statements ------------------------------------------------------------------------------
    def block(self, body) -> str | None:
        for stmt in body:
            self.line = stmt.line
            outcome = self.statement(stmt)
            if outcome is not None:
                return outcome
        return None

    def statement(self, stmt) -> str | None:
        if isinstance(stmt, ir.RunPhase):
            self.phase(self.machine.procedure.phases[stmt.phase])
        elif isinstance(stmt, ir.SetScalar):
            self.write(stmt.target, self.host(stmt.value))
        elif isinstance(stmt, ir.Call):
            self.calls.call(stmt)
        elif isinstance(stmt, ir.Dense):
            self.write(stmt.target, self.calls.dense(stmt))
        elif isinstance(stmt, ir.HistoryOp):
            self.history(stmt)
        elif isinstance(stmt, ir.If):
            (test, then), = stmt.branches
            return self.block(then if self.host(test) else stmt.orelse)
        elif isinstance(stmt, ir.While):
            return self.loop_while(stmt)
        elif isinstance(stmt, ir.Loop):
            return self.loop(stmt)
        elif isinstance(stmt, ir.Break):
            return BREAK
        elif isinstance(stmt, ir.Return):
            return RETURN
        return None

    def history(self, stmt: ir.HistoryOp) -> None:
        if stmt.op == "clear":
            return self.states.clear(stmt.history)
        value = stmt.value
        value = self.read(value) if isinstance(value, ir.Ref) else self.host(value)
        try:
            self.states.push(stmt.history, value)
        except ValueError as exc:
            raise self.error(StepFailed, str(exc)) from None

    def loop_while(self, stmt: ir.While) -> str | None:
        while True:
            self.block(stmt.prelude)
            self.line = stmt.line
            if not self.host(stmt.condition):
                return None
            outcome = self.block(stmt.body)
            if outcome == RETURN:
                return RETURN
            if outcome == BREAK:
                return None

    def loop(self, stmt: ir.Loop) -> str | None:
        if stmt.over is not None:
            count = len(self.states.get(stmt.over))
        else:
            value = float(self.host(stmt.count))
            if not np.isfinite(value) or value != int(value):
                raise self.error(StepFailed, f"a loop runs a whole number of times, not "
                                 f"{value!r}")
            count = max(int(value), 0)
        order = range(count - 1, -1, -1) if stmt.reverse else range(count)
        for i in order:
            if stmt.var is not None:
                self.locals[stmt.var] = np.float64(i)
            outcome = self.block(stmt.body)
            if outcome == RETURN:
                return RETURN
            if outcome == BREAK:
                return None
        return None

    # -- phases ----------------------------------------------------------------------------------
    def phase(self, spec: ir.PhaseSpec) -> None:
        scalars = {}
        for name, ref in spec.inputs:
            value = self.read(ref)
            scalars[name] = float(value)
        self.run_phase(spec, scalars, self.phase_columns(spec))

    def phase_columns(self, spec: ir.PhaseSpec) -> dict[str, Vector]:
        written = {key for key, _ in spec.writes}
        handles = {}
        layout = self.layout
        for key, ref in spec.columns:
            if key not in written:
                handles[key] = self.read(ref)
                continue
            current = self.current_vector(ref)
            if key in spec.reads:
                handles[key] = current if current.owned else layout.owned_copy(current)
            else:
                handles[key] = current if current is not None and current.owned \
                    else layout.new()
        return handles

    def run_phase(self, spec: ir.PhaseSpec, scalars: dict[str, float],
                  handles: dict[str, Vector]) -> None:
        program = self.machine.program.phase_program(spec)
        variant = program.variant(scalars)
        runner = self.machine.runner(program)
        values = self._run_arrays(runner, program, variant, scalars, handles)
        if values is None and self.machine.c_phases is not None:
            values = self.machine.c_phases.run(runner, variant, spec, scalars, self.layout,
                                               handles)
        if values is None:
            values = self._run_entries(runner, variant, spec, scalars, handles)
        for key, ref in spec.writes:
            self.write(ref, handles[key])
        for (name, ref, is_mask), value in zip(spec.results, values):
            self.write(ref, bool(value != 0.0) if is_mask else np.float64(value))

    def _run_entries(self, runner, variant, spec: ir.PhaseSpec, scalars, handles) -> list:
        """Through the runner's ``run`` (any back end): each parameter an Entry whose state
        holds its part of every column; scalar outputs come back as scalar states (a row of
        float64 cells per parameter, on the parameters' one device, each receiving the same
        group-level value), and a step count the phase does not read ("step": a device step
        counts updates)."""
        params = self.layout.params
        names = [name for name, _, _ in spec.results]
        if not params:
            return [0.0] * len(names)
        cells = torch.zeros((len(params), len(names) + 1), dtype=torch.float64,
                            device=params[0].device)  # (the optimizer checks one device)
        entries = []
        for j, param in enumerate(params):
            state = {key: handle.parts[j] for key, handle in handles.items()}
            state.update({name: cells[j, k] for k, name in enumerate(names)})
            state["step"] = cells[j, len(names)]
            entries.append(Entry(param, param, state, 1.0))
        runner.run(variant, entries, StepOptions(scalars, transient=True))
        return cells[0, :len(names)].tolist()

    def _run_arrays(self, runner, program, variant, scalars, handles) -> list | None:
        """The NumPy back end's fast path: slots of NumPy views kept on the vectors (the
        runner's own per-parameter views would be rebuilt whenever a column is bound to
        another vector, as in every iteration of a loop over a history). None when it does
        not apply (another back end, a dtype that is staged)."""
        run_arrays = getattr(runner, "run_arrays", None)
        params = self.layout.parameters().arrays()
        if run_arrays is None or params is None:
            return None
        columns = [key for key, spec in program.states.items() if spec.tensor]
        arrays = [handles[key].arrays() for key in columns]
        if any(a is None for a in arrays):
            return None
        module = variant.generated(runner.backend)
        results = len(program.states) - len(columns)
        states = [None] * len(columns) + [np.float64(0.0)] * results
        slots = [NumpySlot(1.0, list(states), module.num_reductions,
                           [w, w] + [column[j] for column in arrays])
                 for j, w in enumerate(params)]
        run_arrays(variant, slots, StepOptions(scalars))
        return [float(v) for v in slots[0].states[len(columns):]] if slots else [0.0] * results
