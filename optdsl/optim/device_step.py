"""The optimizer's side of a device step (a back end whose scalars are computed on the device:
Triton): what it gathers per param group and hands to the runner, with no per-parameter
arithmetic and nothing read back from the device.

Per group: the parameters' states are made where they are missing (the step count and scalar
states on the parameter's device, as torch's fused and capturable optimizers keep them), the
tensors are gathered into lists (a parameter's fp32 master weight in its place, the
parameter then receiving the rounded copy), and the runner launches. The step counts advance
on the device; torch.amp's scale and found_inf tensors go to the kernels, which write
nothing on a step GradScaler skips; stochastic rounding's seed is derived from the group's
update count, which the runner keeps on the host. DTensor parameters (FSDP2) are stepped
through their local shards, the ranks agreeing on found_inf with a collective on the device.
A complex parameter is stepped on its real view (as torch.optim's). A group with sparse
gradients runs its dense tensors as one batch and the rows its sparse gradients index as
another (optdsl.runtime.sparse gathers and scatters them; the step counts stay the
parameters' own), neither kept as a plan between steps.
"""

from __future__ import annotations

from typing import Any

from optdsl.optim import distributed, precision
from optdsl.runtime import sparse as sparse_rows
from optdsl.runtime.device_tables import DeviceBatch
from optdsl.runtime.step import Entry, StepOptions


def run_groups(opt, runner, plans: list, keys: list, found_inf: Any, grad_scale: Any) -> None:
    """Step every group of ``plans`` (optdsl.optim.step_checks) on the device."""
    if found_inf is not None:
        found_inf = distributed.agreed_found_inf_tensor(
            found_inf, [p for g in opt.param_groups for p in g["params"]])
    capturable = any(g.get("capturable") for g in opt.param_groups)
    state_of = opt.state
    for plan in plans:
        inputs = DeviceBatch(plan.number, [], [], [], plan.hyper, grad_scale=grad_scale,
                             found_inf=found_inf, capturable=capturable)
        params = [p for p, _ in plan.items]
        if opt.stochastic_rounding:
            inputs.seed_of = _seeds(opt._rounding, plan.number,
                                    distributed.shard_coordinates(params))
        # the short way of a steady state (never for DTensors: their plans are not kept
        # for it, so the parameters are not the planned ones)
        records = plan.records
        if all(records):  # every parameter's record holds: their tokens key the plan
            known = tuple(record.token for record in records)
            states = plan.states
        else:
            known, states = None, [state_of[p] for p in params]
        if runner.step_again(plan.variant, plan.number, params, states,
                             [g for _, g in plan.items], inputs, known):
            continue
        batch = _gather(opt, plan)
        if plan.sparse:
            _run_sparse(runner, plan.variant, batch, inputs, keys)
            continue
        _take_inputs(batch, inputs)
        owners = _localize(batch, keys, opt._statistic_keys())
        runner.run_device(plan.variant, batch, owners)


def _take_inputs(batch: DeviceBatch, inputs: DeviceBatch) -> None:
    """Give ``batch`` the step's inputs beside its tensors: AMP tensors, capturable, seeds."""
    for name in ("grad_scale", "found_inf", "capturable", "seed_of"):
        setattr(batch, name, getattr(inputs, name))


class _BatchOf:
    """A runner (optdsl.runtime.step's protocol) of device batches with the step's inputs
    (AMP tensors, seeds): what optdsl.runtime.sparse calls for the dense part of a group and
    for the gathered rows."""

    def __init__(self, runner, inputs: DeviceBatch) -> None:
        self.runner = runner
        self.inputs = inputs

    def run(self, variant, entries, options: StepOptions) -> None:
        batch = DeviceBatch(-1, [e.param for e in entries], [e.grad for e in entries],
                            [e.state for e in entries], self.inputs.hyper,
                            copies=options.copies)
        _take_inputs(batch, self.inputs)
        self.runner.run_device(variant, batch)


def _run_sparse(runner, variant, batch: DeviceBatch, inputs: DeviceBatch, keys: list) -> None:
    """A group with sparse gradients (never DTensors: the checks refuse them)."""
    entries = [Entry(p, g, s, 0.0) for p, g, s in zip(batch.params, batch.grads, batch.states)]
    options = StepOptions(dict(batch.hyper), copies=batch.copies)
    sparse_rows.run(_BatchOf(runner, inputs), variant, entries, options,
                    [*keys, ("step", False)])


def _seeds(rounding: precision.RoundingSeeds, number: int, coordinates: tuple):
    """The group's seed for a given update count (precision's policy)."""
    return lambda count: rounding.seed(number, count, *coordinates)


def _gather(opt, plan) -> DeviceBatch:
    """The group's tensors, its states made where missing."""
    hyper = plan.hyper
    live = plan.variant.live_states
    state_of = opt.state
    master = opt.master_weights
    params, grads, states, copies = [], [], [], []
    with_copies = False
    for (param, grad), state, record in zip(plan.items, plan.states, plan.records):
        if state is None:
            state = state_of[param]
        if record is None or not record.serves(live):
            opt._ready_state(param, state, hyper, live, param.device, grad)
        if master and param.dtype in precision.LOW_PRECISION:
            params.append(state[precision.MASTER_KEY])
            copies.append(param)
            with_copies = True
        elif param.is_complex():  # its real view, its gradient's and its states'
            real = opt._real_views().entry(param, grad, state, 0.0)
            params.append(real.param)
            copies.append(None)
            grads.append(real.grad)
            states.append(real.state)
            continue
        else:
            params.append(param)
            copies.append(None)
        grads.append(grad)
        states.append(state)
    return DeviceBatch(plan.number, params, grads, states, hyper,
                       copies if with_copies else None)


def _localize(batch: DeviceBatch, keys: list, statistics: frozenset[str] = frozenset()
              ) -> tuple[list, list] | None:
    """DTensor parameters: the batch switched to their local shards (and its combiner set;
    row and column ``statistics`` whole); returns the objects that identify the tensors
    between steps. None otherwise."""
    cls = distributed.dtensor_class()
    if cls is None or not any(isinstance(p, cls) for p in batch.params):
        return None
    owners = (list(batch.params), list(batch.states))
    entries = [Entry(p, g, s, 0.0) for p, g, s in zip(batch.params, batch.grads, batch.states)]
    local, combine = distributed.localize(entries, keys, statistics)
    batch.params = [e.param for e in local]
    batch.grads = [e.grad for e in local]
    batch.states = [e.state for e in local]
    batch.combine = combine
    if batch.copies is not None:
        batch.copies = [None if c is None else distributed.local_tensor(c)
                        for c in batch.copies]
    return owners
