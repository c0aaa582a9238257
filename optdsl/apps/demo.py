"""The training demo: a lecture's Keras recipe, replayed in PyTorch with compiled optimizers.

The recipe: an MLP ``Linear(64, 32) -> sigmoid -> Linear(32, 10) -> softmax`` trained with
cross-entropy, minibatches of 128, for 10 epochs, on scikit-learn's 8x8 handwritten digits
(``sklearn.datasets.load_digits``, shipped inside scikit-learn, so nothing is downloaded).
Pixels are scaled to [0, 1] and a seeded permutation splits the 1797 images 80/20 into
train and test sets.

Every optimizer starts from the very same initial weights and sees the very same minibatch
order, so the only difference between two runs is the update rule.  The racers are the
bundled DSL optimizers from :mod:`optdsl.library` (SGD, momentum, Nesterov, AdaGrad, RMSProp,
Adam), ``torch.optim.SGD`` as a reference for the compiled SGD, and any ``.opt`` program a
user passes by path.

Optimizer specs (the strings in ``optimizers=``) are those of :mod:`optdsl.apps.racers`, shared
with :mod:`optdsl.apps.landscape`.

A user program's ``lr`` with no default is taken from a default table (``lr=0.1`` here); a
program that declares a default lr runs with it, which may not suit this model (the table
shows each racer's lr): give another as ``FILE:lr=0.05``.  Any other hyperparameter without a
default must be given the same way, otherwise a :class:`ValueError` names the missing ones.

Typical use::

    from optdsl.apps.demo import run_demo, format_table
    results = run_demo(epochs=10, out_dir="demo-out")
    print(format_table(results))
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from optdsl.apps.racers import (
    BUILTIN_OPTIMIZERS,
    OptimizerSpec,
    check_racers,
    learning_rate,
    make_optimizer,
    parse_optimizer_spec,
    resolve_optimizer_specs,
)
from optdsl.apps.ui import (
    Progress,
    curve_style,
    new_agg_figure,
    one_torch_thread,
    overlap_notes,
    racer_device,
)
from optdsl.apps.strategies import (
    Strategy,
    initialize,
    strategy_lines,
    strategy_record,
    with_validation,
)

__all__ = [
    "BUILTIN_OPTIMIZERS",
    "DEFAULT_OPTIMIZERS",
    "DEMO_LEARNING_RATES",
    "OptimizerSpec",
    "Progress",
    "build_model",
    "check_racers",
    "curves_figure",
    "format_table",
    "load_digits_split",
    "make_optimizer",
    "new_agg_figure",
    "one_torch_thread",
    "parse_optimizer_spec",
    "plot_curves",
    "racer_device",
    "resolve_optimizer_specs",
    "run_demo",
    "write_outputs",
]

# --------------------------------------------------------------------------------------------
# The demo's racers
# --------------------------------------------------------------------------------------------

#: The demo's racers when ``optimizers`` is None.
DEFAULT_OPTIMIZERS: tuple[str, ...] = (
    "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "torch-sgd",
)

#: Learning rates that make each racer train the sigmoid MLP well in 10 epochs.
#: The "user" entry is the lr given to a ``.opt`` program whose ``lr`` has no default.
DEMO_LEARNING_RATES: dict[str, float] = {
    "sgd": 1.0,
    "momentum": 0.2,
    "nesterov": 0.2,
    "adagrad": 0.1,
    "rmsprop": 1e-2,
    "adam": 1e-2,
    "torch-sgd": 1.0,
    "user": 0.1,
}


# --------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsSplit:
    """The digits data as float32 tensors, pixels in [0, 1]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device | str) -> DigitsSplit:
        tensors = (self.x_train, self.y_train, self.x_test, self.y_test)
        return DigitsSplit(*(t.to(device) for t in tensors))


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsSplit:
    """scikit-learn's 8x8 digits, scaled to [0, 1], split by a permutation seeded with ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float32) / 16.0
    y = np.asarray(digits.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return DigitsSplit(
        torch.from_numpy(x[train]), torch.from_numpy(y[train]),
        torch.from_numpy(x[test]), torch.from_numpy(y[test]),
    )


def build_model(seed: int = 0) -> nn.Module:
    """The lecture's MLP: Linear(64, 32) -> sigmoid -> Linear(32, 10) (softmax is in the loss)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 10))


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (x, y)."""
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DigitsSplit,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """One pass over the shuffled training set in minibatches."""
    n = len(data.x_train)
    order = torch.randperm(n, generator=generator).to(data.x_train.device)
    for start in range(0, n, batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
        loss.backward()
        optimizer.step()


def _train_one(
    spec: OptimizerSpec,
    initial: nn.Module,
    data: DigitsSplit,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    backend: str,
    progress: bool,
    setup_seconds: float = 0.0,
    strategy: Strategy | None = None,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train a copy of ``initial`` with one racer; returns its result record (with a
    validation set, its loss per epoch, and early stopping when the strategy asks)."""
    model = copy.deepcopy(initial)
    setup_start = time.perf_counter()
    name, optimizer, hypers = make_optimizer(spec, model.parameters(), DEMO_LEARNING_RATES, backend)
    setup_seconds += time.perf_counter() - setup_start
    generator = torch.Generator().manual_seed(seed)
    losses = [_evaluate(model, data.x_train, data.y_train)[0]]
    accuracies = [_evaluate(model, data.x_test, data.y_test)[1]]
    bar = Progress(name, epochs, enabled=progress)
    stopping = strategy.early_stopping() if strategy is not None else None
    val_losses = [] if validation is None else [_evaluate(model, *validation)[0]]
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        _train_epoch(model, optimizer, data, batch_size, generator)
        losses.append(_evaluate(model, data.x_train, data.y_train)[0])
        accuracies.append(_evaluate(model, data.x_test, data.y_test)[1])
        bar.update(epoch, f"loss {losses[-1]:.4f}")
        if validation is not None:
            val_losses.append(_evaluate(model, *validation)[0])
            if stopping is not None and stopping.update(epoch, val_losses[-1]):
                break
    seconds = time.perf_counter() - start
    bar.close(f"loss {losses[-1]:.4f}  test acc {accuracies[-1]:.3f}")
    return {
        "name": name,
        "spec": spec.text,
        "hypers": hypers,
        "lr": learning_rate(optimizer),
        "train_loss": losses[-1],
        "test_accuracy": accuracies[-1],
        "seconds": seconds,
        "setup_seconds": setup_seconds,
        "loss_curve": losses,
        "accuracy_curve": accuracies,
        **strategy_record(strategy, val_losses, stopping),
    }


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def run_demo(
    epochs: int = 10,
    optimizers: Sequence[str | os.PathLike[str]] | None = None,
    backend: str = "auto",
    out_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    validation_split: float = 0.0,
    patience: int | None = None,
    init: str = "torch",
) -> list[dict[str, Any]]:
    """Train the lecture's digits MLP once per optimizer, from the same initial weights.

    Args:
        epochs: passes over the training set (the recipe uses 10).
        optimizers: racer specs (see the module docstring); None races
            :data:`DEFAULT_OPTIMIZERS`.  A list of only ``.opt`` paths races them alongside
            the defaults.
        backend: "auto" or a back end's name ("numpy", "c", "triton", "torch"), passed to
            the compiled optimizers ("triton" trains on the GPU when one is present).
        out_dir: if given, ``loss_curves.png`` and ``results.json`` are written there.
        batch_size: minibatch size (the recipe uses 128).
        seed: seeds the initial weights, the train/test split and the minibatch order.
        progress: draw a progress bar per optimizer on stderr.
        validation_split, patience, init: the lectures' training strategies
            (optdsl.apps.strategies): hold out the last fraction of the training set as
            Keras' ``validation_split``, stop early on its loss after ``patience`` epochs
            without improvement, initialise the weights with "torch", "glorot_uniform" or
            "orthogonal".

    Returns:
        One dict per optimizer, in order: ``name``, ``spec``, ``hypers`` (as constructed),
        ``lr`` (the learning rate it ran with; None for a program without one),
        ``train_loss`` (full training set, after the last epoch), ``test_accuracy``,
        ``seconds`` (training, evaluation included), ``setup_seconds`` (constructing the
        optimizer, twice: a first check before any training that also takes one step on a
        throwaway parameter, which compiles a DSL program and its C step, then the real
        one), ``loss_curve`` and ``accuracy_curve`` (``epochs + 1`` entries: before
        training, then after each epoch).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    strategy = Strategy(validation_split, patience, init)
    specs = resolve_optimizer_specs(optimizers, DEFAULT_OPTIMIZERS)
    device = racer_device(backend)
    setup = check_racers(specs, DEMO_LEARNING_RATES, backend, device)
    data, validation = with_validation(load_digits_split(seed), strategy)
    data = data.to(device)
    validation = None if validation is None else tuple(t.to(device) for t in validation)
    initial = initialize(build_model(seed), strategy.init, seed).to(device)
    with one_torch_thread():
        results = [
            _train_one(
                spec, initial, data, epochs=epochs, batch_size=batch_size, seed=seed,
                backend=backend, progress=progress, setup_seconds=setup_seconds,
                strategy=strategy, validation=validation,
            )
            for spec, setup_seconds in zip(specs, setup)
        ]
    if out_dir is not None:
        config = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "backend": backend,
                  "train_size": len(data.x_train), "test_size": len(data.x_test),
                  "strategy": strategy.describe()}
        write_outputs(results, out_dir, config)
    return results


def _fmt_number(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "diverged"


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The demo's results as an aligned text table, one row per optimizer with the lr it ran
    with (from the demo's table, an override such as ``adam:lr=3e-3``, or a program's own
    default)."""
    header = ("optimizer", "lr", "train loss", "test acc", "train (s)", "setup (s)")
    rows = [
        (
            str(r["name"]),
            "-" if r.get("lr") is None else f"{r['lr']:g}",
            _fmt_number(r["train_loss"], ".4f"),
            _fmt_number(100 * r["test_accuracy"], ".1f") + "%",
            f"{r['seconds']:.2f}",
            f"{r.get('setup_seconds', 0.0):.2f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:]))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)]
                     + strategy_lines(results))


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(
    results: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    config: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``loss_curves.png`` and ``results.json`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    payload = {"config": dict(config or {}), "results": list(results)}
    json_path.write_text(json.dumps(_json_safe(payload), indent=2) + "\n")
    png_path = out / "loss_curves.png"
    plot_curves(results, png_path)
    return png_path, json_path


def _same_curves(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two racers' loss and accuracy curves are the same to the eye (0.2 %)."""
    def close(x: Sequence[float], y: Sequence[float]) -> bool:
        return len(x) == len(y) and bool(np.allclose(x, y, rtol=2e-3, atol=1e-6))

    return close(a["loss_curve"], b["loss_curve"]) and close(a["accuracy_curve"],
                                                             b["accuracy_curve"])


def plot_curves(results: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write :func:`curves_figure` of ``results`` to ``path`` (a PNG)."""
    curves_figure(results).savefig(path, dpi=110)


def curves_figure(results: Sequence[Mapping[str, Any]]) -> Any:
    """Training loss (log scale) and test accuracy per epoch, one line per optimizer, each in
    its own style; a line that a later one covers (SGD under torch.optim.SGD) is drawn as a
    wide pale band, and its legend entry says which line covers it."""
    from matplotlib.ticker import FormatStrFormatter

    fig = new_agg_figure(figsize=(12, 4.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    notes = overlap_notes([str(r["name"]) for r in results],
                          lambda i, j: _same_curves(results[i], results[j]), what="curve")
    for index, (r, note) in enumerate(zip(results, notes)):
        epochs = range(len(r["loss_curve"]))
        style = curve_style(index, len(results), len(epochs), hidden=bool(note))
        ax_loss.plot(epochs, r["loss_curve"], label=f"{r['name']}{note}", **style)
        ax_acc.plot(epochs, [100 * a for a in r["accuracy_curve"]],
                    label=f"{r['name']} ({100 * r['test_accuracy']:.1f}%)", **style)
    ax_loss.set(title="Training loss (cross-entropy)", xlabel="epoch", ylabel="loss", yscale="log")
    ax_loss.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax_loss.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    ax_acc.set(title="Test accuracy", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Digits MLP 64-32-10, sigmoid, minibatch 128: same start, different optimizers")
    fig.tight_layout()
    return fig
