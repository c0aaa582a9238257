"""The torch.optim.Optimizer of a closure-driven program (LBFGS, Newton, ...), stepped as
torch.optim.LBFGS is: ``opt.step(closure)``.

As torch.optim.LBFGS: one param group (its error otherwise), hypers are constructor keywords
and the group's keys, and the whole state lives in the state of the group's first parameter
(torch's layout: numbers, flat vectors in the parameters' flattening order, lists), so
``state_dict`` / ``load_state_dict`` are torch's own and checkpoints move both ways between
the twin and its namesake. All parameters share one dtype and one device (the vectors are
flat, as torch's). The step runs the program's procedure (optdsl.runtime.procedure) on the
chosen back end; ``step(closure)`` returns what the closure returned at its first call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from optdsl.optim import distributed
from optdsl.optim import hypers as hyper_values
from optdsl.optim.torch_optimizer import OptimizerClass
from optdsl.runtime import backends
from optdsl.runtime.procedure import Machine


class ClosureOptimizer(torch.optim.Optimizer, metaclass=OptimizerClass):
    """Base class of the optimizers of closure-driven programs; subclasses set
    ``program``."""

    program = None
    positional: tuple[str, ...] = ()
    tensor_hyper_rules: tuple[str, ...] = ()

    def __init__(self, params, *args: Any, backend: str = "auto", **kwargs: Any) -> None:
        name = type(self).__name__
        if len(args) > len(self.positional):
            raise TypeError(f"{name} takes at most {len(self.positional)} positional "
                            f"hyperparameters ({', '.join(self.positional)}), got {len(args)}")
        for key, value in zip(self.positional, args):
            if key in kwargs:
                raise TypeError(f"got multiple values for argument `{key}`")
            kwargs[key] = value
        defaults = hyper_values.resolve(self.program.hypers, kwargs, extra={},
                                        requirements=self.program.requirements)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        backends.choose(backend, [])
        self._backend_request = backend
        self._machine: Machine | None = None
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"{name} doesn't support per-parameter options (parameter "
                             f"groups)")
        self._check_params(self.param_groups[0]["params"])
        self._backend = _choose(backend, {p.device.type for p in self._params},
                                _numel(self._params), self.program)

    @property
    def _params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    @property
    def backend(self) -> str:
        return self._backend

    def _check_params(self, params: list[torch.Tensor]) -> None:
        name = type(self).__name__
        for p in params:
            if distributed.is_dtensor(p):
                raise TypeError(f"{name} works on the whole model's flattened vector, so it "
                                f"does not take DTensor (sharded) parameters")
            if p.is_complex():
                raise TypeError(f"{name} does not support complex parameters")
            if not p.is_floating_point():
                raise TypeError(f"{name} optimizes floating-point tensors, got {p.dtype}")
        kinds = {(p.dtype, p.device) for p in params}
        if len(kinds) > 1:
            shown = ", ".join(sorted(f"{d} on {v}" for d, v in kinds))
            raise ValueError(f"{name} works on the flattened vector of all its parameters, so "
                             f"they share one dtype and one device; got {shown}")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_backend_request"] = self._backend_request
        state["_backend"] = self._backend
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_backend_request", "auto")
        self.__dict__.setdefault("_backend", "numpy")
        self._machine = None

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._machine is not None and self._machine.layout is not None:
            self._machine.layout.epoch += 1  # buffers made so far may now be held outside
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict (it casts the vectors to the first parameter's dtype and
        device), after checking that the state fits this program and these parameters."""
        self._validate(state_dict)
        super().load_state_dict(state_dict)
        self._machine = None

    def _validate(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("state", {})
        total = sum(p.numel() for p in self._params)
        for entry in saved.values():
            if not isinstance(entry, dict):
                continue
            for info in self.program.states.values():
                value = entry.get(info.key)
                if value is None:
                    continue
                _check_saved(info, value, total)

    # -- the step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One step of the program (a closure re-evaluates the model: see the closure
        contract in docs/language.md); returns the closure's first result."""
        if len(self.param_groups) != 1:
            raise AssertionError(f"Expected exactly one param_group, but got "
                                 f"{len(self.param_groups)}")
        group = self.param_groups[0]
        hyper = hyper_values.scalars(self.program.hypers, group)
        params = group["params"]
        if not params:
            return closure() if closure is not None else None
        self._check_params(params)
        devices = {p.device.type for p in params}
        backend = _choose(self._backend_request, devices, _numel(params), self.program)
        if self._machine is None or self._machine.backend != backend:
            self._machine = Machine(self.program, backend)
        self._backend = backend
        return self._machine.step(params, self.state[params[0]], hyper, closure)


def _numel(params: list[torch.Tensor]) -> int:
    return sum(p.numel() for p in params)


def _check_saved(info, value, total: int) -> None:
    kind = info.kind
    if kind == "vector":
        if not torch.is_tensor(value) or value.numel() != total:
            raise ValueError(f"state[{info.key!r}] of this checkpoint does not fit: it must "
                             f"be a vector of the {total} elements of the parameters")
    elif kind in ("history", "array"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"state[{info.key!r}] of this checkpoint must be a list, got "
                             f"{type(value).__name__}")
        for item in value:
            if info.entry == "vector" and (not torch.is_tensor(item) or item.numel() != total):
                raise ValueError(f"state[{info.key!r}] of this checkpoint holds an entry that "
                                 f"is not a vector of the {total} parameters' elements")
    elif kind == "scalar" and not _is_number(value):
        raise ValueError(f"state[{info.key!r}] of this checkpoint must be a number")


def _is_number(value) -> bool:
    if torch.is_tensor(value):
        return value.numel() == 1
    return isinstance(value, (int, float))


def make_closure_optimizer_class(program, name: str | None = None, module: str | None = None,
                                 positional: tuple[str, ...] | None = None) -> type:
    """A ClosureOptimizer subclass for ``program``, named after it."""
    cls_name = name or program.name
    doc = program.description or f"Optimizer compiled by optdsl from {program.filename}."
    keywords = ", ".join(f"{n}={s.default!r}" if not s.required else n
                         for n, s in program.hypers.items())
    attrs = {
        "program": program,
        "positional": tuple(program.hypers) if positional is None else tuple(positional),
        "__doc__": f"{doc}\n\nStepped with a closure: opt.step(closure). Keywords: "
                   f"{keywords}; backend={'|'.join(map(repr, backends.names()))}.",
        "__module__": module or "optdsl.generated",
    }
    return OptimizerClass(cls_name, (ClosureOptimizer,), attrs)


C_AUTO_MIN = 1 << 20  # elements from which "auto" runs a CPU group's phases on C


def _choose(request: str, devices: set[str], numel: int = 0, program=None) -> str:
    """The back end of a closure-driven step: as for any optimizer, except that "auto" runs
    CPU tensors on C only when the group has at least ``C_AUTO_MIN`` elements, a C compiler
    works and no phase of ``program`` has matrix work (which C does not run): there each
    phase is one foreign call on torch's threads over tables kept per phase
    (optdsl.runtime.proc_c), where NumPy runs one thread of chunked sweeps (2x slower than
    torch.optim.LBFGS on 10M parameters). Smaller groups stay on NumPy, whose phases keep
    views on each vector: a phase costs microseconds either way, nothing is compiled at
    first use, and their results are the NumPy back end's as before."""
    if request == "auto" and not set(devices) - {"cpu", "meta"}:
        if numel >= C_AUTO_MIN and "cpu" in devices and \
                backends.get("c").unavailable(frozenset({"cpu"}), True) is None and \
                not (program is not None and program.library_work):
            return "c"
        return "numpy"
    return backends.choose(request, devices)
