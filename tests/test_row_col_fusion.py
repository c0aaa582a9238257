"""Row and column statistics fused into the C and Triton sweeps that feed them
(optdsl.ir.stages fused_stats; optdsl.codegen.c_prelude's optdsl_rows_*/optdsl_cols_*;
optdsl.runtime.device_stats).

- Adafactor's rownorm(g) and colnorm(g) are accumulated by sweep 0 on C: the library stage
  reads them (and computes neither for a parameter the sweep handled), while NumPy's stage
  computes them in torch;
- C against NumPy over 30 steps, float32 and float64, on shapes that exercise the piece
  bookkeeping (3-D, a vector, rows = 1, columns that are not a multiple of the 1,024-element
  block, several blocks per row and rows per block, several column groups): the
  statistics are summed in float64 on C and in the compute dtype by torch on NumPy, so they
  agree to rounding: float32 within 1e-5 relative + 1e-6 absolute after 30 steps (a few
  ulps of the parameters), float64 within 1e-12 relative (the bound of float64 reductions
  in tests/test_c_backend.py);
- the same bits for 1 and 2 threads;
- every statistic's finish: rowsum and colsum of an input, rowmean and colmean of an
  element value, in a program of per-row and per-column states;
- where the runtime hands the sweeps no statistic (a sharded step), the stage computes them
  with NumPy's code: NumPy's bits;
- Triton (TRITON_INTERPRET=1; optdsl.runtime.device_stats): against NumPy within the same
  bounds (10 steps; 2-D, 3-D, 1-D, zero-size, a transposed parameter, one without a
  gradient), the stage's fallback not called for fused statistics (and called with fusion
  off), the same bits for 64- and 256-element blocks in float32 and float64, and the four
  sums and means of the program below; bfloat16 parameters within one of their ulps.
"""

from __future__ import annotations

import pytest
import torch

import optdsl
from optdsl import library
from optdsl.runtime import c_build

needs_cc = pytest.mark.skipif(c_build.unavailable() is not None,
                              reason=f"no C compiler: {c_build.unavailable()}")

SHAPES = [(37, 3), (16, 40), (7,), (0, 4), (1, 2000), (3, 5, 1100), (2, 3, 4), (70, 1500),
          (2500, 3)]
BOUND = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-15)}


def _run(backend: str, dtype: torch.dtype, shapes=SHAPES, steps: int = 30) -> list:
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
              for s in shapes]
    opt = library.Adafactor(params, lr=0.01, backend=backend)
    for k in range(steps):
        grads = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=grads, dtype=torch.float64).to(dtype)
        opt.step()
    return [p.detach().clone() for p in params] + [
        v.clone() for p in params for v in opt.state[p].values() if torch.is_tensor(v)]


def test_adafactor_statistics_are_fused_on_c_not_numpy():
    prog = library.program("Adafactor").generic
    c, numpy = prog.source("c"), prog.source("numpy")
    assert "optdsl_rows_F32(" in c and "optdsl_cols_F32(" in c
    assert "p.stats[0]" in c and "p.stats[1]" in c
    assert "p.stats" not in numpy and "optdsl_rows" not in numpy


def _count_stage_statistics(monkeypatch) -> list[str]:
    """A list that records every row or column norm or sum torch computes from now on (a
    library stage's fallback for a statistic the sweep did not fuse)."""
    calls: list[str] = []
    norm, total = torch.linalg.vector_norm, torch.sum

    def counted_norm(x, *args, **kwargs):
        if kwargs.get("dim") in (-1, -2):
            calls.append("norm")
        return norm(x, *args, **kwargs)

    def counted_sum(x, *args, **kwargs):
        if kwargs.get("dim") in (-1, -2):
            calls.append("sum")
        return total(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "vector_norm", counted_norm)
    monkeypatch.setattr(torch, "sum", counted_sum)
    return calls


@needs_cc
def test_the_stage_computes_no_fused_statistic(monkeypatch):
    """Fails if the fusion is removed: no row or column norm is computed by torch on C for
    matrices (the 1-D parameter's variant has none), while NumPy's stage computes them."""
    calls = _count_stage_statistics(monkeypatch)
    shapes = [(16, 40), (3, 5, 1100), (7,)]
    _run("c", torch.float32, shapes, steps=2)
    assert calls == []
    _run("numpy", torch.float32, shapes, steps=2)
    assert calls


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_matches_numpy_within_the_bound(dtype):
    rtol, atol = BOUND[dtype]
    want, got = _run("numpy", dtype), _run("c", dtype)
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, equal_nan=True)


@needs_cc
def test_statistics_do_not_depend_on_threads(monkeypatch):
    monkeypatch.setattr("optdsl.runtime.c_runner.PARALLEL_MIN", 1 << 10)
    saved = torch.get_num_threads()
    shapes = [(300, 1030), (4, 50, 333), (1, 5000), (2048, 3)]
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_run("c", torch.float32, shapes, steps=3))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0))
               for a, b in zip(*results))


STATS_PROGRAM = """
optimizer Stats
hyper lr = 0.01
state r = 0 per row
state c = 0 per col
x = g * 0.5 + w * 0.1
r = 0.9 * r + 0.1 * (rowmean(x) + rowsum(g) * 0.01)
c = 0.9 * c + 0.1 * (colmean(x) + colsum(abs(g)) * 0.01)
w = w - lr * (x * 0.01 + r @ c)
"""


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sums_and_means_of_element_values_and_inputs(dtype):
    """rowsum and colsum of an input, rowmean and colmean of an element value: all four
    accumulated by C's sweep, within the bound of NumPy's stage."""
    prog = optdsl.compile(STATS_PROGRAM)
    assert all(f"p.stats[{k}]" in prog.generic.source("c") for k in range(4))
    shapes = [(37, 3), (1, 2000), (3, 5, 1100), (70, 1500), (2500, 3), (0, 4)]
    runs = []
    for backend in ("numpy", "c"):
        gen = torch.Generator().manual_seed(2)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype))
                  for s in shapes]
        opt = prog.optimizer(params, backend=backend)
        for _ in range(30):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
            opt.step()
        runs.append([p.detach().clone() for p in params]
                    + [opt.state[p][k].clone() for p in params for k in ("r", "c")])
    rtol, atol = BOUND[dtype]
    for a, b in zip(*runs):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, equal_nan=True)


@needs_cc
def test_where_the_runtime_fuses_nothing_the_stage_gives_numpys_bits(monkeypatch):
    """The rule's other side (a sharded step: optdsl.runtime.c_runner): with no statistic
    handed to the sweeps, the stage computes them with NumPy's torch code, bit for bit."""
    from optdsl.runtime import c_runner

    fuse, stats_of = c_runner.CTables.fuse_stats, c_runner.CTables.stats_of
    monkeypatch.setattr(c_runner.CTables, "fuse_stats", lambda self, on: fuse(self, False))
    monkeypatch.setattr(c_runner.CTables, "stats_of",
                        lambda self, i, on: stats_of(self, i, False))
    shapes = [(16, 40), (3, 5, 1100), (7,)]
    want, got = _run("numpy", torch.float32, shapes, 5), _run("c", torch.float32, shapes, 5)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


# -- the Triton back end (under TRITON_INTERPRET=1: optdsl.runtime.device_stats) ----------------

TRITON_SHAPES = [(37, 3), (16, 40), (7,), (0, 4), (1, 300), (3, 5, 110), (2, 3, 4), (70, 150)]


@pytest.fixture
def interpret(triton_interpreter):
    pytest.importorskip("triton")


def _triton_run(dtype: torch.dtype, shapes, steps: int, backend: str = "triton",
                block: int | None = None, prog=None) -> list:
    """Adafactor (or ``prog``) for ``steps`` steps on ``shapes``, plus a transposed (not
    contiguous) matrix with a transposed gradient and a matrix that never has a gradient."""
    from optdsl.runtime.triton_runner import TritonRunner

    gen = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
              for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(40, 9, generator=gen,
                                                 dtype=torch.float64).to(dtype).t()))
    idle = torch.nn.Parameter(torch.randn(5, 6, dtype=dtype))
    prog = prog or library.program("Adafactor")
    opt = prog.optimizer(params + [idle], backend=backend, lr=0.01)
    if block is not None:
        opt._runner_of = ("triton", TritonRunner(prog, block=block))
    for k in range(steps):
        grads = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = torch.randn(p.shape[::-1], generator=grads, dtype=torch.float64).to(
                dtype).t() if not p.is_contiguous() else torch.randn(
                p.shape, generator=grads, dtype=torch.float64).to(dtype)
        opt.step()
    assert idle.grad is None and not opt.state[idle]
    return [p.detach().clone() for p in params] + [
        v.clone() for p in params for v in opt.state[p].values() if torch.is_tensor(v)]


def test_adafactor_statistics_are_fused_on_triton(interpret):
    source = library.program("Adafactor").generic.source("triton")
    assert "p.stats[0]" in source and "p.stats[1]" in source
    assert "def stats_finish(" in source and "STATS_FINISH = stats_finish" in source
    assert "tl.atomic" not in source  # (the partials are added in a fixed order)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_matches_numpy_within_the_bound(interpret, dtype):
    rtol, atol = BOUND[dtype]
    want = _triton_run(dtype, TRITON_SHAPES, 10, backend="numpy")
    got = _triton_run(dtype, TRITON_SHAPES, 10)
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, equal_nan=True)


def test_the_triton_stage_computes_no_fused_statistic(interpret, monkeypatch):
    """Fails if the Triton fusion is removed: the stage's fallback (torch's row and column
    norms) is never called for the matrices, while with fusion turned off it is."""
    from optdsl.runtime import device_stats

    calls = _count_stage_statistics(monkeypatch)
    shapes = [(16, 40), (3, 5, 110), (7,)]
    fused = _triton_run(torch.float32, shapes, 2)
    assert calls == []
    plain = device_stats.BucketStats.__init__

    def unfused(self, stats, params, block, device, fuse):  # as in a sharded step
        plain(self, stats, params, block, device, False)

    monkeypatch.setattr(device_stats.BucketStats, "__init__", unfused)
    unfused_run = _triton_run(torch.float32, shapes, 2)
    assert calls
    for a, b in zip(fused, unfused_run):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_triton_statistics_do_not_depend_on_the_block_size(interpret):
    """The stats sweep's tiles are the bucket's, not the runner's blocks: the same bits with
    64- and 256-element blocks, float32 and float64."""
    shapes = [(37, 3), (3, 5, 110), (70, 150), (300, 70)]
    for dtype in (torch.float32, torch.float64):
        a = _triton_run(dtype, shapes, 3, block=64)
        b = _triton_run(dtype, shapes, 3, block=256)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_sums_and_means_of_element_values_and_inputs(interpret, dtype):
    prog = optdsl.compile(STATS_PROGRAM)
    assert all(f"p.stats[{k}]" in prog.generic.source("triton") for k in range(4))
    shapes = [(37, 3), (1, 200), (3, 5, 110), (70, 150), (0, 4)]
    runs = [_triton_run(dtype, shapes, 10, backend=b, prog=prog) for b in ("numpy", "triton")]
    rtol, atol = BOUND[dtype]
    for a, b in zip(*runs):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, equal_nan=True)


def test_triton_bfloat16_parameters_within_an_ulp(interpret):
    """A bfloat16 parameter's statistics are of its float32 compute values (fused too): the
    parameter and states within one bfloat16 ulp of NumPy's after 5 steps."""
    shapes = [(16, 40), (3, 5, 110), (7,)]
    want = _triton_run(torch.bfloat16, shapes, 5, backend="numpy")
    got = _triton_run(torch.bfloat16, shapes, 5)
    eps = torch.finfo(torch.bfloat16).eps
    for a, b in zip(want, got):
        torch.testing.assert_close(b.float(), a.float(), rtol=eps, atol=1e-3, equal_nan=True)
