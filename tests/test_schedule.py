"""The schedule's sweeps: generated code grows linearly with the program, also for chains of
reductions (each sweep recomputes at most RECOMPUTE_BUDGET ops of earlier sweeps; beyond
that, values are stored in scratch tensors), and stored values give the evaluator's results
on every back end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optdsl
from optdsl import library
from optdsl.ir.evaluate import evaluate
from optdsl.ir.schedule import RECOMPUTE_BUDGET


def chain(n: int, term: str = "") -> str:
    body = "".join(f"x{i} = x{i - 1} / norm(x{i - 1}){term}\n" for i in range(1, n + 1))
    return f"x0 = g\n{body}w = w - 0.1 * x{n}\n"


def test_generated_code_of_a_chain_of_reductions_is_linear():
    sizes = {}
    for n in (40, 80, 160):
        prog = optdsl.compile(chain(n))
        sizes[n] = {b: len(prog.source(b)) for b in ("numpy", "triton")}
        assert prog.generic.unit("numpy").schedule.stored  # some values are stored
    for backend in ("numpy", "triton"):
        assert sizes[160][backend] < 2.3 * sizes[80][backend] < 2.3 ** 2 * sizes[40][backend], \
            sizes


def test_no_bundled_optimizer_stores_anything():
    """Element-wise programs recompute rather than store; library stages (Muon's matrix
    products) and the sweeps hand each other parameter-shaped values through memory, and
    only those are stored."""
    for name in library.STEPWISE:
        prog = library.program(name)
        for backend in ("numpy", "triton"):
            schedule = prog.generic.unit(backend).schedule
            library_args = {a for v in schedule.library for a in schedule.graph.eqs[v].args}
            assert set(schedule.stored) <= schedule.library | library_args, name
            if not prog.library_work:
                assert not schedule.stored, name


def test_every_sweep_recomputes_within_the_budget():
    prog = optdsl.compile(chain(100, " * 1.5 + 0.01 * w"))
    schedule = prog.generic.unit("numpy").schedule
    first: dict[int, int] = {}
    for sweep in schedule.sweeps:
        computed = [v for v in sweep.tensor if v not in sweep.loads
                    and schedule.graph.eqs[v].op not in ("w", "g", "state")]
        assert sum(1 for v in computed if v in first) <= RECOMPUTE_BUDGET
        for v in computed:
            first.setdefault(v, sweep.index)


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_stored_values_give_the_evaluators_results(backend, monkeypatch, tmp_path):
    if backend == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    prog = optdsl.compile(chain(40, " * 1.5 + 0.01 * w"))
    rng = np.random.default_rng(0)
    sizes = (3, 1000, 0)
    ws = [rng.standard_normal(n) for n in sizes]
    gs = [rng.standard_normal(n) for n in sizes]
    params = [torch.tensor(w) for w in ws]
    for p, g in zip(params, gs):
        p.grad = torch.tensor(g)
    opt = prog.optimizer(params, backend=backend)
    for _ in range(2):  # the second step reuses the kept slots / cached plans
        opt.step()
        for i, (w, g) in enumerate(zip(ws, gs)):
            ws[i] = evaluate(prog.graph, {"hyper": {}, "w": w, "g": g, "t": 1,
                                          "state": {}})["w"]
    for p, w in zip(params, ws):
        np.testing.assert_allclose(p.numpy(), w, rtol=1e-12, atol=1e-14)
