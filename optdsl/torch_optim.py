"""The torch.optim.Optimizer that runs a compiled program.

Conventions follow torch.optim: hypers are constructor keywords and param_group keys (so lr
schedulers and per-group overrides work), ``state['step']`` is a float32 tensor counting the
updates of that parameter (a parameter without a gradient is skipped and its step does not
advance), state tensors are stored under the program's ``as`` keys, and ``state_dict`` /
``load_state_dict`` are torch's own, so checkpoints of a torch.optim twin load here and back.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from optdsl import hypers as hyper_values
from optdsl.passes.specialize import INV_GRAD_SCALE
from optdsl.runtime import distributed, select


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class DslOptimizer(torch.optim.Optimizer):
    """Base class of every optimizer compiled from optdsl; subclasses set ``program``."""

    program = None  # set by make_optimizer_class
    # torch.amp.GradScaler sets `grad_scale` and `found_inf` on the optimizer and lets the
    # step unscale the gradients itself (in the same pass) and skip steps with inf/NaN.
    _step_supports_amp_scaling = True
    positional: tuple[str, ...] = ()  # the keywords that may also be given by position

    def __init__(self, params, *args: Any, backend: str = "auto", skip_nonfinite: bool = False,
                 **kwargs: Any) -> None:
        specs = self.program.hypers
        if len(args) > len(self.positional):
            raise TypeError(f"{type(self).__name__} takes at most {len(self.positional)} "
                            f"positional hyperparameters ({', '.join(self.positional)}), "
                            f"got {len(args)}")
        for name, value in zip(self.positional, args):
            if name in kwargs:
                raise TypeError(f"got multiple values for argument `{name}`")
            kwargs[name] = value
        defaults = hyper_values.resolve(specs, kwargs)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        select.choose(backend, [])  # reject unknown names before touching params
        self._backend_request = backend
        self._backend: str | None = None
        # Without a GradScaler: skip (and count) steps whose gradients hold inf or NaN.
        self.skip_nonfinite = bool(skip_nonfinite)
        self.skipped_steps = 0
        super().__init__(params, defaults)
        self._choose_backend()

    # -- construction -----------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.is_complex():
                raise TypeError(f"{type(self).__name__} does not support complex parameters")
            if not p.is_floating_point():
                raise TypeError(f"{type(self).__name__} optimizes floating-point tensors, got "
                                f"{p.dtype}")
        hyper_values.scalars(self.program.hypers, group)  # bad per-group values fail here
        if getattr(self, "_backend_request", None) is not None and self._backend is not None:
            self._choose_backend()

    def _choose_backend(self) -> None:
        devices = {p.device.type for g in self.param_groups for p in g["params"]}
        self._backend = select.choose(self._backend_request, devices)

    @property
    def backend(self) -> str:
        return self._backend or select.choose(self._backend_request, [])

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_backend_request"] = self._backend_request
        state["_backend"] = self._backend
        state["skip_nonfinite"] = self.skip_nonfinite
        state["skipped_steps"] = self.skipped_steps
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_backend_request", "auto")
        self.__dict__.setdefault("_backend", None)
        self.__dict__.setdefault("skip_nonfinite", False)
        self.__dict__.setdefault("skipped_steps", 0)
        # An older checkpoint may lack keywords added since (torch.optim's own __setstate__
        # fills `maximize`, `foreach`, ... with their defaults) and keep `step` as a float.
        specs = self.program.hypers if self.program is not None else {}
        for group in self.param_groups:
            for name, spec in specs.items():
                if not spec.required:
                    group.setdefault(name, spec.default)
            for name, default in hyper_values.TORCH_FLAGS.items():
                group.setdefault(name, default)
        for param_state in self.state.values():
            step = param_state.get("step") if isinstance(param_state, dict) else None
            if step is not None and not torch.is_tensor(step):
                param_state["step"] = torch.tensor(float(step), dtype=_scalar_dtype())

    # -- state --------------------------------------------------------------------------------
    def _state_keys(self) -> list[tuple[str, bool]]:
        return [(spec.key, spec.tensor) for spec in self.program.states.values()]

    def _init_state(self, param: torch.Tensor, state: dict, hyper: dict[str, float]) -> None:
        step = state.get("step")
        if step is None:
            # A checkpoint with state but no step (torch.optim.SGD keeps none) has done at
            # least one update; a fresh parameter has done none.
            done = 1.0 if any(s.key in state for s in self.program.states.values()) else 0.0
            state["step"] = torch.tensor(done, dtype=_scalar_dtype())
        elif not torch.is_tensor(step):  # an older checkpoint's float step
            state["step"] = torch.tensor(float(step), dtype=_scalar_dtype())
        for spec in self.program.states.values():
            if spec.key in state:
                continue
            state[spec.key] = _initial_value(spec, param, hyper)

    # -- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Perform one optimization step (re-evaluating the model with ``closure`` if given)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and float(found_inf) != 0:
            return loss  # GradScaler found inf/NaN: parameters, state and t stay as they are
        if self.skip_nonfinite and not self._grads_finite():
            self.skipped_steps += 1
            return loss
        grad_scale = getattr(self, "grad_scale", None)
        runner = self._runner()
        keys = self._state_keys()
        for group in self.param_groups:
            hyper = hyper_values.scalars(self.program.hypers, group)
            if grad_scale is not None:
                hyper[INV_GRAD_SCALE] = 1.0 / float(grad_scale)
            entries = []
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse "
                                       f"gradients")
                state = self.state[param]
                self._init_state(param, state, hyper)
                step = state["step"]
                step += 1
                entries.append((param, grad, state, float(step)))
            if entries:
                # DTensor parameters (FSDP2): the runner updates the local shards, and the
                # combiner all-reduces reduction partials across ranks; None otherwise.
                entries, combine = distributed.localize(entries, keys)
                if combine is None:
                    runner.run(hyper, entries, keys)
                else:
                    runner.run(hyper, entries, keys, combine=combine)
        return loss

    def _grads_finite(self) -> bool:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return True
        agreed = distributed.all_finite(grads)  # DTensor gradients: agreed across ranks
        if agreed is not None:
            return agreed
        flags = [torch.isfinite(g).all() for g in grads]
        return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())

    def _runner(self):
        if self._backend is None:
            self._choose_backend()
        if self._backend == "numpy":
            return self.program.numpy_runner
        return self.program.triton_runner


def _initial_value(spec, param: torch.Tensor, hyper: dict[str, float]) -> torch.Tensor:
    """A state's first value, from its init graph (constants, hypers and w)."""
    from optdsl.ir.evaluate import evaluate

    if distributed.is_dtensor(param):  # state sharded like its parameter, as torch.optim's
        local = _initial_value(spec, param.to_local(), hyper)
        return distributed.like_param(param, local) if spec.tensor else local
    graph = spec.init
    (_, out), = graph.outputs
    needs_w = any(eq.op == "w" for eq in graph.eqs)
    if not spec.tensor:
        value = evaluate(graph, {"hyper": hyper})["init"]
        return torch.tensor(float(value), dtype=_scalar_dtype())
    if graph.eqs[out].op == "w":
        return param.detach().clone(memory_format=torch.contiguous_format)
    if not needs_w:
        value = float(evaluate(graph, {"hyper": hyper})["init"])
        return torch.full_like(param, value, memory_format=torch.contiguous_format)
    compute = torch.float64 if param.dtype == torch.float64 else torch.float32
    w = param.detach().to("cpu", compute).numpy()
    value = evaluate(graph, {"hyper": hyper, "w": w})["init"]
    return torch.as_tensor(np.broadcast_to(value, w.shape).copy()).to(param.device, param.dtype)


def make_optimizer_class(program, name: str | None = None, module: str | None = None,
                         positional: tuple[str, ...] | None = None) -> type:
    """A DslOptimizer subclass for ``program`` named after it. ``positional`` lists the
    keywords accepted by position after ``params`` (default: every hyper, in order)."""
    cls_name = name or program.name
    doc = program.description or f"Optimizer compiled by optdsl from {program.filename}."
    keywords = ", ".join(f"{n}={s.default!r}" if not s.required else n
                         for n, s in program.hypers.items())
    attrs = {
        "program": program,
        "positional": tuple(program.hypers) if positional is None else tuple(positional),
        "__doc__": f"{doc}\n\nKeywords: {keywords}; backend='auto'|'numpy'|'triton'.",
        "__module__": module or "optdsl.generated",
    }
    return type(cls_name, (DslOptimizer,), attrs)
