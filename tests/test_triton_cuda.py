"""The Triton back end natively on a CUDA GPU, compared with the NumPy back end on CPU copies:
every bundled optimizer and example, reductions, float16/bfloat16/float64, non-contiguous and
misaligned parameters, several tensors per launch. Skipped without CUDA (marker ``cuda``)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import optdsl
from optdsl import library

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.opt"))
SIZES = (1, 7, 1000, 4099, 70001)  # 1024-element blocks: full blocks and ragged tails

REDUCTIONS = """
optimizer Reductions
hyper lr = 0.1, max_norm = 1.0
state m = 0
gn = global_norm(g)
g = g * min(1, max_norm / (gn + 1e-6))
m = 0.9 * m + g
s = sum(m) / (mean(abs(w)) + 1) + global_sum(g) * 1e-3
n = norm(m) + maxabs(g) + dot(m, g) * 0.01
w = w - lr * m / (n + 1) - 0.001 * s
"""


@pytest.fixture(autouse=True)
def no_interpreter(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "optdsl-cache"))


def required(prog) -> dict:
    return {name: 0.1 for name, spec in prog.hypers.items() if spec.required}


def flipped(prog) -> dict:
    out = {}
    for name, spec in prog.hypers.items():
        in_range = spec.interval is None or spec.interval.contains(0.5)
        if spec.parts is None and spec.default == 0 and in_range:
            out[name] = 0.5
    return out


def run_both(prog, sizes=SIZES, dtype=torch.float32, steps=3, make=None, reference_dtype=None):
    """NumPy on CPU (in ``reference_dtype`` if given) and Triton on CUDA, same steps."""
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(n, generator=gen, dtype=torch.float64).to(dtype) for n in sizes]
    out = {}
    for backend, device in (("numpy", "cpu"), ("triton", "cuda")):
        dt = reference_dtype if (backend == "numpy" and reference_dtype) else dtype
        ps = [torch.nn.Parameter((make(b) if make else b).to(device, dt, copy=True))
              for b in base]
        half = len(ps) // 2
        groups = [{"params": ps[:half]}, {"params": ps[half:], **flipped(prog)}]
        opt = prog.optimizer(groups, backend=backend, **required(prog))
        gen_g = torch.Generator().manual_seed(1)
        for step in range(steps):
            for i, p in enumerate(ps):
                g = torch.randn(p.shape, generator=gen_g, dtype=torch.float64).to(dtype)
                grad = g.to(device, dt)
                if prog.sparse.only:  # SparseAdam takes sparse gradients only
                    grad = grad.to_sparse()
                p.grad = None if (step == 1 and i == len(ps) - 2) else grad
            opt.step()
        out[backend] = (ps, opt)
    return out["numpy"], out["triton"]


def assert_match(ref, got, rtol=1e-5, atol=1e-6):
    (ps_ref, opt_ref), (ps_got, opt_got) = ref, got
    for p, q in zip(ps_ref, ps_got):
        torch.testing.assert_close(q.detach().cpu().to(p.dtype), p.detach(), rtol=rtol,
                                   atol=atol, equal_nan=True)
        sref, sgot = opt_ref.state.get(p, {}), opt_got.state.get(q, {})
        assert sref.keys() == sgot.keys()
        for key in sref:
            torch.testing.assert_close(sgot[key].cpu().to(sref[key].dtype), sref[key],
                                       rtol=rtol, atol=atol, equal_nan=True)


# matrix work (library stages) runs on matrices: Muon takes 2-D parameters only
MATRIX_SIZES = ((1, 7), (300, 3), (20, 33), (1000, 71))


@pytest.mark.parametrize("name", library.STEPWISE)
def test_library_matches_numpy(name):
    prog = library.program(name)
    if not prog.library_work:
        assert_match(*run_both(prog))
        return
    # Newton-Schulz in bfloat16: cuBLAS sums in another order than the CPU's GEMM, which
    # moves bfloat16 roundings: a bfloat16 ulp of lr * ratio a step (lr 1e-3, ratio up to
    # sqrt(300 / 3)), three steps
    tolerance = 3 * 2 ** -7 * 1e-2 if prog.name == "Muon" else 1e-5
    assert_match(*run_both(prog, sizes=MATRIX_SIZES), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_match_numpy(path):
    assert_match(*run_both(optdsl.load(path)))


def test_reductions_match_numpy():
    assert_match(*run_both(optdsl.compile(REDUCTIONS), sizes=(1, 0, 7, 1000, 4099, 70001)),
                 rtol=1e-5)


def test_float64():
    for name in ("Adam", "LAMB", "NAdam", "Rprop"):
        assert_match(*run_both(library.program(name), dtype=torch.float64), rtol=1e-12,
                     atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["Adam", "SGD", "LAMB"])
def test_half_precision(name, dtype):
    eps = torch.finfo(dtype).eps
    assert_match(*run_both(library.program(name), dtype=dtype), rtol=2 * eps, atol=1e-3)
    assert_match(*run_both(library.program(name), dtype=dtype, reference_dtype=torch.float32),
                 rtol=8 * eps, atol=8 * eps)


def test_non_contiguous_and_misaligned():
    def make(b):  # transposed (non-contiguous) 2-D parameters
        return b.reshape(-1, 1).expand(-1, 3).t().contiguous().t()

    assert_match(*run_both(library.program("Adam"), sizes=(7, 3000), make=make))
    big = torch.randn(10001, device="cuda")
    p = torch.nn.Parameter(big[1:])  # contiguous, data pointer not 16-byte aligned
    q = torch.nn.Parameter(big[1:].cpu().clone())
    p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    library.Adam([p], backend="triton").step()
    library.Adam([q], backend="numpy").step()
    torch.testing.assert_close(p.detach().cpu(), q.detach())


def test_one_launch_per_pass_and_dtype(monkeypatch):
    import dataclasses

    prog = optdsl.compile(REDUCTIONS)
    variant = prog.generic
    module = variant.generated("triton")
    log: list = []

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            log.append(grid)
            return self.kernel[grid]

    counted = dataclasses.replace(module, sweeps=tuple(
        dataclasses.replace(s, kernel=Counting(s.kernel) if s.kernel else None)
        for s in module.sweeps))
    monkeypatch.setitem(variant._modules, ("triton", ""), counted)
    sizes = [3000, 1024, 5, 2048, 77]
    ps = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in sizes]
    ps.append(torch.nn.Parameter(torch.randn(9, device="cuda", dtype=torch.float64)))
    opt = prog.optimizer(ps, backend="triton")
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    sweeps = sum(s.kernel is not None for s in module.sweeps)
    assert len(log) == 2 * sweeps
    assert sorted(set(log)) == [(1,), (3 + 1 + 1 + 2 + 1,)]


# -- mixed precision (see tests/test_mixed_precision.py for the same checks in the interpreter)
def _mixed(backend: str, device: str, dtype, **options):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n, generator=gen).to(device, dtype))
          for n in (7, 1000, 70001)]
    opt = library.Adam(ps, lr=1e-3, weight_decay=0.01, backend=backend, **options)
    gen_g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen_g).to(device, dtype)
        opt.step()
    return ps, opt


def test_master_weights_and_bf16_state_match_numpy():
    for options in ({"master_weights": True}, {"state_dtype": torch.bfloat16},
                    {"master_weights": True, "state_dtype": torch.bfloat16}):
        ref = _mixed("numpy", "cpu", torch.bfloat16, **options)
        got = _mixed("triton", "cuda", torch.bfloat16, **options)
        eps = torch.finfo(torch.bfloat16).eps
        assert_match(ref, got, rtol=eps, atol=1e-5)


def test_stochastic_rounding_on_gpu_is_unbiased_and_reproducible():
    def run():
        torch.manual_seed(3)
        w = torch.nn.Parameter(torch.ones(1 << 20, device="cuda", dtype=torch.bfloat16))
        opt = library.SGD([w], lr=2.0 ** -10, stochastic_rounding=True, backend="triton")
        for _ in range(8):
            w.grad = torch.ones_like(w)
            opt.step()
        return w.detach().double()

    first, second = run(), run()
    assert torch.equal(first, second)
    assert abs(first.mean().item() - (1 - 8 * 2.0 ** -10)) < 1e-4


# -- a step that never waits on the host (issue 11) -------------------------------------------
def _model_params(seed=0, sizes=(7, 1000, 70001)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to("cuda")) for n in sizes]


@pytest.mark.parametrize("name", ["Adam", "AdamWClip", "LAMB", "NAdam", "Muon", "Adafactor"])
def test_steady_state_steps_do_not_synchronize(name):
    prog = library.program(name)
    ps = _model_params(sizes=((7, 3), (1000, 70)) if prog.library_work else (7, 1000, 70001))
    opt = prog.optimizer(ps, backend="triton", **required(prog))
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(float(opt.state[p]["step"]) == 5 for p in ps)


@pytest.mark.parametrize("name", ["Adam", "AdamWClip", "LAMB"])
def test_a_captured_step_replays_as_eager_steps(name):
    """capturable=True: warm up outside the capture, capture one step, replay it; gradients
    and a tensor lr are static tensors updated in place, as torch's recipe has them."""
    prog = library.program(name)
    results = []
    for captured in (False, True):
        ps = _model_params()
        lr = torch.tensor(1e-2, device="cuda")
        opt = prog.optimizer(ps, backend="triton", lr=lr, capturable=True)
        grads = [torch.zeros_like(p) for p in ps]
        for p, g in zip(ps, grads):
            p.grad = g
        gen = torch.Generator(device="cuda").manual_seed(1)

        def fill(grads=grads, gen=gen):
            for g in grads:
                g.copy_(torch.randn(g.shape, generator=gen, device="cuda"))

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: compilation, state, tables
                fill()
                opt.step()
        torch.cuda.current_stream().wait_stream(stream)
        if captured:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                opt.step()
        for step in range(4):
            fill()
            lr.fill_(1e-2 / (step + 1))
            if captured:
                graph.replay()
            else:
                opt.step()
        torch.cuda.synchronize()
        results.append(([p.detach().clone() for p in ps],
                        [float(opt.state[p]["step"]) for p in ps]))
    (eager, eager_steps), (replayed, replayed_steps) = results
    assert eager_steps == replayed_steps == [6.0] * 3
    for a, b in zip(eager, replayed):
        assert torch.equal(a, b)


def test_capture_refuses_a_step_that_needs_new_tables():
    ps = _model_params()
    opt = library.Adam(ps, backend="triton", capturable=True)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    for p in ps:
        p.grad = torch.randn_like(p) * 0  # new gradient tensors: the table would change
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="captured"):
        with torch.cuda.graph(graph):
            for p in ps:
                p.grad = torch.ones_like(p)
            opt.step()
