"""The torch.optim.Optimizer wrapper: construction, validation, state, checkpoints, schedulers,
dtypes and layouts, and the NumPy optimizer.

Differential parts compare optdsl.load("examples/adam.opt") with torch.optim.Adam (the
example has no amsgrad/maximize switches, so torch's defaults are the same rule).
"""

from __future__ import annotations

import copy
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch

import optdsl

ROOT = Path(__file__).resolve().parent.parent
MOMENTUM = "v = a*v - lr*g; w = w + v"


@pytest.fixture(scope="module")
def adam():
    return optdsl.load(ROOT / "examples" / "adam.opt")


@pytest.fixture(scope="module")
def momentum():
    return optdsl.compile(MOMENTUM, name="momentum")


def make_params(dtype=torch.float64, seed=0, shapes=((7,), (3, 5), (1,), (2, 3, 4))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
            for s in shapes]


def twin(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def set_grads(params, step, skip=()):
    gen = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        p.grad = None if i in skip else g


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item() or 1.0
    return (a - b).abs().max().item() / scale


def assert_params_close(ours, theirs, tol=1e-12):
    for p, q in zip(ours, theirs):
        assert p.dtype == q.dtype
        assert rel_err(p.detach(), q.detach()) <= tol, rel_err(p.detach(), q.detach())


# -- construction ------------------------------------------------------------------------------

def test_is_a_torch_optimizer(adam):
    params = make_params()
    opt = adam.optimizer(params)
    assert isinstance(opt, torch.optim.Optimizer)
    assert isinstance(opt, adam.optimizer_class)
    assert adam.optimizer_class is adam.optimizer_class
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.999)


def test_class_call_equals_optimizer_call(adam):
    params = make_params()
    a = adam.optimizer_class(params, lr=0.01)
    b = adam.optimizer(params, lr=0.01)
    assert a.defaults == b.defaults


def test_param_groups_with_per_group_hypers_match_torch(adam):
    ours, theirs = make_params(), make_params()

    def groups(ps):
        return [{"params": ps[:2]},
                {"params": ps[2:], "lr": 0.05, "betas": (0.5, 0.9), "eps": 1e-6}]

    opt = adam.optimizer(groups(ours), lr=0.01, weight_decay=0.1)
    ref = torch.optim.Adam(groups(theirs), lr=0.01, weight_decay=0.1)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[1]["lr"] == 0.05
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert opt.param_groups[1]["weight_decay"] == 0.1
    for step in range(8):
        set_grads(ours, step)
        set_grads(theirs, step)
        opt.step()
        ref.step()
        assert_params_close(ours, theirs, 1e-10)


def test_add_param_group(adam):
    params = make_params()
    opt = adam.optimizer(params[:2], lr=0.01)
    opt.add_param_group({"params": params[2:], "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["eps"] == 1e-8
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "lr": -1.0})


@pytest.mark.parametrize("kwargs,name,value", [
    ({"lr": -1.0}, "lr", "-1"), ({"eps": -1e-3}, "eps", "-0.001"),
    ({"betas": (0.9, 1.0)}, "beta", "1.0"), ({"betas": (-0.1, 0.9)}, "beta", "-0.1"),
    ({"lr": float("nan")}, "lr", "nan"),
])
def test_hyper_validation_at_construction(adam, kwargs, name, value):
    with pytest.raises(ValueError) as info:
        adam.optimizer(make_params(), **kwargs)
    message = str(info.value)
    assert name in message and value in message
    assert "[" in message or "(" in message  # the interval is shown


def test_hyper_validation_at_step(adam):
    params = make_params()
    opt = adam.optimizer(params, lr=0.01)
    set_grads(params, 0)
    opt.step()
    before = [p.detach().clone() for p in params]
    opt.param_groups[0]["lr"] = -1
    set_grads(params, 1)
    with pytest.raises(ValueError) as info:
        opt.step()
    message = str(info.value)
    assert "lr" in message and "-1" in message and "[0.0, inf)" in message
    for p, b in zip(params, before):
        assert torch.equal(p, b)
        assert opt.state[p]["step"].item() == 1
    opt.param_groups[0]["lr"] = 0.01
    opt.step()
    assert opt.state[params[0]]["step"].item() == 2


def test_tuple_hyper_validated_at_step(adam):
    params = make_params()
    opt = adam.optimizer(params)
    opt.param_groups[0]["betas"] = (0.9, 1.5)
    set_grads(params, 0)
    with pytest.raises(ValueError, match="1.5"):
        opt.step()


def test_missing_required_hyper(momentum):
    with pytest.raises(TypeError) as info:
        momentum.optimizer(make_params(), a=0.9)
    assert "`lr`" in str(info.value)


def test_missing_required_hyper_with_close_keyword(momentum):
    with pytest.raises(TypeError) as info:
        momentum.optimizer(make_params(), a=0.9, lrr=0.1)
    message = str(info.value)
    assert "`lr`" in message and "lrr" in message


def test_unknown_keyword(adam):
    with pytest.raises(TypeError) as info:
        adam.optimizer(make_params(), lr=0.1, momentum=0.9)
    assert "momentum" in str(info.value)


def test_hyper_must_be_a_number(adam):
    with pytest.raises(TypeError):
        adam.optimizer(make_params(), lr="fast")
    opt = adam.optimizer(make_params(), lr=torch.tensor(0.01))  # a one-element tensor is fine
    assert opt.param_groups[0]["lr"] is not None


def test_positional_hypers(adam, momentum):
    opt = adam.optimizer_class(make_params(), 0.01, (0.8, 0.9))
    assert opt.defaults["lr"] == 0.01 and opt.defaults["betas"] == (0.8, 0.9)
    opt = momentum.optimizer_class(make_params(), 0.5, 0.25)  # a, lr in order of first use
    assert list(momentum.hypers) == ["a", "lr"]
    assert opt.defaults["a"] == 0.5 and opt.defaults["lr"] == 0.25
    with pytest.raises(TypeError):
        adam.optimizer_class(make_params(), 0.01, lr=0.02)
    with pytest.raises(TypeError):
        adam.optimizer_class(make_params(), 0.01, (0.9, 0.99), 1e-8, 0.0, 5)


def test_empty_parameter_list_is_an_error(adam):
    with pytest.raises(ValueError):
        adam.optimizer([])


# -- stepping ------------------------------------------------------------------------------------

def test_t_is_per_parameter_and_skipped_without_grad(adam):
    ours, theirs = make_params(), make_params()
    opt = adam.optimizer(ours, lr=0.05)
    ref = torch.optim.Adam(theirs, lr=0.05)
    for step in range(10):
        skip = {2} if step % 3 == 0 else set()
        if step < 4:
            skip |= {3}
        set_grads(ours, step, skip)
        set_grads(theirs, step, skip)
        before = ours[3].detach().clone()
        opt.step()
        ref.step()
        if 3 in skip:
            assert torch.equal(ours[3], before)
        assert_params_close(ours, theirs, 1e-10)
    assert opt.state[ours[0]]["step"].item() == 10
    assert opt.state[ours[2]]["step"].item() == 10 - 4  # skipped on steps 0, 3, 6, 9
    assert opt.state[ours[3]]["step"].item() == 6
    for p, q in zip(ours, theirs):
        assert opt.state[p]["step"].item() == ref.state[q]["step"].item()


def test_parameter_never_given_a_grad_has_no_state(adam):
    params = make_params()
    opt = adam.optimizer(params)
    set_grads(params, 0, skip={1})
    opt.step()
    assert params[1] not in opt.state or "step" not in opt.state[params[1]]


def test_step_with_closure_returns_the_loss(adam):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = adam.optimizer([w], lr=0.1)
    calls = []

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        calls.append(loss.item())
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() == 5.0
    assert calls == [5.0]
    assert opt.step() is None  # without a closure, as torch.optim
    assert not torch.equal(w.detach(), torch.tensor([1.0, 2.0]))


def test_zero_grad(adam):
    params = make_params()
    opt = adam.optimizer(params)
    set_grads(params, 0)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    set_grads(params, 0)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)


def test_step_never_writes_grad(momentum):
    prog = optdsl.compile("g = g * 2 + 1\nw = w - 0.1 * g")
    params = make_params()
    opt = prog.optimizer(params)
    set_grads(params, 0)
    grads = [p.grad.clone() for p in params]
    opt.step()
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)


# -- state and checkpoints -----------------------------------------------------------------------

def test_state_uses_as_keys_and_step_is_a_tensor(adam):
    params = make_params(torch.float32)
    opt = adam.optimizer(params)
    set_grads(params, 0)
    opt.step()
    state = opt.state[params[0]]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert torch.is_tensor(state["step"]) and state["step"].item() == 1
    assert state["exp_avg"].shape == params[0].shape
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert torch.is_tensor(sd["state"][0]["step"])
    assert sd["param_groups"][0]["params"] == list(range(len(params)))


def test_state_dict_matches_torch_adam_layout(adam):
    ours, theirs = make_params(), make_params()
    opt = adam.optimizer(ours, lr=0.01)
    ref = torch.optim.Adam(theirs, lr=0.01)
    for step in range(3):
        set_grads(ours, step)
        set_grads(theirs, step)
        opt.step()
        ref.step()
    a, b = opt.state_dict(), ref.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert set(a["state"][k]) == set(b["state"][k])
        for key in a["state"][k]:
            torch.testing.assert_close(a["state"][k][key], b["state"][k][key], rtol=1e-10,
                                       atol=1e-14)


def test_torch_adam_checkpoint_loads_into_ours(adam):
    ours, theirs = make_params(), make_params()
    ref = torch.optim.Adam(theirs, lr=0.01)
    for step in range(3):
        set_grads(theirs, step)
        ref.step()
    for p, q in zip(ours, theirs):
        p.data.copy_(q.data)
    opt = adam.optimizer(ours, lr=0.01)
    # a copy, as from disk: torch's load_state_dict keeps the given tensors (shared state)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    for step in range(3, 6):
        set_grads(ours, step)
        set_grads(theirs, step)
        opt.step()
        ref.step()
        assert_params_close(ours, theirs, 1e-10)


def train(opt, params, steps):
    for step in steps:
        set_grads(params, step, skip={2} if step % 4 == 0 else ())
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_round_trip_resumes_bit_exactly(adam, dtype):
    params = make_params(dtype)
    opt = adam.optimizer(params, lr=0.01, weight_decay=0.01)
    train(opt, params, range(10))
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "params": [p.detach() for p in params]}, buffer)
    train(opt, params, range(10, 20))

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    fresh = [torch.nn.Parameter(p.clone()) for p in checkpoint["params"]]
    resumed = adam.optimizer(fresh, lr=0.5)  # the checkpoint's hypers win
    resumed.load_state_dict(checkpoint["optimizer"])
    assert resumed.param_groups[0]["lr"] == 0.01
    train(resumed, fresh, range(10, 20))
    for p, q in zip(params, fresh):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, resumed.state[q][key]), key


def test_deepcopy_steps_independently(adam):
    params = make_params()
    opt = adam.optimizer(params, lr=0.01)
    train(opt, params, range(3))
    clone = copy.deepcopy(opt)
    cparams = clone.param_groups[0]["params"]
    assert all(c is not p for c, p in zip(cparams, params))
    before = [p.detach().clone() for p in params]
    train(clone, cparams, range(3, 6))
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    assert opt.state[params[0]]["step"].item() == 3
    assert clone.state[cparams[0]]["step"].item() == 6
    train(opt, params, range(3, 6))
    for p, c in zip(params, cparams):
        assert torch.equal(p, c)  # the same steps give the same numbers


def test_repr(adam):
    opt = adam.optimizer(make_params(), lr=0.01)
    text = repr(opt)
    assert "Adam" in text and "lr: 0.01" in text and "betas" in text
    assert "Parameter Group 0" in text


# -- lr schedulers -------------------------------------------------------------------------------

SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_scheduler_changes_trajectory_as_with_torch_adam(adam, name):
    ours, theirs, plain = make_params(), make_params(), make_params()
    opt = adam.optimizer(ours, lr=0.1)
    ref = torch.optim.Adam(theirs, lr=0.1)
    unscheduled = adam.optimizer(plain, lr=0.1)
    sched, ref_sched = SCHEDULERS[name](opt), SCHEDULERS[name](ref)
    for step in range(15):
        for ps in (ours, theirs, plain):
            set_grads(ps, step)
        opt.step()
        ref.step()
        unscheduled.step()
        sched.step()
        ref_sched.step()
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
        assert sched.get_last_lr() == ref_sched.get_last_lr()
        assert_params_close(ours, theirs, 1e-10)
    assert any(not torch.equal(p, q) for p, q in zip(ours, plain))


# -- backends ------------------------------------------------------------------------------------

def test_triton_on_cpu_without_interpreter_fails_at_construction(adam, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError) as info:
        adam.optimizer(make_params(), backend="triton")
    assert "triton" in str(info.value).lower()


def test_bogus_backend(adam):
    with pytest.raises(ValueError) as info:
        adam.optimizer(make_params(), backend="bogus")
    assert "bogus" in str(info.value)


def test_auto_backend_on_cpu_is_c_or_numpy(adam):
    from optdsl.runtime import c_build

    opt = adam.optimizer(make_params(), backend="auto")
    assert opt.backend == ("numpy" if c_build.unavailable() else "c")


# -- dtypes and layouts --------------------------------------------------------------------------

def test_float64_params_compute_in_float64():
    prog = optdsl.compile("state m = 0\nm = 0.5*m + g\nw = w - lr*m")
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = prog.optimizer([w], lr=1e-12)
    w.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    assert w.dtype == torch.float64 and opt.state[w]["m"].dtype == torch.float64
    assert torch.all(w < 1.0)  # 1 - 1e-12 is 1.0 in float32
    assert torch.equal(w.detach(), torch.full((4,), 1.0 - 1e-12, dtype=torch.float64))


def test_float64_adam_matches_torch_tightly(adam):
    ours, theirs = make_params(), make_params()
    opt = adam.optimizer(ours, lr=1e-3, weight_decay=0.01)
    ref = torch.optim.Adam(theirs, lr=1e-3, weight_decay=0.01)
    for step in range(20):
        set_grads(ours, step)
        set_grads(theirs, step)
        opt.step()
        ref.step()
    assert_params_close(ours, theirs, 1e-12)


def test_float32_adam_matches_torch(adam):
    ours, theirs = make_params(torch.float32), make_params(torch.float32)
    opt = adam.optimizer(ours, lr=1e-2)
    ref = torch.optim.Adam(theirs, lr=1e-2)
    for step in range(20):
        set_grads(ours, step)
        set_grads(theirs, step)
        opt.step()
        ref.step()
    assert_params_close(ours, theirs, 1e-5)
    assert opt.state[ours[0]]["exp_avg"].dtype == torch.float32


def test_non_contiguous_parameter_trains_in_place(adam):
    base = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    start = base.t().clone()
    strided = torch.nn.Parameter(base.t())  # a transposed view used as a leaf
    assert not strided.is_contiguous()
    dense = torch.nn.Parameter(base.t().contiguous())
    ptr, stride = strided.data_ptr(), strided.stride()
    opt_s, opt_d = adam.optimizer([strided], lr=0.1), adam.optimizer([dense], lr=0.1)
    for step in range(5):
        g = torch.randn(3, 4, generator=torch.Generator().manual_seed(step))
        strided.grad, dense.grad = g.clone(), g.clone()
        opt_s.step()
        opt_d.step()
    assert torch.equal(strided, dense)
    assert strided.data_ptr() == ptr and strided.stride() == stride
    assert not torch.equal(strided.detach(), start)


def test_non_contiguous_gradient(adam):
    a, b = make_params(shapes=((3, 4),)), make_params(shapes=((3, 4),))
    opt_a, opt_b = adam.optimizer(a, lr=0.1), adam.optimizer(b, lr=0.1)
    g = torch.randn(4, 3, dtype=torch.float64)
    a[0].grad = g.t()
    b[0].grad = g.t().contiguous()
    opt_a.step()
    opt_b.step()
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 5e-2)])
def test_low_precision_params_train(adam, dtype, tol):
    low = make_params(dtype, shapes=((50,), (3, 7)))
    ref = [torch.nn.Parameter(p.detach().float()) for p in low]
    opt, ref_opt = adam.optimizer(low, lr=1e-2), adam.optimizer(ref, lr=1e-2)
    for step in range(10):
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(low, ref):
            g = torch.randn(p.shape, generator=gen).to(dtype)
            p.grad, q.grad = g, g.float()
        opt.step()
        ref_opt.step()
    for p, q in zip(low, ref):
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
        assert (p.float() - q).abs().max().item() < tol
    start = make_params(dtype, shapes=((50,), (3, 7)))
    assert any(not torch.equal(p, s) for p, s in zip(low, start))


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex32_or_integer_params_are_rejected(adam):
    # (complex64/complex128 parameters are stepped on their real view: test_complex_params.py)
    with pytest.raises(TypeError, match="complex64 and complex128"):
        adam.optimizer([torch.nn.Parameter(torch.ones(2, dtype=torch.complex32))])
    with pytest.raises((TypeError, RuntimeError)):
        adam.optimizer([torch.ones(2, dtype=torch.int64)])


# -- acceptance: the one-liner trains a model --------------------------------------------------

def test_one_liner_momentum_trains_linear_regression(momentum):
    torch.manual_seed(0)
    x = torch.randn(128, 4)
    y = x @ torch.tensor([1.0, -2.0, 3.0, 0.5]) + 0.1
    model = torch.nn.Linear(4, 1)
    opt = optdsl.compile(MOMENTUM).optimizer(model.parameters(), a=0.9, lr=0.01)

    def closure():
        opt.zero_grad()
        loss = ((model(x).squeeze(-1) - y) ** 2).mean()
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(50)]
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.1 * losses[0]
    assert all(np.isfinite(losses))
    state = opt.state[model.weight]
    assert set(state) == {"step", "v"} and state["step"].item() == 50


# -- the NumPy optimizer -------------------------------------------------------------------------

numpy_optim = pytest.mark.skipif(
    importlib.util.find_spec("optdsl.optim.numpy_optimizer") is None,
    reason="optdsl/optim/numpy_optimizer.py (prog.numpy_optimizer) does not exist yet")


@numpy_optim
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_optimizer_updates_arrays_in_place(momentum, dtype):
    w1 = np.arange(6, dtype=dtype).reshape(2, 3)
    w2 = np.ones(9000, dtype=dtype)
    ids = (id(w1), id(w2))
    opt = momentum.numpy_optimizer([w1, w2], a=0.5, lr=0.1)
    v1, v2 = np.zeros_like(w1), np.zeros_like(w2)
    r1, r2 = w1.copy(), w2.copy()
    for step in range(3):
        g1 = np.full_like(w1, step + 1.0)
        g2 = np.linspace(-1, 1, 9000).astype(dtype)
        opt.step([g1, g2])
        v1 = 0.5 * v1 - 0.1 * g1
        v2 = 0.5 * v2 - 0.1 * g2
        r1, r2 = r1 + v1, r2 + v2
    assert (id(w1), id(w2)) == ids
    assert w1.dtype == dtype and w2.dtype == dtype
    np.testing.assert_allclose(w1, r1, rtol=1e-6)
    np.testing.assert_allclose(w2, r2, rtol=1e-6, atol=1e-6)
    assert opt.state[0]["step"] == 3


@numpy_optim
def test_numpy_optimizer_skips_none_gradient(adam):
    w1, w2 = np.ones(3), np.ones(2)
    opt = adam.numpy_optimizer([w1, w2], lr=0.1)
    opt.step([np.ones(3), None])
    assert np.array_equal(w2, np.ones(2)) and not np.array_equal(w1, np.ones(3))
    opt.step([np.ones(3), np.ones(2)])
    assert opt.state[0]["step"] == 2 and opt.state[1]["step"] == 1


@numpy_optim
def test_numpy_optimizer_matches_torch_wrapper(adam):
    arrays = [np.linspace(-1, 1, 7), np.linspace(0, 2, 9000)]
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    nopt = adam.numpy_optimizer(arrays, lr=0.01)
    topt = adam.optimizer(params, lr=0.01)
    for step in range(3):
        grads = [np.sin(np.arange(a.size) + step) for a in arrays]
        nopt.step(grads)
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g)
        topt.step()
    for a, p in zip(arrays, params):
        assert np.array_equal(a, p.detach().numpy())


@numpy_optim
def test_numpy_optimizer_validates(momentum, adam):
    with pytest.raises(TypeError):
        momentum.numpy_optimizer([np.ones(2)], a=0.5)
    with pytest.raises(ValueError):
        adam.numpy_optimizer([np.ones(2)], lr=-1.0)
    opt = adam.numpy_optimizer([np.ones(2)])
    with pytest.raises(ValueError):
        opt.step([np.ones(3)])


# -- known core bugs found while writing these tests -------------------------------------------

@pytest.mark.parametrize("source", [
    "step = step + g; w = w - 0.1*step",
    "state step = 0 as counter\nstep = step + 1\nw = w - step*g",
])
def test_state_named_step_does_not_clash_with_the_step_counter(source):
    """Bug: an inferred state named `step` gets the state_dict key `step`, the key of `t`; the
    first step then fails inside the generated code (a DslError at compile time, or another
    key, would both be fine)."""
    try:
        prog = optdsl.compile(source)
    except optdsl.DslError:
        return
    w = torch.nn.Parameter(torch.ones(3))
    opt = prog.optimizer([w])
    for _ in range(2):
        w.grad = torch.ones(3)
        opt.step()
    assert opt.state[w]["step"].item() == 2


@pytest.mark.parametrize("name", ["params", "foreach", "fused", "capturable", "differentiable",
                                  "backend", "skip_nonfinite"])
def test_hyper_named_like_an_optimizer_keyword(name):
    """Bug: hypers named like torch.optim's own keys (`params`, `foreach`, ...) or the
    `backend` keyword compile but the optimizer cannot be built or used (a DslError at compile
    time would be fine)."""
    try:
        prog = optdsl.compile(f"hyper {name} = 0.25\nw = w - {name}*g")
    except optdsl.DslError:
        return
    for keywords, expected in (({}, 0.75), ({name: 0.5}, 0.5)):
        w = torch.nn.Parameter(torch.ones(3))
        opt = prog.optimizer_class([w], **keywords)
        w.grad = torch.ones(3)
        opt.step()
        assert torch.equal(w.detach(), torch.full((3,), expected))


@pytest.mark.parametrize("name, config", [
    ("SGD", {}), ("SGD", {"momentum": 0.9}), ("Adam", {}), ("Adam", {"amsgrad": True}),
    ("AdamW", {}), ("RMSprop", {}), ("RMSprop", {"centered": True, "momentum": 0.5}),
    ("Adagrad", {}), ("Adamax", {}), ("NAdam", {}), ("RAdam", {}), ("Adadelta", {}),
    ("Rprop", {}),
])
def test_state_holds_what_torch_holds(name, config):
    """A state the group's step neither reads nor writes (Adam's max_exp_avg_sq without
    amsgrad, SGD's momentum_buffer without momentum) is not created: the same state keys as
    torch.optim (plus `step`, which torch's SGD does not keep), no memory spent on it."""
    from optdsl import library

    ours_params, theirs_params = make_params(), make_params()
    ours = getattr(library, name)(ours_params, lr=1e-2, **config)
    theirs = getattr(torch.optim, name)(theirs_params, lr=1e-2, **config)
    for opt, params in ((ours, ours_params), (theirs, theirs_params)):
        set_grads(params, 0)
        opt.step()
    for p, q in zip(ours_params, theirs_params):
        assert set(ours.state[p]) - {"step"} == set(theirs.state[q]) - {"step"}
    if name == "Adam" and not config:  # switching amsgrad on later creates the state then
        ours.param_groups[0]["amsgrad"] = True
        set_grads(ours_params, 1)
        ours.step()
        assert "max_exp_avg_sq" in ours.state[ours_params[0]]


def test_step_counter_follows_a_replaced_step_or_state():
    """The step count is bumped through a kept view of state['step'] while the state is the
    one of the last step; a step tensor or state dict replaced in between is taken up."""
    from optdsl import library

    params = make_params()
    opt = library.Adam(params, lr=1e-2)
    for step in range(3):
        set_grads(params, step)
        opt.step()
    p = params[0]
    assert float(opt.state[p]["step"]) == 3.0
    opt.state[p]["step"] = torch.tensor(10.0)
    set_grads(params, 3)
    opt.step()
    assert float(opt.state[p]["step"]) == 11.0 and float(opt.state[params[1]]["step"]) == 4.0
    opt.state[p] = {}  # a fresh state: made again, counting from 0
    opt.step()
    assert float(opt.state[p]["step"]) == 1.0 and set(opt.state[p]) == {
        "step", "exp_avg", "exp_avg_sq"}
