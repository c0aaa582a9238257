"""Full-batch training, where the lectures say L-BFGS "works very well": ``optdsl fullbatch``.

Multinomial logistic regression (a softmax over 10 classes, L2-regularised) on the 8x8
digits of optdsl.apps.demo, in float64, every iteration on the whole training set: the
deterministic f(θ) of the lectures. The racers: optdsl's L-BFGS and torch.optim.LBFGS with
the same keywords (the same iterates: the table shows how far apart they end), gradient
descent and Adam (optdsl's), all from the same zero start. One iteration is one ``step()``
(L-BFGS with ``max_iter=1``); the table gives the iterations to reach a target loss, the
closure evaluations, the time, and the final loss and test accuracy.

Typical use::

    from optdsl.apps.fullbatch import run_fullbatch, format_fullbatch
    print(format_fullbatch(run_fullbatch(iterations=100)))
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optdsl.apps.demo import load_digits_split
from optdsl.apps.ui import Progress, new_agg_figure, one_torch_thread

#: The racers: label -> (where the class lives, its name, keywords).
RACERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "L-BFGS (optdsl)": ("optdsl", "LBFGS", {"max_iter": 1, "max_eval": 25,
                                            "history_size": 10,
                                            "line_search_fn": "strong_wolfe"}),
    "torch.optim.LBFGS": ("torch", "LBFGS", {"max_iter": 1, "max_eval": 25,
                                             "history_size": 10,
                                             "line_search_fn": "strong_wolfe"}),
    "gradient descent (optdsl)": ("optdsl", "SGD", {"lr": 1.0}),
    "Adam (optdsl)": ("optdsl", "Adam", {"lr": 0.05}),
}
WEIGHT_DECAY = 1e-3  # the L2 term of the loss (a strictly convex problem)


def _loss(params, x, y) -> torch.Tensor:
    weight, bias = params
    logits = x @ weight.T + bias
    return nn.functional.cross_entropy(logits, y) + 0.5 * WEIGHT_DECAY * (weight ** 2).sum()


def _optimizer(label: str, params, backend: str):
    where, name, hypers = RACERS[label]
    if where == "torch":
        return getattr(torch.optim, name)(params, **hypers)
    from optdsl import library

    return getattr(library, name)(params, backend=backend, **hypers)


def train(label: str, data, iterations: int, target: float, backend: str = "auto"
          ) -> dict[str, Any]:
    """One racer: ``iterations`` full-batch steps from zero weights."""
    x, y = data.x_train, data.y_train
    params = [nn.Parameter(torch.zeros(10, 64, dtype=torch.float64)),
              nn.Parameter(torch.zeros(10, dtype=torch.float64))]
    optimizer = _optimizer(label, params, backend)
    calls = [0]

    def closure():
        calls[0] += 1
        optimizer.zero_grad()
        loss = _loss(params, x, y)
        loss.backward()
        return loss

    with torch.no_grad():
        losses = [float(_loss(params, x, y))]
    reached = 0 if losses[0] <= target else None
    began = time.perf_counter()
    for k in range(1, iterations + 1):
        optimizer.step(closure)
        with torch.no_grad():
            losses.append(float(_loss(params, x, y)))
        if reached is None and losses[-1] <= target:
            reached = k
    seconds = time.perf_counter() - began
    with torch.no_grad():
        logits = data.x_test @ params[0].T + params[1]
        accuracy = float((logits.argmax(dim=1) == data.y_test).to(torch.float64).mean())
    return {"optimizer": label, "iterations": iterations, "reached": reached,
            "evaluations": calls[0], "seconds": seconds, "final_loss": losses[-1],
            "test_accuracy": accuracy, "loss_curve": losses,
            "weights": torch.cat([p.detach().reshape(-1) for p in params])}


def run_fullbatch(iterations: int = 100, target: float = 0.27, *, backend: str = "auto",
                  seed: int = 0, racers: Sequence[str] | None = None,
                  out_dir: str | os.PathLike[str] | None = None,
                  progress: bool = False) -> list[dict[str, Any]]:
    """Race the full-batch optimizers; ``target``: the training loss to reach. With
    ``out_dir``, ``fullbatch.png`` (loss per iteration). Each result's ``vs_torch`` is the
    largest difference of its final weights from torch.optim.LBFGS's (when it ran)."""
    labels = list(racers) if racers is not None else list(RACERS)
    unknown = [label for label in labels if label not in RACERS]
    if unknown:
        raise ValueError(f"unknown racer(s) {', '.join(unknown)}: expected "
                         f"{', '.join(RACERS)}")
    split = load_digits_split(seed)
    data = type(split)(split.x_train.double(), split.y_train, split.x_test.double(),
                       split.y_test)
    bar = Progress("fullbatch", len(labels), enabled=progress)
    results = []
    with one_torch_thread():
        for done, label in enumerate(labels, start=1):
            results.append(train(label, data, iterations, target, backend))
            bar.update(done, label)
    bar.close()
    reference = next((r["weights"] for r in results if r["optimizer"] == "torch.optim.LBFGS"),
                     None)
    for r in results:
        r["vs_torch"] = (float((r["weights"] - reference).abs().max())
                         if reference is not None else math.nan)
    if out_dir is not None:
        plot_fullbatch(results, Path(out_dir) / "fullbatch.png")
    return results


def format_fullbatch(results: Sequence[dict[str, Any]]) -> str:
    """The race as an aligned table."""
    header = ("optimizer", "to target", "evals", "time (s)", "s/iter", "final loss",
              "test acc", "max |w - torch L-BFGS w|")
    rows = []
    for r in results:
        rows.append((r["optimizer"],
                     str(r["reached"]) if r["reached"] is not None else "not reached",
                     str(r["evaluations"]), f"{r['seconds']:.3f}",
                     f"{r['seconds'] / max(r['iterations'], 1):.4f}",
                     f"{r['final_loss']:.6f}", f"{100 * r['test_accuracy']:.1f}%",
                     f"{r['vs_torch']:.1e}" if math.isfinite(r["vs_torch"]) else "-"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row) -> str:
        return "  ".join([row[0].ljust(widths[0])]
                         + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])

    out = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    return "\n".join(out)


def plot_fullbatch(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training loss per iteration (log scale), one line per racer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = new_agg_figure(figsize=(8, 5))
    ax = fig.subplots()
    for r in results:
        style = "--" if r["optimizer"].startswith("torch") else "-"
        ax.plot(range(len(r["loss_curve"])), r["loss_curve"], style, label=r["optimizer"])
    ax.set(title="Full-batch logistic regression on the digits", xlabel="iteration",
           ylabel="training loss", yscale="log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
