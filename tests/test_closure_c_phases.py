"""Closure-driven steps on the C back end (optdsl.runtime.proc_c): each phase one foreign call
over a pointer table kept per phase, rewritten from the vectors' pointers, gives the C
runner's results bit for bit (every dtype the C code stores, with and without the line
search, every closure-driven program), builds no table in a steady-state step, does not
depend on the thread count, survives deepcopy and pickling, and falls back to the C runner
for parameters it cannot read in place; backend="auto" picks it for large CPU groups."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from optdsl import library
from optdsl.library import LBFGS
from optdsl.optim import closure_optimizer
from optdsl.runtime import c_runner, proc_c


@pytest.fixture(autouse=True)
def _needs_c(monkeypatch, tmp_path):
    from optdsl.runtime import c_build

    if c_build.unavailable():
        pytest.skip("no C compiler")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))


def problem(dtype=torch.float64, sizes=(7, 12, 5), seed=0, create_graph=False):
    """Parameters and the closure of 0.5 sum a w^2 + b.w + a coupling term (in float64)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64).to(dtype))
              for n in sizes]
    coeffs = [(torch.rand(n, generator=gen, dtype=torch.float64) + 0.5,
               torch.randn(n, generator=gen, dtype=torch.float64)) for n in sizes]

    def closure():
        for p in params:
            p.grad = None
        with torch.enable_grad():
            ws = [p.to(torch.float64) for p in params]
            loss = sum((0.5 * a * w * w + b * w).sum() for w, (a, b) in zip(ws, coeffs))
            loss = loss + 0.1 * (ws[0].sum() * ws[-1].sum()) ** 2
            loss.backward(create_graph=create_graph)
        return loss
    return params, closure


def run_lbfgs(direct: bool, monkeypatch, dtype=torch.float64, steps=3, **kwargs):
    params, closure = problem(dtype)
    opt = LBFGS(params, backend="c", **kwargs)
    with monkeypatch.context() as m:
        if not direct:  # every phase through the C runner's own tables
            m.setattr(proc_c.CPhases, "run", lambda *args, **kw: None)
        for _ in range(steps):
            opt.step(closure)
    return params, opt


def same_state(a: dict, b: dict) -> bool:
    for key, x in a.items():
        y = b[key]
        if torch.is_tensor(x):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, list):
            if len(x) != len(y) or not all(
                    torch.equal(u, v) if torch.is_tensor(u) else u == v for u, v in zip(x, y)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_direct_phases_give_the_c_runners_results(line_search_fn, dtype, monkeypatch):
    calls = []
    run = proc_c.CPhases.run

    def counted(self, *args, **kwargs):
        out = run(self, *args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(proc_c.CPhases, "run", counted)
    got, opt = run_lbfgs(True, monkeypatch, dtype, history_size=3, max_iter=6,
                         line_search_fn=line_search_fn)
    assert calls and all(calls)  # every phase ran directly
    ref, ref_opt = run_lbfgs(False, monkeypatch, dtype, history_size=3, max_iter=6,
                             line_search_fn=line_search_fn)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert same_state(ref_opt.state[ref[0]], opt.state[got[0]])


def test_matches_torch_lbfgs():
    params, closure = problem()
    ref_params, ref_closure = problem()
    opt = LBFGS(params, backend="c", history_size=3, max_iter=8, line_search_fn="strong_wolfe")
    ref = torch.optim.LBFGS(ref_params, history_size=3, max_iter=8,
                            line_search_fn="strong_wolfe")
    for _ in range(2):
        opt.step(closure)
        ref.step(ref_closure)
    for a, b in zip(ref_params, params):
        assert (a - b).abs().max().item() <= 1e-10 * max(1.0, a.abs().max().item())


def test_a_steady_step_builds_no_tables(monkeypatch):
    """Phases in the loops over a history of 10 bind other vectors on every call: the C
    runner's tables (8 kept per phase) were rebuilt then; the direct path builds one table
    per phase, at its first call, and none in later steps."""
    params, closure = problem(torch.float32, sizes=(300, 200, 100))
    opt = LBFGS(params, backend="c", history_size=10, max_iter=25)
    opt.step(closure)
    built = []
    init = c_runner.CTables.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(c_runner.CTables, "__init__", counting)
    opt.step(closure)
    assert len(opt.state[params[0]]["old_dirs"]) == 10
    assert built == []


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    monkeypatch.setattr(c_runner, "PARALLEL_MIN", 0)  # every sweep on all threads
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            params, closure = problem(torch.float32, sizes=(5000, 3000, 2000))
            opt = LBFGS(params, backend="c", history_size=5, max_iter=10)
            opt.step(closure)
            opt.step(closure)
            results.append((params, opt.state[params[0]]))
    finally:
        torch.set_num_threads(threads)
    (a, sa), (b, sb) = results
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert same_state(sa, sb)


def test_deepcopy_and_pickle_continue_alike():
    params, closure = problem()
    opt = LBFGS(params, backend="c", history_size=3, max_iter=4)
    opt.step(closure)
    twin = copy.deepcopy((params, opt))
    thawed = pickle.loads(pickle.dumps(opt))
    assert thawed.backend == "c" and thawed.state_dict()["state"].keys() == \
        opt.state_dict()["state"].keys()
    twin_params, twin_opt = twin
    gen = torch.Generator().manual_seed(0)
    coeffs = [torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5
              for p in twin_params]

    def twin_closure():
        twin_opt.zero_grad()
        with torch.enable_grad():
            loss = sum((0.5 * a * w * w).sum() for w, a in zip(twin_params, coeffs))
            loss.backward()
        return loss

    def own_closure():
        opt.zero_grad()
        with torch.enable_grad():
            loss = sum((0.5 * a * w * w).sum() for w, a in zip(params, coeffs))
            loss.backward()
        return loss

    for _ in range(2):
        opt.step(own_closure)
        twin_opt.step(twin_closure)
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))


def test_a_parameter_not_contiguous_goes_through_the_c_runner():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    results = []
    for cls, backend in ((torch.optim.LBFGS, None), (LBFGS, "c")):
        w = torch.nn.Parameter(base.clone().t())  # a transposed (strided) leaf
        if backend is None:  # (torch.optim.LBFGS views gradients flat: a contiguous copy)
            w = torch.nn.Parameter(w.detach().contiguous())
        assert w.is_contiguous() == (backend is None)
        opt = cls([w], history_size=3, max_iter=5) if backend is None else \
            cls([w], history_size=3, max_iter=5, backend=backend)

        def closure(w=w, opt=opt):
            opt.zero_grad()
            with torch.enable_grad():
                loss = ((w - 1.0) ** 4).sum() + (w ** 2).sum()
                loss.backward()
            return loss

        for _ in range(2):
            opt.step(closure)
        results.append(w.detach().clone())
    assert (results[0] - results[1]).abs().max().item() <= 1e-10


@pytest.mark.parametrize("name, hypers", [
    ("NonlinearCG", {}), ("CoordinateDescent", {}), ("BFGS", {}),
    ("Newton", {"solver": "cg", "cg_iters": 4, "damping": 0.1})])
def test_other_programs_direct_and_through_the_runner_agree(name, hypers, monkeypatch):
    cls = getattr(library, name)
    outcomes = []
    for direct in (True, False):
        params, closure = problem(create_graph=name == "Newton")
        opt = cls(params, backend="c", **hypers)
        with monkeypatch.context() as m:
            if not direct:
                m.setattr(proc_c.CPhases, "run", lambda *args, **kw: None)
            for _ in range(3):
                opt.step(closure)
        outcomes.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*outcomes))


def test_auto_picks_c_for_large_cpu_groups():
    """Large groups (C_AUTO_MIN elements and more) run on C (compiled sweeps on torch's
    threads); small ones stay on NumPy (their results as before)."""
    big = torch.nn.Parameter(torch.zeros(closure_optimizer.C_AUTO_MIN))
    assert LBFGS([big]).backend == "c"
    assert LBFGS([big], backend="numpy").backend == "numpy"
    half = closure_optimizer.C_AUTO_MIN // 2
    parts = [torch.nn.Parameter(torch.zeros(half)), torch.nn.Parameter(torch.zeros(half - 1))]
    assert LBFGS(parts).backend == "numpy"


def test_auto_keeps_phases_with_matrix_work_on_numpy():
    """C does not run library stages (matrix work): such a program stays on NumPy."""
    from types import SimpleNamespace

    big = closure_optimizer.C_AUTO_MIN
    plain, matrix = SimpleNamespace(library_work=""), SimpleNamespace(library_work="`@`")
    assert closure_optimizer._choose("auto", {"cpu"}, big, plain) == "c"
    assert closure_optimizer._choose("auto", {"cpu"}, big, matrix) == "numpy"
