"""The torch.optim.Optimizer that runs a compiled program.

Conventions follow torch.optim: hypers are constructor keywords and param_group keys (so lr
schedulers and per-group overrides work), ``state['step']`` is a float32 tensor counting the
updates of that parameter (a parameter without a gradient is skipped and its step does not
advance), state tensors are stored under the program's ``as`` keys, and ``state_dict`` /
``load_state_dict`` are torch's own, so checkpoints of a torch.optim twin load here and back.
Mixed precision (``state_dtype``, ``master_weights``, ``stochastic_rounding``) follows the
policy of optdsl.optim.precision; loading a checkpoint keeps each state in its policy's dtype
(torch.optim would cast it to the parameter's).
"""

from __future__ import annotations

import copyreg
import importlib
import operator
import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from optdsl.optim import (
    checkpoint,
    complex_view,
    device_step,
    distributed,
    host_prefetch,
    precision,
    step_checks,
)
from optdsl.optim import hypers as hyper_values
from optdsl.optim.param_records import ParamRecord
from optdsl.runtime import backends
from optdsl.runtime import sparse as sparse_rows
from optdsl.runtime.step import Entry, OneStepAtATime, StepOptions


def _graph_break(fn: Callable) -> Callable:
    """``fn`` behind a graph break under torch.compile: torch's own lazy form of
    torch._dynamo.disable (importing dynamo takes seconds; torch.optim uses the same)."""
    disable = getattr(torch, "_disable_dynamo", None)
    return disable(fn, recursive=True) if disable is not None else fn


# whether torch.compile is tracing (a flag read; False on a torch without it)
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
# the grad mode, read and set without torch.no_grad's context object (an eager step runs
# these two calls instead of a decorator's several frames: host time, see DESIGN.md)
_grad_enabled = torch.is_grad_enabled
_set_grad_enabled = torch._C._set_grad_enabled


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class OptimizerClass(type):
    """The metaclass of the optimizer classes compiled from programs. A class that cannot be
    imported by name (``prog.optimizer_class``) pickles as its program and is made again
    from it when unpickled (see ``_pickle_class``); a bundled one by name, as any class."""


class DslOptimizer(torch.optim.Optimizer, metaclass=OptimizerClass):
    """Base class of every optimizer compiled from optdsl; subclasses set ``program``."""

    program = None  # set by make_optimizer_class
    # As torch.optim's non-fused optimizers: torch.amp.GradScaler unscales .grad itself and
    # skips the step on inf/NaN. With fused=True (torch's keyword for the same switch) the
    # instance says True: GradScaler then sets `grad_scale` and `found_inf` on it and the step
    # unscales in the same pass and skips itself (the step honours them whenever they are set).
    _step_supports_amp_scaling = False
    positional: tuple[str, ...] = ()  # the keywords that may also be given by position
    # hypers for which torch's rules on Tensor values apply (optdsl.optim.hypers)
    tensor_hyper_rules: tuple[str, ...] = ()
    # complex parameters are stepped on their real view, as torch.optim's (complex_view);
    # False where the torch namesake refuses them (SparseAdam)
    complex_params: bool = True

    def __init__(self, params, *args: Any, backend: str = "auto", skip_nonfinite: bool = False,
                 state_dtype: precision.StateDtype = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, **kwargs: Any) -> None:
        specs = self.program.hypers
        if len(args) > len(self.positional):
            raise TypeError(f"{type(self).__name__} takes at most {len(self.positional)} "
                            f"positional hyperparameters ({', '.join(self.positional)}), "
                            f"got {len(args)}")
        for name, value in zip(self.positional, args):
            if name in kwargs:
                raise TypeError(f"got multiple values for argument `{name}`")
            kwargs[name] = value
        hyper_values.check_tensor_rules(self.tensor_hyper_rules,
                                        {**hyper_values.TORCH_FLAGS, **kwargs})
        defaults = hyper_values.resolve(specs, kwargs, requirements=self.program.requirements)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        backends.choose(backend, [])  # reject unknown names before touching params
        self._backend_request = backend
        self._backend: str | None = None
        self._runner_of: tuple[str, object] | None = None  # (back end, this optimizer's runner)
        self._backends: dict[frozenset, str] = {}  # device types -> backend, as chosen
        self.state_dtype = precision.check_state_dtype(state_dtype)
        self.master_weights = precision.check_flag("master_weights", master_weights)
        self.stochastic_rounding = precision.check_flag("stochastic_rounding",
                                                        stochastic_rounding)
        if self.master_weights and any(s.key == precision.MASTER_KEY
                                       for s in self.program.states.values()):
            raise ValueError(f"master_weights=True keeps the master weight in "
                             f"state[{precision.MASTER_KEY!r}], which this program already "
                             f"uses for a state")
        self._rounding = precision.RoundingSeeds(torch.initial_seed())
        # id(param) -> ParamRecord (see _step_count); params live as long as the optimizer, and a
        # replaced state is told by identity (load_state_dict clears it all)
        self._ready: dict[int, ParamRecord] = {}
        # Without a GradScaler: skip (and count) steps whose gradients hold inf or NaN.
        self.skip_nonfinite = precision.check_flag("skip_nonfinite", skip_nonfinite)
        self.skipped_steps = 0
        super().__init__(params, defaults)
        if defaults.get("fused"):
            self._step_supports_amp_scaling = True
        self._choose_backend()

    # -- construction -----------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        complex_view.check_params(type(self).__name__, group["params"],
                                  len(self.param_groups) - 1, self.complex_params,
                                  getattr(self, "state_dtype", None))
        # bad per-group values fail here
        hyper_values.scalars(self.program.hypers, group)
        for p in group["params"]:  # requirements on each parameter (`w.ndim == 2`)
            hyper_values.check_parameter(self.program.requirements, self.program.hypers,
                                         group, step_checks.param_facts(p), p.size())
        if getattr(self, "_backend_request", None) is not None and self._backend is not None:
            self._choose_backend()

    def _choose_backend(self, devices: set[str] | None = None) -> str:
        """The backend for parameters on ``devices`` (default: all of them); parameters on
        the meta device (built there, to be given a device by ``module.to_empty``) do not
        count, so the choice is made again when a step sees where they are."""
        if devices is None:
            devices = {p.device.type for g in self.param_groups for p in g["params"]}
        key = frozenset(devices)
        found = self._backends.get(key)
        if found is None:
            found = backends.choose(self._backend_request, key, self.program.library_work)
            self._backends[key] = found
        self._backend = found
        return found

    @property
    def backend(self) -> str:
        return self._backend or backends.choose(self._backend_request, [],
                                                self.program.library_work)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_backend_request"] = self._backend_request
        state["_backend"] = self._backend
        state["skip_nonfinite"] = self.skip_nonfinite
        state["skipped_steps"] = self.skipped_steps
        for name in ("state_dtype", "master_weights", "stochastic_rounding", "_rounding"):
            state[name] = getattr(self, name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_backend_request", "auto")
        self.__dict__.setdefault("_backend", None)
        self.__dict__.setdefault("skip_nonfinite", False)
        self.__dict__.setdefault("skipped_steps", 0)
        self.__dict__.setdefault("state_dtype", None)
        self.__dict__.setdefault("master_weights", False)
        self.__dict__.setdefault("stochastic_rounding", False)
        self.__dict__.setdefault("_rounding", precision.RoundingSeeds(0))
        self.__dict__.setdefault("_ready", {})
        self.__dict__.setdefault("_runner_of", None)
        self.__dict__.setdefault("_backends", {})
        if self.defaults.get("fused"):
            self._step_supports_amp_scaling = True
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
    def _state_keys(self) -> tuple[tuple[str, bool], ...]:
        """Each state's key and whether it is a tensor (made once: every step asks)."""
        keys = self.__dict__.get("_state_keys_made")
        if keys is None:
            keys = self.__dict__["_state_keys_made"] = tuple(
                (spec.key, spec.tensor) for spec in self.program.states.values())
        return keys

    def _statistic_keys(self) -> frozenset[str]:
        """The keys of row and column statistics (``state s = 0 per row``)."""
        return frozenset(spec.key for spec in self.program.states.values() if spec.per)

    def _policy_dtype(self, key: str, param: torch.Tensor) -> torch.dtype | None:
        """The dtype a tensor state ``key`` of ``param`` is kept in (None: not a tensor state
        of this optimizer's)."""
        if key == precision.MASTER_KEY:
            return torch.float32 if precision.needs_master(self.master_weights,
                                                           param.dtype) else None
        for spec in self.program.states.values():
            if spec.key == key:
                return precision.state_dtype_for(self.state_dtype,
                                                 param.dtype) if spec.tensor else None
        return None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, after checking the checkpoint against the program
        (optdsl.optim.checkpoint: a mismatch raises and changes nothing), then each tensor
        state (and master weight) taken again from the checkpoint in the dtype of this
        optimizer's policy: torch casts every state to its parameter's dtype, which would
        round an fp32 master weight to bfloat16."""
        state_dict = checkpoint.run_pre_hooks(self, state_dict)
        checkpoint.validate(self, state_dict)
        with checkpoint.pre_hooks_run(self):
            super().load_state_dict(state_dict)
        self._ready.clear()
        self.__dict__.pop("_lane_records", None)
        self.__dict__.pop("_host_prefetch", None)
        self.__dict__.pop("_complex_views", None)  # (views of the replaced complex states)
        if self._runner_of is not None:  # (views of the replaced states would keep them alive)
            self._runner_of[1].forget()
        self.__dict__.get("_checked_states", {}).clear()  # (and so would the checked ones)
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, param in zip(saved, params):
            entry = state_dict["state"].get(saved_id)
            if not isinstance(entry, dict) or not entry:
                continue  # (an empty state: a parameter never updated, as validate says)
            if "step" not in entry:  # (torch.optim.SGD keeps none) state saved after >= 1 update
                self.state[param]["step"] = torch.tensor(1.0, dtype=_scalar_dtype())
            for key, value in entry.items():
                dtype = self._policy_dtype(key, param) if torch.is_tensor(value) else None
                if dtype is not None and value.is_floating_point():
                    # a copy where torch's cast made one: the checkpoint's tensors are not
                    # shared with this optimizer's state where they were not before
                    copy = value.dtype != param.dtype or value.device != param.device
                    self.state[param][key] = value.to(device=param.device, dtype=dtype,
                                                      copy=copy)
            if not precision.needs_master(self.master_weights, param.dtype):
                # a master this optimizer would not update could later revert the parameter
                self.state[param].pop(precision.MASTER_KEY, None)

    def _init_state(self, param: torch.Tensor, state: dict, hyper: dict[str, float],
                    live: frozenset[str] | None = None) -> None:
        """Create what the step needs: ``step``, the master, and each scalar state and each
        tensor state in ``live`` (the tensor states the group's step reads or changes; None:
        all). A tensor state that is not live is not created (torch.optim.Adam keeps no
        max_exp_avg_sq without amsgrad); one that exists is kept in its policy's dtype."""
        step = state.get("step")
        if step is None:
            # A checkpoint with state but no step (torch.optim.SGD keeps none) has done at
            # least one update; a fresh parameter has done none.
            done = 1.0 if any(s.key in state for s in self.program.states.values()) else 0.0
            state["step"] = torch.tensor(done, dtype=_scalar_dtype())
        elif not torch.is_tensor(step):  # an older checkpoint's float step
            state["step"] = torch.tensor(float(step), dtype=_scalar_dtype())
        base = param
        if precision.needs_master(self.master_weights, param.dtype):
            master = state.get(precision.MASTER_KEY)
            if master is None:
                state[precision.MASTER_KEY] = param.detach().to(
                    torch.float32, memory_format=torch.contiguous_format)
            elif master.dtype != torch.float32:
                state[precision.MASTER_KEY] = master.to(torch.float32)
            base = state[precision.MASTER_KEY]
        elif precision.MASTER_KEY in state:  # left by an optimizer with master weights
            del state[precision.MASTER_KEY]
        dtype = precision.state_dtype_for(self.state_dtype, param.dtype)
        for spec in self.program.states.values():
            value = state.get(spec.key)
            if value is None:
                if (spec.tensor and live is not None and spec.name not in live
                        and _constant_init(spec)):
                    continue  # made when a step first uses it, with the same value
                value = _initial_value(spec, base, hyper)
                state[spec.key] = value.to(dtype) if spec.tensor else value
            elif spec.tensor and value.dtype != dtype:  # e.g. a torch.optim checkpoint's
                state[spec.key] = value.to(dtype)

    # -- the step -----------------------------------------------------------------------------
    def step(self, *args: Any, **kwargs: Any):
        """Perform one optimization step (re-evaluating the model with ``closure`` if given).
        Everything that can be checked is checked first (optdsl.optim.step_checks): a step
        that raises leaves parameters, state and step counts as they were. The update runs
        with gradients off (as under torch.no_grad).

        Step hooks and the profiler's ``Optimizer.step#<class>.step`` label are torch.optim's
        own: whenever a hook is registered (on this optimizer or globally), a profiler is on
        or torch.compile is tracing, the step runs inside torch's wrapper
        (``Optimizer.profile_hook_step``); otherwise without it (its record_function and
        hook lookups cost more host time than a small model's whole step, see DESIGN.md)."""
        if type(self).step is _DSL_STEP and (
                self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _GLOBAL_PRE_HOOKS or _GLOBAL_POST_HOOKS or _profiling() or _compiling()):
            return _hooked_step(type(self))(self, *args, **kwargs)
        return self._plain_step(*args, **kwargs)

    def _plain_step(self, closure: Callable[[], Any] | None = None):
        """The step itself, without torch's hooks and profiler label (see step)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if _compiling():  # (what dynamo sees while it traces a step calling this one)
            with torch.no_grad():
                self._step_behind_graph_break()
            return loss
        enabled = _grad_enabled()
        _set_grad_enabled(False)
        try:
            self._step()
        finally:
            _set_grad_enabled(enabled)
        return loss

    def _step(self) -> None:
        """The step itself, run eagerly. Under torch.compile it sits behind a clean graph
        break (``_step_behind_graph_break``): dynamo runs it as it is instead of tracing the
        runner, which would recompile every step. One thread at a time: a second thread's
        step is refused before it writes anything (step counts included)."""
        with _one_step_of(self):
            self._step_unlocked()

    def _step_unlocked(self) -> None:
        prefetch = self.__dict__.get("_host_prefetch")
        if prefetch:  # (the steady groups' host objects, asked for at once: host_prefetch)
            for group_prefetch in prefetch.values():
                group_prefetch()
        found_inf = getattr(self, "found_inf", None)
        grad_scale = getattr(self, "grad_scale", None)
        on_device = backends.get(self.backend).device_scalars
        # GradScaler found inf/NaN: parameters, state and t stay as they are. With DTensor
        # parameters (FSDP2) the ranks agree (an inf on any rank skips the step on all), as
        # found_inf may reflect only this rank's shards; otherwise no collective runs. A
        # device step reads found_inf on the device instead (its kernels write nothing).
        if found_inf is not None and not on_device and distributed.agreed_found_inf(
                found_inf, [p for g in self.param_groups for p in g["params"]]):
            return
        plans, devices = step_checks.prepare_groups(self, grad_scale, on_device)
        if self.skip_nonfinite and not self._grads_finite():
            self.skipped_steps += 1
            return
        if not plans:
            return
        runner = self._runner(devices, plans)
        keys = self._state_keys()
        if getattr(runner, "steps_on_device", False):
            device_step.run_groups(self, runner, plans, keys, found_inf, grad_scale)
            return
        if found_inf is not None and on_device and distributed.agreed_found_inf(
                found_inf, [p for g in self.param_groups for p in g["params"]]):
            return  # (a host runner after all: parameters on another device type)
        for plan in plans:
            if plan.inv_grad_scale is None and grad_scale is not None:
                plan.inv_grad_scale = 1.0 / float(grad_scale)
            self._run_group(runner, plan, keys)

    @_graph_break
    def _step_behind_graph_break(self) -> None:
        self._step()

    def _runner(self, devices: set[str] | None = None,
                plans: list[step_checks.GroupPlan] = ()):
        """This optimizer's runner for parameters on ``devices`` (default: all parameters;
        its tables and buffers are its own), with each group's step compiled (and loaded)
        before anything is written."""
        backend = self._choose_backend(devices)
        if self._runner_of is None or self._runner_of[0] != backend:
            self._runner_of = (backend, backends.get(backend).make_runner(self.program))
        for plan in plans:
            plan.variant.generated(backend)
        return self._runner_of[1]

    def _run_group(self, runner, plan: step_checks.GroupPlan, keys) -> None:
        hyper = plan.hyper
        if plan.steady and not plan.sparse and not self.stochastic_rounding:
            # the steady state of a runner that counts the updates itself (the C runner,
            # while it keeps tables for these tensors): no Python per parameter here
            run_counted = getattr(runner, "run_counted", None)
            if run_counted is not None:
                options = StepOptions(hyper)
                if plan.inv_grad_scale is not None:
                    options.inv_grad_scale = plan.inv_grad_scale
                options.tables_key = tuple(map(_token_of, plan.records))
                if run_counted(plan.variant, plan.items, options):
                    prefetches = self.__dict__.setdefault("_host_prefetch", {})
                    if plan.number not in prefetches:
                        prefetches[plan.number] = host_prefetch.HostPrefetch(
                            runner.prefetcher(plan.variant), plan.items, plan.states,
                            plan.records)
                    return
        live = plan.variant.live_states
        entries, copies = [], None  # copies: per entry, the low-precision tensor or None
        master = self.master_weights
        bump = self._step_count
        tokens: list | None = []  # the records' tokens, while every entry has a fast one
        for (param, grad), state, record in zip(plan.items, plan.states, plan.records):
            if record is not None and record.counter is not None and (
                    record.live is live or record.serves(live)):
                # the steady state: checked and made, counted through the record's view
                counter = record.counter
                counter.value += 1.0
                entries.append(_new_entry(Entry, (param, grad, state, counter.value)))
                if tokens is not None:
                    tokens.append(record.token)
                if copies is not None:
                    copies.append(None)
                continue
            if state is None:
                state = self.state[param]
            t = bump(param, state, hyper, live, grad)
            if tokens is not None:
                record = self._ready[id(param)]
                if record.fast and record.counter is not None:
                    tokens.append(record.token)
                else:
                    tokens = None
            if master and param.dtype in precision.LOW_PRECISION:
                if copies is None:
                    copies = [None] * len(entries)
                entries.append(Entry(state[precision.MASTER_KEY], grad, state, t))
                copies.append(param)
                continue
            if param.is_complex():  # stepped on its real view, as torch.optim's
                entries.append(self._real_views().entry(param, grad, state, t))
            else:
                entries.append(Entry(param, grad, state, t))
            if copies is not None:
                copies.append(None)
        options = StepOptions(hyper)
        if plan.inv_grad_scale is not None:
            options.inv_grad_scale = plan.inv_grad_scale
        if copies is not None:
            options.copies = copies
        if self.stochastic_rounding:
            # per group and the group's total update count (it grows every step and comes
            # from the state: resumable); sharded tensors add the rank's shard coordinates,
            # so shards round independently and replicas alike
            count = int(sum(entry.t for entry in entries))
            coordinates = distributed.shard_coordinates([e.param for e in entries])
            options.rounding_seed = self._rounding.seed(plan.number, count, *coordinates)
        if tokens is not None and copies is None and not plan.sparse:
            options.tables_key = tuple(tokens)  # (fast records: no DTensor among them)
            runner.run(plan.variant, entries, options)
            return
        # DTensor parameters (FSDP2): the runner updates the local shards, and the combiner
        # all-reduces reduction partials across ranks; None otherwise.
        entries, combine = distributed.localize(entries, keys, self._statistic_keys())
        if combine is not None:
            options.combine = combine
            if options.copies is not None:
                options.copies = [distributed.local_tensor(c) for c in copies]
        if plan.sparse:  # the rows of sparse gradients, gathered and scattered back
            sparse_rows.run(runner, plan.variant, entries, options, keys)
        else:
            runner.run(plan.variant, entries, options)

    def _real_views(self) -> complex_view.RealViews:
        """The real views of this optimizer's complex parameters (made on first use)."""
        views = self.__dict__.get("_complex_views")
        if views is None:
            keys = [key for key, is_tensor in self._state_keys() if is_tensor]
            views = self.__dict__["_complex_views"] = complex_view.RealViews(keys)
        return views

    def _ready_state(self, param: torch.Tensor, state: dict, hyper: dict[str, float],
                     live: frozenset[str], device=None,
                     grad: torch.Tensor | None = None) -> ParamRecord:
        """Make ``param``'s state if it is not known to be made (its record, see
        optdsl.optim.param_records); with ``device``, its step count and scalar states are
        kept there (a device step's). ``grad``: this step's gradient (for the record)."""
        ready = self._ready.get(id(param))
        # made, but a state value or the parameter's storage was replaced since (or made
        # without a gradient): made again (a value of another dtype is kept in its policy's,
        # as a checkpoint's is), with a new record and so a new token for the runners' tables
        if ready is None or not ready.made_for(param, state, live) or (
                grad is not None and (ready.grad_dtype is None or (
                    ready.fast and not ready.still(param, grad, state)))):
            self._init_state(param, state, hyper, live)
            if device is not None:
                for spec in [None] + [s for s in self.program.states.values() if not s.tensor]:
                    key = "step" if spec is None else spec.key
                    value = state[key]
                    if value.device != device and not distributed.is_dtensor(value):
                        state[key] = value.to(device)
            ready = self._ready[id(param)] = self._record(param, grad, state, live)
            self.__dict__.pop("_lane_records", None)  # (step_checks: the current records)
            self.__dict__.pop("_host_prefetch", None)  # (made again from the new records)
        return ready

    def _record(self, param: torch.Tensor, grad: torch.Tensor | None, state: dict,
                live: frozenset[str]) -> ParamRecord:
        plain = not (param.is_complex() or distributed.is_dtensor(param) or (
            self.master_weights and param.dtype in precision.LOW_PRECISION))
        return ParamRecord(param, grad, state, live, plain)

    def _step_count(self, param: torch.Tensor, state: dict, hyper: dict[str, float],
                    live: frozenset[str], grad: torch.Tensor | None = None) -> float:
        """Count an update of ``param`` in ``state["step"]`` and return the new count, making
        its state first. Host time matters here (a GPU step of a small model takes less than
        a torch op per parameter): while the parameter's record says its state is made, the
        count is bumped through a ctypes view of the CPU step tensor's number (a fiftieth of
        a torch op's cost, a tenth of a NumPy view's)."""
        counter = self._ready_state(param, state, hyper, live, grad=grad).counter
        if counter is None:
            step = state["step"]
            step += 1
            return float(step)
        counter.value += 1.0  # (the float32 or float64 sum torch's step += 1 computes)
        return counter.value

    def _grads_finite(self) -> bool:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return True
        agreed = distributed.all_finite(grads)  # DTensor gradients: agreed across ranks
        if agreed is not None:
            return agreed
        # (a sparse gradient: its values, duplicates summed as the step will sum them)
        flags = [torch.isfinite(g.coalesce()._values() if g.layout is torch.sparse_coo
                                else g).all() for g in grads]
        return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


# Entry(param, grad, state, t) without the Python frame of its generated __new__ (a fifth of
# a microsecond a parameter, on the steady-state path of _run_group)
_new_entry = tuple.__new__
_token_of = operator.attrgetter("token")


def _constant_init(spec) -> bool:
    """Whether a state's initial value is a constant (no `w`, no hyper): then making it only
    when a step first uses it gives the value it would have had from the first update (a
    state the step does not use keeps its initial value). One read from `w` or a hyper is
    made on the first update, as documented."""
    return spec.constant


def _initial_value(spec, param: torch.Tensor, hyper: dict[str, float]) -> torch.Tensor:
    """A state's first value, from its declaration (constants, hypers and w)."""
    if distributed.is_dtensor(param):  # state sharded like its parameter, as torch.optim's
        if spec.per is not None:  # a row or column statistic: whole, on every rank
            return distributed.replicated(param, _statistic(spec, param, hyper))
        local = _initial_value(spec, param.to_local(), hyper)
        return distributed.like_param(param, local) if spec.tensor else local
    if not spec.tensor:
        return torch.tensor(float(spec.initial_value(hyper)), dtype=_scalar_dtype())
    if param.is_complex():  # the initial value of the real view (c: complex(c, c))
        return complex_view.initial_value(lambda real: _initial_value(spec, real, hyper), param)
    if spec.per is not None:  # a row or column statistic (the checker allows no `w` there)
        return _statistic(spec, param, hyper)
    if spec.copies_w:
        return param.detach().clone(memory_format=torch.contiguous_format)
    if not spec.reads_w:
        value = float(spec.initial_value(hyper))
        return torch.full_like(param, value, memory_format=torch.contiguous_format)
    compute = torch.float64 if param.dtype == torch.float64 else torch.float32
    w = param.detach().to("cpu", compute).numpy()
    value = spec.initial_value(hyper, w)
    return torch.as_tensor(np.broadcast_to(value, w.shape).copy()).to(param.device, param.dtype)


def _statistic(spec, param: torch.Tensor, hyper: dict[str, float]) -> torch.Tensor:
    """A row or column statistic's first value, of the (whole) parameter's rows or columns."""
    value = float(spec.initial_value(hyper))
    return torch.full(spec.shape_of(tuple(param.shape)), value, dtype=param.dtype,
                      device=param.device)


def make_optimizer_class(program, name: str | None = None, module: str | None = None,
                         positional: tuple[str, ...] | None = None,
                         tensor_hyper_rules: tuple[str, ...] = (),
                         complex_params: bool = True) -> type:
    """A DslOptimizer subclass for ``program`` named after it. ``positional`` lists the
    keywords accepted by position after ``params`` (default: every hyper, in order);
    ``tensor_hyper_rules`` the hypers to which torch.optim.Adam's rules for Tensor values
    apply (optdsl.optim.hypers.check_tensor_rules); ``complex_params=False`` refuses complex
    parameters (as torch.optim.SparseAdam does)."""
    if getattr(program, "closure_driven", False):  # stepped with a closure: its own class
        from optdsl.optim.closure_optimizer import make_closure_optimizer_class

        return make_closure_optimizer_class(program, name, module, positional)
    cls_name = name or program.name
    doc = program.description or f"Optimizer compiled by optdsl from {program.filename}."
    keywords = ", ".join(f"{n}={s.default!r}" if not s.required else n
                         for n, s in program.hypers.items())
    attrs = {
        "program": program,
        "positional": tuple(program.hypers) if positional is None else tuple(positional),
        "tensor_hyper_rules": tuple(tensor_hyper_rules),
        "complex_params": bool(complex_params),
        "__doc__": f"{doc}\n\nKeywords: {keywords}; backend="
                   f"{'|'.join(map(repr, backends.names()))}; "
                   f"skip_nonfinite, state_dtype, master_weights, stochastic_rounding "
                   f"(see optdsl.optim.precision); fused=True: the step unscales "
                   f"torch.amp.GradScaler's gradients itself.",
        "__module__": module or "optdsl.generated",
    }
    return OptimizerClass(cls_name, (DslOptimizer,), attrs)


def _pickle_class(cls: type):
    """How an OptimizerClass pickles: by name when importable (optdsl.library's), else as
    its program and arguments, made again by ``_program_class``."""
    module = sys.modules.get(cls.__module__)
    found = module
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is cls:
        return cls.__qualname__  # a global: pickled by reference
    if cls.program is None:
        raise pickle.PicklingError(f"cannot pickle {cls.__qualname__}: it has no program")
    own = cls.__dict__
    return (_program_class, (cls.program, cls.__name__, own.get("positional"),
                             own.get("tensor_hyper_rules", ())))


def _program_class(program, name: str, positional: tuple[str, ...] | None,
                   tensor_hyper_rules: tuple[str, ...] = ()) -> type:
    """The optimizer class of ``program`` (what unpickling one calls): the program's own
    ``optimizer_class`` when it is the one that was pickled, else one made alike."""
    cls = program.optimizer_class
    if cls.__name__ == name and cls.positional == positional and \
            cls.tensor_hyper_rules == tuple(tensor_hyper_rules):
        return cls
    key = (name, positional, tuple(tensor_hyper_rules))
    made = program.__dict__.setdefault("_other_optimizer_classes", {})
    if key not in made:
        made[key] = make_optimizer_class(program, name, positional=positional,
                                         tensor_hyper_rules=tensor_hyper_rules)
    return made[key]


copyreg.pickle(OptimizerClass, _pickle_class)


_MAKING_LOCKS = threading.Lock()


DslOptimizer.step.hooked = True  # (torch.optim.Optimizer then does not wrap it: step chooses)
# (what inspect.signature shows for step: the arguments it takes, as torch's wrapper shows)
DslOptimizer.step.__wrapped__ = DslOptimizer._plain_step
_DSL_STEP = DslOptimizer.step
_torch_optimizer = importlib.import_module("torch.optim.optimizer")
# torch.optim's global step hooks (register_optimizer_step_pre_hook and _post_hook): while
# any is registered every step runs in torch's wrapper (True where a torch lacks them: then
# every step does)
_GLOBAL_PRE_HOOKS = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", True)
_GLOBAL_POST_HOOKS = getattr(_torch_optimizer, "_global_optimizer_post_hooks", True)
_profiling = getattr(getattr(torch._C, "_autograd", None), "_profiler_enabled",
                     lambda: True)  # (an unknown torch: always the wrapper)


def _hooked_step(cls: type) -> Callable:
    """torch.optim's own step wrapper (hooks, profiler label) around ``cls._plain_step``,
    made once per class and kept on it (so it goes with the class); the label names the
    class, as torch's does."""
    kept = cls.__dict__.get("_torch_hooked_step")
    if kept is None:
        def step(self, *args, **kwargs):
            return cls._plain_step(self, *args, **kwargs)

        step.__name__ = step.__qualname__ = "step"
        kept = staticmethod(torch.optim.Optimizer.profile_hook_step(step))
        type.__setattr__(cls, "_torch_hooked_step", kept)
    return kept.__func__


def _one_step_of(opt) -> OneStepAtATime:
    """The optimizer's own one-step-at-a-time guard (made on first use; not pickled: torch's
    Optimizer.__getstate__ keeps only defaults, state and param_groups)."""
    guard = opt.__dict__.get("_one_step")
    if guard is None:
        with _MAKING_LOCKS:
            guard = opt.__dict__.setdefault("_one_step", OneStepAtATime())
    return guard
