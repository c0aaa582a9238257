"""The training demo (optdsl.apps.demo): digits MLP trained by compiled optimizers, tiny settings."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

from optdsl.apps.demo import (
    DEFAULT_OPTIMIZERS,
    curves_figure,
    format_table,
    parse_optimizer_spec,
    resolve_optimizer_specs,
    run_demo,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = {"name", "spec", "hypers", "lr", "train_loss", "test_accuracy", "seconds",
               "setup_seconds", "loss_curve", "accuracy_curve"}


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and b"IEND" in data[-12:]
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


def test_two_optimizers_one_epoch_structure():
    results = run_demo(epochs=1, optimizers=["sgd", "adam"], progress=False)
    assert [r["name"] for r in results] == ["SGD", "Adam"]
    for r in results:
        assert set(r) >= RESULT_KEYS
        assert len(r["loss_curve"]) == 2 and len(r["accuracy_curve"]) == 2
        assert all(math.isfinite(v) for v in r["loss_curve"])
        assert r["train_loss"] == r["loss_curve"][-1]
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["seconds"] >= 0.0
    # same seed, same initial model: every racer starts from the same loss
    assert results[0]["loss_curve"][0] == results[1]["loss_curve"][0]


def test_sgd_loss_decreases_over_epochs():
    (result,) = run_demo(epochs=3, optimizers=["sgd"], progress=False)
    curve = result["loss_curve"]
    assert all(later < earlier for earlier, later in itertools.pairwise(curve)), curve
    assert curve[-1] < 0.9 * curve[0]


def test_compiled_sgd_tracks_torch_sgd():
    dsl, ref = run_demo(epochs=2, optimizers=["sgd", "torch-sgd"], progress=False)
    assert ref["name"] == "torch.optim.SGD"
    assert dsl["loss_curve"] == pytest.approx(ref["loss_curve"], rel=1e-4)


def test_outputs_written(tmp_path):
    results = run_demo(epochs=1, optimizers=["sgd", "momentum"], out_dir=tmp_path,
                       progress=False)
    assert_png(tmp_path / "loss_curves.png")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["epochs"] == 1 and saved["config"]["batch_size"] == 128
    assert [r["name"] for r in saved["results"]] == [r["name"] for r in results]


def test_format_table_is_aligned():
    results = run_demo(epochs=1, optimizers=["sgd", "nesterov:lr=0.1"], progress=False)
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["optimizer", "lr"] and set(lines[1]) <= {"-", " "}
    assert "SGD" in lines[2] and "Nesterov (lr=0.1)" in lines[3]
    assert lines[2].split()[1] == "1" and lines[3].split()[2] == "0.1"  # the lr each ran with
    assert len({len(line) for line in lines}) == 1  # every row padded to the same width
    assert "%" in lines[2]


def test_progress_bar_on_stderr(capsys):
    run_demo(epochs=1, optimizers=["adagrad"], progress=True)
    err = capsys.readouterr().err
    assert "AdaGrad" in err and "1/1" in err and "#" in err


def test_spec_parsing(tmp_path):
    spec = parse_optimizer_spec("Adam:lr=3e-3,betas=(0.8,0.9)")
    assert spec.key == "adam" and spec.overrides == {"lr": 3e-3, "betas": (0.8, 0.9)}
    program = tmp_path / "mine.opt"
    program.write_text("v = a*v - lr*g; w = w + v\n")
    spec = parse_optimizer_spec(f"{program}:a=0.9")
    assert spec.path == program and spec.overrides == {"a": 0.9}
    with pytest.raises(ValueError, match="unknown optimizer"):
        parse_optimizer_spec("adamm")
    with pytest.raises(FileNotFoundError):
        parse_optimizer_spec(tmp_path / "missing.opt")
    with pytest.raises(ValueError, match="name=value"):
        parse_optimizer_spec("sgd:lr=0.1,0.2")
    # only user programs: raced alongside the defaults
    specs = resolve_optimizer_specs([program], DEFAULT_OPTIMIZERS)
    assert [s.key for s in specs[:-1]] == list(DEFAULT_OPTIMIZERS) and specs[-1].path == program


def test_user_program_needs_its_required_hypers(tmp_path):
    program = tmp_path / "mine.opt"
    program.write_text("v = a*v - lr*g; w = w + v\n")
    with pytest.raises(ValueError, match=r"no default: a\b"):
        run_demo(epochs=1, optimizers=["sgd", program], progress=False)
    results = run_demo(epochs=1, optimizers=["momentum", f"{program}:a=0.9,lr=0.2"],
                       progress=False)
    assert results[1]["name"] == "mine (a=0.9, lr=0.2)"
    # the one-liner with a=0.9 is the bundled momentum SGD at the same lr
    assert results[1]["loss_curve"] == pytest.approx(results[0]["loss_curve"], rel=1e-4)


def test_user_program_gets_default_lr(tmp_path):
    program = tmp_path / "plain.opt"
    program.write_text("optimizer Plain\nw = w - lr*g\n")
    (result,) = run_demo(epochs=1, optimizers=["sgd", program], progress=False)[1:]
    assert result["name"] == "Plain" and result["hypers"] == {"lr": 0.1}
    assert result["loss_curve"][-1] < result["loss_curve"][0]


def test_bad_racer_reported_before_training(capsys):
    with pytest.raises(ValueError, match="lr"):
        run_demo(epochs=1, optimizers=["sgd", "adam:lr=-1"], progress=True)
    assert "SGD" not in capsys.readouterr().err  # nothing trained before the error


@pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET"),
                    reason="triton can run here")
def test_impossible_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="triton"):
        run_demo(epochs=1, optimizers=["sgd"], backend="triton", progress=False)


def test_a_programs_own_default_lr_is_shown(tmp_path):
    """A file that declares its lr runs with it (the user's Sophia-like file with lr=1e-4 got
    22 %): the result and the table say which lr it was, so FILE:lr=... is the next thing
    to try."""
    program = tmp_path / "slow.opt"
    program.write_text("optimizer Slow\nhyper lr = 1e-4 in [0, inf)\nw = w - lr*g\n")
    sgd, slow, fast = run_demo(epochs=1, optimizers=["sgd", program, f"{program}:lr=0.5"],
                               progress=False)
    assert (sgd["lr"], slow["lr"], fast["lr"]) == (1.0, 1e-4, 0.5)
    assert slow["hypers"] == {}  # nothing given: the program's default
    rows = [line.split() for line in format_table([slow, fast]).splitlines()[2:]]
    assert rows[0][:2] == ["Slow", "0.0001"] and rows[1][:3] == ["Slow", "(lr=0.5)", "0.5"]


def test_identical_curves_say_so_in_the_legend():
    """SGD and torch.optim.SGD train the same curve: the legend says that SGD lies under it,
    and SGD is drawn as a wider band around it."""
    results = run_demo(epochs=2, optimizers=["sgd", "adam", "torch-sgd"], progress=False)
    fig = curves_figure(results)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0] == "SGD [same curve as torch.optim.SGD, drawn under it]"
    assert legend[1:] == ["Adam", "torch.optim.SGD"]
    widths = [line.get_linewidth() for line in fig.axes[0].get_lines()]
    assert widths[0] > widths[2] + 2


def test_check_racers_builds_a_c_step_before_any_clock_starts(tmp_path, monkeypatch):
    """The checks before racing take one step on a throwaway parameter of the racers' dtype,
    so a C step is compiled there, not inside the first racer's training time."""
    from optdsl.apps.racers import check_racers, make_optimizer
    from optdsl.runtime import c_build

    if c_build.unavailable():
        pytest.skip("no working C compiler")
    program = tmp_path / "fresh.opt"  # a program no other test compiled in this process
    program.write_text("hyper lr = 0.1\nhyper k = 0.123456\nw = w - lr * k * g\n")
    builds: list[object] = []
    real = c_build.build
    monkeypatch.setattr(c_build, "build", lambda *args: builds.append(args) or real(*args))
    for dtype in (torch.float32, torch.float64):
        [spec] = resolve_optimizer_specs([f"{program}:lr=0.5"], DEFAULT_OPTIMIZERS)[-1:]
        check_racers([spec], {"user": 0.5}, backend="c", dtype=dtype)
        built = len(builds)
        assert built >= 1, f"the check compiled no C step for {dtype}"
        p = torch.ones(5, dtype=dtype, requires_grad=True)
        _, optimizer, _ = make_optimizer(spec, [p], {"user": 0.5}, backend="c")
        p.grad = torch.ones_like(p)
        optimizer.step()
        assert len(builds) == built, f"the first real {dtype} step compiled again"
        torch.testing.assert_close(p.detach(), torch.full_like(p, 1 - 0.5 * 0.123456))
