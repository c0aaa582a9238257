"""Matrix-shaped optimizers: the Muon and Adafactor twins against torch.optim on every back
end, checkpoints both ways, and the language's shapes (matrix products, transposes, row and
column statistics, repeat, choices and optional hypers) with their positioned errors.

Tolerances: Muon's Newton-Schulz runs in torch's own bfloat16 matrix products on every back
end; only the element-wise momentum rounds differently (torch's lerp uses a fused
multiply-add, ours rounds twice), by a float32 ulp. Where that ulp moves a bfloat16 rounding
of Newton-Schulz's input, that element of one step's update differs by a bfloat16 ulp (0.4%
of lr * ratio). So one step from the same state agrees to two bfloat16 ulps of lr * ratio,
and 30 steps stay within 2e-3 relative. Adafactor agrees to float32 (float64) rounding: the per-tensor norms are
summed in float64 here, in float32 by torch.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

import pytest
import torch

import optdsl
from optdsl import library
from optdsl.runtime import backends

# the back ends that run library stages (matrix work): NumPy, C, torch and Triton
BACKENDS = [name for name, b in backends.BACKENDS.items() if b.library_stages]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch, tmp_path):
    if request.param == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    elif backends.get(request.param).unavailable({"cpu"}, False):
        pytest.skip(f"{request.param} unavailable here")
    return request.param


def _pair(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ours = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    return ours, theirs


def _train(ours, theirs, opt, ref, steps, seed=1, skip=None):
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            if skip is not None and i == skip:
                p.grad = q.grad = None  # a parameter without a gradient
                continue
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()


def _close(ours, theirs, rtol):
    for p, q in zip(ours, theirs):
        scale = float(q.detach().abs().max()) or 1.0
        assert float((p.detach() - q.detach()).abs().max()) <= rtol * scale, \
            float((p.detach() - q.detach()).abs().max()) / scale


MUON_CASES = [
    {},
    {"nesterov": False},
    {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.0},
    {"adjust_lr_fn": "original", "momentum": 0.9, "ns_steps": 3},
]


@pytest.mark.parametrize("kwargs", MUON_CASES, ids=lambda k: ",".join(k) or "default")
def test_muon_follows_torch(backend, kwargs):
    shapes = [(16, 32), (48, 8), (5, 5), (20, 12)]
    ours, theirs = _pair(shapes)
    groups = [{"params": ours[:2]}, {"params": ours[2:], "lr": 0.01}]
    ref_groups = [{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.01}]
    opt = library.Muon(groups, lr=0.02, backend=backend, **kwargs)
    ref = torch.optim.Muon(ref_groups, lr=0.02, **kwargs)
    _train(ours, theirs, opt, ref, 30, skip=3)
    _close(ours, theirs, 2e-3)
    assert set(opt.state[ours[0]]) == {"step", "momentum_buffer"}


def test_muon_one_step_from_the_same_state_is_within_bf16_rounding(backend):
    import copy
    import math

    shapes = [(16, 32), (48, 8), (5, 5)]
    ours, theirs = _pair(shapes)
    opt = library.Muon(ours, lr=0.02, backend=backend)
    ref = torch.optim.Muon(theirs, lr=0.02)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        opt.load_state_dict(copy.deepcopy(ref.state_dict()))
        for p, q in zip(ours, theirs):
            p.data.copy_(q.detach())
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs):
            rows, cols = p.shape
            bound = 2 ** -7 * 0.02 * math.sqrt(max(1, rows / cols)) + 1e-6
            assert float((p - q).detach().abs().max()) <= bound


def _newton_schulz_f64(u: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    a, b, c = 3.4445, -4.7750, 2.0315
    x = u.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(float(x.norm()), eps)
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return x.T if tall else x


def test_muon_newton_schulz_in_float32_on_request(backend):
    """ns_dtype="float32" (an option torch's Muon lacks) orthogonalises in float32: one step
    from no state is the float64 computation within float32 rounding, and the default's
    bfloat16 one is measurably further from it."""
    import math

    errors = {}
    for mode in ("float32", "bfloat16"):
        gen = torch.Generator().manual_seed(3)
        p = torch.nn.Parameter(torch.randn(24, 10, generator=gen))
        g = torch.randn(24, 10, generator=gen)
        p0 = p.detach().clone()
        p.grad = g.clone()
        library.Muon([p], lr=0.02, weight_decay=0.0, ns_dtype=mode, backend=backend).step()
        buf = 0.05 * g.double()
        u = g.double() + 0.95 * (buf - g.double())  # lerp(g, buf, momentum): nesterov
        want = p0.double() - 0.02 * math.sqrt(24 / 10) * _newton_schulz_f64(u)
        errors[mode] = float((p.detach().double() - want).abs().max())
    assert errors["float32"] < 1e-6
    assert errors["bfloat16"] > 10 * errors["float32"]
    with pytest.raises(ValueError, match="ns_dtype"):
        library.Muon([torch.nn.Parameter(torch.zeros(2, 2))], ns_dtype="float16")


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1, "maximize": True},
                                    {"eps": (1e-20, 1e-3), "d": 2.0, "beta2_decay": -0.5}],
                         ids=["default", "wd-maximize", "eps-d"])
def test_adafactor_follows_torch(backend, dtype, rtol, kwargs):
    shapes = [(16, 32), (48, 8), (7,), (3, 5, 6), (1,)]
    ours, theirs = _pair(shapes, dtype)
    groups = [{"params": ours[:3]}, {"params": ours[3:], "lr": 0.02}]
    ref_groups = [{"params": theirs[:3]}, {"params": theirs[3:], "lr": 0.02}]
    opt = library.Adafactor(groups, backend=backend, **kwargs)
    ref = torch.optim.Adafactor(ref_groups, **kwargs)
    _train(ours, theirs, opt, ref, 30, skip=1)
    _close(ours, theirs, rtol)
    state = opt.state_dict()["state"]
    ref_state = ref.state_dict()["state"]
    for index in ref_state:
        assert set(state[index]) == set(ref_state[index]), index
        for key, value in ref_state[index].items():
            torch.testing.assert_close(state[index][key].to(value.dtype), value,
                                       rtol=10 * rtol, atol=10 * rtol * float(value.abs().max()))


@pytest.mark.parametrize("name", ["Muon", "Adafactor"])
def test_checkpoints_move_both_ways(name, backend):
    shapes = [(8, 12), (6,)] if name == "Adafactor" else [(8, 12), (12, 4)]
    ours, theirs = _pair(shapes)
    twin = getattr(library, name)(ours, lr=0.01, backend=backend)
    ref = getattr(torch.optim, name)(theirs, lr=0.01)
    _train(ours, theirs, twin, ref, 3)
    # torch's checkpoint into the twin, and the twin's into torch: both continue alike
    twin.load_state_dict(copy.deepcopy(ref.state_dict()))  # (as torch.save and load would)
    for p, q in zip(ours, theirs):
        p.data.copy_(q.detach())
    other = getattr(torch.optim, name)([q.detach().clone().requires_grad_() for q in theirs],
                                       lr=0.01)
    other.load_state_dict(copy.deepcopy(twin.state_dict()))
    copies = [p for g in other.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        for p, q, c in zip(ours, theirs, copies):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad, c.grad = g.clone(), g.clone(), g.clone()
        twin.step()
        ref.step()
        other.step()
    _close(ours, theirs, 1e-5)
    _close(copies, theirs, 1e-5)


def test_muon_and_adamw_in_one_step():
    """Muon for the 2-D hidden weights, AdamW for the rest: two optimizers, one model."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    matrices = [p for p in model.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim != 2]
    muon, adamw = library.Muon(matrices, lr=0.02), library.AdamW(others, lr=1e-3)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    first = None
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        muon.zero_grad()
        adamw.zero_grad()
        loss.backward()
        muon.step()
        adamw.step()
    assert loss.item() < first


@pytest.fixture
def plain_backend():
    """A back end registered without library stages (every bundled one runs them now): the
    NumPy back end's generator and runner under another name, ``library_stages=False``."""
    name = "numpy_no_stages"
    backends.register(dataclasses.replace(backends.get("numpy"), name=name,
                                          library_stages=False))
    try:
        yield name
    finally:
        backends.unregister(name)


def test_back_ends_without_library_stages_refuse_matrix_work_at_construction(plain_backend,
                                                                             monkeypatch):
    """A back end that does not run library stages: asked for by name, it is refused when
    the optimizer is made, naming the program's matrix work; "auto" passes it over (for CPU
    tensors: one that runs them), and `optdsl show --<backend>` says the same. A program
    without matrix work runs on it."""
    backend = plain_backend
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    p = torch.nn.Parameter(torch.randn(6, 4))
    with pytest.raises(ValueError, match=rf"backend='{backend}' does not run matrix work.*"
                                         r"`bf16` at line \d+"):
        library.Muon([p], backend=backend)
    assert library.Muon([p]).backend in BACKENDS
    with pytest.raises(ValueError, match=f"the {backend} back end does not run matrix work"):
        library.program("Adafactor").source(backend)
    plain = library.SGD([p], lr=0.5, backend=backend)
    p.grad = torch.ones(6, 4)
    before = p.detach().clone()
    plain.step()
    torch.testing.assert_close(p.detach(), before - 0.5)


# -- the language --------------------------------------------------------------------------------

def _step(source, w, g, backend="numpy", **hypers):
    p = torch.tensor(w)
    p.grad = torch.tensor(g)
    optdsl.compile(source).optimizer([p], backend=backend, **hypers).step()
    return p.numpy()


STAGE_SCALARS = """
optimizer StageScalars
hyper lr = 0.1
state k = 1
n = global_norm(g)
s = sqrt(w.rows) * exp(lr)
A = (g @ transpose(g)) * s / (n + k * t)
r = norm(A)
k = where(t > 2, k * 0.5 + 0.01 * r, k)
w = w - lr * (A @ g) / (r + 1)
"""


def test_scalars_of_library_stages(backend):
    """A library stage reads a group-wide reduction, t, a scalar state, and a scalar of the
    parameter's facts and a hyper; it hands later code a scalar state's new value (under a
    switch on t) and the update's scale: every back end steps as NumPy does (the Triton one
    computes the stage's scalars on the device)."""
    if backend == "torch":
        pytest.skip("group-wide reductions are not the torch back end's yet")
    prog = optdsl.compile(STAGE_SCALARS)
    runs = {}
    for name in dict.fromkeys(("numpy", backend)):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64))
              for shape in ((3, 5), (4, 2))]
        opt = prog.optimizer(ps, backend=name, lr=torch.tensor(0.05, dtype=torch.float64))
        for _ in range(4):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
        runs[name] = (ps, [float(opt.state[p]["k"]) for p in ps])
    (ref, ref_k), (got, got_k) = runs["numpy"], runs[backend]
    assert ref_k[0] != 1.0 and ref_k == pytest.approx(got_k, rel=1e-12)
    for p, q in zip(got, ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)


def test_row_and_column_statistics(backend):
    rng = np.random.default_rng(0)
    w, g = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    source = ("w = w - 0.1 * (g - rowmean(g)) * colsum(g) + rownorm(g) @ colnorm(g) * 0.01"
              " - transpose(transpose(g)) * 0.001")
    want = w - 0.1 * (g - g.mean(-1, keepdims=True)) * g.sum(-2, keepdims=True) \
        + np.sqrt((g * g).sum(-1, keepdims=True)) @ np.sqrt((g * g).sum(-2, keepdims=True)) \
        * 0.01 - g * 0.001
    np.testing.assert_allclose(_step(source, w, g, backend), want, rtol=1e-12)


def test_states_per_row_and_per_column(backend):
    source = ("state r = 0 per row as rows_seen\nstate c = 0 per col\n"
              "r = r + rowsum(g)\nc = c + colsum(g)\nw = w - 0.1 * (r @ c)")
    prog = optdsl.compile(source)
    p = torch.ones(3, 4, dtype=torch.float64)
    opt = prog.optimizer([p], backend=backend)
    for _ in range(2):
        p.grad = torch.ones(3, 4, dtype=torch.float64)
        opt.step()
    assert opt.state[p]["rows_seen"].shape == (3, 1)
    assert opt.state[p]["c"].shape == (1, 4)
    assert torch.equal(opt.state[p]["rows_seen"], torch.full((3, 1), 8.0, dtype=torch.float64))
    # 1 - 0.1 * (4 * 3) after the first step; then - 0.1 * (8 * 6)
    assert torch.allclose(p, torch.full((3, 4), 1 - 1.2 - 4.8, dtype=torch.float64))


def test_repeat_runs_its_body_a_fixed_number_of_times():
    prog = optdsl.compile("hyper n = 3\nx = g\nrepeat n:\n  x *= 2\nrepeat 2:\n  x += 1\n"
                          "w = w - x")
    assert not getattr(prog, "closure_driven", False)  # (an ordinary program, unrolled)
    for n, want in ((3, 1 - (8 + 2)), (0, 1 - 3), (5, 1 - (32 + 2))):
        p = torch.ones(2, dtype=torch.float64)
        p.grad = torch.ones(2, dtype=torch.float64)
        prog.optimizer([p], n=n).step()
        assert p.tolist() == [want, want], n
    with pytest.raises(ValueError, match="whole number"):
        p = torch.ones(2)
        p.grad = torch.ones(2)
        prog.optimizer([p], n=2.5).step()


def test_choices_and_optional_hypers():
    source = ('hyper mode = "plain" in {None, "plain", "double"}\nhyper e = (e1 = None, e2 = 1)\n'
              'k = where(mode == "double", 2, where(mode == None, 3, 1))\n'
              'w = w - k * where(e1 == None, e2, e1) * g')
    prog = optdsl.compile(source)
    assert prog.hypers["mode"].choices == (None, "plain", "double")
    for kwargs, want in (({}, 1 - 1), ({"mode": "double"}, 1 - 2), ({"mode": None}, 1 - 3),
                         ({"e": (0.5, 1)}, 1 - 0.5)):
        p = torch.ones(1, dtype=torch.float64)
        p.grad = torch.ones(1, dtype=torch.float64)
        prog.optimizer([p], **kwargs).step()
        assert p.item() == want, kwargs
    with pytest.raises(ValueError, match=r"Invalid mode value: 'triple' \(hyper `mode` must be "
                                         r"one of None, 'plain', 'double'\)"):
        prog.optimizer([torch.zeros(1)], mode="triple")


def test_a_matrix_program_on_a_vector_is_refused_naming_the_parameter():
    prog = optdsl.compile("w = w - 0.1 * rowmean(g) @ colmean(g)")
    p, q = torch.zeros(3, 3), torch.zeros(4)
    opt = prog.optimizer([p, q])
    p.grad, q.grad = torch.ones(3, 3), torch.ones(4)
    with pytest.raises(ValueError, match=r"parameter 1 of param group 0 has shape \(4,\)"):
        opt.step()
    assert torch.equal(p, torch.zeros(3, 3))  # nothing written
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        library.Muon([torch.zeros(4)])


@pytest.mark.parametrize("source,caret,message", [
    ("w = w - rowmean(g) @ rowmean(g)", "rowmean(g) @ rowmean(g)", "matrix product"),
    ("w = rowmean(g)", "rowmean(g)", "(rows x 1)"),
    ("w = w - transpose(g) * g", "transpose(g) * g", "broadcast"),
    ("w = w - 2 @ g", "2 @ g", "not scalars"),
    ("w = w - unwide(g)", "unwide(g)", "what wide() gives"),
    ("x = wide(g)\nw = w - x", "w - x", "do not broadcast"),
    ("state r = 0 per row\nr = g\nw = w - r", "g", "(rows x 1)"),
    ("state m = 0\nm = colsum(g)\nw = w - m", "colsum(g)", "per col"),
    ("w = w - global_norm(g @ transpose(g) @ g) * g",
     "global_norm(g @ transpose(g) @ g)", "one parameter at a time"),
    ("w = w - global_norm(transpose(g) @ g) * g", "global_norm(transpose(g) @ g)",
     "not (cols x cols)"),
    ('hyper m = "a" in {"a", "b"}\nw = w - m * g', "m", "is a choice"),
    ('hyper m = "c" in {"a", "b"}\nw = w', '"c"', "must be one of"),
    ('hyper m = "a" in {"a", "b"}\nw = where(m == "z", w, g)', '"z"', "never"),
    ('hyper lr = 1\nw = where(lr == "z", w, g)', "lr", "only a choice hyper"),
    ("hyper k = 2.5\nrepeat k:\n  w = w\nw = w - g", "k", "whole number"),
    ("repeat t:\n  w = w\nw = w - g", "t", "`repeat` takes"),
    ("x = g\nrepeat 2:\nx = x * 2\nw = w - x", ":", "indented block"),
    ("w = w - w.foo * g", "foo", "facts"),
    ("hyper eps = (eps1 = None, eps2 = 1e-3)\nw = w - (eps1 + eps2) * g", "eps1",
     "is optional"),
])
def test_shape_and_construct_mistakes_are_positioned(source, caret, message):
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(source)
    err = info.value
    assert message in err.message, str(err)
    if caret:
        line = source.split("\n")[err.line - 1]
        assert line[err.column - 1:].startswith(caret), str(err)


def test_the_library_stage_is_generated_torch_code():
    source = library.program("Muon").source("numpy")
    assert "torch.addmm" in source or "_addmm(" in source
    assert "def library0(params):" in source and "LIBRARIES = (" in source


def test_numpy_optimizer_refuses_matrix_work_and_says_what_works():
    """numpy_optimizer steps element-wise programs over flat arrays; for Muon and Adafactor
    it says to use the torch optimizer over torch.from_numpy views, which does work and
    updates the arrays in place."""
    import numpy as np

    w = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    for name in ("Muon", "Adafactor"):
        with pytest.raises(ValueError, match=rf"{name} has matrix work .*torch\.from_numpy"):
            library.program(name).numpy_optimizer([w])
    before = w.copy()
    t = torch.from_numpy(w)
    opt = library.program("Muon").optimizer([t], backend="numpy", lr=0.01)
    t.grad = torch.ones(4, 6)
    opt.step()
    assert not np.array_equal(w, before)


FACTS_PROGRAM = """hyper lr = 0.5
w = w - lr * (w.rows + 10 * w.cols + 100 * w.ndim + 1000 * w.numel + w.eps / 1e-3) * g
"""


@pytest.mark.parametrize("backend", ["numpy", "c", "triton", "torch"])
def test_every_back_end_reads_a_parameters_facts(backend, monkeypatch):
    """w.rows, w.cols, w.ndim, w.numel and w.eps are the parameter's own on every back end
    (vectors, matrices, a 3-d tensor and a scalar in one group; float32 and float64)."""
    if backend == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif backends.get(backend).unavailable({"cpu"}, False):
        pytest.skip(f"{backend} unavailable here")
    prog = optdsl.compile(FACTS_PROGRAM)
    shapes = [(3,), (2, 3), (2, 3, 4), ()]
    for dtype in (torch.float32, torch.float64):
        params = [torch.zeros(s, dtype=dtype, requires_grad=True) for s in shapes]
        opt = prog.optimizer(params, backend=backend)
        for p in params:
            p.grad = torch.full_like(p, -1.0)
        opt.step()
        eps = torch.finfo(dtype).eps
        for p, shape in zip(params, shapes):
            rows, cols = (shape[-2], shape[-1]) if len(shape) >= 2 else \
                (1, shape[0] if shape else 1)
            numel = int(np.prod(shape)) if shape else 1
            want = 0.5 * (rows + 10 * cols + 100 * len(shape) + 1000 * numel + eps / 1e-3)
            torch.testing.assert_close(p.detach(), torch.full_like(p, want), rtol=1e-6,
                                       atol=0, msg=f"{backend} {shape} {dtype}")


def test_matrix_work_on_cuda_tensors_goes_to_the_triton_back_end():
    """backend="auto" with matrix work on CUDA tensors picks Triton (fused sweeps, torch
    GEMMs between them), as for element-wise work; the torch back end stays selectable by
    name. (The choice is made from device types: no GPU is needed to check it.)"""
    assert backends.choose("auto", {"cuda"}, "`@` at line 3") == "triton"
    assert backends.choose("torch", {"cuda"}, "`@` at line 3") == "torch"


ALIASING = """hyper flip = 0
state m = 0 per row
u = where(flip != 0, g, transpose(transpose(g)))
x = u * 2 + rowmean(g)
y = sqrt(abs(x)) * x
m = m + rowsum(y)
w = w - 0.01 * (y / max(colnorm(y), 1e-3) + rsqrt(abs(g) + 1)) * m
"""


@pytest.mark.parametrize("flip", [0, 1])
def test_library_stages_compute_in_place_only_what_no_one_else_reads(backend, flip,
                                                                     monkeypatch):
    """A library stage computes an element-wise value into its argument's memory only
    where nothing else can see it (optdsl.codegen.library_in_place): never into a view or a
    host-switched where (here: the gradient's own memory), nor into a value read twice. The
    step gives the bits of the same stage written without in-place operations, and the
    gradient is left as it was."""
    from optdsl.codegen import library as library_codegen

    def run(prog):
        gen = torch.Generator().manual_seed(2)
        p = torch.nn.Parameter(torch.randn(6, 5, generator=gen))
        opt = prog.optimizer([p], backend=backend, flip=flip)
        grads = []
        for _ in range(2):
            g = torch.randn(6, 5, generator=gen)
            grads.append(g.clone())
            p.grad = g
            opt.step()
            assert torch.equal(p.grad, grads[-1])
        return p.detach().clone(), opt.state[p]["m"].clone()

    fast = optdsl.compile(ALIASING)
    ours = run(fast)
    monkeypatch.setattr(library_codegen, "in_place", lambda *args: {})
    plain = run(optdsl.compile(ALIASING))
    assert all(torch.equal(a, b) for a, b in zip(ours, plain))


def test_adafactor_stage_computes_its_update_in_place():
    source = library.program("Adafactor").source("numpy")
    stage = source[source.index("def library0"):source.index("def sweep0")]
    for method in (".div_(", ".rsqrt_()", ".mul_("):
        assert method in stage, method


def test_column_norms_are_accurate_in_float32(backend):
    """colnorm sums squares (torch's vector_norm over dim -2 is off by ~1e-6 relative here,
    and slower): within 3e-7 of the float64 norms."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(4000, 3, generator=gen, dtype=torch.float64) * 1e-3
    p = torch.nn.Parameter(torch.zeros(4000, 3))
    p.grad = g.float()
    optdsl.compile("w = w - colnorm(g)").optimizer([p], backend=backend).step()
    want = torch.linalg.vector_norm(g.float().double(), dim=-2, keepdim=True)
    error = float(((-p.detach()[:1].double() - want) / want).abs().max())
    assert error < 3e-7, error
