"""What a step checks before it writes anything, so that a step that raises leaves every
parameter, state and step count as it was.

A step runs group by group, and a runner writes as it goes (the NumPy step a chunk at a
time), so a mistake found while running (a gradient of the wrong size set through
``p.grad.data``, a sparse gradient the program does not take, a state tensor of another
shape, an invalid hyper in a later group) would leave half an update. ``prepare_groups``
finds them all first: every group's hyper values (their intervals) and its compiled
variant, every gradient (floating, on the parameter's device, of its shape) and every
tensor state a parameter has (a tensor of the parameter's shape on its device). The
optimizer then makes missing state, counts the updates and runs, in that order.

Sparse (COO) gradients pass only where the program says ``sparse`` (and its ``sparse
require`` conditions hold for the group), dense ones not where it says ``sparse only``;
complex parameters take complex gradients (their steps run on torch.view_as_real views).

This runs for every parameter at every step, so the usual case is a few attribute reads per
gradient and the parameter's record (optdsl.optim.param_records: what its state was made or
checked for; found by the parameter's place in its group, ``_lane_records``, else by its
id); without one that still holds, a parameter's states are checked again only
when its state dict, one of its values (or a value's shape) or the parameter's shape
changed since they were last checked (``_checked_states``). Both are cleared when a
checkpoint loads. A group's hyper scalars and its variant are kept while its plain hyper
values stay equal (``_group_scalars``, optdsl.optim.hypers.plain_key).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch

from optdsl.frontend.sparse import SparseRule
from optdsl.optim import distributed, precision
from optdsl.optim import hypers as hyper_values
from optdsl.runtime.library_stage import tensor_facts

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
    states: list[dict | None] = field(default_factory=list)  # each item's (None: none yet)
    # each item's record when it still holds (optdsl.optim.param_records), else None
    records: list = field(default_factory=list)
    sparse: bool = False  # some gradient is sparse (optdsl.runtime.sparse runs the step)
    # every item came through the steady lane, with a fast record made for this variant's
    # live states whose update is counted in its step tensor (ParamRecord.counted_for)
    steady: bool = False


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
    records = opt.__dict__.get("_ready") or {}
    # per group, each parameter's fast record where it last held, by its place in the group
    # (a list read in order: no id() and dict probe per parameter); emptied whenever a
    # record is made or the records cleared, so an entry is its parameter's current record
    lanes = opt.__dict__.setdefault("_lane_records", {})
    opt_state = opt.state
    plans, devices = [], set()
    # per group: (key of its plain hyper values, their scalars, its shared variant), kept
    # while the values stay equal (hypers.plain_key): a steady-state step converts no hyper
    kept = opt.__dict__.setdefault("_group_scalars", {})
    matrix_work = bool(program.library_work)
    per_param_variants = matrix_work or bool(program.param_flags)
    unscale = grad_scale is not None
    for number, group in enumerate(opt.param_groups):
        tensors_on = None
        if on_device and group["params"]:
            tensors_on = group["params"][0].device.type
        key = hyper_values.plain_key(program.hypers, group)
        if key is not None:
            key = (program, tensors_on, unscale, key)
        found = kept.get(number) if key is not None else None
        if found is not None and found[0] == key:
            hyper, shared = dict(found[1]), found[2]
        else:
            try:
                hyper = hyper_values.scalars(program.hypers, group, tensors_on=tensors_on)
            except ValueError as exc:
                if not several:
                    raise
                raise ValueError(f"{exc} (in param group {number})") from None
            # the usual case: one variant for the whole group, found once
            shared = None if per_param_variants else program.variant(hyper, unscale=unscale)
            if key is not None:
                kept[number] = (key, dict(hyper), shared)
        inverse = 1.0 / float(grad_scale) if unscale and not on_device else None
        by_variant: dict[int, GroupPlan] = {}
        fused = bool(group.get("fused"))
        variants: dict = {}  # the group's variant, per parameter facts where they matter
        rule = program.sparse
        plan = None
        steady = shared is not None
        live = shared.live_states if steady else None
        if shared is not None:  # (added to the plans below if some parameter has a gradient)
            plan = by_variant[id(shared)] = GroupPlan(number, hyper, shared, inverse)
        cpu = False
        strided, only = torch.strided, rule.only
        items, states, kept_records = (plan.items, plan.states, plan.records) if plan else \
            (None, None, None)
        params = group["params"]
        aligned = lanes.get(number)
        if aligned is None or len(aligned) != len(params):
            aligned = lanes[number] = [None] * len(params)
        for index, param in enumerate(params):
            grad = param.grad
            if grad is None:
                continue
            # the gradient's check, inline (this runs for every parameter at every step): the
            # usual case is a few attribute reads, the rest is _unusual_gradient's
            shape = grad.shape
            on_cpu = param.is_cpu and grad.is_cpu
            dense = grad.layout is strided
            if items is not None and dense and not only and (on_cpu or not _apart(param, grad)):
                # the steady state of a group of one variant: a record that still holds
                # stands for the parameter's shape, dtype and storage, its state and the
                # gradient's dtype (so the checks below would pass)
                state = opt_state.get(param)
                record = None
                if state:
                    hint = aligned[index]
                    if hint is not None and hint.still(param, grad, state, shape):
                        record = hint
                    else:  # (the dict's record, unless it is the hint that just failed)
                        found = records.get(id(param))
                        if found is not None and found is not hint and found.fast and \
                                found.still(param, grad, state, shape):
                            record = found
                        aligned[index] = record
                if record is not None:
                    items.append((param, grad))
                    states.append(state)
                    kept_records.append(record)
                    if record.counted_for is not live:
                        steady = False
                    if on_cpu:
                        cpu = True
                    else:
                        devices.add(param.device.type)
                    continue
            if (not dense or only or shape != param.shape or grad.dtype not in _REAL
                    or param.dtype not in _REAL or not on_cpu and _apart(param, grad)):
                _unusual_gradient(name, param, grad, _where(index, number), fused, rule)
            if shared is None:
                variant = _param_variant(program, variants, name, param, hyper, unscale,
                                         _where(index, number))
                plan = by_variant.get(id(variant))
                if plan is None:
                    plan = by_variant[id(variant)] = GroupPlan(number, hyper, variant, inverse)
            steady = False
            if not dense:
                plan.sparse = True
            state = opt_state.get(param)  # (None: made at the run, not while checking)
            record = None
            if state:
                record = records.get(id(param))
                if record is not None and not (record.fast and record.still(param, grad, state)):
                    record = None
                if record is None:
                    seen = checked.get(id(param))
                    if seen is None or seen[0] is not state or seen[2] != shape or \
                            len(seen[1]) != len(state) or not all(map(operator.is_, seen[1],
                                                                      state.values())) \
                            or seen[3] != _shapes(seen[1]):
                        check_state(opt, param, state, _where(index, number))
                        values = tuple(state.values())
                        checked[id(param)] = (state, values, shape, _shapes(values))
            plan.items.append((param, grad))
            plan.states.append(state)
            plan.records.append(record)
            if on_cpu:
                cpu = True
            else:
                devices.add(param.device.type)
        if cpu:
            devices.add("cpu")
        if shared is not None and not plan.items:
            del by_variant[id(shared)]
        elif shared is not None:
            plan.steady = steady
        if any(plan.sparse for plan in by_variant.values()):
            check_sparse_group(opt, group, hyper, number)
        plans.extend(by_variant.values())
    return plans, devices


def _shapes(values: tuple) -> tuple:
    """The shapes of a state's values (a tensor resized or transposed in place keeps its
    identity: its shape tells)."""
    return tuple(v.shape if isinstance(v, torch.Tensor) else None for v in values)


def _param_variant(program, variants: dict, name: str, param: torch.Tensor,
                   hyper: dict[str, float], unscale: bool, where: str):
    """The variant of a group's step for ``param`` when it depends on the parameter (its
    switches read `w.ndim`...) or the program has matrix work (raising for a parameter the
    step cannot take); ``variants``: the group's, by the parameter's facts."""
    if program.library_work and param.is_complex():  # (a real view is no matrix of the same
        # rows and columns: torch.optim.Muon and Adafactor refuse them at the step)
        raise RuntimeError(f"{name} does not support complex parameters ({where})")
    facts = param_facts(param) if program.param_flags else None
    facts_key = tuple(facts.values()) if facts else ()
    variant = variants.get(facts_key)
    if variant is None:
        variant = variants[facts_key] = program.variant(hyper, unscale=unscale, facts=facts)
    if variant.needs_matrix and param.dim() < 2:
        raise ValueError(f"{name} works on matrices ({variant.needs_matrix}), but {where} has "
                         f"shape {tuple(param.shape)}")
    return variant


def param_facts(param: torch.Tensor) -> dict[str, float]:
    """A parameter's facts, as the IR reads them (optdsl.ir.ops.PARAM_FACTS)."""
    return tensor_facts(param)


def _where(index: int, number: int) -> str:
    return f"parameter {index} of param group {number}"


def _apart(param: torch.Tensor, grad: torch.Tensor) -> bool:
    """Whether a gradient is not on its parameter's device, or either is on the meta device
    (the check of tensors not both on the CPU)."""
    return (param.is_meta or grad.is_meta or grad.is_cuda != param.is_cuda
            or grad.get_device() != param.get_device())


def _unusual_gradient(name: str, param: torch.Tensor, grad: torch.Tensor, where: str,
                      fused: bool, rule: SparseRule) -> None:
    """The gradient check's slow path: return for a sparse gradient the program takes and for
    the complex gradient of a complex parameter; raise, saying what is wrong, otherwise."""
    if param.device.type == "meta":
        if fused:
            raise RuntimeError(f"`fused=True` requires all the params to be floating point "
                               f"Tensors of supported devices: {FUSED_DEVICES} but "
                               f"{param.dtype} and {param.device.type} ({where})")
        raise RuntimeError(f"{where} is on the meta device, which holds no values: give the "
                           f"parameters a real device first (module.to_empty(device=...))")
    if grad.layout is not torch.strided:
        check_sparse_gradient(name, param, grad, where, fused, rule)
        return
    if rule.only:
        words = rule.dense_message or f"{name} does not support dense gradients"
        raise RuntimeError(f"{words} ({where})")
    if (param.is_complex() and grad.dtype == param.dtype and grad.shape == param.shape
            and grad.device == param.device):
        return
    if grad.shape != param.shape:
        raise RuntimeError(f"the gradient of {where} has shape {tuple(grad.shape)}, but the "
                           f"parameter has shape {tuple(param.shape)}")
    if param.is_complex() and grad.dtype != param.dtype:
        raise RuntimeError(f"the gradient of {where} has dtype {grad.dtype}; the gradient of a "
                           f"{param.dtype} parameter has its dtype")
    if grad.dtype not in _REAL and not param.is_complex():
        raise RuntimeError(f"the gradient of {where} has dtype {grad.dtype}; a gradient of a "
                           f"floating-point parameter is floating-point")
    raise RuntimeError(f"the gradient of {where} is on {grad.device}, but the parameter is on "
                       f"{param.device}")


def check_sparse_gradient(name: str, param: torch.Tensor, grad: torch.Tensor, where: str,
                          fused: bool, rule: SparseRule) -> None:
    """Raise unless the program takes ``grad``, a sparse gradient, for ``param``."""
    if not rule.allowed:
        why = f": its step is not element-wise ({rule.blocker})" if rule.blocker else ""
        raise RuntimeError(f"{name} does not support sparse gradients ({where}){why}")
    if grad.layout is not torch.sparse_coo:
        raise RuntimeError(f"{name} takes sparse gradients in the COO layout "
                           f"(torch.sparse_coo), but the gradient of {where} is {grad.layout}")
    if fused:
        raise RuntimeError(f"`fused=True` does not support sparse gradients ({where})")
    if param.is_complex() or grad.is_complex():
        raise RuntimeError(f"sparse gradients of complex parameters are not supported "
                           f"({where})")
    if grad.shape != param.shape:
        raise RuntimeError(f"the gradient of {where} has shape {tuple(grad.shape)}, but the "
                           f"parameter has shape {tuple(param.shape)}")
    if grad.dtype not in _REAL:
        raise RuntimeError(f"the gradient of {where} has dtype {grad.dtype}; a gradient of a "
                           f"floating-point parameter is floating-point")
    if grad.device != param.device:
        raise RuntimeError(f"the gradient of {where} is on {grad.device}, but the parameter "
                           f"is on {param.device}")
    if distributed.is_dtensor(param):
        raise RuntimeError(f"sparse gradients of DTensor (sharded) parameters are not "
                           f"supported ({where})")


def check_sparse_group(opt, group: dict, hyper: dict[str, float], number: int) -> None:
    """Raise if a param group with a sparse gradient breaks one of the program's ``sparse
    require`` conditions (as torch.optim checks them: at the step, a RuntimeError)."""
    program = opt.program
    for requirement in program.sparse.requirements:
        if requirement.holds(hyper):
            continue
        given: dict = {}
        hyper_values.scalars(program.hypers, group, given)
        values = {key: hyper_values.shown(value) for key, value in given.items()}
        got = ", ".join(f"{key} = {values[key]}" for key in requirement.names)
        words = (requirement.message.format(**values) if requirement.message is not None
                 else "Invalid hyper values for sparse gradients")
        raise RuntimeError(f"{words} ({type(opt).__name__} takes sparse gradients when "
                           f"{requirement.text}; got {got} in param group {number})")


_REAL = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_COMPLEX = frozenset({torch.complex64, torch.complex128})


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
            check_like_param(value, param, f"state[{spec.key!r}] of {where}",
                             spec.shape_of(tuple(param.shape)) if spec.per else None)
        elif value.numel() != 1:
            raise RuntimeError(f"state[{spec.key!r}] of {where} holds one number per "
                               f"parameter, but has shape {tuple(value.shape)}")
    master = state.get(precision.MASTER_KEY)
    if master is not None and precision.needs_master(opt.master_weights, param.dtype):
        check_like_param(master, param, f"state[{precision.MASTER_KEY!r}] of {where}")


def check_like_param(value: torch.Tensor, param: torch.Tensor, what: str,
                     shape: tuple | None = None) -> None:
    """A tensor like the parameter (of ``shape``: a row or column statistic's)."""
    want = tuple(param.shape) if shape is None else tuple(shape)
    if tuple(value.shape) != want:
        whose = "the parameter has" if shape is None else "it must have"
        raise RuntimeError(f"{what} has shape {tuple(value.shape)}, but {whose} shape {want}")
    if value.dtype not in _REAL and not (value.dtype in _COMPLEX and param.is_complex()):
        raise RuntimeError(f"{what} has dtype {value.dtype}; states are floating-point")
    if param.is_complex() and not value.is_complex():
        raise RuntimeError(f"{what} has dtype {value.dtype}; the states of a complex "
                           f"parameter are complex")
    if value.device != param.device:
        raise RuntimeError(f"{what} is on {value.device}, but the parameter is on "
                           f"{param.device}")
