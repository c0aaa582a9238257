"""Complex parameters, stepped as torch.optim steps them: on torch.view_as_real views of the
parameter, its gradient and its states (optdsl.optim.complex_view).

Every twin whose torch namesake takes complex parameters (optim_db's supports_complex) runs
beside it for 30 steps: complex64 and complex128 parameters mixed with a real one, two param
groups with different hypers and the switches on, a parameter that misses its gradient on
some steps; relative error 1e-10 (complex128) and 1e-5 (complex64) on the parameters and on
every state, whose dtypes and shapes are torch's (complex). Also: checkpoints both ways, the
Triton back end through its interpreter, state_dtype policies, a user program with a
reduction, the refusals (SparseAdam, complex32), and that the views are kept between steps.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import optdsl
from optdsl import library

STEPS = 30
SHAPES = [((3, 4), True), ((5,), False), ((2,), True), ((4, 1), True)]
SPLIT = 2
TOL = {torch.complex128: 1e-10, torch.complex64: 1e-5}
REAL = {torch.complex128: torch.float64, torch.complex64: torch.float32}

# name -> (constructor keywords, group 1 overrides): the switches on between them
CONFIGS = {
    "SGD": (dict(lr=0.05, momentum=0.9, nesterov=True), dict(lr=0.02, weight_decay=0.1)),
    "Adagrad": (dict(lr=0.1, initial_accumulator_value=0.2, lr_decay=0.01),
                dict(lr=0.05, maximize=True)),
    "RMSprop": (dict(lr=0.01, centered=True, momentum=0.5), dict(lr=0.005, weight_decay=0.1)),
    "Adam": (dict(lr=0.01, amsgrad=True), dict(lr=0.005, weight_decay=0.1, maximize=True)),
    "AdamW": (dict(lr=0.01), dict(lr=0.005, amsgrad=True)),
    "Adamax": (dict(lr=0.01, weight_decay=0.1), dict(lr=0.005, maximize=True)),
    "NAdam": (dict(lr=0.01), dict(lr=0.005, decoupled_weight_decay=True, weight_decay=0.1)),
    "RAdam": (dict(lr=0.01, weight_decay=0.1), dict(lr=0.005, decoupled_weight_decay=True)),
    "Adadelta": (dict(lr=1.0, weight_decay=0.1), dict(lr=0.5, maximize=True)),
    "Rprop": (dict(lr=0.01), dict(lr=0.005, etas=(0.3, 1.5), maximize=True)),
    "ASGD": (dict(lr=0.05, t0=5), dict(lr=0.02, weight_decay=0.1, lambd=0.1)),
}
DTYPES = [pytest.param(torch.complex128, id="complex128"),
          pytest.param(torch.complex64, id="complex64")]


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "optdsl-cache"))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


class Problem:
    """Initial values and a gradient field g = noise[step] + 0.5 * (w - center), complex for
    complex parameters."""

    def __init__(self, steps: int, dtype: torch.dtype, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.dtypes = [dtype if is_complex else REAL[dtype] for _, is_complex in SHAPES]
        self.init = [torch.randn(s, generator=gen, dtype=d) for (s, _), d in
                     zip(SHAPES, self.dtypes)]
        self.center = [torch.randn(s, generator=gen, dtype=d) for (s, _), d in
                       zip(SHAPES, self.dtypes)]
        self.noise = [torch.randn((steps, *s), generator=gen, dtype=d) for (s, _), d in
                      zip(SHAPES, self.dtypes)]

    def params(self) -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(v.clone()) for v in self.init]

    def set_grads(self, params, step: int) -> None:
        for i, p in enumerate(params):
            missing = i == 2 and step % 4 == 1
            p.grad = None if missing else (self.noise[i][step]
                                           + 0.5 * (p.detach() - self.center[i]))


def groups(params, g1: dict) -> list[dict]:
    return [dict(params=params[:SPLIT]), dict(params=params[SPLIT:], **g1)]


def rel_err(actual, expected) -> float:
    a, e = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    assert a.shape == e.shape and a.dtype == e.dtype, (a.dtype, e.dtype, a.shape, e.shape)
    if e.is_complex():
        a, e = torch.view_as_real(a), torch.view_as_real(e)
    a, e = a.to(torch.float64), e.to(torch.float64)
    diff = (a - e).abs().max().item() if e.numel() else 0.0
    return 0.0 if diff == 0.0 else diff / max(e.abs().max().item(), 1e-300)


def run(cls, problem, kwargs, g1, steps=STEPS, **extra):
    params = problem.params()
    opt = cls(groups(params, g1), **kwargs, **extra)
    for step in range(steps):
        opt.zero_grad()
        problem.set_grads(params, step)
        opt.step()
    return opt, params


def check_states(twin, ref, tol: float) -> None:
    ref_state, twin_state = ref.state_dict()["state"], twin.state_dict()["state"]
    for index, entries in ref_state.items():
        for key, value in entries.items():
            if value is None or (key == "step" and type(ref).__name__ == "SGD"):
                continue
            got = twin_state[index][key]
            if key == "step":
                assert float(got) == float(value)
                continue
            assert got.dtype == value.dtype, (index, key, got.dtype, value.dtype)
            err = rel_err(got, value)
            assert err <= tol, f"param {index} state {key}: rel err {err:.3e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torch(name, dtype):
    kwargs, g1 = CONFIGS[name]
    with default_dtype(REAL[dtype]):
        problem = Problem(STEPS, dtype)
        ref, p_ref = run(getattr(torch.optim, name), problem, kwargs, g1)
        twin, p_twin = run(getattr(library, name), problem, kwargs, g1)
    for i, (a, b) in enumerate(zip(p_twin, p_ref)):
        assert a.dtype == b.dtype
        err = rel_err(a, b)
        assert err <= TOL[dtype], f"param {i}: rel err {err:.3e}"
    check_states(twin, ref, TOL[dtype])


@pytest.mark.parametrize("direction", ["torch_to_twin", "twin_to_torch"])
@pytest.mark.parametrize("name", ["Adam", "Adagrad", "Rprop", "ASGD", "SGD"])
def test_checkpoint_round_trip(name, direction):
    kwargs, g1 = CONFIGS[name]
    first, second = ((getattr(torch.optim, name), getattr(library, name))
                     if direction == "torch_to_twin"
                     else (getattr(library, name), getattr(torch.optim, name)))
    with default_dtype(torch.float64):
        problem = Problem(17, torch.complex128)
        opt_first, p_first = run(first, problem, kwargs, g1, steps=5)
        p_second = [torch.nn.Parameter(p.detach().clone()) for p in p_first]
        opt_second = second(groups(p_second, {}), **kwargs)
        opt_second.load_state_dict(copy.deepcopy(opt_first.state_dict()))
        for step in range(5, 17):
            for opt, ps in ((opt_first, p_first), (opt_second, p_second)):
                opt.zero_grad()
                problem.set_grads(ps, step)
                opt.step()
        for a, b in zip(p_second, p_first):
            assert rel_err(a, b) <= 1e-10


def test_triton_interpreter_matches_numpy(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kwargs, g1 = CONFIGS["Adam"]
    problem = Problem(4, torch.complex64)
    numpy_opt, p_numpy = run(library.Adam, problem, kwargs, g1, steps=4, backend="numpy")
    triton_opt, p_triton = run(library.Adam, problem, kwargs, g1, steps=4, backend="triton")
    for a, b in zip(p_triton, p_numpy):
        assert rel_err(a, b) <= 1e-6
    check_states(triton_opt, numpy_opt, 1e-6)


def test_initial_values_are_taken_on_the_real_view():
    """torch.optim.Adagrad starts `sum` at complex(v, v), Rprop's step sizes at
    complex(lr, lr); a program's `state s = w` copies the complex parameter."""
    z = torch.nn.Parameter(torch.tensor([1 + 2j, -3j], dtype=torch.complex64))
    opt = library.Adagrad([z], lr=0.1, initial_accumulator_value=0.25)
    z.grad = torch.zeros_like(z)
    opt.step()
    assert torch.equal(opt.state[z]["sum"], torch.full((2,), 0.25 + 0.25j))
    prog = optdsl.compile("hyper lr = 0.1\nstate avg = w\navg = 0.5 * (avg + w)\n"
                          "w = w - lr * g\n")
    start = z.detach().clone()
    opt = prog.optimizer([z], backend="numpy")
    z.grad = torch.ones_like(z)
    opt.step()
    assert opt.state[z]["avg"].dtype == torch.complex64
    assert torch.allclose(opt.state[z]["avg"], start)


def test_state_dtype_policies():
    z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    opt = library.Adam([z], lr=0.1, state_dtype=torch.float64)
    z.grad = torch.randn(3, dtype=torch.complex64)
    opt.step()
    assert opt.state[z]["exp_avg"].dtype == torch.complex128
    with pytest.raises(ValueError, match="cannot hold the states of a complex parameter"):
        library.Adam([z], state_dtype=torch.bfloat16)


def test_a_reduction_sees_the_complex_tensor():
    """norm() of the real view is the norm of the complex tensor."""
    prog = optdsl.compile("hyper lr = 0.5\nw = w - lr * g / (norm(g) + 1e-12)\n")
    z = torch.nn.Parameter(torch.tensor([3 + 4j, 0j], dtype=torch.complex128))
    opt = prog.optimizer([z], backend="numpy")
    z.grad = torch.tensor([3 + 4j, 0j], dtype=torch.complex128)
    opt.step()
    expected = torch.tensor([3 + 4j, 0j], dtype=torch.complex128) * (1 - 0.5 / 5)
    assert torch.allclose(z.detach(), expected, rtol=1e-12, atol=0)


def test_refusals():
    with pytest.raises(ValueError, match=r"Complex params at indices \[\[0, 0\]\]: SparseAdam "
                                         r"does not support complex parameters"):
        library.SparseAdam([torch.rand(2, 3, dtype=torch.complex64)])
    with pytest.raises(ValueError, match="SparseAdam does not support complex parameters"):
        torch.optim.SparseAdam([torch.rand(2, 3, dtype=torch.complex64)])
    z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    opt = library.Adam([z])
    z.grad = torch.randn(3, dtype=torch.complex64)
    z.grad.data = torch.randn(3, dtype=torch.complex128)  # (autograd's own check passed by)
    with pytest.raises(RuntimeError, match="has dtype torch.complex128"):
        opt.step()
    z.grad.data = torch.randn(3)  # a real gradient of a complex parameter
    with pytest.raises(RuntimeError, match="has dtype torch.float32"):
        opt.step()
    assert not opt.state[z]


def test_views_are_kept_between_steps():
    """The real views of a complex parameter and its states are made once, so the NumPy
    runner keeps its zero-copy views of them as of any parameter (nothing piles up)."""
    z = torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))
    r = torch.nn.Parameter(torch.randn(3))
    opt = library.Adam([z, r], lr=0.1, backend="numpy")
    for _ in range(5):
        z.grad = torch.randn(4, dtype=torch.complex64)
        r.grad = torch.randn(3)
        opt.step()
    assert len(opt._runner_of[1]._views) == 2
    sd = opt.state_dict()  # a checkpoint replaces the states: new views
    opt.load_state_dict(sd)
    before = z.detach().clone()
    z.grad = torch.randn(4, dtype=torch.complex64)
    opt.step()
    assert not torch.equal(z.detach(), before)
