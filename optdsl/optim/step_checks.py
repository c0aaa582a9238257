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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optdsl.optim import hypers as hyper_values
from optdsl.optim import precision
from optdsl.passes.specialize import INV_GRAD_SCALE

# torch's devices for fused optimizers, as its message for a parameter elsewhere lists them
FUSED_DEVICES = ["mps", "cuda", "xpu", "hpu", "cpu", "mtia"]


@dataclass
class GroupPlan:
    """One param group's step, checked: its hyper values, variant and (param, grad) pairs."""

    number: int
    hyper: dict[str, float]
    variant: object
    items: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def prepare_groups(opt, grad_scale) -> tuple[list[GroupPlan], set[str]]:
    """Check every group of optimizer ``opt`` for this step; return the plans of the groups
    with gradients and the device types of their parameters. Raises before any write."""
    program = opt.program
    name = type(opt).__name__
    several = len(opt.param_groups) > 1
    plans, devices = [], set()
    for number, group in enumerate(opt.param_groups):
        try:
            hyper = hyper_values.scalars(program.hypers, group)
        except ValueError as exc:
            if not several:
                raise
            raise ValueError(f"{exc} (in param group {number})") from None
        if grad_scale is not None:
            hyper[INV_GRAD_SCALE] = 1.0 / float(grad_scale)
        plan = GroupPlan(number, hyper, program.variant(hyper,
                                                        unscale=INV_GRAD_SCALE in hyper))
        for index, param in enumerate(group["params"]):
            grad = param.grad
            if grad is None:
                continue
            where = f"parameter {index} of param group {number}"
            check_gradient(name, param, grad, where, fused=bool(group.get("fused")))
            check_state(opt, param, opt.state.get(param), where)
            plan.items.append((param, grad))
            devices.add(param.device.type)
        if plan.items:
            plans.append(plan)
    return plans, devices


def check_gradient(name: str, param: torch.Tensor, grad: torch.Tensor, where: str,
                   fused: bool) -> None:
    if param.device.type == "meta":
        if fused:
            raise RuntimeError(f"`fused=True` requires all the params to be floating point "
                               f"Tensors of supported devices: {FUSED_DEVICES} but "
                               f"{param.dtype} and {param.device.type} ({where})")
        raise RuntimeError(f"{where} is on the meta device, which holds no values: give the "
                           f"parameters a real device first (module.to_empty(device=...))")
    if grad.is_sparse:
        raise RuntimeError(f"{name} does not support sparse gradients ({where})")
    if grad.shape != param.shape:
        raise RuntimeError(f"the gradient of {where} has shape {tuple(grad.shape)}, but the "
                           f"parameter has shape {tuple(param.shape)}")
    if not grad.is_floating_point() or grad.is_complex():
        raise RuntimeError(f"the gradient of {where} has dtype {grad.dtype}; a gradient of a "
                           f"floating-point parameter is floating-point")
    if grad.device != param.device:
        raise RuntimeError(f"the gradient of {where} is on {grad.device}, but the parameter "
                           f"is on {param.device}")


def check_state(opt, param: torch.Tensor, state: dict | None, where: str) -> None:
    """The tensor states ``param`` has (a parameter without state has nothing to check)."""
    if not state:
        return
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
    if not value.is_floating_point() or value.is_complex():
        raise RuntimeError(f"{what} has dtype {value.dtype}; states are floating-point")
    if value.device != param.device:
        raise RuntimeError(f"{what} is on {value.device}, but the parameter is on "
                           f"{param.device}")
