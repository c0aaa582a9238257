"""The Triton back end on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1),
compared with the NumPy back end: every bundled optimizer and every example program, with
sizes that are not multiples of the block, a parameter that misses its gradient, two param
groups, zero-size and non-contiguous parameters, float16/bfloat16/float64, reductions, the
element-wise functions on special values; plus golden files of generated source, the disk
cache, the construction-time error without a GPU, and (no GPU needed) that the kernels
compile to CUDA machine code.

TRITON_INTERPRET is set per test (monkeypatch), never for the whole process: Triton reads it
when a kernel is decorated, and optdsl imports the generated module once per mode.
Regenerate the golden files with ``UPDATE_GOLDEN=1 pytest tests/test_triton_interp.py``.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import optdsl
from optdsl import library
from optdsl.runtime import cache
from optdsl.runtime.triton_runner import TritonRunner

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = sorted((ROOT / "examples").glob("*.opt"))
SIZES = (1, 7, 1000, 4099)  # the interpreter's block is 256: 4099 spans 17 blocks

REDUCTIONS = """
optimizer Reductions
hyper lr = 0.1, max_norm = 1.0
state m = 0
state k = 1
gn = global_norm(g)
c = min(1, max_norm / (gn + 1e-6))
g = g * c
m = 0.9 * m + g
s = sum(m) / (mean(abs(w)) + 1) + global_sum(g) * 1e-3
n = norm(m) + maxabs(g) + dot(m, g) * 0.01
k = k * 0.5 + n
w = w - lr * m / (n + 1) - 0.001 * s
"""


# every test runs Triton kernels in the interpreter (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("triton_interpreter")


def required(prog) -> dict:
    return {name: 0.1 for name, spec in prog.hypers.items() if spec.required}


def flipped(prog) -> dict:
    """Hypers of a second param group: every scalar hyper whose default is 0 set to 0.5
    (turns on maximize, amsgrad, nesterov, centered, momentum, weight decay...)."""
    out = {}
    for name, spec in prog.hypers.items():
        in_range = spec.interval is None or spec.interval.contains(0.5)
        if spec.parts is None and spec.default == 0 and in_range:
            out[name] = 0.5
    return out


def run_both(prog, sizes=SIZES, dtype=torch.float32, steps=3, groups=True, make=None,
             reference_dtype=None, seed=0):
    """Run the same steps on the NumPy and Triton back ends; returns both parameter lists."""
    gen = torch.Generator().manual_seed(seed)
    base = [torch.randn(n, generator=gen, dtype=torch.float64).to(dtype) for n in sizes]
    out = {}
    for backend in ("numpy", "triton"):
        dt = reference_dtype if (backend == "numpy" and reference_dtype) else dtype
        ps = [torch.nn.Parameter((make(b) if make else b).to(dt, copy=True)) for b in base]
        half = len(ps) // 2 if groups else len(ps)
        param_groups = [{"params": ps[:half]}]
        if groups and ps[half:]:
            param_groups.append({"params": ps[half:], **flipped(prog)})
        opt = prog.optimizer(param_groups, backend=backend, **required(prog))
        gen_g = torch.Generator().manual_seed(seed + 1)
        for step in range(steps):
            gs = [torch.randn(p.shape, generator=gen_g, dtype=torch.float64).to(dtype)
                  for p in ps]
            for i, (p, g) in enumerate(zip(ps, gs)):
                skip = step == 1 and i == len(ps) - 2  # misses its gradient on one step
                grad = g.to(p.dtype)
                if prog.sparse.only:  # SparseAdam takes sparse gradients only
                    grad = grad.to_sparse()
                p.grad = None if skip else grad
            opt.step()
        out[backend] = (ps, opt)
    return out["numpy"], out["triton"]


def assert_match(ref, got, rtol=1e-5, atol=1e-6):
    (ps_ref, opt_ref), (ps_got, opt_got) = ref, got
    for p, q in zip(ps_ref, ps_got):
        torch.testing.assert_close(q.detach().to(p.dtype), p.detach(), rtol=rtol, atol=atol,
                                   equal_nan=True)
    for p, q in zip(ps_ref, ps_got):  # state too (the ones that exist)
        sref, sgot = opt_ref.state.get(p, {}), opt_got.state.get(q, {})
        assert sref.keys() == sgot.keys()
        for key in sref:
            a, b = sref[key], sgot[key]
            torch.testing.assert_close(b.to(a.dtype), a, rtol=rtol, atol=atol, equal_nan=True)


# -- every program ------------------------------------------------------------------------------
# Matrix work (library stages: Muon's Newton-Schulz, Adafactor's row and column statistics)
# runs on matrices: Muon takes 2-D parameters only; a block-sized one, a tall and a wide one.
MATRIX_SIZES = ((1, 7), (300, 3), (20, 33), (33, 20))


@pytest.mark.parametrize("name", library.STEPWISE)
def test_library_matches_numpy(name):
    prog = library.program(name)
    assert_match(*run_both(prog, sizes=MATRIX_SIZES if prog.library_work else SIZES))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_match_numpy(path):
    prog = optdsl.load(path)
    assert_match(*run_both(prog))


def test_reductions_match_numpy():
    prog = optdsl.compile(REDUCTIONS)
    assert len(prog.schedule.sweeps) == 3
    ref, got = run_both(prog, sizes=(1, 7, 0, 1000, 4099, 300), steps=4)
    assert_match(ref, got, rtol=1e-6)
    assert got[1].state[got[0][2]] != {}  # the zero-size parameter was stepped


def test_float64():
    for name in ("Adam", "LAMB", "NAdam"):
        ref, got = run_both(library.program(name), dtype=torch.float64)
        assert_match(ref, got, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["Adam", "SGD", "LAMB"])
def test_half_precision(name, dtype):
    prog = library.program(name)
    # Same storage dtype on both back ends: both compute in float32 and round on store.
    ref, got = run_both(prog, dtype=dtype, sizes=(7, 1000, 300))
    eps = torch.finfo(dtype).eps
    assert_match(ref, got, rtol=2 * eps, atol=1e-3)
    # Against a float32 run: storage rounding only.
    ref32, got = run_both(prog, dtype=dtype, sizes=(7, 1000, 300), reference_dtype=torch.float32)
    assert_match(ref32, got, rtol=8 * eps, atol=8 * eps)


def test_non_contiguous_parameters():
    prog = library.program("Adam")

    def make(b):  # a transposed 2-D parameter: its grad and state are not contiguous either
        return b.reshape(-1, 1).expand(-1, 3).t().contiguous().t()

    ref, got = run_both(prog, sizes=(7, 300), make=make)
    assert not got[0][0].is_contiguous()
    assert_match(ref, got)


def test_grad_of_another_layout():
    prog = library.program("SGD")
    p = torch.nn.Parameter(torch.randn(4, 6))
    q = torch.nn.Parameter(p.detach().clone())
    g = torch.randn(6, 4).t()  # a non-contiguous gradient
    p.grad, q.grad = g, g.contiguous()
    prog.optimizer([p], backend="triton", lr=0.1, momentum=0.9).step()
    prog.optimizer([q], backend="numpy", lr=0.1, momentum=0.9).step()
    torch.testing.assert_close(p.detach(), q.detach())


# -- element-wise functions and constants on special values ----------------------------------
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0, 1e-300, 1e-5, -1e-5, 7.3,
           -7.3, 1e300, math.inf, -math.inf, math.nan, 1 / 3]
FUNCTIONS = {
    "atan2(g, w)": lambda w, g: np.arctan2(g, w),
    "w^g": np.power,
    "tanh(g)": lambda w, g: np.tanh(g),
    "sign(g)": lambda w, g: np.sign(g),
    "exp(g)": lambda w, g: np.exp(g),
    "log(g)": lambda w, g: np.log(g),
    "rsqrt(g) + sqrt(w)": lambda w, g: 1 / np.sqrt(g) + np.sqrt(w),
    "w / g": np.divide,
    "min(w, g) - max(g, w)": lambda w, g: np.minimum(w, g) - np.maximum(g, w),
    "clamp(w, g, 1)": lambda w, g: np.minimum(np.maximum(w, g), 1),
    "floor(w) + ceil(g) + abs(g)": lambda w, g: np.floor(w) + np.ceil(g) + np.abs(g),
    "where(g > w, -0.0, inf) + where(g <= 0, 1e-310, -inf)":
        lambda w, g: np.where(g > w, -0.0, np.inf) + np.where(g <= 0, 1e-310, -np.inf),
    "where(g == g, w * -0.0, 1e-40)": lambda w, g: np.where(~np.isnan(g), w * -0.0, 1e-40),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("expr", list(FUNCTIONS))
def test_functions_on_special_values(expr, dtype):
    w0, g0 = zip(*itertools.product(SPECIAL, SPECIAL))
    w = torch.tensor(w0, dtype=dtype)
    g = torch.tensor(g0, dtype=dtype)
    with np.errstate(all="ignore"):
        expect = np.asarray(FUNCTIONS[expr](w.numpy().copy(), g.numpy().copy()),
                            dtype=w.numpy().dtype)
    p = torch.nn.Parameter(w.clone())
    p.grad = g.clone()
    optdsl.compile(f"w = {expr}").optimizer([p], backend="triton").step()
    got = p.detach().numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expect))
    finite = ~np.isnan(expect)
    rtol = 1e-12 if dtype == torch.float64 else 4e-7
    np.testing.assert_allclose(got[finite], expect[finite], rtol=rtol, atol=0)
    np.testing.assert_array_equal(np.signbit(got[finite]), np.signbit(expect[finite]))


def test_scalar_states_and_scalar_outputs():
    # w's new value is a per-parameter scalar (stored broadcast); c is a scalar state;
    # m is a tensor state; k is a tensor state (one assignment is a tensor, LANGUAGE.md)
    # whose final value is a constant, stored broadcast.
    prog = optdsl.compile("hyper lr = 0.1; state m = 0; state c = 0; state k = 0; m = m + g; "
                          "c = c + t; k = m; k = 2; w = c * lr - 0 * m")
    assert prog.tensor_states == {"m", "k"}
    ref, got = run_both(prog)
    assert_match(ref, got)
    ps, opt = got
    assert torch.all(ps[0] == opt.state[ps[0]]["c"] * 0.1)


# -- launches, caching, errors ------------------------------------------------------------------
class _Counting:
    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        self.log.append(grid)
        return self.kernel[grid]


def test_one_launch_per_pass_and_bucket(monkeypatch):
    import dataclasses

    prog = optdsl.compile(REDUCTIONS)
    runner = TritonRunner(prog, block=64)
    variant = prog.generic
    module = variant.generated("triton")
    log: list = []
    counted = dataclasses.replace(module, sweeps=tuple(
        dataclasses.replace(s, kernel=_Counting(s.kernel, log) if s.kernel else None)
        for s in module.sweeps))
    monkeypatch.setitem(variant._modules, ("triton", "interpret"), counted)
    ps = [torch.nn.Parameter(torch.randn(n, dtype=dt)) for n, dt in
          ((100, torch.float32), (64, torch.float32), (3, torch.float64), (0, torch.float32))]
    opt = prog.optimizer(ps, backend="triton")
    opt._runner_of = ("triton", runner)  # this optimizer's runner, with 64-element blocks
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    # each sweep x 2 buckets (float32, float64); grids of 2 + 1 and 1 blocks of 64.
    assert len(log) == 2 * sum(s.kernel is not None for s in module.sweeps) == 6
    assert sorted(set(log)) == [(1,), (3,)]
    plan_count = len(runner._plans)
    opt.step()
    assert len(runner._plans) == plan_count  # same tensors: the cached tables are reused


def test_cpu_without_interpreter_is_an_error_at_construction(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        library.SGD([p], lr=0.1, backend="triton")


def test_state_of_the_wrong_size_is_an_error():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = library.Adam([p], backend="triton")
    p.grad = torch.ones(3)
    opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(4)
    with pytest.raises(RuntimeError, match="exp_avg"):
        opt.step()


# -- the disk cache -----------------------------------------------------------------------------
SOURCE = "VALUE = 42\n"


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "c"))
    cache.clear_memory()
    module = cache.load_module(SOURCE, "demo")
    assert module.VALUE == 42
    (entry,) = (tmp_path / "c").glob("demo_*.py")
    assert entry.read_text() == SOURCE
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o700
    assert cache.load_module(SOURCE, "demo") is module
    assert cache.digest(SOURCE, {"block": 1}) != cache.digest(SOURCE, {"block": 2})


def test_cache_rebuilds_a_corrupt_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path))
    path = cache.entry_path(SOURCE, "demo")
    path.write_text("VALUE = (\n")  # truncated: not the source, not even Python
    cache.clear_memory()
    with pytest.warns(RuntimeWarning, match="corrupt"):
        module = cache.load_module(SOURCE, "demo")
    assert module.VALUE == 42
    assert path.read_text() == SOURCE
    path.write_bytes(b"\xff\xfe garbage")
    cache.clear_memory()
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert cache.load_module(SOURCE, "demo").VALUE == 42


def test_cache_falls_back_when_unwritable(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(cache, "_FALLBACK", None)
    cache.clear_memory()
    with pytest.warns(RuntimeWarning, match="not writable"):
        module = cache.load_module(SOURCE, "demo")
    assert module.VALUE == 42
    assert Path(module.__file__).parent == cache._FALLBACK
    assert cache._FALLBACK.stat().st_mode & 0o777 == 0o700
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process
        cache.cache_dir()


def test_cache_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("OPTDSL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.default_dir() == tmp_path / "optdsl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.default_dir() == Path.home() / ".cache" / "optdsl"


# -- generated source ---------------------------------------------------------------------------
GOLDEN_PROGRAMS = {
    "adam_triton.py": lambda: optdsl.load(ROOT / "examples" / "adam.opt"),
    "clip_global_norm_triton.py": lambda: optdsl.load(ROOT / "examples" / "clip_global_norm.opt"),
    "rprop_triton.py": lambda: library.program("Rprop"),
}


@pytest.mark.parametrize("file_name", list(GOLDEN_PROGRAMS))
def test_golden_source(file_name):
    source = GOLDEN_PROGRAMS[file_name]().source("triton")
    path = GOLDEN / file_name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(source)
    assert path.exists(), f"missing golden file; run UPDATE_GOLDEN=1 pytest {__file__}"
    assert source == path.read_text(), (
        f"generated Triton source of {file_name} changed; if intended, regenerate with "
        f"UPDATE_GOLDEN=1 pytest tests/test_triton_interp.py")


def test_source_is_deterministic_and_cites_lines():
    a = optdsl.load(ROOT / "examples" / "adam.opt").source("triton")
    b = optdsl.load(ROOT / "examples" / "adam.opt").source("triton")
    assert a == b
    values = [line.strip() for line in a.splitlines() if re.match(r"\s+v\d+ = ", line)]
    compute = [line for line in values
               if "tl.load" not in line and "_loaded(" not in line and "tl.full" not in line]
    assert len(compute) > 10 and all("# line " in line for line in compute)


def test_only_prefixed_names_reach_the_source():
    prog = optdsl.compile("hyper import_ = 0.5; state lambda_ = 0; lambda_ = import_ * g; "
                          "w = w - lambda_", name="Odd")
    source = prog.source("triton")
    compile(source, "<generated>", "exec")
    assert "h_import_" in source and "s_lambda_" in source
    assert "def step(ctx, params)" in source


# -- the kernels compile for a GPU (no GPU needed: Triton compiles ahead for a target) --------
def _compile_all(prog, ct, dt, arch=90, copy=None, sr=False, columns=None, skip=False):
    """Every kernel of the program's Triton module (sweeps, the reductions' combine and
    finish kernels, finish_step, and with fused row and column statistics stats_finish: the
    stats sweep over tiles of 16 x 64 and of 512 x 2), compiled ahead for ``sm_<arch>``."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from optdsl.codegen.triton import dtype_param
    from optdsl.codegen.triton_prologue import scalar_dtype_param

    source = prog.source("triton")
    module = cache.load_module(source, "compiled", {"kind": "triton-step"}, "")
    constexprs = {dtype_param(c): (columns or {}).get(c, dt) for c in module.TENSORS}
    constexprs.update({scalar_dtype_param(n): tl.float32
                       for n in ("step",) + module.SCALAR_STATES})
    constexprs.update(DT_wcopy=copy or dt, CT=ct, BLOCK=1024, ALIGNED=True,
                      COPY=copy is not None, SR=sr, SKIP=skip)
    tables = {"ptrs": "*i64", "sizes": "*i64", "blocks": "*i64", "hyp": "*fp64",
              "fin": "*fp64", "tot": "*fp64", "red": "*fp64", "gsc": "*fp32", "finf": "*fp32"}
    options = {"enable_fp_fusion": False, "num_warps": 4}
    target = GPUTarget("cuda", arch, 32)

    def build(kernel, signature, values):
        signature = dict(signature, **{k: "constexpr" for k in values})
        return triton.compile(ASTSource(kernel, signature, values), target=target,
                              options=options)

    compiled = []
    tiled = {k for k, _, _ in getattr(module, "STATS", ())}
    for k, (kernel, _, _) in enumerate(module.SWEEPS):
        if kernel is not None and k in tiled:
            for tr, tc in ((16, 64), (512, 2)):
                compiled.append(build(kernel, dict(tables, seed="i64", shp="*i64", sp="*i64"),
                                      dict(constexprs, TR=tr, TC=tc)))
        elif kernel is not None:
            compiled.append(build(kernel, dict(tables, seed="i64"), constexprs))
    if tiled:
        compiled.append(build(module.STATS_FINISH, {"table": "*i64"},
                              {"OUT": tl.float64 if ct == tl.float64 else tl.float32,
                               "CHUNK": 1024}))
    compiled.append(build(module.FINISH_STEP, {k: tables[k] for k in
                                               ("ptrs", "hyp", "fin", "tot", "gsc", "finf")},
                          constexprs))
    for combine, finish in module.REDUCE:
        if combine is not None:
            compiled.append(build(combine, {"sizes": "*i64", "firsts": "*i64", "cnt": "*fp64",
                                            "red": "*fp64", "raw": "*fp64", "fin": "*fp64"},
                                  {"BLOCK": 1024, "CHUNK": 256, "FINISH": True}))
            compiled.append(build(finish, {"raw": "*fp64", "fin": "*fp64", "tot": "*fp64",
                                           "cnt": "*fp64", "rows": "i64"},
                                  {"CHUNK": 256, "TENSORS": True}))
    return compiled


def test_library_helpers_do_not_shadow_kernel_helpers():
    """A Triton module holds the library stages' torch helpers beside its kernels' jitted
    ones: no name is both (a kernel would call the torch one: Muon's and Adafactor's `_pow`
    did, which the interpreter ran and the compiler refused)."""
    from optdsl.codegen import library as library_code
    from optdsl.codegen.triton_helpers import HELPERS

    torch_side = set(re.findall(r"^def (_\w+)", library_code.HELPERS, re.MULTILINE))
    assert torch_side and not torch_side & set(HELPERS)
    for name in ("Muon", "Adafactor"):
        module = cache.load_module(library.program(name).source("triton"), name, {}, "")
        for helper in HELPERS:
            if hasattr(module, helper):
                jitted = type(getattr(module, helper)).__name__
                assert jitted in ("JITFunction", "InterpretedFunction"), helper


def test_kernels_compile_for_cuda(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    try:
        import triton.language as tl
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:
        pytest.skip("this Triton cannot compile ahead for a target")
    programs = [library.program(n) for n in library.STEPWISE]
    programs += [optdsl.load(p) for p in EXAMPLES]
    programs.append(optdsl.compile(REDUCTIONS))
    programs.append(optdsl.compile("w = " + " + ".join(FUNCTIONS), name="Functions"))
    try:
        _compile_all(programs[0], tl.float32, tl.float32)
    except Exception as exc:
        if "ptxas" in str(exc) or "backend" in str(exc).lower():
            pytest.skip(f"no CUDA toolchain: {exc}")
        raise
    for prog in programs:
        compiled = _compile_all(prog, tl.float32, tl.float32)
        ptx = "".join(c.asm["ptx"] for c in compiled)
        assert "div.full" not in ptx and "sqrt.approx" not in ptx  # IEEE-rounded / and sqrt
    for dt, ct in ((tl.bfloat16, tl.float32), (tl.float16, tl.float32), (tl.float64, tl.float64)):
        for prog in (library.program("Adam"), programs[-1], programs[-2]):
            assert _compile_all(prog, ct, dt)
        # Adafactor's stats sweep over tiles and stats_finish: float64 sums, no atomics
        adafactor = _compile_all(library.program("Adafactor"), ct, dt)
        assert len(adafactor) == 7 and "atom." not in "".join(c.asm["ptx"] for c in adafactor)
    # mixed precision: bf16 state with stochastic rounding, an fp32 master weight's bf16 copy
    for copy, sr in ((None, True), (tl.bfloat16, False), (tl.bfloat16, True)):
        adam, _ = _compile_all(library.program("Adam"), tl.float32, tl.bfloat16, copy=copy,
                               sr=sr)
        assert "st.global" in adam.asm["ptx"]
    # as a bf16 model with master weights runs it: fp32 master and states, bf16 grads and copy
    adam, _ = _compile_all(library.program("Adam"), tl.float32, tl.float32, copy=tl.bfloat16,
                           sr=True, columns={"g": tl.bfloat16})
    ptx = adam.asm["ptx"]
    # the prologue's 9 float64 scalars are rounded once per program (at most at both call
    # sites of the block function), never per element
    assert "ld.global.v4" in ptx and ptx.count("cvt.rn.f32.f64") <= 2 * 9
    adam, finish_step = _compile_all(library.program("Adam"), tl.float32, tl.float32,
                                     skip=True)
    assert "ld.global.v4" in adam.asm["ptx"]  # full blocks load 16 bytes at a time
    assert "st.global" in finish_step.asm["ptx"]  # the step count, on the device
