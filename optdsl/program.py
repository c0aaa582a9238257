"""A compiled program: the object behind ``optdsl.compile`` and ``optdsl.load``.

It owns the pipeline in one place: parse, AST, check, optimize, schedule, and the generated
sources, produced lazily and kept. It makes torch optimizers (``optimizer``,
``optimizer_class``) and NumPy optimizers (``numpy_optimizer``).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from optdsl.errors import DslError, Span
from optdsl.frontend.check import Checked, check
from optdsl.frontend.limits import read_source
from optdsl.frontend.parse import parse
from optdsl.frontend.signature import HyperSpec, StateSpec
from optdsl.frontend.to_ast import to_ast
from optdsl.ir.nodes import Graph
from optdsl.ir.printer import print_graph
from optdsl.ir.schedule import Schedule, schedule
from optdsl.passes import optimize
from optdsl.passes.specialize import flag_masks, flag_values, specialize, unscale_gradient

DEBUG = bool(os.environ.get("OPTDSL_DEBUG"))


class Program:
    """One optimizer written in optdsl, checked and optimized."""

    def __init__(self, checked: Checked, source: str, filename: str, name: str) -> None:
        self._checked = checked
        self.text = source
        self.filename = filename
        self.name = name
        self.description = checked.description
        self.hypers: dict[str, HyperSpec] = dict(checked.hypers)
        self.states: dict[str, StateSpec] = dict(checked.states)
        self.graph: Graph = checked.graph
        self.optimized: Graph = optimize(checked.graph, check=DEBUG)
        self.tensor_states = {n for n, s in self.states.items() if s.tensor}
        self.schedule: Schedule = schedule(self.optimized, self.tensor_states)
        self.flags = flag_masks(self.optimized)
        self._variants: dict[tuple[bool, ...], Variant] = {}

    def __repr__(self) -> str:
        return f"<optdsl.Program {self.name} hypers={list(self.hypers)} states={list(self.states)}>"

    # -- generated code -----------------------------------------------------------------------
    def ir(self, optimized: bool = True) -> str:
        return print_graph(self.optimized if optimized else self.graph, self.name)

    @functools.cached_property
    def _numpy_source(self) -> str:
        return self.generic.numpy_source

    @functools.cached_property
    def generic(self) -> Variant:
        """The step for any hyper values (no switch specialized): what `source()` shows."""
        return Variant(self, None, self.optimized)

    def variant(self, hyper: dict[str, float], unscale: bool = False) -> Variant:
        """The step specialized for this group's switches (see optdsl.passes.specialize);
        with ``unscale`` the gradients are read divided by the AMP grad scale (the hyper
        ``INV_GRAD_SCALE`` holds its inverse)."""
        if not self.flags and not unscale:
            return self.generic
        key = flag_values(self.optimized, self.flags, hyper) + ((True,) if unscale else ())
        found = self._variants.get(key)
        if found is None:
            graph = specialize(self.optimized, dict(zip(self.flags, key)))
            if unscale:
                graph = unscale_gradient(graph)
            found = Variant(self, key, optimize(graph, check=DEBUG))
            self._variants[key] = found
        return found

    @functools.cached_property
    def _triton_source(self) -> str:
        return self.generic.triton_source

    def source(self, backend: str = "numpy") -> str:
        """The generated code for ``backend`` ("numpy" or "triton"), or the IR ("ir")."""
        if backend == "numpy":
            return self._numpy_source
        if backend == "triton":
            return self._triton_source
        if backend == "ir":
            return self.ir()
        raise ValueError(f"backend must be 'numpy', 'triton' or 'ir', got {backend!r}")

    @functools.cached_property
    def numpy_runner(self):
        from optdsl.runtime.numpy_runner import NumpyRunner

        return NumpyRunner(self)

    @functools.cached_property
    def triton_runner(self):
        from optdsl.runtime.triton_runner import TritonRunner

        return TritonRunner(self)

    # -- optimizers ----------------------------------------------------------------------------
    @functools.cached_property
    def optimizer_class(self) -> type:
        from optdsl.optim.torch_optimizer import make_optimizer_class

        return make_optimizer_class(self)

    def optimizer(self, params, backend: str = "auto", **hypers: Any):
        """A torch.optim.Optimizer running this program: ``prog.optimizer(model.parameters(),
        lr=1e-3)``."""
        return self.optimizer_class(params, backend=backend, **hypers)

    def numpy_optimizer(self, arrays, /, **hypers: Any):
        """An optimizer over plain NumPy arrays, updated in place by ``step(grads)``."""
        from optdsl.optim.numpy_optimizer import NumpyOptimizer

        return NumpyOptimizer(self, arrays, **hypers)


class Variant:
    """A program's step compiled for one setting of its switches (key None: any setting)."""

    def __init__(self, program: Program, key: tuple[bool, ...] | None, graph: Graph) -> None:
        self.program = program
        self.key = key
        self.graph = graph
        self.schedule: Schedule = schedule(graph, program.tensor_states)

    @functools.cached_property
    def title(self) -> str:
        if not self.key:
            return self.program.name
        return self.program.name + "_" + "".join("1" if k else "0" for k in self.key)

    @functools.cached_property
    def required_keys(self) -> tuple[str, ...]:
        """The state keys of the tensor states this step reads or changes: a parameter must
        have them (one a step does not use may be absent)."""
        live = self.schedule.live_states
        return tuple(spec.key for name, spec in self.program.states.items()
                     if spec.tensor and name in live)

    def check_states(self, state: dict) -> None:
        """Raise if a parameter's ``state`` lacks a tensor state this step uses (a runner
        would read a null column)."""
        for key in self.required_keys:
            if state.get(key) is None:
                raise RuntimeError(f"state[{key!r}] of a parameter is missing, and this step "
                                   f"uses it; load it from a checkpoint, or clear the "
                                   f"parameter's state (opt.state[p] = {{}}) to start it "
                                   f"afresh")

    @functools.cached_property
    def numpy_source(self) -> str:
        from optdsl.codegen.numpy import generate

        return generate(self.schedule, list(self.program.states), self.program.tensor_states,
                        self.title)

    @functools.cached_property
    def triton_source(self) -> str:
        from optdsl.codegen.triton import generate_variant

        return generate_variant(self)

    @functools.cached_property
    def numpy_step(self):
        from optdsl.runtime.numpy_step import NumpyStep

        return NumpyStep(self.numpy_source, self.title)


_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def compile_program(source: str, name: str | None = None,
                    filename: str = "<string>") -> Program:
    """Compile program text. Every mistake is one DslError."""
    if not isinstance(source, str):
        raise TypeError(f"program source must be a str, got {type(source).__name__}")
    if name is not None and (not isinstance(name, str) or not _CLASS_NAME.fullmatch(name)):
        raise ValueError(f"name must be an identifier, got {name!r}")
    try:
        checked = check(to_ast(parse(source, filename), filename, source))
        title = name or checked.name or _default_name(filename)
        return Program(checked, source, filename, title)
    except DslError as exc:
        if exc.source is None:
            raise exc.with_source(filename, source) from None
        raise
    except RecursionError:
        raise DslError("program nested too deeply to compile", Span(1, 1), filename=filename,
                       source=source) from None
    except Exception as exc:  # a compiler bug must still not show users an internal frame
        if DEBUG:
            raise
        raise DslError(f"internal compiler error ({type(exc).__name__}: {exc}); please report "
                       f"it with this program (set OPTDSL_DEBUG=1 for details)", Span(1, 1),
                       filename=filename, source=source) from None


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
