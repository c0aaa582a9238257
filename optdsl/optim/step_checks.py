"""What a step checks before it writes anything, so that a step that raises leaves every
parameter, state and step count as it was.

A step runs group by group, and a runner writes as it goes (the NumPy step a chunk at a
time), so a mistake found while running (a gradient of the wrong size set through
``p.grad.data``, a sparse gradient, a state tensor of another shape, an invalid hyper in a
later group) would leave half an update. ``prepare_groups`` finds them all first: every
group's hyper values (their intervals) and its compiled variant, every
gradient (dense, floating, on the parameter's device, of its shape) and every tensor state a
parameter has (a tensor of the parameter's shape on its device). The optimizer then makes
missing state, counts the updates and runs, in that order.

This runs for every parameter at every step, so the usual case is a few attribute reads per
gradient; a parameter's states are checked again only when its state dict, one of its
values or the parameter's shape changed since they were last checked (``_checked_states``,
cleared when a checkpoint loads).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch

from optdsl.optim import hypers as hyper_values
from optdsl.optim import precision

# torch's devices for fused optimizers, as its message for a parameter elsewhere lists them
FUSED_DEVICES = ["mps", "cuda", "xpu", "hpu", "cpu", "mtia"]


@dataclass
class GroupPlan:
    """One param group's step, checked: its hyper values, variant and (param, grad) pairs."""

    number: int
    hyper: dict[str, float]
    variant: object
    inv_grad_scale: float | None = None  # GradScaler's, when the step unscales itself
    items: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def prepare_groups(opt, grad_scale, on_device: bool = False) -> tuple[list[GroupPlan], set[str]]:
    """Check every group of optimizer ``opt`` for this step; return the plans of the groups
    with gradients and the device types of their parameters. Raises before any write. With
    ``on_device`` (a step whose scalars are computed on the device) the grad scale is not
    read (the kernels read it) and hypers given as tensors on the parameters' device stay
    tensors."""
    program = opt.program
    name = type(opt).__name__
    several = len(opt.param_groups) > 1
    checked = opt.__dict__.setdefault("_checked_states", {})
    plans, devices = [], set()
    for number, group in enumerate(opt.param_groups):
        tensors_on = None
        if on_device and group["params"]:
            tensors_on = group["params"][0].device.type
        try:
            hyper = hyper_values.scalars(program.hypers, group, tensors_on=tensors_on)
        except ValueError as exc:
            if not several:
                raise
            raise ValueError(f"{exc} (in param group {number})") from None
        unscale = grad_scale is not None
        inverse = 1.0 / float(grad_scale) if unscale and not on_device else None
        plan = GroupPlan(number, hyper, program.variant(hyper, unscale=unscale), inverse)
        fused = bool(group.get("fused"))
        for index, param in enumerate(group["params"]):
            grad = param.grad
            if grad is None:
                continue
            shape = check_gradient(name, param, grad, index, number, fused)
            state = opt.state.get(param)
            if state:
                values = tuple(state.values())
                seen = checked.get(id(param))
                if seen is None or seen[0] is not state or seen[2] != shape or \
                        len(seen[1]) != len(values) or not all(map(operator.is_, seen[1],
                                                                   values)):
                    check_state(opt, param, state, _where(index, number))
                    checked[id(param)] = (state, values, shape)
            plan.items.append((param, grad))
            devices.add("cpu" if param.is_cpu else param.device.type)
        if plan.items:
            plans.append(plan)
    return plans, devices


def _where(index: int, number: int) -> str:
    return f"parameter {index} of param group {number}"


def check_gradient(name: str, param: torch.Tensor, grad: torch.Tensor, index: int,
                   number: int, fused: bool) -> torch.Size:
    """Raise unless ``grad`` can be the gradient of ``param``; its shape. The usual case
    costs a few attribute reads (this runs for every parameter at every step)."""
    shape = grad.shape
    if (grad.layout is not torch.strided or shape != param.shape or grad.dtype not in _REAL
            or param.is_meta or grad.is_meta or grad.is_cuda != param.is_cuda
            or grad.get_device() != param.get_device()):
        _refuse_gradient(name, param, grad, _where(index, number), fused)
    return shape


def _refuse_gradient(name: str, param: torch.Tensor, grad: torch.Tensor, where: str,
                     fused: bool) -> None:
    if param.device.type == "meta":
        if fused:
            raise RuntimeError(f"`fused=True` requires all the params to be floating point "
                               f"Tensors of supported devices: {FUSED_DEVICES} but "
                               f"{param.dtype} and {param.device.type} ({where})")
        raise RuntimeError(f"{where} is on the meta device, which holds no values: give the "
                           f"parameters a real device first (module.to_empty(device=...))")
    if grad.layout is not torch.strided:
        raise RuntimeError(f"{name} does not support sparse gradients ({where})")
    if grad.shape != param.shape:
        raise RuntimeError(f"the gradient of {where} has shape {tuple(grad.shape)}, but the "
                           f"parameter has shape {tuple(param.shape)}")
    if grad.dtype not in _REAL:
        raise RuntimeError(f"the gradient of {where} has dtype {grad.dtype}; a gradient of a "
                           f"floating-point parameter is floating-point")
    raise RuntimeError(f"the gradient of {where} is on {grad.device}, but the parameter is on "
                       f"{param.device}")


_REAL = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def check_state(opt, param: torch.Tensor, state: dict, where: str) -> None:
    """The states ``param`` has: each tensor state a tensor like the parameter, each scalar
    state one number, the master weight like the parameter."""
    for spec in opt.program.states.values():
        value = state.get(spec.key)
        if value is None:
            continue  # made by the step if it needs it
        if not torch.is_tensor(value):
            raise RuntimeError(f"state[{spec.key!r}] of {where} is a {type(value).__name__}, "
                               f"not a tensor")
        if spec.tensor:
            check_like_param(value, param, f"state[{spec.key!r}] of {where}")
        elif value.numel() != 1:
            raise RuntimeError(f"state[{spec.key!r}] of {where} holds one number per "
                               f"parameter, but has shape {tuple(value.shape)}")
    master = state.get(precision.MASTER_KEY)
    if master is not None and precision.needs_master(opt.master_weights, param.dtype):
        check_like_param(master, param, f"state[{precision.MASTER_KEY!r}] of {where}")


def check_like_param(value: torch.Tensor, param: torch.Tensor, what: str) -> None:
    if value.shape != param.shape:
        raise RuntimeError(f"{what} has shape {tuple(value.shape)}, but the parameter has "
                           f"shape {tuple(param.shape)}")
    if value.dtype not in _REAL:
        raise RuntimeError(f"{what} has dtype {value.dtype}; states are floating-point")
    if value.device != param.device:
        raise RuntimeError(f"{what} is on {value.device}, but the parameter is on "
                           f"{param.device}")
