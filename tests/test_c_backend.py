"""The C back end (optdsl.codegen.c, optdsl.runtime.c_*) against the NumPy back end.

- the catalog: every bundled optimizer, in float32, float64, float16, bfloat16 with fp32
  master weights and stochastic rounding, bfloat16 states with stochastic rounding, and
  non-contiguous parameters, over several param groups and a zero-size parameter: the C
  step gives the NumPy step's bits, except float64 reductions (summed in another order: a
  few ulps, the documented bound) and the row and column statistics C's sweeps accumulate
  (Adafactor's: summed in float64 on C, in the compute dtype by torch on NumPy; float32
  within 1e-5 relative + 1e-6, a few ulps of the values; a 16-bit tensor within one of its
  ulps; tests/test_row_col_fusion.py);
- generated programs (tests/strategies.py): bit for bit on programs of IEEE-exact
  operations, within TRANSCENDENTAL_ULPS-sized relative error otherwise;
- a step is one foreign call; reductions do not depend on the thread count; the step runs on
  torch's OpenMP runtime (one libgomp in the process);
- the distributed combiner's path (each sweep called back into the runtime) gives the
  direct path's bits;
- the generated source: deterministic, citing DSL lines, containing no user text;
- choice and fallback: with the compiler hidden (CC at a missing file, PATH without gcc or
  clang), backend="auto" falls back to NumPy with one warning that says why and
  backend="c" fails at construction, naming the problem.

Tests that build C skip when no compiler works here (CI without one still runs the rest).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import strategies as S
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optdsl
from optdsl import library
from optdsl.codegen.c import TRANSCENDENTAL_ULPS
from optdsl.runtime import c_build, c_runner

ROOT = Path(__file__).resolve().parent.parent
needs_cc = pytest.mark.skipif(c_build.unavailable() is not None,
                              reason=f"no C compiler: {c_build.unavailable()}")

CASES = {
    "float32": (torch.float32, {}),
    "float64": (torch.float64, {}),
    "float16": (torch.float16, {}),
    "bf16-master-sr": (torch.bfloat16, {"master_weights": True, "stochastic_rounding": True}),
    "bf16-states-sr": (torch.bfloat16, {"state_dtype": torch.bfloat16,
                                        "stochastic_rounding": True}),
    "noncontiguous": (torch.float32, {}),
}
REDUCING = {"LAMB", "LARS", "SGDClip", "AdamWClip", "SGDClipPerTensor", "Adafactor"}
FUSED_STATS = {"Adafactor"}  # row and column statistics accumulated by C's sweeps
# (rtol, atol) of a program with FUSED_STATS, by the compared tensor's dtype
FUSED_BOUND = {torch.float64: (1e-12, 1e-15), torch.float32: (1e-5, 1e-6),
               torch.float16: (2.0 ** -10, 1e-7), torch.bfloat16: (2.0 ** -7, 1e-7)}


SHAPES = [(37, 3), (5,), (3000,), (0,), (1,)]
# Muon takes matrices only; Adafactor factors matrices and keeps vectors whole
MATRIX_SHAPES = {"Muon": [(37, 3), (16, 40), (5, 5), (0, 4), (64, 32)],
                 "Adafactor": [(37, 3), (16, 40), (7,), (0, 4), (64, 32)]}


def _params(dtype, noncontiguous: bool, shapes=SHAPES) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    if noncontiguous:
        params[0] = torch.randn(shapes[0][::-1], generator=gen,
                                dtype=torch.float64).to(dtype).t()
    return params


def _run(name: str, backend: str, case: str, steps: int = 3) -> list[torch.Tensor]:
    dtype, options = CASES[case]
    shapes = MATRIX_SHAPES.get(name, SHAPES)
    params = [p.requires_grad_() for p in _params(dtype, case == "noncontiguous", shapes)]
    torch.manual_seed(5)
    prog = library.program(name)
    required = {n: 0.1 for n, s in prog.hypers.items() if s.required}
    switched = {n: 0.5 for n, s in prog.hypers.items()
                if s.parts is None and s.default == 0
                and (s.interval is None or s.interval.contains(0.5))}
    opt = getattr(library, name)([{"params": params[:2]}, {"params": params[2:], **switched}],
                                 backend=backend, **required, **options)
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
        opt.step()
    out = [p.detach().clone() for p in params]
    for p in params:
        out += [v.clone() for v in opt.state[p].values() if torch.is_tensor(v)]
    return out


# SparseAdam takes sparse gradients only (test_sparse_gradients runs it on C); Muon and
# Adafactor (library stages between the sweeps) step matrices (MATRIX_SHAPES).
CATALOG = [name for name in library.STEPWISE if name != "SparseAdam"]


@needs_cc
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", CATALOG)
def test_catalog_matches_numpy(name, case):
    want, got = _run(name, "numpy", case), _run(name, "c", case)
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.dtype == b.dtype and a.shape == b.shape
        if name in FUSED_STATS:  # statistics summed in float64 on C
            rtol, atol = FUSED_BOUND[a.dtype]
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol, equal_nan=True)
        elif case == "float64" and name in REDUCING:  # float64 sums in another order
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-16, equal_nan=True)
        else:
            assert torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0)), \
                (a - b).abs().max()


# -- generated programs ----------------------------------------------------------------------

def _load_fuzz():
    spec = importlib.util.spec_from_file_location("optdsl_bench_fuzz_c", ROOT / "bench" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()
INEXACT = {"exp", "log", "pow", "tanh", "atan2", "sigmoid", "sum", "mean", "norm", "rms",
           "dot", "global_norm", "global_sum", "^"}


@needs_cc
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
          database=None)
@given(S.programs(max_depth=3), st.integers(0, 2**32 - 1))
def test_generated_programs_match_numpy(source, seed):
    try:
        prog = optdsl.compile(source)
    except optdsl.DslError:
        return
    rng = np.random.default_rng(seed)
    keywords = fuzz.keywords_for(prog, rng)
    ws = [fuzz._array(rng, n) for n in (7, 2100)]
    grads = [[fuzz._array(rng, n) for n in (7, 2100)] for _ in range(2)]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        want = fuzz.run_torch(prog, "numpy", keywords, ws, grads)
        have = fuzz.run_torch(prog, "c", keywords, ws, grads)
    exact = not any(word in source for word in INEXACT)
    fuzz.compare_histories("c_mismatch", prog, want, have, 0.0 if exact else 1e-9)


FUNCTIONS = {  # program -> (NumPy meaning, arguments drawn from)
    "w = exp(g)": (np.exp, (-80.0, 80.0)),
    "w = log(g)": (np.log, (1e-30, 1e30)),
    "w = g ^ w": (np.power, (0.01, 40.0)),
    "w = tanh(g)": (np.tanh, (-20.0, 20.0)),
    "w = atan2(g, w)": (np.arctan2, (-5.0, 5.0)),
}


@needs_cc
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("source", list(FUNCTIONS))
def test_transcendental_functions_within_the_bound(source, dtype):
    """libm (the C step) and NumPy's SIMD kernels (the NumPy step) agree within
    TRANSCENDENTAL_ULPS, special values exactly."""
    meaning, (lo, hi) = FUNCTIONS[source]
    rng = np.random.default_rng(0)
    span = np.geomspace(lo, hi, 20000) if lo > 0 else np.linspace(lo, hi, 20000)
    g = np.concatenate([span, rng.uniform(lo, hi, 20000)]).astype(dtype)
    w = rng.uniform(0.5, 3.0, g.size).astype(dtype) * rng.choice([-1, 1], g.size)
    if "^" in source:
        w = np.abs(w)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0], dtype)
    g = np.concatenate([g, special, special]).astype(dtype)
    w = np.concatenate([w, special[::-1], special]).astype(dtype)
    want = meaning(*((g, w) if "w" in source.split("=")[1] else (g,)))
    prog = optdsl.compile(source, name="Fn")
    p = torch.nn.Parameter(torch.from_numpy(w.copy()))
    p.grad = torch.from_numpy(g.copy())
    with np.errstate(all="ignore"):
        prog.optimizer([p], backend="c").step()
    got = p.detach().numpy()
    finite = np.isfinite(want) & np.isfinite(got)
    np.testing.assert_array_max_ulp(got[finite], want[finite], maxulp=TRANSCENDENTAL_ULPS)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[~finite & ~np.isnan(got)], want[~finite & ~np.isnan(want)])


# -- the shape of a step ----------------------------------------------------------------------

@needs_cc
def test_one_foreign_call_per_step_and_group():
    params = [torch.nn.Parameter(torch.randn(n)) for n in (3, 4000, 1)]
    opt = library.Adam([{"params": params[:2]}, {"params": params[2:], "amsgrad": True}],
                       lr=0.1, backend="c")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    runner = opt._runner_of[1]
    before = runner.calls
    for _ in range(3):
        opt.step()
    assert runner.calls - before == 3 * 2


@needs_cc
def test_reductions_do_not_depend_on_threads(monkeypatch):
    monkeypatch.setattr("optdsl.runtime.c_runner.PARALLEL_MIN", 1 << 12)
    results = []
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            gen = torch.Generator().manual_seed(3)
            params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (300_001, 77)]
            opt = library.LAMB(params, lr=0.01, backend="c")
            for _ in range(2):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen)
                opt.step()
            results.append([p.detach().clone() for p in params])
    finally:
        torch.set_num_threads(saved)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@needs_cc
def test_step_shares_torchs_openmp_runtime():
    """The shared object's OpenMP symbols resolve to the libgomp torch loaded."""
    bundled = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not bundled.is_file():
        pytest.skip("this torch does not bundle libgomp.so.1")
    prog = optdsl.compile("hyper lr = 0.5\nw = w - lr * g", name="Omp")
    lib = prog.generic.generated("c").module.lib
    ours = ctypes.cast(lib.omp_get_max_threads, ctypes.c_void_p).value
    theirs = ctypes.cast(ctypes.CDLL(str(bundled)).omp_get_max_threads, ctypes.c_void_p).value
    assert ours == theirs


# name: (shapes, hypers, foreign calls per step: one per variant, Adafactor's matrices and
# vectors being two)
RUNTIME_PATH = {"LAMB": ([(5000,), (9,), (0,)], {"weight_decay": 0.1}, 1),
                "Adafactor": ([(50, 100), (9,), (0, 3)], {"weight_decay": 0.1}, 2)}


@needs_cc
@pytest.mark.parametrize("name", list(RUNTIME_PATH))
def test_runtime_path_gives_the_direct_bits(monkeypatch, name):
    """The combiner's path: the C host step calls back for each sweep and the runtime
    finishes the reductions (optdsl.runtime.reduce), with the direct path's bits (Adafactor:
    with its library stage called back on both paths)."""
    from optdsl.runtime.c_runner import CRunner

    shapes, hypers, variants = RUNTIME_PATH[name]

    def run():
        gen = torch.Generator().manual_seed(4)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
        opt = getattr(library, name)(params, lr=0.01, backend="c", **hypers)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) * 10
            opt.step()
        states = [v.clone() for p in params for v in opt.state[p].values()]
        return [p.detach().clone() for p in params] + states, opt._runner_of[1].calls

    direct, direct_calls = run()
    monkeypatch.setattr(CRunner, "_direct", staticmethod(lambda lib, options: False))
    through, through_calls = run()
    assert len(direct) == len(through)
    # (the (0, 3) matrix's col_var is 0 / 0 = NaN, as torch's)
    assert all(torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0))
               for a, b in zip(direct, through))
    # a call per step and variant; on the runtime's path, a call per sweep besides
    assert direct_calls == 2 * variants and through_calls > 2 * 2 * variants


@needs_cc
def test_an_error_in_a_library_stage_is_raised_and_changes_nothing(monkeypatch):
    """A library stage runs in a callback from the C host step: its exception is raised by
    step() once the C code has returned, before the final sweep wrote the parameter or any
    state was committed."""
    from optdsl.runtime import library_stage

    p = torch.nn.Parameter(torch.randn(6, 4))
    opt = library.Muon([p], lr=0.02, backend="c")
    p.grad = torch.randn(6, 4)
    opt.step()
    before = p.detach().clone(), opt.state[p]["momentum_buffer"].clone()

    def broken(*args, **kwargs):
        raise ArithmeticError("a stage that fails")

    monkeypatch.setattr(library_stage, "run", broken)
    with pytest.raises(ArithmeticError, match="a stage that fails"):
        opt.step()
    assert torch.equal(p.detach(), before[0])
    assert torch.equal(opt.state[p]["momentum_buffer"], before[1])
    monkeypatch.undo()
    opt.step()  # and the optimizer steps on
    assert not torch.equal(p.detach(), before[0])


@needs_cc
def test_kept_tables_follow_replaced_and_moved_tensors():
    """The C runner's kept tables are rebuilt when a state tensor is replaced or the
    parameter's storage moves: the result equals the NumPy step's."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_numpy_runtime import _train_reload_move

    ours, opt = _train_reload_move("c")
    theirs, other = _train_reload_move("numpy")
    assert opt.backend == "c" and other.backend == "numpy"
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    for a, b in zip(ours, theirs):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[a][key], other.state[b][key]), key


def test_generated_source_is_deterministic_and_cites_lines():
    prog = optdsl.load(ROOT / "examples" / "adam.opt")
    text = prog.source("c")
    assert text == optdsl.load(ROOT / "examples" / "adam.opt").source("c")
    assert "/* line 17 */" in text and "int optdsl_step(optdsl_args *a)" in text
    assert "pow(h_beta1, t)" in text and "sqrtf(v27)" in text
    hostile = optdsl.compile('optimizer Evil "*/ system(rm); /*"\n'
                             "hyper lr = 0.1\nw = w - lr * g")
    assert "system" not in hostile.source("c")


# -- choice and fallback -----------------------------------------------------------------------

HIDDEN = textwrap.dedent("""
    import warnings
    import torch
    from optdsl.library import Adam
    p = torch.nn.Parameter(torch.ones(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = Adam([p], lr=0.1)
        b = Adam([p], lr=0.1)
    print(a.backend, b.backend, len([w for w in caught if "'c' back end" in str(w.message)]))
    print([str(w.message) for w in caught])
    p.grad = torch.ones(3)
    a.step()
    try:
        Adam([p], lr=0.1, backend="c")
    except ValueError as exc:
        print("refused:", exc)
""")


def test_without_a_compiler_auto_falls_back_and_c_is_refused(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CC",)}
    env.update(CC=str(tmp_path / "no-such-compiler"), PATH=str(bin_dir),
               PYTHONPATH=str(ROOT), OPTDSL_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", HIDDEN], check=False, capture_output=True,
                          text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, messages, refused = done.stdout.strip().splitlines()
    assert first == "numpy numpy 1", messages
    assert "no-such-compiler" in messages and "gcc" not in first
    assert refused.startswith("refused: backend='c' needs a working C compiler")
    assert "no-such-compiler" in refused and "backend='numpy'" in refused


@needs_cc
def test_cc_names_the_compiler(tmp_path, monkeypatch):
    """$CC comes first: a wrapper script that records its calls is the one used."""
    log = tmp_path / "calls"
    wrapper = tmp_path / "mycc"
    real = c_build.compiler().command[0]
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    c_build._find.cache_clear()
    try:
        assert c_build.compiler().command == (str(wrapper),)
        prog = optdsl.compile("hyper lr = 0.25\nw = w - lr * g", name="ViaCC")
        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        prog.optimizer([p], backend="c").step()
        assert torch.equal(p.detach(), torch.full((2,), 0.75))
        assert "-ffp-contract=off" in log.read_text()
    finally:
        c_build._find.cache_clear()


@needs_cc
def test_shared_object_exports_the_abi():
    prog = optdsl.compile("hyper lr = 0.5\nw = w - lr * g", name="Abi")
    lib = prog.generic.generated("c").module
    assert isinstance(lib.lib, ctypes.CDLL)
    assert lib.TENSORS == ("w", "g") and lib.HYPERS == ("lr",)


@needs_cc
def test_auto_takes_c_for_matrix_work_and_runs_numpys_library_code():
    """backend="auto" takes C for programs with matrix work on CPU tensors, with no warning
    (it measured faster than NumPy: bench/bench_matrix.py); the C source ends with the
    library stages' Python module, whose stage is the NumPy step's own code (Muon), or that
    code reading the statistics C's sweep accumulated (Adafactor)."""
    from optdsl.runtime.c_module import library_source

    p = torch.nn.Parameter(torch.randn(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert library.Muon([p]).backend == "c"
        assert library.Adafactor([p]).backend == "c"
    for name in ("Muon", "Adafactor"):
        prog = library.program(name).generic
        module = library_source(prog.source("c"))
        stage = module[module.index("def library0(params):"):module.index("\n\n\n# Per")]
        assert "torch.matmul(" in stage
        assert (stage in prog.source("numpy")) == (name == "Muon")
        assert library_source(library.program("Adam").generic.source("c")) == ""


def _steps_both_ways(monkeypatch, program, kwargs, step_dtype, steps=4):
    """The same run twice on the C back end: the steady steps counted in C
    (CRunner.run_counted), and with that path turned off (Python counts, then run)."""
    out, taken = [], []
    original = c_runner.CRunner.run_counted

    def spy(self, *args):
        taken.append(original(self, *args))
        return taken[-1]

    for counted in (True, False):
        with monkeypatch.context() as m:
            m.setattr(c_runner.CRunner, "run_counted",
                      spy if counted else lambda self, *a: False)
            g = torch.Generator().manual_seed(5)
            params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in
                      ((7, 3), (11,), (1,))]
            opt = getattr(library, program)(params, backend="c", **kwargs)
            for k in range(steps):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=g)
                opt.step()
                if k == 0:  # (a checkpoint's float64 count, or torch's float32)
                    for p in params:
                        opt.state[p]["step"] = opt.state[p]["step"].to(step_dtype)
            out.append((params, opt, opt._runner_of[1].calls))
    assert taken.count(True) >= 2  # (the counted run took the path from its third step)
    return out


@needs_cc
@pytest.mark.parametrize("step_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("program,kwargs", [("Adam", dict(lr=1e-2)),
                                            ("SGD", dict(lr=0.1, momentum=0.9)),
                                            ("AdamW", dict(lr=1e-2, amsgrad=True))])
def test_steady_steps_counted_in_c_give_the_same_bits(monkeypatch, program, kwargs,
                                                       step_dtype):
    """A steady step counts its updates in the C call (state["step"] += 1, in the count's
    dtype) and gives the bits of the step whose counts Python wrote."""
    (pa, oa, calls_a), (pb, ob, calls_b) = _steps_both_ways(monkeypatch, program, kwargs,
                                                            step_dtype)
    assert calls_a == calls_b == 4
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)
        for key, value in oa.state[p].items():
            other = ob.state[q][key]
            assert value.dtype == other.dtype and torch.equal(value, other), key
        assert oa.state[p]["step"].dtype == step_dtype
        assert oa.state[p]["step"].item() == 4.0


@needs_cc
def test_a_step_count_written_between_steps_is_counted_from(monkeypatch):
    """The C call reads each count where it lies: one written in place between steady steps
    (a resumed schedule) is counted on from, as the Python count would."""
    counted = []
    original = c_runner.CRunner.run_counted

    def spy(self, *args):
        counted.append(original(self, *args))
        return counted[-1]

    monkeypatch.setattr(c_runner.CRunner, "run_counted", spy)
    p = torch.nn.Parameter(torch.ones(4))
    opt = library.Adam([p], lr=0.1, backend="c")
    for _ in range(3):
        p.grad = torch.ones(4)
        opt.step()
    opt.state[p]["step"].fill_(100.0)
    p.grad = torch.ones(4)
    opt.step()
    assert counted[-2:] == [True, True]
    assert opt.state[p]["step"].item() == 101.0


@needs_cc
def test_host_prefetch_is_made_after_a_steady_step_and_dropped_with_the_records():
    """A steady C step leaves its group's prefetch table (optdsl.optim.host_prefetch): the
    addresses of each parameter's objects; a new record or a loaded checkpoint drops it."""
    params = [torch.nn.Parameter(torch.randn(4)) for _ in range(3)]
    opt = library.Adam(params, lr=0.1, backend="c")
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(4)
        opt.step()
    table = opt._host_prefetch[0]
    assert id(params[0]) in table.addresses.tolist()
    assert id(opt.state[params[2]]["exp_avg"]) in table.addresses.tolist()
    opt.state[params[1]]["exp_avg"] = torch.zeros(4)  # (a new record at the next step)
    for p in params:
        p.grad = torch.randn(4)
    opt.step()
    assert "_host_prefetch" not in opt.__dict__
    opt.step()
    assert 0 in opt._host_prefetch
    opt.load_state_dict(opt.state_dict())
    assert "_host_prefetch" not in opt.__dict__


@needs_cc
def test_prefetching_any_address_is_harmless():
    """optdsl_prefetch only hints: addresses that are no object's (null, odd, unmapped,
    the top of the address space) neither fault nor change anything."""
    params = [torch.nn.Parameter(torch.ones(2))]
    opt = library.SGD(params, lr=0.5, backend="c")
    params[0].grad = torch.ones(2)
    opt.step()
    variant = next(iter(opt.program._variants.values()))  # (any: each has the prelude)
    prefetch = opt._runner_of[1].prefetcher(variant)
    addresses = np.array([0, 1, 7, 4096, -1, 2**47 - 64, -(2**63), 2**63 - 1],
                         dtype=np.int64)
    prefetch(addresses.ctypes.data, len(addresses), 8)
    assert params[0].detach().tolist() == [0.5, 0.5]
