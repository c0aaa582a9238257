"""torch.optim properties of every bundled optimizer, mirrored from PyTorch's own optimizer
suite (test/optim/test_optim.py with torch/testing/_internal/common_optimizers.py).

Every bundled optimizer runs on the NumPy back end; a subset that covers every kind of
program (scalar state, state initialised from a hyper, per-tensor and group-wide
reductions) also runs on the Triton back end through Triton's interpreter
(TRITON_INTERPRET=1 set per test, on CPU tensors). What is checked:

- state_dict is deterministic, and a resumed run (state_dict -> torch.save ->
  torch.load(weights_only=True) -> load_state_dict into a fresh optimizer over cloned
  parameters) equals the uninterrupted run bit for bit, lr scheduler state included;
- older checkpoints load and step: param groups without the flags added over time
  (maximize, foreach, fused, differentiable, capturable), a float ``step``, no ``step`` where
  t only tells the first update (SGD), no state the step does not use; a checkpoint that
  lacks what the step needs is refused;
- loading casts state the way torch.optim does: every state tensor to the parameter's dtype
  (so an fp32 checkpoint loaded for bf16/fp16 parameters gives low-precision state, as
  torch's namesake does), except ``step``, which stays float32;
- step() is a no-op for parameters without gradients, and for zero gradients with zero
  weight decay (checked against torch's namesake, which has the property too); a group with
  lr=1e-28 keeps its parameters; lr=0 with zero gradients changes nothing (what
  torch.distributed.checkpoint's optimizer-state initialisation relies on);
- a tensor lr gives the same numbers as the float lr, under an lr scheduler too;
- step pre/post hooks (global and per optimizer) and state_dict / load_state_dict pre/post
  hooks fire in the order torch.optim's own optimizers fire them, with the same effects;
- the optimizer prints, deep-copies (same public attributes; the copy steps on its own),
  handles zero-size and non-contiguous parameters, and composes with lr schedulers;
- torch.amp.GradScaler("cpu"): by default GradScaler drives the twins as torch's non-fused
  optimizers (it unscales .grad and skips the step itself) and the run matches torch's
  namesake; with fused=True the step unscales gradients itself (the result equals a step on
  unscaled gradients, and .grad is left scaled), and a step with inf/NaN gradients leaves
  parameters, state and step counts unchanged.
"""

from __future__ import annotations

import copy
import functools
import io
import math

import pytest
import torch
from torch.optim import lr_scheduler
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from optdsl import library
from optdsl.optim import hypers as hyper_values
from optdsl.optim import step_checks

# Muon steps 2-D parameters only (torch.optim.Muon refuses others), and these properties are
# checked on models with biases: its own are in tests/test_matrix.py and PyTorch's suite.
# SparseAdam takes sparse gradients only: torch's own suite runs it with them, through
# ../shared/torch_suite, and so does tests/test_sparse_gradients.py.
MATRIX_ONLY = {"Muon"}
ALL = [name for name in library.STEPWISE  # (closure-driven: tests/test_closure_*.py)
       if name not in MATRIX_ONLY and not library.program(name).sparse.only]
TWINS = [name for name in ALL if hasattr(torch.optim, name)]
# Run on the interpreted Triton back end as well: plain (SGD), Adam-like, a scalar state
# (NAdam's mu_product), state initialised from hypers (Rprop, Adagrad), per-tensor
# reductions (LAMB) and a group-wide reduction (AdamWClip).
# Some properties are checked for every optimizer on Triton too (matrix work, Adafactor's,
# included: its library stages run between the sweeps).
ON_TRITON = ALL
TRITON = ["SGD", "Adam", "NAdam", "Rprop", "Adagrad", "LAMB", "AdamWClip"]
FLAGS = ["maximize", "foreach", "fused", "differentiable", "capturable"]

# Keyword configurations per optimizer: the defaults, and one that turns the switches on.
CONFIGS: dict[str, list[dict]] = {
    "SGD": [{}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
            {"momentum": 0.9, "dampening": 0.5, "maximize": True}],
    "Adagrad": [{}, {"lr_decay": 0.1, "weight_decay": 0.1, "initial_accumulator_value": 0.1,
                     "maximize": True}],
    "RMSprop": [{}, {"centered": True, "momentum": 0.9, "weight_decay": 0.1}],
    "Adam": [{}, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}],
    "AdamW": [{}, {"amsgrad": True}],
    "Adamax": [{}, {"weight_decay": 0.1, "maximize": True}],
    "NAdam": [{}, {"decoupled_weight_decay": True, "weight_decay": 0.1}],
    "RAdam": [{}, {"decoupled_weight_decay": True, "weight_decay": 0.1}],
    "Adadelta": [{}, {"weight_decay": 0.1, "maximize": True}],
    "Rprop": [{}, {"maximize": True, "etas": (0.4, 1.3)}],
    "Lion": [{}, {"weight_decay": 0.1, "maximize": True}],
    "PolyakSGD": [{}, {"momentum": 0.9, "weight_decay": 0.1}],
    "LAMB": [{}, {"weight_decay": 0.1}],
    "LARS": [{}, {"weight_decay": 0.1, "eps": 1e-8}],
    "SGDClip": [{}, {"momentum": 0.9, "nesterov": True, "max_norm": 0.5}],
    "AdamWClip": [{}, {"max_norm": 0.5}],
    "SGDClipPerTensor": [{}, {"momentum": 0.9, "max_norm": 0.5}],
    "Adafactor": [{}, {"weight_decay": 0.1, "maximize": True, "eps": (1e-10, 1e-3)}],
    "ASGD": [{}, {"lambd": 0.1, "t0": 1, "weight_decay": 0.1, "maximize": True}],
}
assert set(CONFIGS) == set(ALL), "every bundled optimizer needs CONFIGS"


def cases(names_numpy=ALL, names_triton=TRITON, configs=False):
    """(name, [config,] backend) parameters: every optimizer on NumPy (every configuration),
    a subset on Triton (the switches-on configuration)."""
    out = []
    for backend, names in (("numpy", names_numpy), ("triton", names_triton)):
        for name in names:
            if configs:
                for i, cfg in enumerate(CONFIGS[name]):
                    if backend == "triton" and i != len(CONFIGS[name]) - 1:
                        continue
                    out.append(pytest.param(name, cfg, backend, id=f"{name}-{i}-{backend}"))
            else:
                out.append(pytest.param(name, backend, id=f"{name}-{backend}"))
    return out


@pytest.fixture(autouse=True)
def _environment(request, monkeypatch, tmp_path_factory):
    """Triton's interpreter for the tests run on backend='triton' (set per test: Triton reads
    it when a kernel is decorated); a private kernel cache for all."""
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "optdsl-cache"))
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("backend") == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def steps(backend: str, n: int) -> int:
    """Fewer steps under Triton's interpreter, which is slow."""
    return n if backend == "numpy" else max(2, n // 2)


def make(name: str, params, backend: str = "numpy", **kwargs):
    return getattr(library, name)(params, backend=backend, **kwargs)


def params_of(shapes=((2, 3), (2,)), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
            for s in shapes]


def clones(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def set_grads(params, step: int, seed: int = 1000, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed + step)
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
        p.grad = g.to(p.dtype)


def fwd_bwd(opt, weight, bias, x):
    """torch's test loss: (weight @ x + bias)^2 summed."""
    opt.zero_grad()
    loss = (weight.mv(x) + bias).pow(2).sum()
    loss.backward()
    return loss


def assert_same(a, b, where: str = "") -> None:
    """Bit-for-bit equality of tensors (dtype and shape too), recursively through containers."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        assert torch.is_tensor(a) and torch.is_tensor(b), f"{where}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, \
            f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        same = torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all())
        if same and a.is_floating_point():
            same = torch.equal(torch.signbit(a), torch.signbit(b))
        assert same, f"{where}: tensors differ\n{a}\n{b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), \
            f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and \
            math.isnan(b)
        assert a == b or both_nan, f"{where}: {a!r} != {b!r}"


def state_snapshot(opt):
    return copy.deepcopy({i: dict(s) for i, s in enumerate(opt.state.values())})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / (scale or 1.0) if b.numel() else 0.0


# ==========================================================================================
# state_dict: deterministic, resume bit-exactly, weights_only, older checkpoints
# ==========================================================================================
def _through_disk(sd, weights_only=True):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


@pytest.mark.parametrize("name, config, backend", cases(configs=True))
def test_state_dict_deterministic_and_resume_is_bit_exact(name, config, backend):
    """torch's test_state_dict_deterministic, with the checkpoint going through
    torch.save/torch.load(weights_only=True) and an lr scheduler saved alongside."""
    torch.manual_seed(0)
    weight, bias = params_of(((2, 3), (2,)))
    x = torch.randn(3)
    opt = make(name, [weight, bias], backend, **config)
    sched = lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    closure = functools.partial(fwd_bwd, opt, weight, bias, x)
    for _ in range(steps(backend, 5)):  # prime
        opt.step(closure)
        sched.step()

    weight_c, bias_c = clones([weight, bias])
    opt_c = make(name, [weight_c, bias_c], backend, **config)
    sched_c = lr_scheduler.StepLR(opt_c, step_size=3, gamma=0.5)
    checkpoint = _through_disk(opt.state_dict())
    kept = copy.deepcopy(checkpoint)
    opt_c.load_state_dict(checkpoint)
    assert_same(checkpoint, kept, "the checkpoint after loading it")  # not modified
    sched_c.load_state_dict(_through_disk(sched.state_dict()))
    closure_c = functools.partial(fwd_bwd, opt_c, weight_c, bias_c, x)
    for i in range(steps(backend, 5)):  # the resumed run equals the uninterrupted one
        opt.step(closure)
        opt_c.step(closure_c)
        sched.step()
        sched_c.step()
        assert_same(weight_c.detach(), weight.detach(), f"weight after resumed step {i + 1}")
        assert_same(bias_c.detach(), bias.detach(), f"bias after resumed step {i + 1}")

    # Equal (not identical) parameters give equal state_dicts.
    assert_same(opt_c.state_dict(), opt.state_dict(), "state_dict")
    # Repeated param groups have identical representation (torch issue #36831).
    opt_c.param_groups.extend(opt_c.param_groups)
    assert_same(opt.state_dict()["param_groups"][-1], opt_c.state_dict()["param_groups"][-1])


@pytest.mark.parametrize("name", ALL)
def test_state_dict_loads_with_weights_only(name):
    """torch's test_save_load_equality_with_weights_only: every value in the state_dict is
    something torch.load(weights_only=True) accepts (no NumPy scalars, no custom classes),
    with a tensor lr too."""
    weight, bias = params_of()
    x = torch.randn(3)
    for kwargs in ({}, {"lr": torch.tensor(0.01)}):
        opt = make(name, [weight, bias], **CONFIGS[name][-1], **kwargs)
        for _ in range(3):
            opt.step(functools.partial(fwd_bwd, opt, weight, bias, x))
        sd = opt.state_dict()
        assert_same(_through_disk(sd, weights_only=False), sd)
        assert_same(_through_disk(sd, weights_only=True), sd)


@pytest.mark.parametrize("name, backend", cases())
def test_older_checkpoints_load(name, backend):
    """torch's test_can_load_older_state_dict and test_load_nontensor_step: param groups
    without the flags added over time, and a float `step`, load; the optimizer steps on
    exactly as from the untouched checkpoint (the missing flags take their defaults)."""
    ps = params_of()
    opt = make(name, ps, backend)
    for step in range(3):
        set_grads(ps, step)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    old = copy.deepcopy(sd)
    for group in old["param_groups"]:
        for flag in FLAGS:
            group.pop(flag, None)
    for param_state in old["state"].values():
        param_state["step"] = param_state["step"].item()

    runs = []
    for checkpoint in (sd, old):
        q = clones(ps)
        other = make(name, q, backend)
        other.load_state_dict(checkpoint)
        for param_state in other.state.values():  # as torch.optim: a tensor right after load
            assert torch.is_tensor(param_state["step"])
            assert param_state["step"].dtype == torch.float32
        for group in other.param_groups:
            assert all(flag in group for flag in FLAGS if flag in sd["param_groups"][0])
        for step in range(3, 5):
            set_grads(q, step)
            other.step()
        runs.append((q, other.state_dict()))
    (q_new, sd_new), (q_old, sd_old) = runs
    for a, b in zip(q_old, q_new):
        assert_same(a.detach(), b.detach(), "params after stepping on from the older checkpoint")
    assert_same(sd_old, sd_new, "state_dict after stepping on from the older checkpoint")


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_without_optional_state_or_step_loads(name):
    """torch's leniencies for older checkpoints: a per-parameter state without `step` loads
    where the step reads t only to tell the first update (torch.optim.SGD keeps no step),
    and a state that the group's step does not use may be absent (torch's Adam without
    amsgrad keeps no max_exp_avg_sq); it is created on the next step if needed. Where t
    counts (Adam's bias correction), or a state the step uses is absent, the checkpoint
    is refused with a KeyError naming the parameter and the key (torch.optim raises a
    KeyError at the step), and nothing changes."""
    prog = library.program(name)
    ps = params_of()
    opt = make(name, ps)
    set_grads(ps, 0)
    opt.step()
    hyper = hyper_values.scalars(prog.hypers, opt.param_groups[0])
    scalar_keys = {s.key for s in prog.states.values() if not s.tensor}
    # the states a parameter's step uses (Adafactor's depend on the parameter's shape)
    used_by = [set(prog.variant(hyper, facts=step_checks.param_facts(p)
                                if prog.param_flags else None).required_keys) | scalar_keys
               for p in ps]
    sd = copy.deepcopy(opt.state_dict())
    for number, param_state in sd["state"].items():
        del param_state["step"]
        for key in [k for k in param_state if k not in used_by[number]]:
            del param_state[key]
    q = clones(ps)
    other = make(name, q)
    if not prog.t_marks_only_first_update:
        before = copy.deepcopy(other.state_dict())
        with pytest.raises(KeyError, match="parameter 0 of param group 0.*'step'"):
            other.load_state_dict(sd)
        assert_same(other.state_dict(), before, "state after a refused checkpoint")
        for param_state in sd["state"].values():
            param_state["step"] = torch.tensor(1.0)
    other.load_state_dict(sd)
    set_grads(q, 1)
    other.step()
    for number, (p, original) in enumerate(zip(q, ps)):
        param_state = other.state[p]
        # state without a step had done >= 1 update; an empty entry is a parameter never
        # updated, as torch.optim loads it (SGD without momentum keeps nothing else)
        done = 1.0 if sd["state"].get(number) else 0.0
        assert float(param_state["step"]) == done + 1.0
        assert set(opt.state[original]) <= set(param_state)
        assert torch.isfinite(p).all()
    if used_by[1]:
        sd = copy.deepcopy(opt.state_dict())
        key = min(used_by[1])
        del sd["state"][1][key]
        third = make(name, clones(ps))
        with pytest.raises(KeyError, match=f"parameter 1 of param group 0.*{key!r}"):
            third.load_state_dict(sd)
        assert len(third.state) == 0


# ==========================================================================================
# dtype of state on load
# ==========================================================================================
LOW = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", TWINS)
def test_load_casts_state_as_torch_does(name, dtype):
    """torch.optim.Optimizer.load_state_dict casts every floating state tensor to its
    parameter's dtype except `step` (torch issue #74424). So an fp32 checkpoint loaded for
    bf16/fp16 parameters gives bf16/fp16 state in torch's namesake, and the same here with
    ``state_dtype="param"`` (torch's policy; the default keeps state in float32, see
    tests/test_mixed_precision.py); `step` stays float32."""
    cfg = dict(CONFIGS[name][-1], state_dtype="param")
    p32 = params_of()
    torch_cfg = {k: v for k, v in cfg.items() if k != "state_dtype"}
    ref32, ours32 = getattr(torch.optim, name)(clones(p32), **torch_cfg), make(name, p32, **cfg)
    for opt in (ref32, ours32):
        group_params = opt.param_groups[0]["params"]
        for step in range(2):
            set_grads(group_params, step)
            opt.step()
    low = [torch.nn.Parameter(p.detach().to(dtype)) for p in p32]
    ref = getattr(torch.optim, name)(clones(low), **torch_cfg)
    ref.load_state_dict(copy.deepcopy(ref32.state_dict()))
    for checkpoint in (ours32.state_dict(), ref32.state_dict()):  # ours, and torch's
        q = clones(low)
        ours = make(name, q, **cfg)
        ours.load_state_dict(copy.deepcopy(checkpoint))
        for (p, st), (_, st_ref) in zip(ours.state.items(), ref.state.items()):
            for key, value in st.items():
                if key == "step":
                    assert value.dtype == torch.float32, "step must not be cast"
                elif key in st_ref:
                    assert value.dtype == st_ref[key].dtype, (key, value.dtype,
                                                               st_ref[key].dtype)
                else:
                    assert value.dtype == p.dtype, key
        set_grads(q, 2)
        ours.step()
        for p, st in ours.state.items():
            assert p.dtype == dtype and torch.isfinite(p.float()).all()
            for key, value in st.items():
                want = torch.float32 if key == "step" else p.dtype
                assert value.dtype == want, (key, value.dtype)


@pytest.mark.parametrize("policy, state_dtype", [("param", torch.bfloat16),
                                                  (None, torch.float32)])
@pytest.mark.parametrize("name, backend", cases())
def test_load_casts_state_to_policy_dtype(name, backend, policy, state_dtype):
    """Every bundled optimizer on both back ends: an fp32 checkpoint loaded for bf16
    parameters gives state in the policy's dtype (torch's rule with "param", float32 by
    default); the step after loading runs on that state."""
    p32 = params_of()
    opt32 = make(name, p32, backend)
    set_grads(p32, 0)
    opt32.step()
    low = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in p32]
    opt = make(name, low, backend, state_dtype=policy)
    opt.load_state_dict(copy.deepcopy(opt32.state_dict()))
    for p, st in opt.state.items():
        for key, value in st.items():
            if torch.is_tensor(value) and value.dim() > 0:
                assert value.dtype == state_dtype, key
            elif key == "step":
                assert value.dtype == torch.float32
    set_grads(low, 1)
    opt.step()
    for p, st in opt.state.items():
        assert float(st["step"]) == 2.0
        assert p.dtype == torch.bfloat16 and torch.isfinite(p.float()).all()


# ==========================================================================================
# no-op steps
# ==========================================================================================
@pytest.mark.parametrize("name, backend", cases(names_triton=ON_TRITON))
def test_step_is_noop_when_params_have_no_grad(name, backend):
    """torch's test_step_is_noop_when_params_have_no_grad: no state, nothing written."""
    ps = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    old = [p.clone() for p in ps]
    for cfg in CONFIGS[name]:
        opt = make(name, ps, backend, **cfg)
        loss = opt.step(lambda: torch.tensor([1.0]))
        assert_same(loss, torch.tensor([1.0]))
        for p, q in zip(ps, old):
            assert_same(p, q)
        assert len(opt.state) == 0


@pytest.mark.parametrize("name, backend", cases(names_triton=ON_TRITON))
def test_params_without_grad_are_skipped(name, backend):
    """A parameter without a gradient in a step is untouched and its step count waits."""
    ps = params_of(((3,), (2, 2), (4,)))
    opt = make(name, ps, backend, **CONFIGS[name][-1])
    set_grads(ps, 0)
    opt.step()
    before = ps[1].detach().clone()
    state_before = copy.deepcopy(opt.state[ps[1]])
    set_grads(ps, 1)
    ps[1].grad = None
    opt.step()
    assert_same(ps[1].detach(), before)
    assert_same(opt.state[ps[1]], state_before)
    assert float(opt.state[ps[0]]["step"]) == 2.0


def _zero_wd(name: str, cfg: dict) -> dict:
    cfg = dict(cfg)
    if "weight_decay" in library.program(name).hypers:
        cfg["weight_decay"] = 0.0
    if name == "ASGD":  # its decay w * (1 - lambd * eta) moves w without gradients too
        cfg["lambd"] = 0.0
    return cfg


@pytest.mark.parametrize("name, backend", cases(names_triton=ON_TRITON))
def test_step_is_noop_for_zero_grads(name, backend):
    """torch's test_step_is_noop_for_zero_grads: zero gradients and zero weight decay leave
    the parameters unchanged (bit for bit), over several steps, in every configuration
    (SGD with momentum and Nesterov, Adam with amsgrad, centered RMSprop, ...). For a torch
    namesake the same holds in torch (checked here, so the property is torch's, not ours)."""
    for cfg in CONFIGS[name]:
        cfg = _zero_wd(name, cfg)
        param = torch.randn((5, 1), requires_grad=True)
        old = param.detach().clone()
        opts = [(make(name, [param], backend, **cfg), param)]
        if name in TWINS:
            twin_param = torch.nn.Parameter(old.clone())
            opts.append((getattr(torch.optim, name)([twin_param], **cfg), twin_param))
        for opt, p in opts:
            for _ in range(3):
                p.grad = torch.zeros_like(p)
                opt.step(lambda: torch.tensor([1.0]))
            assert_same(p.detach(), old, f"{type(opt).__module__}.{name}{cfg}")


@pytest.mark.parametrize("name, backend", cases(names_triton=ON_TRITON))
def test_lr_zero_and_zero_grads_change_nothing(name, backend):
    """What torch.distributed.checkpoint does to create optimizer state
    (state_dict._init_optim_state): zero gradients, every group's lr set to 0 (a float, or
    a tensor if it was one), one step. With the default hypers (AdamW's weight decay
    included) the parameters must not move."""
    for tensor_lr in (False, True):
        ps = params_of(((3, 2), (2,), (0,)))
        old = [p.detach().clone() for p in ps]
        opt = make(name, ps, backend)
        for p in ps:
            p.grad = torch.zeros_like(p)
        for group in opt.param_groups:
            group["lr"] = torch.tensor(0.0) if tensor_lr else 0.0
        opt.step()
        for p, q in zip(ps, old):
            assert_same(p.detach(), q)
        assert len(opt.state) == len(ps)


@pytest.mark.parametrize("name", ALL)
def test_distributed_checkpoint_initialises_state_without_moving_params(name):
    """torch.distributed.checkpoint.state_dict.get_optimizer_state_dict on a fresh optimizer
    (no process group needed for a plain module) initialises the state by that lr=0 step."""
    try:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    except ImportError:  # torch built without distributed
        pytest.skip("torch.distributed.checkpoint is not available")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    opt = make(name, model.parameters())
    sd = get_optimizer_state_dict(model, opt)
    for p, q in zip(model.parameters(), before):
        assert_same(p.detach(), q)
        assert p.grad is None
    assert set(sd["state"]) == {"weight", "bias"}
    assert opt.param_groups[0]["lr"] == library.program(name).hypers["lr"].default


def _closure_with_irrelevant(opt, weight, bias, x, irrelevant):
    loss = fwd_bwd(opt, weight, bias, x)
    irrelevant.grad = torch.rand_like(irrelevant)
    return loss


@pytest.mark.parametrize("name, backend", cases())
def test_group_with_tiny_lr_keeps_its_params(name, backend):
    """torch's test_param_groups_lr: the optimizer's lr is 1e-28 and only one group
    overrides it; that group trains (the loss goes down), the other group's parameter,
    which gets random gradients every step, does not move (Rprop: step_size_min 0)."""
    for cfg in CONFIGS[name] if backend == "numpy" else CONFIGS[name][-1:]:
        torch.manual_seed(0)
        weight, bias = params_of(((10, 5), (10,)))
        irrelevant = torch.nn.Parameter(torch.randn(2, 2))
        irrelevant_clone = irrelevant.detach().clone()
        x = torch.randn(5)
        outer = {"lr": 1e-28}
        if name == "Rprop":
            outer["step_sizes"] = (0, 50)
        opt = make(name, [{"params": [weight, bias], **cfg, "lr": 0.01},
                          {"params": [irrelevant]}], backend, **outer)
        closure = functools.partial(_closure_with_irrelevant, opt, weight, bias, x, irrelevant)
        initial = closure().item()
        for _ in range(steps(backend, 10)):
            opt.step(closure)
        final = closure().item()
        if cfg.get("maximize"):
            assert final > initial, f"{name}{cfg} did not train"
        else:
            assert final < initial, f"{name}{cfg} did not train"
        assert_same(irrelevant.detach(), irrelevant_clone)


@pytest.mark.parametrize("name, backend", cases())
def test_tensor_lr_equals_float_lr(name, backend):
    """torch's test_tensor_lr: lr given as a tensor steps exactly as the same float, with an
    lr scheduler writing the tensor in place (float64 tensors: the float is the tensor's
    value; a float32 tensor holds lr rounded to float32, so we take lr = 2**-7, exact)."""
    lr_tensors = [torch.tensor(0.01, dtype=torch.float64), torch.tensor(2.0 ** -7)]
    for lr_tensor in lr_tensors if backend == "numpy" else lr_tensors[:1]:
        lr = float(lr_tensor)
        runs = []
        for value in (lr, lr_tensor.clone()):
            ps = params_of()
            opt = make(name, ps, backend, **(CONFIGS[name][-1] | {"lr": value}))
            sched = lr_scheduler.ExponentialLR(opt, gamma=0.5)
            for step in range(3):
                set_grads(ps, step)
                opt.step()
                sched.step()
            runs.append((ps, opt.state_dict()["state"]))
            if torch.is_tensor(value):
                assert torch.is_tensor(opt.param_groups[0]["lr"])
                assert opt.param_groups[0]["lr"].item() == lr * 0.125
        (pf, sf), (pt, st) = runs
        for a, b in zip(pt, pf):
            assert_same(a.detach(), b.detach(), f"tensor lr {lr_tensor!r}")
        assert_same(st, sf)


# ==========================================================================================
# hooks
# ==========================================================================================
def _hook_log(opt_factory):
    """Run the step and state_dict hook protocol of torch's tests on one optimizer; return
    the events seen (with what each hook observed) and the final lr."""
    log = []
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = opt_factory([p])

    def global_pre(o, args, kwargs):
        log.append(("global_pre", p.detach().tolist()))

    def global_post(o, args, kwargs):
        log.append(("global_post", p.detach().tolist()))

    def local_pre(o, args, kwargs):
        log.append(("local_pre", p.detach().tolist(), len(args), sorted(kwargs)))

    def local_post(o, args, kwargs):
        log.append(("local_post", p.detach().tolist()))

    def replace_closure(o, args, kwargs):  # a pre-hook may return new (args, kwargs)
        log.append(("replace_closure",))
        return args, {"closure": lambda: torch.tensor(7.0)}

    handles = [register_optimizer_step_pre_hook(global_pre),
               register_optimizer_step_post_hook(global_post),
               opt.register_step_pre_hook(local_pre),
               opt.register_step_post_hook(local_post)]
    try:
        for step in range(2):
            p.grad = torch.tensor([0.5, 0.25])
            opt.step()
        loss_hook = opt.register_step_pre_hook(replace_closure)
        p.grad = torch.tensor([0.5, 0.25])
        log.append(("loss", float(opt.step())))
        loss_hook.remove()
    finally:
        for h in handles:
            h.remove()
    p.grad = torch.tensor([0.5, 0.25])
    opt.step()  # no hook fires any more
    log.append(("after_remove", p.detach().tolist()))

    # state_dict hooks (torch's _state_dict_pre_hook / _state_dict_post_hook)
    def sd_pre(o):
        log.append(("sd_pre",))
        o.state["test"] = 1

    def sd_post(o, sd):
        log.append(("sd_post", "test" in sd["state"]))
        sd["state"].pop("test", None)
        sd["ran_state_dict_pre_hook"] = True
        return sd

    h1 = opt.register_state_dict_pre_hook(sd_pre)
    h2 = opt.register_state_dict_post_hook(sd_post)
    sd = opt.state_dict()
    log.append(("sd", sd.get("ran_state_dict_pre_hook"), "test" in sd["state"]))
    h1.remove()
    h2.remove()
    opt.state.pop("test")

    # load_state_dict hooks, with prepend (torch's test_load_state_dict_pre_hook_and_prepend
    # and test_load_state_dict_pre_post_hook)
    def load_pre1(o, sd):
        log.append(("load_pre1",))
        sd["param_groups"][0]["lr"] = 0.002

    def load_pre2(o, sd):
        log.append(("load_pre2",))
        mine = copy.deepcopy(sd)
        mine["param_groups"][0]["lr"] = 0.003
        return mine

    def load_post(o):
        log.append(("load_post", o.param_groups[0]["lr"]))

    sd = opt.state_dict()
    opt.register_load_state_dict_pre_hook(load_pre1)
    opt.load_state_dict(sd)
    log.append(("lr", opt.param_groups[0]["lr"]))
    opt.register_load_state_dict_pre_hook(load_pre2, prepend=True)
    opt.register_load_state_dict_post_hook(load_post)
    opt.load_state_dict(sd)
    log.append(("lr", opt.param_groups[0]["lr"]))
    opt.register_load_state_dict_post_hook(lambda o: log.append(("load_post_prepended",)),
                                           prepend=True)
    opt.load_state_dict(sd)
    return log, p.detach()


@pytest.mark.parametrize("name, backend", cases(names_triton=["SGD", "Adam"]))
def test_hooks_fire_in_torch_order(name, backend):
    """Step pre/post hooks (global then per-optimizer before the step, per-optimizer then
    global after it; a pre-hook may replace the arguments), state_dict pre/post hooks and
    load_state_dict pre/post hooks (prepend honoured) give the same event log as a
    torch.optim optimizer (the namesake where there is one, else SGD)."""
    ours, p_ours = _hook_log(lambda ps: make(name, ps, backend, lr=0.1))
    ref_cls = getattr(torch.optim, name, torch.optim.SGD)
    ref, p_ref = _hook_log(lambda ps: ref_cls(ps, lr=0.1))

    def shape(log):  # what hooks saw, with parameter values replaced by "moved or not"
        out, last = [], None
        for event in log:
            if len(event) > 1 and isinstance(event[1], list):
                moved = last is not None and event[1] != last
                last = event[1]
                event = (event[0], moved) + tuple(event[2:])
            out.append(event)
        return out

    assert [e[0] for e in ours] == [e[0] for e in ref]
    assert [e[0] for e in ours][:8] == ["global_pre", "local_pre", "local_post", "global_post",
                                        "global_pre", "local_pre", "local_post", "global_post"]
    assert shape(ours) == shape(ref)
    assert ("loss", 7.0) in ours
    assert ("sd", True, False) in ours and ("sd_post", True) in ours
    lrs = [e[1] for e in ours if e[0] == "lr"]
    assert lrs == [0.002, 0.002]  # pre_hook2 was prepended: pre_hook1 runs last and wins
    if name in TWINS:
        torch.testing.assert_close(p_ours, p_ref, rtol=1e-5, atol=1e-6)


# ==========================================================================================
# printing, deepcopy, zero-size and non-contiguous parameters
# ==========================================================================================
@pytest.mark.parametrize("name", ALL)
def test_printable(name):
    """torch's test_optimizer_can_be_printed; the format is torch's (class name, one block
    per param group, `key: value` lines)."""
    ps = params_of()
    opt = make(name, [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.5}])
    text = repr(opt)
    assert text.startswith(f"{name} (") and text.endswith(")")
    assert "Parameter Group 0" in text and "Parameter Group 1" in text
    assert "    lr: 0.5" in text
    for hyper in library.program(name).hypers:
        assert f"    {hyper}: " in text
    assert str(opt) == text
    if name in TWINS:  # the same layout as torch's namesake
        ref = repr(getattr(torch.optim, name)([{"params": ps[:1]}, {"params": ps[1:],
                                                                    "lr": 0.5}]))
        assert ref.splitlines()[0] == text.splitlines()[0]
        shared = [line for line in ref.splitlines() if line in text.splitlines()]
        assert "    lr: 0.5" in shared and "Parameter Group 1" in shared


@pytest.mark.parametrize("name, backend", cases())
def test_deepcopy(name, backend):
    """torch's test_deepcopy_copies_all_public_attrs, plus: the copy owns its parameters and
    state, and steps on its own exactly as the original does."""
    ps = params_of()
    opt = make(name, ps, backend, **CONFIGS[name][-1])
    for step in range(3):
        set_grads(ps, step)
        opt.step()

    def public(obj):
        return {k for k in obj.__dict__ if not k.startswith("_")}

    dup = copy.deepcopy(opt)
    assert public(dup) == public(opt)
    assert dup.backend == opt.backend and type(dup) is type(opt)
    qs = dup.param_groups[0]["params"]
    assert all(q is not p for q, p in zip(qs, ps))
    assert_same(dup.state_dict(), opt.state_dict())
    before = [p.detach().clone() for p in ps]
    set_grads(qs, 3)
    dup.step()
    for p, b in zip(ps, before):
        assert_same(p.detach(), b)  # the original did not move
    set_grads(ps, 3)
    opt.step()
    for p, q in zip(ps, qs):
        assert_same(q.detach(), p.detach())
    assert_same(dup.state_dict(), opt.state_dict())


@pytest.mark.parametrize("name, backend", cases())
def test_zero_size_params(name, backend):
    """Zero-size parameters step (their state is created, step counts advance) and do not
    change the other parameters' numbers (group-wide norms included)."""
    shapes = ((3, 2), (0,), (2,), (0, 4))
    ps = params_of(shapes)
    full = [p for p in ps if p.numel()]
    ref = clones(full)
    opt = make(name, ps, backend, **CONFIGS[name][-1])
    opt_ref = make(name, ref, backend, **CONFIGS[name][-1])
    for step in range(3):
        set_grads(full, step)
        set_grads(ref, step)
        for p in ps:
            if not p.numel():
                p.grad = torch.zeros_like(p)
        opt.step()
        opt_ref.step()
    for p, q in zip(full, ref):
        assert_same(p.detach(), q.detach())
    for p in ps:
        if not p.numel():
            assert p.shape in {torch.Size([0]), torch.Size([0, 4])}
            assert float(opt.state[p]["step"]) == 3.0
            shapes = {s.key: s.shape_of(tuple(p.shape)) for s in opt.program.states.values()
                      if s.per}  # a row or column statistic (Adafactor's): its own shape
            for key, value in opt.state[p].items():
                if key != "step" and value.dim():
                    assert value.shape == shapes.get(key, p.shape)
    opt2 = make(name, clones(ps), backend, **CONFIGS[name][-1])
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert_same(opt2.state_dict(), opt.state_dict())


@pytest.mark.parametrize("name, backend", cases())
def test_non_contiguous_params(name, backend):
    """Non-contiguous parameters (and gradients) as in torch's _test_basic_cases
    (randn(10, 5, 2)[..., 0]) train in place and give the same numbers as contiguous ones."""
    torch.manual_seed(0)
    w_base, b_base = torch.randn(10, 5, 2), torch.randn(10, 2)
    weight = torch.nn.Parameter(w_base[..., 0])
    bias = torch.nn.Parameter(b_base[..., 0])
    assert not weight.is_contiguous() and not bias.is_contiguous()
    weight_c, bias_c = (torch.nn.Parameter(t.detach().contiguous()) for t in (weight, bias))
    storage = weight.data_ptr()
    cfg = CONFIGS[name][-1]
    opt = make(name, [weight, bias], backend, **cfg)
    opt_c = make(name, [weight_c, bias_c], backend, **cfg)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        gw, gb = torch.randn(10, 5, 2, generator=gen), torch.randn(10, 2, generator=gen)
        weight.grad, bias.grad = gw[..., 0], gb[..., 0]  # non-contiguous gradients
        weight_c.grad, bias_c.grad = gw[..., 0].contiguous(), gb[..., 0].contiguous()
        opt.step()
        opt_c.step()
    assert weight.data_ptr() == storage and not weight.is_contiguous()
    assert_same(weight.detach().contiguous(), weight_c.detach())
    assert_same(bias.detach().contiguous(), bias_c.detach())
    assert_same(w_base[..., 0].contiguous(), weight_c.detach())  # written through the view


# ==========================================================================================
# lr schedulers
# ==========================================================================================
SCHEDULES = {
    "chained": lambda o: lr_scheduler.ChainedScheduler([
        lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
        lr_scheduler.ExponentialLR(o, gamma=0.9)]),
    "sequential": lambda o: lr_scheduler.SequentialLR(o, [
        lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=3),
        lr_scheduler.CosineAnnealingLR(o, T_max=5)], milestones=[3]),
    "onecycle": lambda o: lr_scheduler.OneCycleLR(o, max_lr=[0.05, 0.03], total_steps=10,
                                                  cycle_momentum=False),
    "plateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0),
}
PLATEAU_METRICS = [5.0, 4.0, 4.0, 6.0, 3.0, 3.0, 3.0, 2.0]


def _scheduled_run(opt, ps, schedule, steps=8):
    """Step `opt` under `schedule`; the lrs of the groups at each step."""
    sched = SCHEDULES[schedule](opt)
    lrs = [[g["lr"] for g in opt.param_groups]]
    for step in range(steps):
        set_grads(ps, step)
        opt.step()
        if schedule == "plateau":
            sched.step(PLATEAU_METRICS[step])
        else:
            sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    return lrs


def _groups(ps):
    return [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.02}]


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", ALL)
def test_lr_schedulers_compose(name, schedule):
    """Composed and stateful schedulers (ChainedScheduler, SequentialLR, OneCycleLR,
    ReduceLROnPlateau) drive the lr of each param group as they drive torch.optim.SGD's
    (the same lr sequence); the step reads its group's lr each time (the same numbers as
    setting those lrs by hand); for a torch namesake the trajectory is torch's under the
    same scheduler (float64 parameters)."""
    cfg = CONFIGS[name][-1]
    ps = params_of(dtype=torch.float64)
    lrs = _scheduled_run(make(name, _groups(ps), **cfg), ps, schedule)
    sgd_ps = params_of(dtype=torch.float64)
    sgd = torch.optim.SGD(_groups(sgd_ps), lr=library.program(name).hypers["lr"].default)
    assert lrs == _scheduled_run(sgd, sgd_ps, schedule)
    assert len({lr for row in lrs for lr in row}) > 2  # the schedule did change the lr

    by_hand = params_of(dtype=torch.float64)
    opt = make(name, _groups(by_hand), **cfg)
    for step in range(len(lrs) - 1):
        for group, lr in zip(opt.param_groups, lrs[step]):
            group["lr"] = lr
        set_grads(by_hand, step)
        opt.step()
    for p, q in zip(by_hand, ps):
        assert_same(q.detach(), p.detach())

    if name in TWINS:
        twin_ps = params_of(dtype=torch.float64)
        twin = getattr(torch.optim, name)(_groups(twin_ps), **cfg)
        assert _scheduled_run(twin, twin_ps, schedule) == lrs
        for p, q in zip(ps, twin_ps):
            assert rel_err(p.detach(), q.detach()) <= 1e-6, rel_err(p.detach(), q.detach())


# ==========================================================================================
# AMP: torch.amp.GradScaler
# ==========================================================================================
def _scaled_run(opt, ps, grads, scaler=None, unscale_and_clip=False):
    """Run with `grads` (a list per step) through `scaler`; record params, state, scale."""
    history = []
    for step_grads in grads:
        opt.zero_grad()
        loss = sum((p * g).sum() for p, g in zip(ps, step_grads))
        (scaler.scale(loss) if scaler else loss).backward()
        if unscale_and_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(ps, 1.0)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        history.append(([p.detach().clone() for p in ps], state_snapshot(opt),
                         scaler.get_scale() if scaler else None))
    return history


def _amp_grads(steps=6, inf_at=(2,), nan_at=(4,), first_inf=False):
    gen = torch.Generator().manual_seed(7)
    out = []
    for step in range(steps):
        gs = [torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen)]
        if step in inf_at or (first_inf and step == 0):
            gs[1][1] = math.inf
        if step in nan_at:
            gs[0][2, 1] = math.nan
        out.append(gs)
    return out


def _scaler():
    # growth_interval=2: the scale grows and backs off within the run; powers of two, so
    # scaling and unscaling are exact.
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)


@pytest.mark.parametrize("name, backend", cases(names_triton=ON_TRITON))
def test_grad_scaler_unscales_inside_the_step_and_skips_inf(name, backend):
    """With fused=True and GradScaler: each step equals a step on the unscaled gradients (bit
    for bit; the scale is a power of two), .grad keeps the scaled values, and a step whose
    gradients hold inf or NaN changes no parameter, no state and no step count, then the
    scale backs off."""
    assert not getattr(library, name)._step_supports_amp_scaling  # as torch's non-fused
    grads = _amp_grads()
    cfg = dict(CONFIGS[name][-1], fused=True)
    ps = params_of(((4, 3), (3,)))
    opt = make(name, ps, backend, **cfg)
    assert opt._step_supports_amp_scaling
    scaled = _scaled_run(opt, ps, grads, _scaler())
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")

    # what the steps must equal: plain steps on the unscaled gradients, inf/NaN steps skipped
    ref_ps = clones(params_of(((4, 3), (3,))))
    ref = make(name, ref_ps, backend, **cfg)
    finite = [gs for gs in grads if all(torch.isfinite(g).all() for g in gs)]
    plain = _scaled_run(ref, ref_ps, finite)
    k = 0
    for i, (params, state, scale) in enumerate(scaled):
        if all(torch.isfinite(g).all() for g in grads[i]):
            want_params, want_state, _ = plain[k]
            k += 1
        else:  # skipped: as after the previous step
            want_params, want_state = (plain[k - 1][:2] if k else
                                       ([p.detach() for p in params_of(((4, 3), (3,)))], {}))
            assert scale == scaled[i - 1][2] / 2 if i else scale == 2.0 ** 9
        for a, b in zip(params, want_params):
            assert_same(a, b, f"params after step {i + 1}")
        assert_same(state, want_state, f"state after step {i + 1}")
    assert k == len(plain)
    # .grad is not unscaled by the step (the scaler leaves it to the optimizer, which never
    # writes .grad)
    scale_last = scaled[-2][2]
    torch.testing.assert_close(ps[0].grad, grads[-1][0] * scale_last, rtol=0, atol=0)


@pytest.mark.parametrize("name, backend", cases(names_triton=["Adam", "SGD"]))
def test_grad_scaler_inf_on_first_step_creates_no_state(name, backend):
    ps = params_of(((4, 3), (3,)))
    before = [p.detach().clone() for p in ps]
    opt = make(name, ps, backend)
    scaler = _scaler()
    history = _scaled_run(opt, ps, _amp_grads(steps=1, inf_at=(), nan_at=(), first_inf=True),
                          scaler)
    for p, b in zip(history[0][0], before):
        assert_same(p, b)
    assert len(opt.state) == 0 and scaler.get_scale() == 2.0 ** 9


@pytest.mark.parametrize("name, backend", cases(names_numpy=TWINS,
                                                names_triton=[n for n in TRITON if n in TWINS]))
def test_grad_scaler_matches_torch_twin(name, backend):
    """The same GradScaler run (scale growth, an inf step, a NaN step) with torch's
    namesake, which GradScaler drives the other way (unscale_ on .grad, then a plain step
    or none): same parameters after every step, same scale, same step counts."""
    grads = _amp_grads(steps=7)
    cfg = CONFIGS[name][-1]
    ps, ref_ps = params_of(((4, 3), (3,))), params_of(((4, 3), (3,)))
    ours = _scaled_run(make(name, ps, backend, **cfg), ps, grads, _scaler())
    theirs = _scaled_run(getattr(torch.optim, name)(ref_ps, **cfg), ref_ps, grads, _scaler())
    for i, ((p_ours, s_ours, sc_ours), (p_ref, s_ref, sc_ref)) in enumerate(zip(ours, theirs)):
        assert sc_ours == sc_ref
        for a, b in zip(p_ours, p_ref):
            assert rel_err(a, b) <= 1e-5, f"step {i + 1}: rel err {rel_err(a, b):.2e}"
        for st_ours, st_ref in zip(s_ours.values(), s_ref.values()):
            if "step" in st_ref:
                assert float(st_ours["step"]) == float(st_ref["step"])


@pytest.mark.parametrize("name, backend", cases(names_numpy=TWINS, names_triton=["Adam"]))
def test_grad_scaler_unscale_then_clip_matches_torch_twin(name, backend):
    """scaler.unscale_(opt) before the step (to clip gradients): GradScaler then passes no
    grad_scale and the step must not unscale a second time."""
    grads = _amp_grads(steps=4, inf_at=(2,), nan_at=())
    ps, ref_ps = params_of(((4, 3), (3,))), params_of(((4, 3), (3,)))
    ours = _scaled_run(make(name, ps, backend), ps, grads, _scaler(), unscale_and_clip=True)
    theirs = _scaled_run(getattr(torch.optim, name)(ref_ps), ref_ps, grads, _scaler(),
                         unscale_and_clip=True)
    for i, ((p_ours, _, sc_ours), (p_ref, _, sc_ref)) in enumerate(zip(ours, theirs)):
        assert sc_ours == sc_ref
        for a, b in zip(p_ours, p_ref):
            assert rel_err(a, b) <= 1e-5, f"step {i + 1}: rel err {rel_err(a, b):.2e}"


def test_a_step_under_the_profiler_carries_torchs_label():
    """Without hooks or a profiler the step skips torch's wrapper; under a profiler it runs
    inside it, and the trace names the step as torch.optim's do."""
    from optdsl import library

    p = torch.nn.Parameter(torch.ones(3))
    opt = library.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        p.grad = torch.ones(3)
        opt.step()
    names = {event.name for event in prof.events()}
    assert "Optimizer.step#Adam.step" in names
    assert opt.state[p]["step"].item() == 2.0


def test_a_subclass_that_overrides_step_fires_each_hook_once():
    """A subclass's own step() is wrapped by torch (as any optimizer's); the step it calls
    through super() does not fire the hooks a second time."""
    from optdsl import library

    class Logged(library.SGD):
        def step(self, closure=None):
            calls.append("step")
            return super().step(closure)

    calls = []
    p = torch.nn.Parameter(torch.ones(2))
    opt = Logged([p], lr=0.5)
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    p.grad = torch.ones(2)
    opt.step()
    assert calls == ["pre", "step", "post"]
    assert p.detach().tolist() == [0.5, 0.5]
