"""The optimizer race on 2-D landscapes (optdsl.apps.landscape), with few iterations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from optdsl.apps.landscape import (
    LANDSCAPES,
    format_landscape,
    format_table,
    landscape_figure,
    race,
    run_landscape,
)
from optdsl.apps.ui import paths_coincide

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEFT, RIGHT = "left (-1,0) global", "right (1,0) local"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and b"IEND" in data[-12:]


@pytest.fixture(scope="module")
def small_race() -> list[dict]:
    return run_landscape(["sgd", "adam"], max_iters=300, tol=1e-3)


def test_results_structure(small_race):
    assert [(r["function"], r["optimizer"]) for r in small_race] == [
        (key, name) for key in LANDSCAPES for name in ("SGD", "Adam")
    ]
    for r in small_race:
        path = r["path"]
        assert isinstance(path, np.ndarray) and path.shape == (r["steps"] + 1, 2)
        assert path[0].tolist() == list(LANDSCAPES[r["function"]].start)
        assert r["steps"] <= 300
        assert (r["iterations"] is not None) == r["converged"]
        if r["converged"]:
            assert r["iterations"] == r["steps"]
        assert isinstance(r["outcome"], str) and r["outcome"]


def test_outcomes_per_function(small_race):
    by = {(r["function"], r["optimizer"]): r for r in small_race}
    for name in ("SGD", "Adam"):
        bowl = by["bowl", name]
        assert bowl["converged"] and bowl["outcome"] == "(0,0) minimum"
        assert math.hypot(*bowl["final_point"]) < 1e-2
        assert by["two_minima", name]["outcome"] in (LEFT, RIGHT)
        assert by["saddle", name]["outcome"] == "escaped"
    # plain gradient descent needs far more than 300 steps down Rosenbrock's valley
    rosen = by["rosenbrock", "SGD"]
    assert not rosen["converged"] and rosen["iterations"] is None


def test_two_minima_basins():
    land = LANDSCAPES["two_minima"]
    left = race(land, "sgd", start=(-0.5, 0.4), max_iters=500)
    assert left["converged"] and left["outcome"] == LEFT
    assert left["final_point"] == pytest.approx([-0.9676, 0.0], abs=1e-2)
    right = race(land, "adam", start=(1.3, -0.3), max_iters=500)
    assert right["converged"] and right["outcome"] == RIGHT
    assert right["final_point"] == pytest.approx([0.9053, 0.0], abs=1e-2)
    assert left["final_value"] < right["final_value"]


def test_diverged_and_stuck():
    blown = race(LANDSCAPES["bowl"], "sgd:lr=1.0", max_iters=100)
    assert blown["outcome"] == "diverged" and not blown["converged"]
    # exactly on the saddle's ridge (y = 0) gradient descent cannot leave it
    stuck = race(LANDSCAPES["saddle"], "sgd", start=(-1.0, 0.0), max_iters=500)
    assert stuck["converged"] and stuck["outcome"] == "stuck at saddle (0,0)"


def test_format_landscape(small_race):
    table = format_landscape(small_race)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["function", "optimizer", "lr", "iterations"]
    bowl = [line.split() for line in lines if line.startswith("bowl")]
    assert [row[1:3] for row in bowl] == [["SGD", "0.09"], ["Adam", "0.3"]]  # the bowl's lrs
    assert "did not converge" in table and "escaped" in table and "(0,0) minimum" in table
    assert sum(1 for line in lines if line.startswith("rosenbrock")) == 2
    assert format_table(small_race) == table  # the name the CLI imports


def test_pngs_written(tmp_path):
    results = run_landscape(["sgd", "rmsprop"], out_dir=tmp_path, max_iters=60,
                            functions=["two_minima", "saddle"])
    assert len(results) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "landscape_saddle.png", "landscape_two_minima.png"]
    for png in tmp_path.iterdir():
        assert_png(png)


def test_user_program_races(tmp_path):
    program = tmp_path / "heavy_ball.opt"
    program.write_text("optimizer HeavyBall\nhyper beta = 0.9\nv = beta*v - lr*g; w = w + v\n")
    results = run_landscape([f"{program}:lr=0.01"], functions=["bowl"], max_iters=400)
    assert [r["optimizer"] for r in results][-1] == "HeavyBall (lr=0.01)"
    assert len(results) == 7  # raced alongside the six defaults
    mine = results[-1]
    momentum = next(r for r in results if r["optimizer"] == "Momentum")
    assert mine["converged"] and mine["iterations"] == momentum["iterations"]


def test_unknown_function():
    with pytest.raises(ValueError, match="unknown function"):
        run_landscape(["sgd"], functions=["himmelblau"])


def test_the_lr_each_racer_ran_with(tmp_path):
    """From the landscape's table, from an override, or from the program's own default."""
    assert race(LANDSCAPES["bowl"], "sgd", max_iters=5)["lr"] == 0.09
    assert race(LANDSCAPES["bowl"], "adam:lr=0.02", max_iters=5)["lr"] == 0.02
    program = tmp_path / "own_lr.opt"
    program.write_text("optimizer OwnLr\nhyper lr = 0.004\nw = w - lr*g\n")
    mine = race(LANDSCAPES["bowl"], str(program), max_iters=5)
    assert mine["lr"] == 0.004 and mine["hypers"] == {}
    assert "0.004" in format_landscape([mine])


def test_paths_coincide():
    t = np.linspace(0.0, 1.0, 50)
    path = np.stack([t, t**2], axis=1)
    resampled = np.stack([t[::7], t[::7] ** 2], axis=1)  # other points on the same curve
    assert paths_coincide(path, resampled, 1e-2) and paths_coincide(resampled, path, 1e-2)
    assert not paths_coincide(path, path + [0.0, 0.05], 1e-2)
    assert not paths_coincide(path, path[:25], 1e-2)  # a part of a path is not the path


def _legend(fig) -> list[str]:
    return [text.get_text() for text in fig.axes[0].get_legend().get_texts()]


def test_a_path_under_another_says_so_in_the_legend():
    """On the saddle AdaGrad's path lies under RMSProp's: the legend says which hides which,
    and the hidden one is drawn wider, so that it shows around the other."""
    land = LANDSCAPES["saddle"]
    runs = [race(land, name, max_iters=200) for name in ("adagrad", "rmsprop", "sgd")]
    fig = landscape_figure(land, runs)
    adagrad, rmsprop, sgd = _legend(fig)[:3]
    assert adagrad.startswith("AdaGrad") and "same path as RMSProp, drawn under it" in adagrad
    assert "same path" not in rmsprop and "same path" not in sgd
    lines = fig.axes[0].get_lines()
    widths = {line.get_label().split(":")[0]: line.get_linewidth() for line in lines}
    assert widths["AdaGrad"] > widths["RMSProp"] + 2
    styles = [(line.get_linestyle(), line.get_marker()) for line in lines[:6:2]]
    assert len(set(styles)) == 3  # each path its own line style and marker
