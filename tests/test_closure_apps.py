"""The lectures' comparisons (optdsl.apps.second_order, fullbatch) and training strategies
(optdsl.apps.strategies) as the command line runs them: the landscape outcomes (Newton at
the bowl's minimum in one step, drawn to the saddle where gradient descent and saddle-free
Newton escape; quasi-Newton and CG iteration counts on Rosenbrock), the full-batch race with
optdsl's L-BFGS on torch.optim.LBFGS's iterates, and the Keras recipe's validation split,
early stopping and initialisations in the demo."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from optdsl.apps import strategies
from optdsl.apps.demo import format_table, run_demo
from optdsl.apps.fullbatch import format_fullbatch, run_fullbatch
from optdsl.apps.landscape import LANDSCAPES, format_landscape
from optdsl.apps.second_order import race_second_order, run_second_order

ROOT = Path(__file__).resolve().parent.parent


def outcome(function: str, racer: str, max_iters: int = 300) -> dict:
    return race_second_order(LANDSCAPES[function], racer, max_iters=max_iters)


def test_newton_reaches_the_bowls_minimum_in_one_iteration():
    run = outcome("bowl", "newton")
    assert run["converged"] and run["iterations"] == 1 and run["evaluations"] == 1
    assert run["outcome"] == "(0,0) minimum" and run["final_value"] == 0.0


def test_on_the_saddle_newton_is_drawn_in_and_the_others_escape():
    newton = outcome("saddle", "newton")
    assert newton["outcome"] == "stuck at saddle (0,0)" and newton["iterations"] == 1
    for racer in ("gd", "saddle-free-newton"):
        run = outcome("saddle", racer)
        assert run["outcome"] == "escaped", (racer, run["outcome"])
        assert abs(run["final_point"][1]) > 1.0  # along y, the direction of negative curvature


def test_quasi_newton_and_cg_need_tens_of_iterations_on_rosenbrock():
    counts = {racer: outcome("rosenbrock", racer, 200) for racer in ("bfgs", "lbfgs", "cg",
                                                                      "gd")}
    for racer in ("bfgs", "lbfgs", "cg"):
        assert counts[racer]["outcome"] == "(1,1) minimum", racer
        assert counts[racer]["iterations"] < 100, (racer, counts[racer]["iterations"])
    assert not counts["gd"]["converged"]  # gradient descent: not in 200


def test_second_order_races_and_plots(tmp_path):
    results = run_second_order(out_dir=tmp_path, max_iters=50, functions=["bowl"],
                               racers=["gd", "newton", "bfgs"])
    assert [r["optimizer"] for r in results] == ["gradient descent", "Newton", "BFGS"]
    assert (tmp_path / "landscape_bowl_second_order.png").stat().st_size > 1000
    assert "Newton" in format_landscape(results)
    with pytest.raises(ValueError, match="unknown racer"):
        run_second_order(racers=["newtn"])


def test_fullbatch_lbfgs_is_torchs_and_beats_first_order():
    results = run_fullbatch(iterations=12, racers=["L-BFGS (optdsl)", "torch.optim.LBFGS",
                                                   "gradient descent (optdsl)"])
    mine, torchs, gd = results
    assert mine["vs_torch"] < 1e-9 and mine["evaluations"] == torchs["evaluations"]
    assert mine["final_loss"] == pytest.approx(torchs["final_loss"], rel=1e-12)
    assert mine["final_loss"] < 0.5 * gd["final_loss"]
    table = format_fullbatch(results)
    assert table.splitlines()[0].split()[0] == "optimizer" and "torch.optim.LBFGS" in table


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "optdsl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_the_commands(tmp_path):
    result = _cli("fullbatch", "--iterations", "3", "-q", "--out", "fb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "L-BFGS (optdsl)" in result.stdout and (tmp_path / "fb" / "fullbatch.png").exists()
    result = _cli("landscape", "--second-order", "--max-iters", "5", "--out", "ls",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "saddle-free Newton" in result.stdout and "closure evaluations" in result.stdout
    result = _cli("landscape", "--second-order", "adam", cwd=tmp_path)
    assert result.returncode == 1 and "races its own set" in result.stderr


# -- the demo's training strategies -----------------------------------------------------------

def test_validation_split_early_stopping_and_initialisation_in_the_demo():
    (run,) = run_demo(epochs=4, optimizers=["adam"], progress=False, validation_split=0.1,
                      patience=0, init="glorot_uniform")
    assert len(run["val_loss_curve"]) == len(run["loss_curve"])
    stopped = run["stopped_epoch"]
    curve = run["val_loss_curve"]
    if stopped is None:
        assert all(b < a for a, b in itertools.pairwise(curve))
    else:
        assert curve[stopped] >= min(curve[:stopped]) and len(curve) == stopped + 1
    table = format_table([run]).splitlines()
    assert "validation_split=0.1" in table[-2] and "init=glorot_uniform" in table[-2]
    assert table[-1].startswith("early stopping:")
    (plain,) = run_demo(epochs=1, optimizers=["sgd"], progress=False)
    assert "strategy" not in plain  # the default demo is unchanged


def test_early_stopping_is_keras():
    stop = strategies.EarlyStopping(patience=2)  # two epochs without improvement: stop
    losses = [1.0, 0.9, 0.95, 0.92, 0.91]
    decisions = [stop.update(epoch, loss) for epoch, loss in enumerate(losses[:4], start=1)]
    assert decisions == [False, False, False, True]
    assert stop.stopped_epoch == 4 and stop.best == 0.9
    again = strategies.EarlyStopping(patience=0)  # Keras: stop at the first that is no better
    assert [again.update(e, v) for e, v in enumerate([1.0, 0.5, 0.5], start=1)] == [
        False, False, True]


def test_validation_split_is_the_last_fraction():
    x, y = torch.arange(20).reshape(10, 2), torch.arange(10)
    _, y_train, _, y_val = strategies.split_validation(x, y, 0.1)
    assert y_val.tolist() == [9] and y_train.tolist() == list(range(9))
    with pytest.raises(ValueError, match="validation_split"):
        strategies.Strategy(validation_split=1.0)
    with pytest.raises(ValueError, match="early stopping watches the validation loss"):
        strategies.Strategy(patience=3)
    with pytest.raises(ValueError, match="init must be one of"):
        strategies.Strategy(init="he")


def test_initialisations():
    model = nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 10))
    before = [p.detach().clone() for p in model.parameters()]
    strategies.initialize(model, "torch")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    strategies.initialize(model, "glorot_uniform", seed=1)
    first = model[0]
    bound = math.sqrt(6 / (64 + 32))
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(first.bias) == 0
    strategies.initialize(model, "orthogonal", seed=1)
    w = model[2].weight  # 10 x 32: orthonormal rows
    assert torch.allclose(w @ w.T, torch.eye(10), atol=1e-5)
