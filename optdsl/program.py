"""A compiled program: the object behind ``optdsl.compile`` and ``optdsl.load``.

It owns the pipeline, top to bottom in one place: parse, AST, check, optimize (the rewrites
of optdsl.passes); per param group a variant (switches specialized, AMP unscaling); per back
end, legalize and schedule into a compilation unit, generate its source, load it. Sources
and modules are produced lazily and kept. Every failure of the compiler, also one that
happens lazily at the first ``step()``, reaches users as one DslError, positioned at the
expression being compiled when it is known (``OPTDSL_DEBUG=1`` re-raises the raw error).
It makes torch optimizers (``optimizer``, ``optimizer_class``) and NumPy optimizers
(``numpy_optimizer``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any, Iterator

from optdsl.codegen.contract import GeneratedModule
from optdsl.codegen.unit import Unit
from optdsl.errors import CompilerBug, DslError, Span
from optdsl.frontend.check import MAX_REPEAT, Checked, check
from optdsl.frontend.limits import read_source
from optdsl.frontend.parse import parse
from optdsl.frontend.procedure import check_procedure, is_procedure
from optdsl.frontend.signature import HyperSpec, Requirement, StateSpec
from optdsl.frontend.sparse import SparseRule
from optdsl.frontend.to_ast import to_ast
from optdsl.ir.nodes import Graph
from optdsl.ir.printer import print_graph
from optdsl.ir.schedule import Schedule, schedule
from optdsl.passes import optimize
from optdsl.passes.legalize import legalize
from optdsl.passes.specialize import (
    flag_masks,
    flag_values,
    param_flag_masks,
    specialize,
    unscale_gradient,
)

DEBUG = bool(os.environ.get("OPTDSL_DEBUG"))


@contextlib.contextmanager
def compile_boundary(filename: str, source: str) -> Iterator[None]:
    """Where compiler errors become the user's DslError (with the program's text)."""
    try:
        yield
    except DslError as exc:
        if exc.source is None:
            raise exc.with_source(filename, source) from None
        raise
    except RecursionError:
        raise DslError("program nested too deeply to compile", Span(1, 1), filename=filename,
                       source=source) from None
    except CompilerBug as exc:
        if DEBUG:
            raise exc.cause from exc
        raise _internal(exc.cause, exc.span or Span(1, 1), filename, source) from None
    except Exception as exc:  # a compiler bug must still not show users an internal frame
        if DEBUG:
            raise
        raise _internal(exc, Span(1, 1), filename, source) from None


def _internal(exc: BaseException, span: Span, filename: str, source: str) -> DslError:
    return DslError(f"internal compiler error ({type(exc).__name__}: {exc}); please report "
                    f"it with this program (set OPTDSL_DEBUG=1 for details)", span,
                    filename=filename, source=source)


class Program:
    """One optimizer written in optdsl, checked and optimized."""

    def __init__(self, checked: Checked, source: str, filename: str, name: str,
                 module=None) -> None:
        self._checked = checked
        self._module = module  # the AST, lowered again for other repetition counts
        self.text = source
        self.filename = filename
        self.name = name
        self.description = checked.description
        self.hypers: dict[str, HyperSpec] = dict(checked.hypers)
        self.states: dict[str, StateSpec] = dict(checked.states)
        self.requirements: tuple[Requirement, ...] = checked.requirements
        self.sparse: SparseRule = checked.sparse  # what it says about sparse gradients
        self.graph: Graph = checked.graph
        self.optimized: Graph = optimize(checked.graph, check=DEBUG)
        self.tensor_states = frozenset(n for n, s in self.states.items() if s.tensor)
        self.schedule: Schedule = schedule(self.optimized, self.tensor_states)
        self.flags = flag_masks(self.optimized)
        self.param_flags = param_flag_masks(self.optimized)
        if self.param_flags:
            _refuse_param_switches_with_group_reductions(self)
        self.repeat_hypers = tuple(n for n, s in self.hypers.items() if s.repeat)
        self._variants: dict[tuple, Variant] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<optdsl.Program {self.name} hypers={list(self.hypers)} states={list(self.states)}>"

    def boundary(self):
        """The compile boundary for this program's text (see ``compile_boundary``)."""
        return compile_boundary(self.filename, self.text)

    @functools.cached_property
    def library_work(self) -> str:
        """This program's first value computed in a library stage (matrix products, row and
        column statistics, bfloat16 work: optdsl.ir.stages), named with its line; '' if the
        step is element-wise sweeps only."""
        from optdsl.ir.ops import OPS

        for v in sorted(self.schedule.library):
            eq = self.optimized.eqs[v]
            name = OPS[eq.op].dsl or OPS[eq.op].symbol or eq.op
            return f"`{name}` at line {eq.line}" if eq.line else f"`{name}`"
        return ""

    def __reduce__(self):
        """Pickled as its source: unpickling compiles it again (in a fresh process), or finds
        this very Program (in this process, by a token it is given when first pickled)."""
        token = self.__dict__.get("_token")
        if token is None:
            token = self.__dict__["_token"] = uuid.uuid4().hex
            _PICKLED[token] = self
        return (rebuild_program, (self.text, self.name, self.filename, token))

    @functools.cached_property
    def t_marks_only_first_update(self) -> bool:
        """Whether the step reads `t` only to tell a parameter's first update from the others
        (`t == 1`, `t != 1`), or not at all: then a checkpoint without step counts (torch.optim.
        SGD keeps none) resumes exactly with t = 1 for a parameter that has state."""
        eqs = self.optimized.eqs
        steps = {i for i, eq in enumerate(eqs) if eq.op == "t"}
        for eq in eqs:
            if steps.intersection(eq.args):
                other = [a for a in eq.args if a not in steps]
                if not (eq.op in ("eq", "ne") and len(other) == 1
                        and eqs[other[0]].op == "const" and eqs[other[0]].attr == 1.0):
                    return False
        return not any(v in steps for _, v in self.optimized.outputs)

    # -- generated code -----------------------------------------------------------------------
    def ir(self, optimized: bool = True) -> str:
        return print_graph(self.optimized if optimized else self.graph, self.name)

    @functools.cached_property
    def generic(self) -> Variant:
        """The step for any hyper values (no switch specialized): what `source()` shows."""
        return Variant(self, None, self.optimized)

    def variant(self, hyper: dict[str, float], unscale: bool = False,
                facts: dict[str, float] | None = None) -> Variant:
        """The step specialized for this group's switches (see optdsl.passes.specialize)
        and repetition counts; with ``unscale`` the gradients are read divided by the AMP
        grad scale; with ``facts`` (a parameter's: optdsl.ir.evaluate.param_facts), also for
        the switches that depend on the parameter (such as `w.ndim > 1`)."""
        counts = self.repetition_counts(hyper)
        if not self.flags and not unscale and not counts and not self.param_flags:
            return self.generic
        graph = self._counted(counts)
        flags = flag_masks(graph) if counts else self.flags
        key = flag_values(graph, flags, hyper) + ((True,) if unscale else ())
        per_param = param_flag_masks(graph) if counts else self.param_flags
        if per_param:
            if facts is None:
                raise ValueError(f"{self.name}'s step depends on its parameters' shapes: give "
                                 f"the parameter's facts")
            key += ("param",) + flag_values(graph, per_param, {**hyper, **facts})
        key = tuple(counts.items()) + key
        found = self._variants.get(key)
        if found is None:
            with self._lock, self.boundary():
                found = self._variants.get(key)
                if found is None:
                    chosen = dict(zip(flags, flag_values(graph, flags, hyper)))
                    if per_param:
                        chosen.update(zip(per_param, flag_values(graph, per_param,
                                                                 {**hyper, **facts})))
                    graph = specialize(graph, chosen)
                    if unscale:
                        graph = unscale_gradient(graph)
                    found = Variant(self, key, optimize(graph, check=DEBUG))
                    self._variants[key] = found
        return found

    def repetition_counts(self, hyper: dict[str, float]) -> dict[str, int]:
        """The values of the hypers that count repetitions, where they differ from their
        defaults (the graph of the defaults is the program's own)."""
        counts = {}
        for name in self.repeat_hypers:
            value = hyper[name]
            if not float(value).is_integer() or not 0 <= value <= MAX_REPEAT:
                raise ValueError(f"Invalid {name}: {value!r}; it counts repetitions, so it must "
                                 f"be a whole number from 0 to {MAX_REPEAT}")
            if int(value) != self.hypers[name].default:
                counts[name] = int(value)
        return counts

    def _counted(self, counts: dict[str, int]) -> Graph:
        """The optimized graph for these repetition counts."""
        if not counts:
            return self.optimized
        cache = self.__dict__.setdefault("_counted_graphs", {})
        key = tuple(sorted(counts.items()))
        if key not in cache:
            with self.boundary():
                cache[key] = optimize(check(self._module, counts).graph, check=DEBUG)
        return cache[key]

    def source(self, backend: str = "numpy") -> str:
        """The generated code of a registered back end ("numpy", "triton", ...), or the IR
        ("ir")."""
        from optdsl.runtime import backends

        if backend == "ir":
            return self.ir()
        if backend not in backends.BACKENDS:
            raise ValueError(f"backend must be one of "
                             f"{', '.join(map(repr, backends.names(False) + ('ir',)))}, "
                             f"got {backend!r}")
        return self.generic.source(backend)

    # -- optimizers ----------------------------------------------------------------------------
    @functools.cached_property
    def optimizer_class(self) -> type:
        """The torch.optim.Optimizer class of this program (pickled by its program)."""
        from optdsl.optim.torch_optimizer import make_optimizer_class

        return make_optimizer_class(self)

    def optimizer(self, params, /, *args: Any, **kwargs: Any):
        """A torch.optim.Optimizer running this program: ``prog.optimizer(model.parameters(),
        lr=1e-3)``; it takes what ``optimizer_class`` takes (hypers by position too)."""
        return self.optimizer_class(params, *args, **kwargs)

    def numpy_optimizer(self, arrays, /, **hypers: Any):
        """An optimizer over plain NumPy arrays, updated in place by ``step(grads)``."""
        from optdsl.optim.numpy_optimizer import NumpyOptimizer

        return NumpyOptimizer(self, arrays, **hypers)


class Variant:
    """A program's step compiled for one setting of its switches (key None: any setting);
    per back end, its compilation unit, source and loaded module."""

    def __init__(self, program: Program, key: tuple[bool, ...] | None, graph: Graph) -> None:
        self.program = program
        self.key = key
        self.graph = graph
        self.schedule: Schedule = schedule(graph, program.tensor_states)
        self._units: dict[str, Unit] = {}
        self._sources: dict[str, str] = {}
        self._modules: dict[tuple[str, str], GeneratedModule] = {}
        self._lock = threading.RLock()

    @functools.cached_property
    def title(self) -> str:
        if not self.key:
            return self.program.name
        return self.program.name + "_" + "".join("1" if k else "0" for k in self.key)

    @functools.cached_property
    def live_states(self) -> frozenset[str]:
        """The tensor states this step reads or changes (see Schedule.live_states)."""
        return self.schedule.live_states

    @functools.cached_property
    def needs_matrix(self) -> str:
        """What makes this step view parameters as matrices ('' if nothing does): the first
        matrix operation, named with its line."""
        from optdsl.ir.ops import OPS

        for eq in self.graph.eqs:
            if eq.args and (OPS[eq.op].shape_rule is not None or eq.kind.shaped):
                name = OPS[eq.op].dsl or OPS[eq.op].symbol or eq.op
                return f"`{name}` at line {eq.line}" if eq.line else f"`{name}`"
        return ""

    @functools.cached_property
    def required_keys(self) -> tuple[str, ...]:
        """The state keys of the tensor states this step reads or changes: a parameter must
        have them (one a step does not use may be absent)."""
        return tuple(spec.key for name, spec in self.program.states.items()
                     if spec.tensor and name in self.live_states)

    def check_states(self, state: dict) -> None:
        """Raise if a parameter's ``state`` lacks a tensor state this step uses (a runner
        would read a null column)."""
        for key in self.required_keys:
            if state.get(key) is None:
                raise RuntimeError(f"state[{key!r}] of a parameter is missing, and this step "
                                   f"uses it; load it from a checkpoint, or clear the "
                                   f"parameter's state (opt.state[p] = {{}}) to start it "
                                   f"afresh")

    def unit(self, backend: str) -> Unit:
        """The compilation unit of a back end: this step legalized for it, and scheduled."""
        found = self._units.get(backend)
        if found is None:
            from optdsl.runtime import backends

            info = backends.get(backend)
            if self.program.library_work and not info.library_stages:
                raise ValueError(f"the {backend} back end does not run matrix work (library "
                                 f"stages) yet, and {self.program.name} has "
                                 f"{self.program.library_work}; use backend='numpy'")
            refused = info.refuses(self.graph, self.program.name)
            if refused:
                raise ValueError(refused)
            with self._lock, self.program.boundary():
                graph = legalize(self.graph, info.spells)
                shaped = frozenset(n for n, s in self.program.states.items() if s.per)
                found = Unit(self.title, schedule(graph, self.program.tensor_states,
                                                  info.device_scalars, info.library_only,
                                                  info.fuse_stats),
                             tuple(self.program.states), self.program.tensor_states, shaped)
                self._units[backend] = found
        return found

    def source(self, backend: str) -> str:
        """The generated source of a back end."""
        found = self._sources.get(backend)
        if found is None:
            from optdsl.runtime import backends

            unit = self.unit(backend)
            with self._lock, self.program.boundary():
                found = backends.get(backend).generate(unit)
                self._sources[backend] = found
        return found

    def generated(self, backend: str) -> GeneratedModule:
        """The loaded module of a back end (once per process and load mode)."""
        info = _backends().get(backend)
        key = (backend, info.load_mode())
        found = self._modules.get(key)
        if found is None:
            source = self.source(backend)
            with self._lock:
                found = self._modules.get(key)
                if found is None:
                    found = info.load(source, self.unit(backend).safe_title)
                    self._modules[key] = found
        return found


def _backends():
    """optdsl.runtime.backends (imported at first use: it imports the code generators,
    which import this module; kept, since every step asks for its loaded module)."""
    global _BACKENDS
    if _BACKENDS is None:
        from optdsl.runtime import backends

        _BACKENDS = backends
    return _BACKENDS


_BACKENDS = None
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def compile_program(source: str, name: str | None = None,
                    filename: str = "<string>") -> Program:
    """Compile program text. Every mistake is one DslError."""
    if not isinstance(source, str):
        raise TypeError(f"program source must be a str, got {type(source).__name__}")
    if name is not None and (not isinstance(name, str) or not _CLASS_NAME.fullmatch(name)):
        raise ValueError(f"name must be an identifier, got {name!r}")
    with compile_boundary(filename, source):
        module = to_ast(parse(source, filename), filename, source)
        if is_procedure(module):  # closure-driven: optdsl.closure_program
            from optdsl.closure_program import ClosureProgram

            closure_checked = check_procedure(module)
            title = name or closure_checked.name or _default_name(filename)
            return ClosureProgram(closure_checked, source, filename, title)
        checked = check(module)
        title = name or checked.name or _default_name(filename)
        return Program(checked, source, filename, title, module)


# The programs of this process that were pickled, or unpickled, by token: unpickling a
# program (or an optimizer class, or an optimizer, of one) finds the one it came from, so
# that its optimizer_class stays one class, instead of compiling it again.
_PICKLED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def rebuild_program(text: str, name: str, filename: str, token: str | None = None) -> Program:
    """The Program of ``text`` (what unpickling a Program calls)."""
    found = _PICKLED.get(token) if token is not None else None
    if found is None:
        found = compile_program(text, name, filename)
        if token is not None:
            found.__dict__["_token"] = token
            _PICKLED[token] = found
    return found


def _refuse_param_switches_with_group_reductions(program: Program) -> None:
    """A switch on a parameter's facts (`w.ndim > 1`) steps parameters of one group in
    separate variants: a group-wide reduction would then not see the whole group."""
    from optdsl.ir.ops import GLOBAL, OPS

    for eq in program.optimized.eqs:
        if OPS[eq.op].category == GLOBAL:
            first = program.optimized.eqs[program.param_flags[0]]
            raise DslError(f"`{eq.op}()` reduces over every parameter of the group, but this "
                           f"program switches on each parameter's facts (line {first.line}); "
                           f"use one or the other", eq.span, filename=program.filename,
                           source=program.text)


def _default_name(filename: str) -> str:
    stem = Path(filename).stem if not filename.startswith("<") else "program"
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", stem)  # ASCII only (\W keeps Unicode letters)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"program_{cleaned}"


def load_program(path: str | os.PathLike) -> Program:
    """Compile a program file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    filename = os.fspath(path)
    source = read_source(filename)  # bounded: /dev/zero is refused at the size limit
    return compile_program(source, filename=filename)
