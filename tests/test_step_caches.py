"""What the optimizer keeps between steps to save host time: each parameter's record
(optdsl.optim.param_records: the step counter's ctypes view, what its state was made and
checked for, the token that keys the C runner's tables), the NumPy runner's kept views
(``views``), and the states made only when a step uses them (``live_states``). Each must
notice what changes under it; these are the cases a review found."""

from __future__ import annotations

import gc
import weakref

from backends import require_backend
import pytest
import torch

import optdsl
from optdsl import library
from optdsl.optim import step_checks
from optdsl.runtime import c_runner
from optdsl.runtime.device_tables import DevicePlan

BACKENDS = ("numpy", "triton", "c")


# every test runs Triton kernels in the interpreter (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _steps(opt, params, n, grad=1.0):
    for _ in range(n):
        for p in params:
            p.grad = torch.full_like(p, grad)
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_counter_follows_a_moved_step_storage(backend):
    """share_memory_() (what torch.multiprocessing does to a sent state_dict) and
    `.data =` give the same step tensor a new storage; counting goes on in it."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = library.Adam([p], lr=0.1, backend=require_backend(backend))
    _steps(opt, [p], 3)
    opt.state[p]["step"].share_memory_()
    _steps(opt, [p], 3)
    assert float(opt.state[p]["step"]) == 6.0
    opt.state[p]["step"].data = torch.tensor(100.0)
    _steps(opt, [p], 1)
    assert float(opt.state[p]["step"]) == 101.0
    reference = torch.nn.Parameter(torch.ones(4))
    ref = torch.optim.Adam([reference], lr=0.1)
    _steps(ref, [reference], 6)
    ref.state[reference]["step"].fill_(100.0)
    _steps(ref, [reference], 1)
    torch.testing.assert_close(p.detach(), reference.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_master_made_when_the_model_turns_bf16(backend):
    model = torch.nn.Linear(4, 3)
    opt = library.Adam(model.parameters(), lr=0.1, master_weights=True,
                       backend=require_backend(backend))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    model.to(torch.bfloat16)
    opt.zero_grad()
    model(torch.randn(2, 4, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    for p in model.parameters():
        assert opt.state[p]["master_param"].dtype == torch.float32
        assert opt.state[p]["exp_avg"].dtype == torch.float32
    model.double()
    opt.zero_grad()
    model(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    opt.step()
    for p in model.parameters():  # float64 parameters: float64 state, no master
        assert opt.state[p]["exp_avg"].dtype == torch.float64
        assert "master_param" not in opt.state[p]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deleted_state_is_made_again(backend):
    p = torch.nn.Parameter(torch.ones(4))
    opt = library.Adam([p], lr=0.1, backend=require_backend(backend))
    _steps(opt, [p], 1)
    del opt.state[p]["exp_avg"]
    _steps(opt, [p], 1)
    assert opt.state[p]["exp_avg"].shape == (4,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_runner_refuses_a_missing_state_the_step_uses(backend):
    """A runner called without a state its step reads raises; it never reads a null
    column (on a GPU, an illegal address)."""
    prog = library.program("Adam")
    p = torch.nn.Parameter(torch.ones(4))
    opt = prog.optimizer([p], lr=0.1, backend=require_backend(backend))
    _steps(opt, [p], 1)
    state = dict(opt.state[p])
    del state["exp_avg"]
    from optdsl.optim import hypers
    from optdsl.runtime.step import Entry, StepOptions

    hyper = hypers.scalars(prog.hypers, opt.param_groups[0])
    with pytest.raises(RuntimeError, match="state\\['exp_avg'\\] of a parameter is missing"):
        opt._runner().run(prog.variant(hyper), [Entry(p, p.grad, state, 2.0)],
                          StepOptions(hyper))


def test_states_die_with_the_optimizer_and_on_reload():
    model = torch.nn.Linear(64, 64)
    opt = library.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    old = [weakref.ref(opt.state[p]["exp_avg"]) for p in model.parameters()]
    opt.load_state_dict(opt.state_dict() | {"state": {
        k: {n: (v.clone() if torch.is_tensor(v) else v) for n, v in s.items()}
        for k, s in opt.state_dict()["state"].items()}})
    gc.collect()
    assert all(ref() is None for ref in old)  # released at load, not at the next step
    opt.step()
    kept = [weakref.ref(opt.state[p]["exp_avg"]) for p in model.parameters()]
    del opt
    gc.collect()
    assert all(ref() is None for ref in kept)


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("change", ["prune", "transpose", "transpose a square"])
def test_kept_views_follow_a_parameter_that_changes_shape_or_layout(change, backend):
    """(A square matrix transposed in place keeps its storage and shape: only its layout
    tells.)"""
    def run(cls):
        rows = 2 if change == "transpose a square" else 3
        p = torch.nn.Parameter(torch.arange(2.0 * rows).view(rows, 2))
        opt = cls([p], lr=1.0)
        for _ in range(2):
            p.grad = torch.ones(p.shape)
            opt.step()
        with torch.no_grad():
            if change == "prune":
                p.data = p.data[:2]
            else:
                p.t_()
        p.grad = torch.arange(float(p.numel())).view(p.shape)
        opt.step()
        return p.detach()

    name = require_backend(backend)
    momentum = 0.5 if change == "transpose a square" else 0.0  # (a buffer keeps its shape)
    torch.testing.assert_close(
        run(lambda ps, lr: library.SGD(ps, lr=lr, momentum=momentum, backend=name)),
        run(lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=momentum)))


@pytest.mark.parametrize("backend", ["c", "triton"])
def test_a_steady_step_takes_the_records_short_way(monkeypatch, backend):
    """In the steady state each parameter's record stands for its tensors: no state is
    checked again, the C runner finds its tables and the device step its plan by the
    records' tokens, without reading every pointer again. A value replaced in a state dict,
    and a storage moved under the same state tensor (``.data =``), are noticed: the steps
    equal torch.optim's."""
    name = require_backend(backend)
    start = [torch.randn(5) for _ in range(3)]
    ours = [torch.nn.Parameter(x.clone()) for x in start]
    theirs = [torch.nn.Parameter(x.clone()) for x in start]
    opt = library.Adam(ours, lr=0.1, backend=name)
    ref = torch.optim.Adam(theirs, lr=0.1)
    _steps(opt, ours, 2)
    _steps(ref, theirs, 2)
    signatures, checks = [], []
    signature, check = c_runner._signature, step_checks.check_state
    monkeypatch.setattr(c_runner, "_signature",
                        lambda *a: signatures.append(1) or signature(*a))
    valid = DevicePlan.still_valid
    monkeypatch.setattr(DevicePlan, "still_valid",
                        lambda *a: signatures.append(1) or valid(*a))
    monkeypatch.setattr(step_checks, "check_state", lambda *a: checks.append(1) or check(*a))
    _steps(opt, ours, 3)
    _steps(ref, theirs, 3)
    assert signatures == [] and checks == []
    for o in (opt, ref):
        params = ours if o is opt else theirs
        first = o.state[params[0]]["exp_avg"]
        first.data = first.data * 1.0  # the same tensor, another storage
        o.state[params[1]]["exp_avg_sq"] = o.state[params[1]]["exp_avg_sq"].clone()
    _steps(opt, ours, 2, grad=0.5)
    _steps(ref, theirs, 2, grad=0.5)
    assert checks == [1, 1]  # (once for each parameter whose record no longer holds)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach())
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[a][key], ref.state[b][key])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_read_from_w_is_made_on_the_first_update(backend):
    """A state a switch leaves unused is made only when used if its initial value is a
    constant; one read from `w` (or a hyper) is made on the first update, as documented."""
    prog = optdsl.compile("optimizer Anchor\nhyper lr = 0.1\nhyper anchored = 0\n"
                          "state w0 = w as anchor\nstate m = 0 as m\nm = 0.9 * m + g\n"
                          "w = where(anchored != 0, w - lr * (m + w - w0), w - lr * m)\n")
    p = torch.nn.Parameter(torch.tensor([0.6614, 0.2669, 0.0617]))
    start = p.detach().clone()
    opt = prog.optimizer([p], backend=require_backend(backend))
    _steps(opt, [p], 2)
    opt.param_groups[0]["anchored"] = 1
    _steps(opt, [p], 1)
    torch.testing.assert_close(opt.state[p]["anchor"], start)


def test_the_variant_is_chosen_once_per_group_not_per_parameter(monkeypatch):
    """A group's step specialised for its switches is looked up once per group (it was once
    per parameter, most of the host time of a step over many small tensors), and again only
    when the group's hyper values change."""
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(6)]
    opt = library.Adam(params, lr=0.1, amsgrad=True, backend="numpy")
    calls = []
    variant = type(opt.program).variant

    def counted(self, *args, **kwargs):
        calls.append(1)
        return variant(self, *args, **kwargs)

    monkeypatch.setattr(type(opt.program), "variant", counted)
    _steps(opt, params, 2)
    assert len(calls) == 1
    opt.param_groups[0]["amsgrad"] = False
    _steps(opt, params, 2)
    assert len(calls) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_hyper_values_changed_between_steps_are_followed(backend):
    """The scalars and variant a group's plain hyper values gave are kept between steps
    (hypers.plain_key); every change is seen: a float, an int for a float, a list for a
    tuple, a switch, NaN, a tensor lr changed in place, and a bad value still raises before
    anything is written. Against torch.optim.Adam on the same schedule."""
    require_backend(backend)
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    opt = library.Adam([p], lr=0.1, amsgrad=True, backend=backend)
    ref = torch.optim.Adam([q], lr=0.1, amsgrad=True)  # (torch makes its state at the start)
    lr = torch.tensor(0.05, dtype=torch.float64)
    changes = [{}, {"lr": 0.2}, {"lr": 1}, {"betas": [0.8, 0.9]}, {"amsgrad": False},
               {"eps": 1e-3}, {"weight_decay": 0.1}, {"lr": lr}, {}, {"lr": 0.01},
               {"amsgrad": True}]
    for number, change in enumerate(changes):
        for group in (opt.param_groups[0], ref.param_groups[0]):
            group.update(change)
        if number == 8:
            lr.fill_(0.3)  # in place: the same tensor, a new value
        for x in (p, q):
            x.grad = torch.sin(torch.arange(5.0, dtype=torch.float64) + number)
        opt.step()
        ref.step()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)
    before = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="learning rate"):
        opt.step()
    assert torch.equal(p.detach(), before[0])
    assert all(torch.equal(opt.state[p][k], v) for k, v in before[1].items())
    for bad in (float("nan"), "0.1", None):
        opt.param_groups[0]["lr"] = bad
        with pytest.raises((ValueError, TypeError), match="lr|learning rate"):
            opt.step()
        assert torch.equal(p.detach(), before[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_step_counter_view_counts_as_torch_does(dtype):
    """The counter bumped through a ctypes view is the step tensor torch.optim keeps: its
    dtype and value after each step, and one that changes dtype is followed."""
    params = [torch.nn.Parameter(torch.randn(2))]
    opt = library.Adam(params, lr=0.1, backend="numpy")
    _steps(opt, params, 1)
    state = opt.state[params[0]]
    state["step"] = torch.tensor(float(2**24 - 2), dtype=dtype)
    _steps(opt, params, 3)
    want = torch.tensor(float(2**24 - 2), dtype=dtype) + 3
    assert state["step"].dtype == dtype and state["step"].item() == want.item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_steady_step_still_checks_every_new_gradient(backend):
    """The steady state's short way (a record that holds) still refuses a gradient that a
    fresh optimizer refuses, with the same error, and writes nothing."""
    require_backend(backend)
    def data(tensor):  # (torch refuses these as `.grad =`, not as the gradient's data)
        def put(p):
            p.grad = torch.ones_like(p)
            p.grad.data = tensor
        return put

    def grad(tensor):
        def put(p):
            p.grad = tensor
        return put

    bad_grads = {
        "shape": data(torch.ones(4, 2)),
        "integer dtype": data(torch.ones(2, 4, dtype=torch.int64)),
        "sparse": grad(torch.ones(2, 4).to_sparse()),
    }
    for what, make in bad_grads.items():
        params = [torch.nn.Parameter(torch.randn(2, 4)) for _ in range(3)]
        opt = library.Adam(params, lr=0.1, backend=backend)
        _steps(opt, params, 2)
        before = [p.detach().clone() for p in params], \
            [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
        for p in params:
            p.grad = torch.ones_like(p)
        make(params[1])
        fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
        fresh = library.Adam(fresh_params, lr=0.1, backend=backend)
        for p in fresh_params:
            p.grad = torch.ones_like(p)
        make(fresh_params[1])
        with pytest.raises(Exception) as expected:
            fresh.step()
        with pytest.raises(type(expected.value)) as got:
            opt.step()
        assert str(got.value) == str(expected.value), what
        for p, old in zip(params, before[0]):
            assert torch.equal(p.detach(), old), what
        for p, old in zip(params, before[1]):
            assert all(torch.equal(opt.state[p][k], v) for k, v in old.items()), what
