"""The torch back end (every tensor op in library stages, on the parameters' own tensors):
Muon and Adafactor against the NumPy back end and torch.optim, checkpoints, parameters
without gradients, an element-wise program (Adam), outputs that are inputs, the choice of
backend="auto", and what it refuses. CI has no GPU: these run on CPU tensors, the same code
path a CUDA tensor takes (nothing in the runner or the generated code names a device).

Tolerances. Against NumPy: both back ends run the same host step (float64 scalars) and the
same torch code for Newton-Schulz; element-wise float32 arithmetic is IEEE either way. What
differs is the order of float64 sums in reductions (NumPy: per chunk; torch: one pass), which
moves a host scalar by a float64 ulp and, rarely, a float32 result by one ulp: 30 steps
agree to 1e-6 of the parameters' scale (float32 ulps: 6e-8). Against torch.optim, as
tests/test_matrix.py says: Muon to 2e-3 after 30 steps (torch's lerp is fused, ours rounds
twice, which can move a bfloat16 rounding), Adafactor and Adam to float32 rounding.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import optdsl
from optdsl import library
from optdsl.runtime import backends

MUON_SHAPES = [(16, 32), (48, 8), (5, 5), (20, 12)]
ADAFACTOR_SHAPES = [(16, 32), (48, 8), (7,), (3, 5, 6), (1,)]


def _params(shapes, dtype=torch.float32, seed=0, copies=2):
    gen = torch.Generator().manual_seed(seed)
    first = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]
    return [first] + [[p.detach().clone().requires_grad_() for p in first]
                      for _ in range(copies - 1)]


def _train(sets, optimizers, steps, seed=1, skip=None):
    """The same gradients for every set of parameters; ``skip``: a parameter index that
    never has a gradient."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for i, p in enumerate(sets[0]):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            for params in sets:
                params[i].grad = None if i == skip else g.clone()
        for opt in optimizers:
            opt.step()


def _relative_error(ours, theirs) -> float:
    worst = 0.0
    for p, q in zip(ours, theirs):
        scale = float(q.detach().abs().max()) or 1.0
        worst = max(worst, float((p.detach() - q.detach()).abs().max()) / scale)
    return worst


def test_muon_on_torch_matches_numpy_and_torch_optim():
    ours, numpy_side, theirs = _params(MUON_SHAPES, copies=3)
    opt = library.Muon(ours, lr=0.02, backend="torch")
    assert opt.backend == "torch"
    other = library.Muon(numpy_side, lr=0.02, backend="numpy")
    ref = torch.optim.Muon(theirs, lr=0.02)
    _train([ours, numpy_side, theirs], [opt, other, ref], 30, skip=3)
    assert _relative_error(ours, numpy_side) <= 1e-6
    assert _relative_error(ours, theirs) <= 2e-3
    assert set(opt.state[ours[0]]) == {"step", "momentum_buffer"}
    assert ours[3].grad is None and not opt.state[ours[3]]  # never stepped


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
def test_adafactor_on_torch_matches_numpy_and_torch_optim(dtype, rtol):
    ours, numpy_side, theirs = _params(ADAFACTOR_SHAPES, dtype, copies=3)
    kwargs = {"weight_decay": 0.1, "maximize": True}
    opt = library.Adafactor(ours, backend="torch", **kwargs)
    other = library.Adafactor(numpy_side, backend="numpy", **kwargs)
    ref = torch.optim.Adafactor(theirs, **kwargs)
    _train([ours, numpy_side, theirs], [opt, other, ref], 30, skip=1)
    assert _relative_error(ours, numpy_side) <= (1e-6 if dtype == torch.float32 else 1e-13)
    assert _relative_error(ours, theirs) <= rtol
    state, ref_state = opt.state_dict()["state"], ref.state_dict()["state"]
    for index in ref_state:
        assert set(state[index]) == set(ref_state[index]), index
        for key, value in ref_state[index].items():
            torch.testing.assert_close(state[index][key].to(value.dtype), value,
                                       rtol=10 * rtol, atol=10 * rtol * float(value.abs().max()))


@pytest.mark.parametrize("name", ["Muon", "Adafactor"])
def test_state_dict_round_trips_between_torch_and_numpy(name):
    """A checkpoint of the torch back end continues on NumPy and the other way round, as
    the uninterrupted run does."""
    shapes = [(8, 12), (12, 4)] if name == "Muon" else [(8, 12), (6,)]
    make = getattr(library, name)
    straight, a, b = _params(shapes, copies=3)
    uninterrupted = make(straight, lr=0.01, backend="torch")
    first_torch = make(a, lr=0.01, backend="torch")
    first_numpy = make(b, lr=0.01, backend="numpy")
    _train([straight, a, b], [uninterrupted, first_torch, first_numpy], 3)
    then_numpy = make(a, lr=0.01, backend="numpy")
    then_numpy.load_state_dict(copy.deepcopy(first_torch.state_dict()))
    then_torch = make(b, lr=0.01, backend="torch")
    then_torch.load_state_dict(copy.deepcopy(first_numpy.state_dict()))
    _train([straight, a, b], [uninterrupted, then_numpy, then_torch], 3, seed=5)
    assert _relative_error(a, straight) <= 1e-6
    assert _relative_error(b, straight) <= 1e-6
    for index in range(len(straight)):
        assert float(then_torch.state_dict()["state"][index]["step"]) == 6


def test_a_parameter_without_a_gradient_is_left_alone():
    ours, theirs = _params([(6, 4), (4, 4)])
    opt = library.Muon(ours, lr=0.05, backend="torch")
    ref = torch.optim.Muon(theirs, lr=0.05)
    before = ours[1].detach().clone()
    _train([ours, theirs], [opt, ref], 4, skip=1)
    assert torch.equal(ours[1].detach(), before)
    assert ours[1] not in opt.state or not opt.state[ours[1]]
    assert _relative_error(ours[:1], theirs[:1]) <= 2e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_on_torch_follows_torch_optim(dtype):
    ours, theirs = _params([(10, 3), (7,), ()], dtype)
    kwargs = {"lr": 1e-2, "weight_decay": 0.01, "amsgrad": True}
    opt = library.Adam(ours, backend="torch", **kwargs)
    ref = torch.optim.Adam(theirs, **kwargs)
    _train([ours, theirs], [opt, ref], 25)
    assert _relative_error(ours, theirs) <= (2e-6 if dtype == torch.float32 else 1e-13)
    assert "def sweep" not in library.program("Adam").source("torch")  # no element sweeps


def test_outputs_that_are_inputs_and_swapped_states():
    """States set to another tensor (a copy taken before anything is written) and to a
    hyper, as the NumPy back end does."""
    source = """hyper lr = 0.1
hyper c = 3
state prev = 0
state a = w
state b = 2 * w
state k = w
prev = g
x = a
a = b
b = x
k = c
w = w - lr * (g + prev + a)
"""
    prog = optdsl.compile(source)
    start = torch.arange(6, dtype=torch.float32).view(2, 3)
    results = []
    for backend in ("torch", "numpy"):
        p = torch.nn.Parameter(start.clone())
        opt = prog.optimizer([p], backend=backend)
        for step in range(3):
            p.grad = torch.full_like(p, float(step + 1))
            opt.step()
        results.append((p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}))
    (w_torch, s_torch), (w_numpy, s_numpy) = results
    assert torch.equal(w_torch, w_numpy)
    for key in ("prev", "a", "b", "k"):
        assert torch.equal(s_torch[key], s_numpy[key]), key
    assert torch.equal(s_torch["prev"], torch.full_like(start, 3.0))
    assert torch.equal(s_torch["k"], torch.full_like(start, 3.0))
    # swapped three times from (w, 2w): (2w, w)
    assert torch.equal(s_torch["a"], 2 * start) and torch.equal(s_torch["b"], start)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_and_master_weights_match_numpy(low):
    """bfloat16/float16 tensors compute in float32 and round to nearest, on either back end;
    with master weights, the fp32 master is stepped and copied into the parameter."""
    for master in (False, True):
        sets = _params(MUON_SHAPES[:2], low)
        opts = [library.Muon(params, lr=0.02, backend=backend, master_weights=master)
                for params, backend in zip(sets, ("torch", "numpy"))]
        _train(sets, opts, 5)
        for p, q in zip(*sets):
            assert p.dtype == low
            torch.testing.assert_close(p.detach().float(), q.detach().float(), rtol=0,
                                       atol=float(torch.finfo(low).eps) * 4)


def test_auto_takes_torch_for_matrix_work_on_a_gpu_without_triton(monkeypatch):
    """On a GPU, "auto" runs matrix work on Triton (fused sweeps, torch GEMMs between them),
    and on the torch back end when Triton cannot be imported."""
    from optdsl.runtime import select

    bf16 = "`bf16` at line 39"
    on_cpu = "numpy" if backends.get("c").unavailable({"cpu"}, True) else "c"
    if backends.get("triton").unavailable(frozenset({"cuda"}), True) is None:
        assert backends.choose("auto", {"cuda"}, library_work=bf16) == "triton"
        assert backends.choose("auto", {"cuda"}) == "triton"  # element-wise: Triton
    monkeypatch.setattr(select, "triton_available", lambda: False)
    with warnings.catch_warnings():  # ("auto" passed over Triton: warned once per process)
        warnings.simplefilter("ignore", RuntimeWarning)
        assert backends.choose("auto", {"cuda"}, library_work=bf16) == "torch"
    assert backends.choose("auto", {"cpu"}, library_work=bf16) == on_cpu
    assert backends.choose("torch", {"cpu"}, library_work=bf16) == "torch"
    p = torch.nn.Parameter(torch.randn(4, 4))
    assert library.Muon([p]).backend == on_cpu  # CPU tensors: C (or NumPy) stays the choice


def test_what_torch_does_not_run_yet_is_refused_saying_what_to_use():
    p = torch.nn.Parameter(torch.randn(4, 4))
    p.grad = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"group-wide reductions.*`global_norm` at line \d+ "
                                         r"of SGDClip.*numpy"):
        library.SGDClip([p], lr=0.1, backend="torch").step()
    with pytest.raises(ValueError, match=r"stochastically.*stochastic_rounding=False"):
        library.Muon([p], backend="torch", stochastic_rounding=True).step()


# -- the catalog -------------------------------------------------------------------------------

# every bundled per-parameter program but SparseAdam (sparse gradients only) and the two that
# clip by global norm (refused, above); Muon and Adafactor need matrices
CATALOG = [name for name in library.PROGRAMS
           if isinstance(library.program(name), optdsl.Program)
           and name not in ("SparseAdam", "SGDClip", "AdamWClip")]
CATALOG_CASES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                 "noncontiguous": torch.float32}
# a few ulps of each dtype (float16 parameters keep float32 states)
CATALOG_RTOL = {torch.float16: 2e-3, torch.float32: 2e-6, torch.float64: 1e-12}


def _catalog_run(name: str, backend: str, case: str, steps: int = 3) -> list[torch.Tensor]:
    dtype = CATALOG_CASES[case]
    gen = torch.Generator().manual_seed(1)
    matrix = name in ("Muon", "Adafactor")
    shapes = [(6, 9), (12, 4)] if matrix else [(37, 3), (5,), (300,), (0,), (1,)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    if case == "noncontiguous":
        params[0] = torch.randn(shapes[0][::-1], generator=gen,
                                dtype=torch.float64).to(dtype).t()
    params = [p.requires_grad_() for p in params]
    prog = library.program(name)
    required = {n: 0.1 for n, s in prog.hypers.items() if s.required}
    opt = getattr(library, name)([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}],
                                 backend=backend, **required)
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
        opt.step()
    out = [p.detach().clone() for p in params]
    for p in params:
        out += [v.clone() for v in opt.state[p].values() if torch.is_tensor(v)]
    return out


@pytest.mark.parametrize("case", list(CATALOG_CASES))
@pytest.mark.parametrize("name", CATALOG)
def test_catalog_on_torch_matches_numpy(name, case):
    """Every bundled program steps alike on both back ends, within a few ulps of each
    tensor's dtype: torch's own sqrt, exp, log and pow are not NumPy's (an ulp apart at
    times), and float64 sums run in another order."""
    want, got = _catalog_run(name, "numpy", case), _catalog_run(name, "torch", case)
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.dtype == b.dtype and a.shape == b.shape
        rtol = CATALOG_RTOL[a.dtype]
        scale = float(torch.nan_to_num(a.double(), 0.0, 0.0, 0.0).abs().max()) if a.numel() \
            else 0.0
        torch.testing.assert_close(b, a, rtol=rtol, atol=rtol * scale, equal_nan=True,
                                   msg=f"{name} {case}")


def test_a_choice_between_two_scalars_is_computed_in_the_compute_dtype():
    """where(mask, scalar, scalar) under an element mask is a float32 tensor for float32
    parameters (not float64, which would round the product twice): bit for bit NumPy."""
    prog = optdsl.compile("hyper lr = 0.1\nw = w - where(g > 0, lr, 3 * lr) * g\n")
    gen = torch.Generator().manual_seed(3)
    start, grad = torch.randn(10000, generator=gen), torch.randn(10000, generator=gen)
    results = []
    for backend in ("torch", "numpy"):
        p = torch.nn.Parameter(start.clone())
        p.grad = grad.clone()
        prog.optimizer([p], lr=0.1 / 3, backend=backend).step()
        results.append(p.detach())
    assert torch.equal(results[0], results[1])
