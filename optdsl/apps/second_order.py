"""The lectures' second-order and coordinate methods racing on the 2-D landscapes, beside
gradient descent: ``optdsl landscape --second-order``.

What the lectures show, and what these races reproduce: Newton "jumps to the minimum" of the
bowl in one step; on the saddle x^2 - y^2 Newton "actively seeks" the critical point, where
gradient descent escapes, and saddle-free Newton (|H|, Dauphin et al. 2014) escapes too;
on Rosenbrock, BFGS, L-BFGS and conjugate gradients (with the strong Wolfe line search) need
tens of iterations where gradient descent needs thousands. The racers are the bundled
closure-driven programs (optdsl.library), stepped with a closure: one ``step()`` is one
iteration (L-BFGS with ``max_iter=1``), and the table counts closure evaluations too.
Landscapes, convergence tests, plots and the table are optdsl.apps.landscape's.

Typical use::

    from optdsl.apps.second_order import run_second_order
    from optdsl.apps.landscape import format_landscape
    print(format_landscape(run_second_order(out_dir="landscape-out")))
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optdsl.apps.landscape import (
    LANDSCAPES,
    Landscape,
    _check,
    _select_landscapes,
    _Status,
    _unfinished_label,
    plot_landscape,
)
from optdsl.apps.ui import Progress, one_torch_thread, racer_device


@dataclass(frozen=True)
class Racer:
    """A second-order racer: its label, optdsl.library class, keywords, and whether its
    closure must keep the gradient's graph (Hessian-vector products)."""

    label: str
    cls: str
    hypers: dict[str, Any] = field(default_factory=dict)
    second_order: bool = False


#: The racers, in the table's order ("gd" takes the landscape's SGD learning rate).
RACERS: dict[str, Racer] = {
    "gd": Racer("gradient descent", "SGD"),
    "newton": Racer("Newton", "Newton", second_order=True),
    "saddle-free-newton": Racer("saddle-free Newton", "SaddleFreeNewton", second_order=True),
    "bfgs": Racer("BFGS", "BFGS"),
    # one iteration a step; max_eval as for max_iter=20 (torch's default max_eval of 1 for
    # max_iter=1 leaves its line search no evaluation, and L-BFGS would not move)
    "lbfgs": Racer("L-BFGS", "LBFGS", {"max_iter": 1, "max_eval": 25, "history_size": 10,
                                        "line_search_fn": "strong_wolfe"}),
    "cg": Racer("conjugate gradients (PR+)", "NonlinearCG"),
    "coordinate": Racer("coordinate descent (Newton)", "CoordinateDescent",
                        {"rule": "newton"}, second_order=True),
}


def _optimizer(racer: Racer, land: Landscape, params, backend: str):
    from optdsl import library

    hypers = dict(racer.hypers)
    if racer.cls == "SGD":
        hypers["lr"] = land.lrs["sgd"]
    return getattr(library, racer.cls)(params, backend=backend, **hypers), hypers


def race_second_order(land: Landscape, key: str, *, max_iters: int = 500, tol: float = 1e-3,
                      backend: str = "auto") -> dict[str, Any]:
    """One racer on one landscape (the dict of optdsl.apps.landscape.race, plus
    ``evaluations``: the closure's calls)."""
    racer = RACERS[key]
    p = torch.tensor(land.start, dtype=torch.float64, device=racer_device(backend),
                     requires_grad=True)
    optimizer, hypers = _optimizer(racer, land, [p], backend)
    calls = [0]

    def closure():
        calls[0] += 1
        optimizer.zero_grad()
        loss = land.value(p)
        loss.backward(create_graph=racer.second_order)
        return loss

    path = [p.detach().cpu().numpy().copy()]
    began = time.perf_counter()
    status, steps = _Status(False), 0
    value = grad_norm = math.nan
    while True:
        loss = land.value(p)
        (grad,) = torch.autograd.grad(loss, [p])
        value, grad_norm = loss.item(), float(grad.norm())
        status = _check(land, path[-1], value, grad_norm, tol)
        if status.done or steps >= max_iters:
            break
        optimizer.step(closure)
        steps += 1
        path.append(p.detach().cpu().numpy().copy())
    final = path[-1]
    return {
        "function": land.key, "optimizer": racer.label, "spec": key, "hypers": hypers,
        "converged": status.converged, "iterations": steps if status.converged else None,
        "steps": steps,
        "outcome": status.outcome if status.done else _unfinished_label(land, final),
        "final_point": [float(final[0]), float(final[1])], "final_value": value,
        "grad_norm": grad_norm, "seconds": time.perf_counter() - began,
        "evaluations": calls[0], "path": np.asarray(path),
    }


def run_second_order(out_dir: str | os.PathLike[str] | None = None, max_iters: int = 500,
                     tol: float = 1e-3, *, functions: Sequence[str] | None = None,
                     racers: Sequence[str] | None = None, backend: str = "auto",
                     progress: bool = False) -> list[dict[str, Any]]:
    """Race the second-order set on the landscapes (default: all four); with ``out_dir``,
    ``landscape_<function>_second_order.png`` per function."""
    keys = list(racers) if racers is not None else list(RACERS)
    unknown = [k for k in keys if k not in RACERS]
    if unknown:
        raise ValueError(f"unknown racer(s) {', '.join(unknown)}: expected "
                         f"{', '.join(RACERS)}")
    results: list[dict[str, Any]] = []
    for land in _select_landscapes(functions):
        bar = Progress(land.key, len(keys), enabled=progress)
        runs = []
        with one_torch_thread():
            for done, key in enumerate(keys, start=1):
                runs.append(race_second_order(land, key, max_iters=max_iters, tol=tol,
                                              backend=backend))
                bar.update(done, runs[-1]["optimizer"])
        bar.close()
        if out_dir is not None:
            plot_landscape(land, runs, Path(out_dir) / f"landscape_{land.key}_second_order.png")
        results.extend(runs)
    return results


def format_evaluations(results: Sequence[dict[str, Any]]) -> str:
    """A line per function: the closure evaluations each racer made."""
    lines = []
    for key in dict.fromkeys(r["function"] for r in results):
        counts = ", ".join(f"{r['optimizer']} {r['evaluations']}" for r in results
                           if r["function"] == key)
        lines.append(f"{key}: closure evaluations: {counts}")
    return "\n".join(lines)


__all__ = ["LANDSCAPES", "RACERS", "Racer", "format_evaluations", "race_second_order",
           "run_second_order"]
