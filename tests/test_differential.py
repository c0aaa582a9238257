"""Differential tests: every bundled optimizer against its torch.optim namesake.

Each bundled program (optdsl/library/*.opt) claims to be a drop-in twin of a torch.optim
optimizer: same constructor keywords and defaults, same state_dict keys, same numbers. These
tests run the twin and the original side by side on identical parameters and gradients and
compare the parameters after every step and the optimizer state at the end:

- 30 steps, two param groups with different hypers (a different lr and at least one other
  keyword), parameters of odd shapes, and parameters that miss their gradient on some steps
  (``.grad = None`` in both optimizers, so their step counts fall behind); halfway through,
  every group's lr is halved in place, as an lr scheduler does,
- in float64 (relative error 1e-10) and float32 (relative error 1e-5),
- for a set of keyword configurations per optimizer that reaches every branch of the rule,
- checkpoints both ways: a torch.optim state_dict loaded into the twin, and the twin's
  state_dict loaded into torch.optim, then both continue and must agree.

Lion and PolyakSGD have no torch.optim namesake; they are compared with the reference
implementations written below in plain torch.

The relative error of a tensor is max|actual - expected| / max|expected| (so elements near
zero are judged against the scale of the whole tensor).
"""

from __future__ import annotations

import contextlib
import copy
import inspect

import pytest
import torch

import optdsl.library as library

STEPS = 30
SHAPES = [(7,), (3, 5), (1,), (2, 3, 4), (4, 1)]
SPLIT = 3  # params[:SPLIT] form param group 0, params[SPLIT:] param group 1
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
IGNORED_KEYWORDS = {"foreach", "fused", "capturable", "differentiable"}


def has_grad(index: int, step: int) -> bool:
    """Whether parameter ``index`` gets a gradient on step ``step`` (0-based).

    Parameter 2 (group 0) misses its first two steps and then every fourth one; parameter 4
    (group 1) starts late, at step 7, and misses every fifth step after that.
    """
    if index == 2:
        return step >= 2 and step % 4 != 1
    if index == 4:
        return step >= 7 and step % 5 != 3
    return True


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """torch keeps scalar optimizer state (step, mu_product) in the default dtype."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


# ------------------------------------------------------------------------------------------
# Reference implementations for the optimizers torch.optim does not have
# ------------------------------------------------------------------------------------------
def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class LionReference(torch.optim.Optimizer):
    """Lion (Chen et al., 2023), as lucidrains/lion-pytorch, plus ``maximize``."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not all(0.0 <= b <= 1.0 for b in betas):
            raise ValueError(f"Invalid betas: {betas}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                    state["exp_avg"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg = state["exp_avg"]
                p.mul_(1 - lr * wd)
                update = exp_avg.mul(beta1).add(grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


class PolyakSGDReference(torch.optim.Optimizer):
    """torch.optim.SGD (no dampening, no Nesterov) plus the running mean of the iterates.

    ``state['ax']`` is the mean of the parameter values after each of this parameter's
    updates: ax_t = ax_{t-1} + (w_t - ax_{t-1}) / t, starting from ax_0 = w_0.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, weight_decay=0.0, maximize=False):
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError("Invalid hyperparameter")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                    state["ax"] = p.detach().clone()
                state["step"] += 1
                step = state["step"].item()
                if wd != 0:
                    grad = grad.add(p, alpha=wd)
                if momentum != 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = grad.detach().clone()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(grad)
                    grad = buf
                p.add_(grad, alpha=-lr)
                ax = state["ax"]
                ax.add_(p.sub(ax).div_(step))


REFERENCES = {
    "SGD": torch.optim.SGD,
    "Adagrad": torch.optim.Adagrad,
    "RMSprop": torch.optim.RMSprop,
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "Adamax": torch.optim.Adamax,
    "NAdam": torch.optim.NAdam,
    "RAdam": torch.optim.RAdam,
    "Adadelta": torch.optim.Adadelta,
    "Rprop": torch.optim.Rprop,
    "ASGD": torch.optim.ASGD,
    "Lion": LionReference,
    "PolyakSGD": PolyakSGDReference,
}


# ------------------------------------------------------------------------------------------
# Keyword configurations: (id, constructor keywords, group 0 overrides, group 1 overrides).
# Group 1 always has its own lr; between them the configurations reach every branch.
# ------------------------------------------------------------------------------------------
CONFIGS = {
    "SGD": [
        ("plain", dict(lr=0.05), {}, dict(lr=0.02)),
        ("momentum_dampening", dict(lr=0.05, momentum=0.9), {},
         dict(lr=0.02, dampening=0.3)),
        ("nesterov", dict(lr=0.05, momentum=0.9, nesterov=True), {},
         dict(lr=0.02, momentum=0.5, weight_decay=0.1)),
        ("weight_decay_maximize", dict(lr=0.05, weight_decay=0.05, maximize=True), {},
         dict(lr=0.02, momentum=0.8, dampening=0.5, maximize=False)),
        ("dampening_without_momentum", dict(lr=0.05, dampening=0.5), {},
         dict(lr=0.01, momentum=0.9, dampening=0.0, nesterov=True)),
    ],
    "Adagrad": [
        ("plain", dict(lr=0.1), {}, dict(lr=0.05)),
        ("lr_decay", dict(lr=0.1, lr_decay=0.05), {}, dict(lr=0.05, weight_decay=0.1)),
        # torch reads initial_accumulator_value from the constructor only, so no group
        # overrides it here.
        ("initial_accumulator_maximize", dict(lr=0.1, initial_accumulator_value=0.3, eps=1e-6),
         {}, dict(lr=0.05, maximize=True, lr_decay=0.1)),
    ],
    "RMSprop": [
        ("plain", dict(lr=0.01), {}, dict(lr=0.005, alpha=0.9)),
        ("centered", dict(lr=0.01, centered=True), {}, dict(lr=0.005, momentum=0.9)),
        ("centered_momentum_weight_decay",
         dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1), {},
         dict(lr=0.003, centered=False, maximize=True, eps=1e-4)),
    ],
    "Adam": [
        ("plain", dict(lr=0.01), {}, dict(lr=0.005, betas=(0.8, 0.99))),
        ("amsgrad_weight_decay", dict(lr=0.01, amsgrad=True, weight_decay=0.1), {},
         dict(lr=0.005, amsgrad=False)),
        ("maximize", dict(lr=0.01, maximize=True), {}, dict(lr=0.005, amsgrad=True, eps=1e-3)),
        ("decoupled_weight_decay", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
         {}, dict(lr=0.005, decoupled_weight_decay=False, amsgrad=True)),
    ],
    "AdamW": [
        ("plain", dict(lr=0.01), {}, dict(lr=0.005, weight_decay=0.1)),
        ("amsgrad", dict(lr=0.01, amsgrad=True), {},
         dict(lr=0.005, betas=(0.5, 0.9), maximize=True)),
        ("maximize_no_decay", dict(lr=0.01, maximize=True, weight_decay=0.0), {},
         dict(lr=0.005, amsgrad=True, weight_decay=0.2)),
    ],
    "Adamax": [
        ("plain", dict(lr=0.01), {}, dict(lr=0.005, betas=(0.8, 0.99))),
        ("weight_decay_maximize", dict(lr=0.01, weight_decay=0.1, maximize=True), {},
         dict(lr=0.005, eps=1e-3)),
    ],
    "NAdam": [
        ("plain", dict(lr=0.01), {}, dict(lr=0.005, momentum_decay=0.01)),
        ("weight_decay", dict(lr=0.01, weight_decay=0.1), {},
         dict(lr=0.005, decoupled_weight_decay=True)),
        ("decoupled_maximize",
         dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True, maximize=True), {},
         dict(lr=0.005, betas=(0.8, 0.99), eps=1e-3)),
    ],
    "RAdam": [
        ("plain", dict(lr=0.01), {}, dict(lr=0.005, betas=(0.8, 0.99))),
        ("weight_decay", dict(lr=0.01, weight_decay=0.1), {},
         dict(lr=0.005, decoupled_weight_decay=True)),
        ("decoupled_maximize",
         dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True, maximize=True), {},
         dict(lr=0.005, eps=1e-3, betas=(0.9, 0.9))),
    ],
    "Adadelta": [
        ("plain", dict(lr=1.0), {}, dict(lr=0.5, rho=0.8)),
        ("weight_decay_maximize", dict(lr=1.0, weight_decay=0.1, maximize=True, eps=1e-4), {},
         dict(lr=0.3, maximize=False)),
    ],
    "Rprop": [
        ("plain", dict(lr=0.01), {}, dict(lr=0.005)),
        ("clamped", dict(lr=0.01, etas=(0.3, 1.5), step_sizes=(1e-3, 2e-2)), {},
         dict(lr=0.005, maximize=True, etas=(0.5, 1.2))),
        ("maximize", dict(lr=0.01, maximize=True), {}, dict(lr=0.02, step_sizes=(1e-4, 0.03))),
    ],
    "ASGD": [
        # t0 small enough that the averaging (mu < 1) starts within the run
        ("plain", dict(lr=0.05), {}, dict(lr=0.02, lambd=0.1)),
        ("averaging_weight_decay", dict(lr=0.05, t0=5, alpha=0.5, weight_decay=0.1), {},
         dict(lr=0.02, t0=10, lambd=0.05, maximize=True)),
        ("maximize", dict(lr=0.05, maximize=True, t0=2, lambd=0.01), {},
         dict(lr=0.03, weight_decay=0.2, alpha=0.9)),
    ],
    "Lion": [
        ("plain", dict(lr=1e-3), {}, dict(lr=5e-4, betas=(0.8, 0.95))),
        ("weight_decay_maximize", dict(lr=1e-3, weight_decay=0.5), {},
         dict(lr=5e-4, maximize=True)),
    ],
    "PolyakSGD": [
        ("plain", dict(lr=0.05), {}, dict(lr=0.02)),
        ("momentum_weight_decay", dict(lr=0.05, momentum=0.9, weight_decay=0.1), {},
         dict(lr=0.02, momentum=0.0, maximize=True)),
    ],
}

CASES = [
    pytest.param(name, kwargs, g0, g1, id=f"{name}-{cid}")
    for name, configs in CONFIGS.items()
    for cid, kwargs, g0, g1 in configs
]
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


# ------------------------------------------------------------------------------------------
# The problem both optimizers see
# ------------------------------------------------------------------------------------------
class Problem:
    """Initial values and a gradient field: g = noise[step] + 0.5 * (w - center).

    The noise has per-element scales from 1e-2 to 3, so eps and sign changes matter; the
    linear term makes the gradient depend on the parameters (a contraction, so rounding
    differences are not amplified).
    """

    def __init__(self, steps: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        self.init = [torch.randn(s, generator=gen, dtype=f64) for s in SHAPES]
        self.center = [torch.randn(s, generator=gen, dtype=f64) for s in SHAPES]
        scales = [10.0 ** (torch.rand(s, generator=gen, dtype=f64) * 2.5 - 2.0) for s in SHAPES]
        self.noise = [torch.randn((steps, *s), generator=gen, dtype=f64) * sc
                      for s, sc in zip(SHAPES, scales)]

    def params(self, dtype: torch.dtype) -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(v.to(dtype).clone()) for v in self.init]

    def set_grads(self, params, step: int) -> None:
        for i, p in enumerate(params):
            if has_grad(i, step):
                w = p.detach()
                p.grad = self.noise[i][step].to(w.dtype) + 0.5 * (w - self.center[i].to(w.dtype))
            else:
                p.grad = None


def groups(params, g0: dict, g1: dict) -> list[dict]:
    return [dict(params=list(params[:SPLIT]), **g0), dict(params=list(params[SPLIT:]), **g1)]


def advance(opt, params, problem: Problem, step: int) -> None:
    opt.zero_grad()
    problem.set_grads(params, step)
    opt.step()


def rel_err(actual, expected) -> float:
    a = torch.as_tensor(actual).detach().to("cpu", torch.float64)
    e = torch.as_tensor(expected).detach().to("cpu", torch.float64)
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != {tuple(e.shape)}"
    if e.numel() == 0:
        return 0.0
    diff = (a - e).abs().max().item()
    if diff == 0.0:
        return 0.0
    scale = e.abs().max().item()
    return diff / max(scale, 1e-300)  # nan stays nan and fails every comparison


def check_params(twin_params, ref_params, tol: float, where: str) -> None:
    for i, (pt, pr) in enumerate(zip(twin_params, ref_params)):
        err = rel_err(pt, pr)
        assert err <= tol, f"{where}: param {i} {tuple(pr.shape)}: rel err {err:.3e} > {tol:g}"


STEPLESS = {"SGD"}  # torch.optim optimizers that keep no state['step'] of their own


def check_state(twin, ref, tol: float, where: str, ref_name: str) -> None:
    """Every state entry the reference keeps must be in the twin's state_dict, equal."""
    ref_state = ref.state_dict()["state"]
    twin_state = twin.state_dict()["state"]
    for index, entries in ref_state.items():
        live = {k: v for k, v in entries.items() if v is not None}
        if ref_name in STEPLESS:
            live.pop("step", None)  # at most a stale copy loaded from a twin's checkpoint
        if not live:
            continue  # e.g. torch.optim.SGD without momentum: {'momentum_buffer': None}
        if index not in twin_state and "step" in live and float(live["step"]) == 0:
            continue  # torch.optim.Adagrad creates state before a parameter's first update
        assert index in twin_state, f"{where}: no state for param {index}"
        for key, value in live.items():
            assert key in twin_state[index], (
                f"{where}: param {index}: state key {key!r} missing; twin has "
                f"{sorted(twin_state[index])}")
            got = twin_state[index][key]
            if key == "step":
                assert float(got) == float(value), f"{where}: param {index}: step {got} != {value}"
                continue
            err = rel_err(got, value)
            assert err <= tol, (f"{where}: param {index}: state {key!r}: rel err {err:.3e} > "
                                f"{tol:g}")


# ------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kwargs, g0, g1", CASES)
def test_matches_torch(name, kwargs, g0, g1, dtype):
    Twin, Ref = getattr(library, name), REFERENCES[name]
    tol = TOL[dtype]
    with default_dtype(dtype):
        problem = Problem(STEPS)
        p_ref, p_twin = problem.params(dtype), problem.params(dtype)
        ref = Ref(groups(p_ref, g0, g1), **kwargs)
        twin = Twin(groups(p_twin, g0, g1), **kwargs)
        worst = 0.0
        for step in range(STEPS):
            if step == STEPS // 2:  # what an lr scheduler does: edit the param groups
                for opt in (ref, twin):
                    for group in opt.param_groups:
                        group["lr"] *= 0.5
            advance(ref, p_ref, problem, step)
            advance(twin, p_twin, problem, step)
            for pt, pr in zip(p_twin, p_ref):
                worst = max(worst, rel_err(pt, pr))
            check_params(p_twin, p_ref, tol, f"step {step + 1} (worst so far {worst:.3e})")
        for pt, pr in zip(p_twin, p_ref):
            assert pt.dtype == pr.dtype
        check_state(twin, ref, tol, "final state", name)


N_BEFORE, N_AFTER = 5, 12


@pytest.mark.parametrize("direction", ["torch_to_twin", "twin_to_torch"])
@pytest.mark.parametrize("name, kwargs, g0, g1", CASES)
def test_checkpoint_round_trip(name, kwargs, g0, g1, direction):
    """Run one side N steps, load its state_dict into a fresh optimizer of the other kind
    (built with the same constructor keywords but without the group overrides, which must
    come back from the checkpoint), then continue both and compare.

    At the checkpoint parameter 4 has had no gradient yet, so it has no state.
    """
    Twin, Ref = getattr(library, name), REFERENCES[name]
    first, second = (Ref, Twin) if direction == "torch_to_twin" else (Twin, Ref)
    tol = TOL[torch.float64]
    with default_dtype(torch.float64):
        problem = Problem(N_BEFORE + N_AFTER)
        p_first = problem.params(torch.float64)
        opt_first = first(groups(p_first, g0, g1), **kwargs)
        for step in range(N_BEFORE):
            advance(opt_first, p_first, problem, step)

        # A checkpoint is a copy (torch.save/torch.load); never share tensors between the two.
        sd = copy.deepcopy(opt_first.state_dict())
        p_second = [torch.nn.Parameter(p.detach().clone()) for p in p_first]
        opt_second = second(groups(p_second, {}, {}), **kwargs)
        opt_second.load_state_dict(sd)
        for key in set(g1):
            got, want = opt_second.param_groups[1][key], g1[key]
            assert (tuple(got) if isinstance(want, tuple) else got) == want, (
                f"group 1 {key!r} not restored from the checkpoint: {got!r} != {want!r}")

        for step in range(N_BEFORE, N_BEFORE + N_AFTER):
            advance(opt_first, p_first, problem, step)
            advance(opt_second, p_second, problem, step)
            check_params(p_second, p_first, tol, f"{direction} step {step + 1}")
        twin, ref = (opt_second, opt_first) if direction == "torch_to_twin" else \
            (opt_first, opt_second)
        check_state(twin, ref, tol, f"{direction} final state", name)


TORCH_ONLY_DEFAULTS = {"AdamW": {"decoupled_weight_decay"}}  # AdamW takes no such keyword
EXTRA_TWIN_DEFAULTS = {"Lion": {}, "PolyakSGD": {}}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_same_keywords_and_defaults(name):
    """The twin's constructor keywords and their defaults are torch's (minus the ignored
    execution-strategy keywords foreach/fused/capturable/differentiable)."""
    Twin, Ref = getattr(library, name), REFERENCES[name]
    p = torch.nn.Parameter(torch.zeros(3))
    ref, twin = Ref([p]), Twin([p])
    ref_keys = set(ref.defaults) - IGNORED_KEYWORDS - TORCH_ONLY_DEFAULTS.get(name, set())
    twin_keys = set(twin.defaults) - IGNORED_KEYWORDS
    assert twin_keys == ref_keys
    for key in ref_keys:
        got, want = twin.defaults[key], ref.defaults[key]
        if isinstance(want, (tuple, list)):
            assert tuple(got) == tuple(want), key
        else:
            assert got == want, key
    # torch's keyword names are accepted, and so are the ignored ones
    if name not in EXTRA_TWIN_DEFAULTS:
        accepted = set(inspect.signature(Ref.__init__).parameters) - {"self", "params"}
        ignored = {k: None if k == "foreach" else False for k in accepted & IGNORED_KEYWORDS}
        Twin([p], **ignored)


BAD_VALUES = {
    "SGD": [dict(lr=-0.1), dict(momentum=-0.5), dict(weight_decay=-1.0)],
    "Adagrad": [dict(lr=-0.1), dict(lr_decay=-1.0), dict(weight_decay=-1.0),
                dict(initial_accumulator_value=-1.0), dict(eps=-1.0)],
    "RMSprop": [dict(lr=-0.1), dict(eps=-1.0), dict(momentum=-1.0), dict(weight_decay=-1.0),
                dict(alpha=-0.5)],
    "Adam": [dict(lr=-0.1), dict(eps=-1.0), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)),
             dict(weight_decay=-1.0)],
    "AdamW": [dict(lr=-0.1), dict(eps=-1.0), dict(betas=(1.0, 0.999)),
              dict(betas=(0.9, 1.5)), dict(weight_decay=-1.0)],
    "Adamax": [dict(lr=-0.1), dict(eps=-1.0), dict(betas=(-0.1, 0.999)),
               dict(betas=(0.9, 1.0)), dict(weight_decay=-1.0)],
    "NAdam": [dict(lr=-0.1), dict(eps=-1.0), dict(betas=(1.0, 0.999)),
              dict(weight_decay=-1.0), dict(momentum_decay=-1.0)],
    "RAdam": [dict(lr=-0.1), dict(eps=-1.0), dict(betas=(0.9, 1.0)), dict(weight_decay=-1.0)],
    "Adadelta": [dict(lr=-0.1), dict(rho=1.5), dict(rho=-0.1), dict(eps=-1.0),
                 dict(weight_decay=-1.0)],
    "Rprop": [dict(lr=-0.1), dict(etas=(0.0, 1.2)), dict(etas=(0.5, -1.0))],
    "Lion": [dict(lr=-0.1), dict(betas=(1.5, 0.99)), dict(betas=(0.9, -0.1)),
             dict(weight_decay=-1.0)],
    "PolyakSGD": [dict(lr=-0.1), dict(momentum=-1.0), dict(weight_decay=-1.0)],
}


@pytest.mark.parametrize("name, bad", [
    pytest.param(name, bad, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in bad.items())}")
    for name, bads in BAD_VALUES.items() for bad in bads
])
def test_rejects_what_torch_rejects(name, bad):
    Twin, Ref = getattr(library, name), REFERENCES[name]
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError):
        Ref([p], **bad)  # the value really is invalid for the reference
    with pytest.raises(ValueError):
        Twin([p], **bad)


@pytest.mark.parametrize("name, args", [
    pytest.param("SGD", (0.05, 0.9), id="SGD-lr-momentum"),
    pytest.param("Adam", (0.01, (0.8, 0.99), 1e-6), id="Adam-lr-betas-eps"),
    pytest.param("Adagrad", (0.1, 0.01), id="Adagrad-lr-lr_decay"),
    pytest.param("RMSprop", (0.01, 0.9, 1e-8, 0.0, 0.5, True), id="RMSprop-six-positional"),
])
def test_positional_hypers(name, args):
    """torch.optim constructors take their leading hypers positionally; so does the twin."""
    Twin, Ref = getattr(library, name), REFERENCES[name]
    with default_dtype(torch.float64):
        problem = Problem(10)
        p_ref, p_twin = problem.params(torch.float64), problem.params(torch.float64)
        ref, twin = Ref(p_ref, *args), Twin(p_twin, *args)
        for step in range(10):
            advance(ref, p_ref, problem, step)
            advance(twin, p_twin, problem, step)
        check_params(p_twin, p_ref, TOL[torch.float64], f"{name}{args}")
