"""Checking a checkpoint (an optimizer state_dict) against the program before it is loaded.

torch.optim's load_state_dict takes any state: a checkpoint that lacks ``exp_avg``, one of
another optimizer (torch.optim.SGD's ``momentum_buffer`` loaded into Adam) or a step count
of -1 would load, and training would go on along another trajectory. ``validate`` refuses
them before anything changes, naming the parameter (its group and index) and the key:

- torch's ValueErrors (and words) for a different number of param groups or group sizes;
- each group's hyper values (missing ones take their defaults, as older checkpoints lack
  keywords added since) must lie in their intervals;
- a parameter's state may hold only the program's state keys, ``step`` and the master
  weight (a KeyError for another key); it must hold every state the group's step uses (a
  KeyError, as torch.optim raises at the step; a state the step does not use may be
  absent: torch keeps no ``max_exp_avg_sq`` without amsgrad); ``step`` is a finite whole
  number >= 0, and may be absent only where the program reads ``t`` just to tell the first
  update from the others (torch.optim.SGD keeps none);
- a tensor state is a floating-point tensor of its parameter's shape (any dtype and
  device: loading casts and moves it; complex for a complex parameter), a scalar state one
  number.

``run_pre_hooks`` and ``pre_hooks_run`` let the optimizer validate what its
load_state_dict pre-hooks made, as torch.optim's load_state_dict would load it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from optdsl.optim import hypers as hyper_values
from optdsl.optim import step_checks
from optdsl.optim import precision


def run_pre_hooks(opt, state_dict: Any) -> Any:
    """The state_dict that torch's load_state_dict would load: a shallow copy passed through
    the optimizer's load_state_dict pre-hooks, in their order."""
    state_dict = state_dict.copy() if isinstance(state_dict, dict) else state_dict
    for hook in opt._optimizer_load_state_dict_pre_hooks.values():
        result = hook(opt, state_dict)
        if result is not None:
            state_dict = result
    return state_dict


@contextlib.contextmanager
def pre_hooks_run(opt) -> Iterator[None]:
    """Inside: torch's load_state_dict runs no pre-hook (they already ran)."""
    hooks = opt._optimizer_load_state_dict_pre_hooks
    opt._optimizer_load_state_dict_pre_hooks = OrderedDict()
    try:
        yield
    finally:
        opt._optimizer_load_state_dict_pre_hooks = hooks


def validate(opt, state_dict: Any) -> None:
    """Raise (and change nothing) if ``state_dict`` does not fit optimizer ``opt``."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict (from an optimizer's state_dict()), got "
                        f"{type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise KeyError(key)  # as torch.optim's load_state_dict raises
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, Mapping):
        raise TypeError("state_dict['param_groups'] must be a list and state_dict['state'] a "
                        "dict")
    groups = opt.param_groups
    if len(groups) != len(saved_groups):
        raise ValueError(f"loaded state dict has a different number of parameter groups "
                         f"({len(saved_groups)} in the checkpoint, {len(groups)} here)")
    for number, (group, saved) in enumerate(zip(groups, saved_groups)):
        if not isinstance(saved, Mapping) or "params" not in saved:
            raise TypeError(f"param group {number} of the checkpoint must be a dict with "
                            f"'params'")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(f"loaded state dict contains a parameter group that doesn't match "
                             f"the size of optimizer's group (group {number}: "
                             f"{len(saved['params'])} parameters in the checkpoint, "
                             f"{len(group['params'])} here)")
    for number, (group, saved) in enumerate(zip(groups, saved_groups)):
        for index, (saved_id, param) in enumerate(zip(saved["params"], group["params"])):
            entry = saved_state.get(saved_id)
            if entry is not None:
                required = _required_keys(opt, saved, number, param)
                _check_entry(opt, entry, param, required,
                             f"parameter {index} of param group {number}")


def _required_keys(opt, saved: Mapping, number: int, param: torch.Tensor) -> frozenset[str]:
    """The state keys a parameter of this saved group must have: the tensor states its
    step uses (which may depend on the parameter's shape), and every scalar state."""
    program = opt.program
    values = dict(saved)
    for name, spec in program.hypers.items():
        if not spec.required:
            values.setdefault(name, spec.default)
    try:
        hyper = hyper_values.scalars(program.hypers, values)
    except KeyError as exc:
        raise KeyError(f"param group {number} of the checkpoint: {exc.args[0]}") from None
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{exc} (param group {number} of the checkpoint)") from None
    facts = step_checks.param_facts(param) if program.param_flags else None
    variant = program.variant(hyper, facts=facts)
    scalar_keys = {s.key for s in program.states.values() if not s.tensor}
    return frozenset(variant.required_keys) | scalar_keys


def _check_entry(opt, entry: Any, param: torch.Tensor, required: frozenset[str],
                 where: str) -> None:
    if not isinstance(entry, Mapping):
        raise TypeError(f"the state of {where} in the checkpoint must be a dict, got "
                        f"{type(entry).__name__}")
    if not entry:
        return  # a parameter that was never updated
    name = type(opt).__name__
    specs = list(opt.program.states.values())
    keys = ["step"] + [s.key for s in specs] + [precision.MASTER_KEY]
    for key in entry:
        if key not in keys:
            raise KeyError(f"the state of {where} in the checkpoint has the key {key!r}, which "
                           f"{name} does not keep (its keys: {', '.join(keys)}); is it a "
                           f"checkpoint of another optimizer?")
    for key in sorted(required - set(entry), key=keys.index):
        raise KeyError(f"the state of {where} in the checkpoint has no {key!r}, which {name}'s "
                       f"step uses")
    if "step" in entry:
        _check_step(entry["step"], where)
    elif not opt.program.t_marks_only_first_update:
        raise KeyError(f"the state of {where} in the checkpoint has no 'step' (its number of "
                       f"updates), which {name}'s step uses")
    for spec in specs:
        if spec.key in entry:
            _check_value(entry[spec.key], param, spec.tensor, f"state[{spec.key!r}] of {where}",
                         spec.shape_of(tuple(param.shape)) if spec.per else None)
    if precision.MASTER_KEY in entry:
        _check_value(entry[precision.MASTER_KEY], param, True,
                     f"state[{precision.MASTER_KEY!r}] of {where}")


def _check_step(step: Any, where: str) -> None:
    value = _one_number(step, f"state['step'] of {where}")
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise ValueError(f"state['step'] of {where} in the checkpoint is {value!r}; a step "
                         f"count is a whole number >= 0")


def _one_number(value: Any, what: str) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{what} in the checkpoint must be one real number, got a tensor "
                             f"of shape {tuple(value.shape)} and dtype {value.dtype}")
        return float(value.item())
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{what} in the checkpoint must be a number, got {type(value).__name__}")


def _check_value(value: Any, param: torch.Tensor, tensor: bool, what: str,
                 shape: tuple | None = None) -> None:
    """A state's value: one number, or a tensor of the parameter's shape (of ``shape``: a
    row or column statistic's)."""
    if not tensor:
        _one_number(value, what)
        return
    if not torch.is_tensor(value):
        raise TypeError(f"{what} in the checkpoint must be a tensor, got "
                        f"{type(value).__name__}")
    want = tuple(param.shape) if shape is None else tuple(shape)
    if tuple(value.shape) != want:
        whose = "the parameter has" if shape is None else "it must have"
        raise ValueError(f"{what} in the checkpoint has shape {tuple(value.shape)}, but "
                         f"{whose} shape {want}")
    if param.is_complex():  # its states are complex too (optdsl.optim.complex_view)
        if not value.is_complex():
            raise ValueError(f"{what} in the checkpoint has dtype {value.dtype}; the states "
                             f"of a complex parameter are complex tensors")
    elif not value.is_floating_point() or value.is_complex():
        raise ValueError(f"{what} in the checkpoint has dtype {value.dtype}; states are "
                         f"real floating-point tensors")
