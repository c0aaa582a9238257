"""A step that raises leaves every parameter, state and step count exactly as it was
(issue 15, item 5): everything that can be checked is checked, for all groups and all
parameters, before anything is written. On the NumPy back end and on Triton's interpreter
(TRITON_INTERPRET=1 set per test, on CPU tensors), and for the NumPy optimizer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optdsl
from optdsl import library
from optdsl.runtime import c_build

BACKENDS = ["numpy", "triton", "c"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch, tmp_path_factory):
    if request.param == "c" and c_build.unavailable():
        pytest.skip(c_build.unavailable())
    if request.param == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    return request.param


def params_of(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def set_grads(params, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def snapshot(opt):
    """Every parameter, every state value and the param groups' hypers, copied."""
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    state = {id(p): {k: v.detach().clone() if torch.is_tensor(v) else v
                     for k, v in opt.state[p].items()}
             for g in opt.param_groups for p in g["params"] if p in opt.state}
    return params, state


def assert_unchanged(opt, before):
    params, state = snapshot(opt)
    want_params, want_state = before
    assert len(params) == len(want_params)
    for got, want in zip(params, want_params):
        assert torch.equal(got, want)
    assert state.keys() == want_state.keys()
    for key, entry in state.items():
        assert entry.keys() == want_state[key].keys()
        for k, v in entry.items():
            w = want_state[key][k]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w, (k, v, w)


def big(backend) -> int:
    """A size that spans two chunks of the NumPy step (32,768 elements); smaller on the
    slower Triton interpreter, where it spans several blocks."""
    return 40000 if backend == "numpy" else 700


def two_groups(backend, name="Adam", **hypers):
    """An optimizer of two groups, stepped twice (so that it has state)."""
    shapes = ((big(backend),), (5, 3))
    ps = params_of(*shapes)
    qs = params_of(*shapes, seed=5)
    opt = getattr(library, name)([{"params": ps}, {"params": qs}], backend=backend, **hypers)
    for seed in (1, 2):
        set_grads(ps + qs, seed)
        opt.step()
    set_grads(ps + qs, 3)
    return opt, ps, qs


def test_wrong_sized_gradient_through_data_changes_nothing(backend):
    """`p.grad.data = <a bigger tensor>` bypasses autograd's shape check: the step refuses
    it before the first parameter (whose 40,000 elements span two NumPy chunks) is written."""
    opt, _, qs = two_groups(backend)
    qs[1].grad.data = torch.randn(17)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match=r"parameter 1 of param group 1.*shape \(17,\)"):
        opt.step()
    assert_unchanged(opt, before)


def test_wrong_sized_gradient_of_the_first_parameter(backend):
    opt, ps, _ = two_groups(backend)
    ps[0].grad.data = torch.randn(big(backend) + 1)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="shape"):
        opt.step()
    assert_unchanged(opt, before)


def test_invalid_hyper_in_a_later_group_changes_no_earlier_group(backend):
    opt, ps, _ = two_groups(backend)
    opt.param_groups[1]["lr"] = -1.0
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"Invalid learning rate: -1\.0.*param group 1"):
        opt.step()
    assert_unchanged(opt, before)
    opt.param_groups[1]["lr"] = 1e-3
    opt.step()  # and the step goes on once the value is fixed
    assert opt.state[ps[0]]["step"].item() == 3


def test_sparse_gradient_in_a_later_group_changes_nothing(backend):
    opt, _, qs = two_groups(backend)
    qs[1].grad = torch.randn(5, 3).to_sparse()
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert_unchanged(opt, before)


def test_state_of_the_wrong_shape_changes_nothing(backend):
    opt, _, qs = two_groups(backend)
    opt.state[qs[1]]["exp_avg"] = torch.zeros(15)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match=r"state\['exp_avg'\] of parameter 1 of param group 1"):
        opt.step()
    assert_unchanged(opt, before)


def test_gradient_of_an_integer_dtype_changes_nothing(backend):
    opt, _, qs = two_groups(backend)
    qs[1].grad.data = torch.zeros(5, 3, dtype=torch.int64)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="dtype torch.int64"):
        opt.step()
    assert_unchanged(opt, before)


def test_first_step_that_raises_makes_no_state(backend):
    """A step that raises on the very first update creates no state either."""
    ps, qs = params_of((300,)), params_of((4,))
    opt = library.SGD([{"params": ps}, {"params": qs}], lr=0.1, momentum=0.9, backend=backend)
    set_grads(ps + qs)
    opt.param_groups[1]["momentum"] = -0.5
    before = snapshot(opt)
    with pytest.raises(ValueError, match="Invalid momentum value: -0.5"):
        opt.step()
    assert_unchanged(opt, before)
    assert len(opt.state) == 0


# -- the NumPy optimizer --------------------------------------------------------------------

def numpy_optimizer():
    prog = library.program("Adam")
    arrays = [np.linspace(-1, 1, n).astype(np.float32) for n in (40000, 7, 3)]
    opt = prog.numpy_optimizer(arrays, lr=0.01)
    opt.step([np.ones_like(a) for a in arrays])
    return opt, arrays


def numpy_snapshot(opt):
    return ([a.copy() for a in opt.arrays],
            [{k: np.copy(v) for k, v in s.items()} for s in opt.state])


def assert_numpy_unchanged(opt, before):
    arrays, states = numpy_snapshot(opt)
    for got, want in zip(arrays, before[0]):
        assert np.array_equal(got, want)
    for got, want in zip(states, before[1]):
        assert got.keys() == want.keys()
        for k in got:
            assert np.array_equal(got[k], want[k]), k


@pytest.mark.parametrize("bad", [np.ones(8, dtype=np.float32), np.array(["x"] * 3, dtype=object),
                                 np.ones(3, dtype=np.complex64)])
def test_numpy_optimizer_bad_array_advances_no_step(bad):
    opt, arrays = numpy_optimizer()
    before = numpy_snapshot(opt)
    with pytest.raises((ValueError, TypeError), match="gradient 2"):
        opt.step([np.ones_like(arrays[0]), np.ones_like(arrays[1]), bad])
    assert_numpy_unchanged(opt, before)
    assert [s["step"] for s in opt.state] == [1, 1, 1]


def test_numpy_optimizer_invalid_hyper_advances_no_step():
    opt, arrays = numpy_optimizer()
    opt.hypers["lr"] = -1
    before = numpy_snapshot(opt)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        opt.step([np.ones_like(a) for a in arrays])
    assert_numpy_unchanged(opt, before)


def test_program_without_declarations_is_atomic_too(backend):
    prog = optdsl.compile("v = a*v - lr*g; w = w + v", name="momentum_atomic")
    ps = params_of((big(backend),), (3,))
    opt = prog.optimizer(ps, a=0.9, lr=0.1, backend=backend)
    set_grads(ps)
    opt.step()
    ps[1].grad.data = torch.randn(4)
    set_grads(ps[:1], 2)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="shape"):
        opt.step()
    assert_unchanged(opt, before)
