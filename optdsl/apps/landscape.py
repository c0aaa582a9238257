"""Optimizers racing on 2-D functions: where each one goes, and how fast.

The racers are the very optimizers used for training (the bundled :mod:`optdsl.library`
classes, or any ``.opt`` program by path, with ``:name=value`` overrides such as
``mine.opt:lr=0.05``; see :mod:`optdsl.apps.racers` for the spec syntax), driving
one parameter: a float64 tensor of shape (2,) holding the point (x, y), with gradients from
autograd.  Four landscapes:

* ``bowl``: the strongly convex bowl x^2 + 10 y^2, minimum (0, 0), badly conditioned (10:1);
* ``two_minima``: -2 exp(-((x-1)^2+y^2)/0.2) - 6 exp(-((x+1)^2+y^2)/0.2) + x^2 + y^2, with a
  global minimum on the left (near (-1, 0)) and a local one on the right (near (1, 0));
* ``rosenbrock``: (1-x)^2 + 100 (y-x^2)^2, minimum (1, 1) at the end of a curved valley;
* ``saddle``: x^2 - y^2, a saddle at (0, 0) and no minimum: a racer should *escape*.

A racer has converged when the gradient norm or the distance to a known minimum drops below
``tol``; it then reports which minimum (or stationary point) it reached.  On the saddle the
outcome is "escaped" once f falls below the plotted range, "stuck at saddle (0,0)" if it
settles there.  Anything that becomes non-finite or runs off to |p| > 1e6 has "diverged".

Typical use::

    from optdsl.apps.landscape import run_landscape, format_landscape
    results = run_landscape(out_dir="landscape-out")   # writes landscape_<name>.png
    print(format_landscape(results))
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optdsl.apps.racers import (
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
    paths_coincide,
    racer_device,
)

__all__ = [
    "DEFAULT_RACERS",
    "LANDSCAPES",
    "Landscape",
    "format_landscape",
    "format_table",
    "landscape_figure",
    "plot_landscape",
    "race",
    "run_landscape",
    "write_pictures",
]

#: The racers when ``programs`` is None.
DEFAULT_RACERS: tuple[str, ...] = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")

_DIVERGED_NORM = 1e6

#: Two paths closer than this fraction of the plot's diagonal everywhere look like one line:
#: the legend says which one lies under which.
OVERLAP_TOLERANCE = 0.01


@dataclass(frozen=True)
class Point:
    """A named point of a landscape (a minimum or another stationary point)."""

    label: str
    x: float
    y: float

    def distance(self, p: np.ndarray) -> float:
        return float(math.hypot(p[0] - self.x, p[1] - self.y))


@dataclass(frozen=True)
class Landscape:
    """A 2-D test function with its known minima, plot window and per-racer learning rates."""

    key: str
    title: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    start: tuple[float, float]
    minima: tuple[Point, ...]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    lrs: Mapping[str, float]
    others: tuple[Point, ...] = ()
    escape_below: float | None = None  # unbounded below: f < this counts as "escaped"
    log_levels: bool = False
    levels: int = 30

    def value(self, p: torch.Tensor) -> torch.Tensor:
        return self.fn(p)


def _bowl(p: torch.Tensor) -> torch.Tensor:
    x, y = p[0], p[1]
    return x**2 + 10 * y**2


def _two_minima(p: torch.Tensor) -> torch.Tensor:
    x, y = p[0], p[1]
    right = torch.exp(-((x - 1) ** 2 + y**2) / 0.2)
    left = torch.exp(-((x + 1) ** 2 + y**2) / 0.2)
    return -2 * right - 6 * left + x**2 + y**2


def _rosenbrock(p: torch.Tensor) -> torch.Tensor:
    x, y = p[0], p[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _saddle(p: torch.Tensor) -> torch.Tensor:
    x, y = p[0], p[1]
    return x**2 - y**2


#: The four landscapes, by key.  Learning rates are per landscape: one lr cannot suit both a
#: bowl with curvature 20 and Rosenbrock's valley with curvature ~1000.  "user" is the lr given
#: to a ``.opt`` program whose ``lr`` has no default.
LANDSCAPES: dict[str, Landscape] = {
    "bowl": Landscape(
        key="bowl",
        title=r"Convex bowl  $f = x^2 + 10y^2$",
        fn=_bowl,
        start=(-4.0, 2.0),
        minima=(Point("(0,0) minimum", 0.0, 0.0),),
        xlim=(-5.0, 5.0),
        ylim=(-2.5, 2.5),
        lrs={"sgd": 0.09, "momentum": 0.01, "nesterov": 0.01, "adagrad": 1.0,
             "rmsprop": 0.05, "adam": 0.3, "torch-sgd": 0.09, "user": 0.05},
    ),
    "two_minima": Landscape(
        key="two_minima",
        title=r"Two minima  $f = -2e^{-((x-1)^2+y^2)/0.2} - 6e^{-((x+1)^2+y^2)/0.2} + x^2 + y^2$",
        fn=_two_minima,
        start=(1.6, 0.9),
        minima=(
            Point("left (-1,0) global", -0.9675774464554598, 0.0),
            Point("right (1,0) local", 0.9053178606008483, 0.0),
        ),
        others=(Point("saddle (0.12,0)", 0.12025036405942166, 0.0),),
        xlim=(-2.0, 2.2),
        ylim=(-1.5, 1.5),
        lrs={"sgd": 0.02, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.5,
             "rmsprop": 0.02, "adam": 0.1, "torch-sgd": 0.02, "user": 0.02},
        levels=40,
    ),
    "rosenbrock": Landscape(
        key="rosenbrock",
        title=r"Rosenbrock  $f = (1-x)^2 + 100(y-x^2)^2$",
        fn=_rosenbrock,
        start=(-1.5, 2.0),
        minima=(Point("(1,1) minimum", 1.0, 1.0),),
        xlim=(-2.0, 2.0),
        ylim=(-1.0, 3.0),
        lrs={"sgd": 1e-3, "momentum": 1e-3, "nesterov": 1e-3, "adagrad": 1.0,
             "rmsprop": 1e-3, "adam": 0.05, "torch-sgd": 1e-3, "user": 1e-3},
        log_levels=True,
    ),
    "saddle": Landscape(
        key="saddle",
        title=r"Saddle  $f = x^2 - y^2$",
        fn=_saddle,
        start=(-1.8, 0.01),
        minima=(),
        others=(Point("stuck at saddle (0,0)", 0.0, 0.0),),
        xlim=(-2.0, 2.0),
        ylim=(-3.0, 3.0),
        lrs={"sgd": 0.05, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.5,
             "rmsprop": 0.05, "adam": 0.05, "torch-sgd": 0.05, "user": 0.05},
        escape_below=-4.0,
    ),
}


@dataclass
class _Status:
    """Where a racer stands after a gradient evaluation."""

    done: bool
    converged: bool = False
    outcome: str = ""


def _nearest(points: Sequence[Point], p: np.ndarray) -> tuple[Point | None, float]:
    best = min(points, key=lambda q: q.distance(p), default=None)
    return best, (best.distance(p) if best else math.inf)


def _check(land: Landscape, p: np.ndarray, value: float, grad_norm: float, tol: float) -> _Status:
    """Has the racer converged, escaped or diverged at ``p``?"""
    if not (np.all(np.isfinite(p)) and math.isfinite(value) and math.isfinite(grad_norm)):
        return _Status(True, outcome="diverged")
    if land.escape_below is not None and value < land.escape_below:
        return _Status(True, converged=True, outcome="escaped")
    if float(np.hypot(*p)) > _DIVERGED_NORM:
        return _Status(True, outcome="diverged")
    minimum, distance = _nearest(land.minima, p)
    if minimum is not None and distance < tol:
        return _Status(True, converged=True, outcome=minimum.label)
    if grad_norm < tol:
        return _Status(True, converged=True, outcome=_stationary_label(land, p))
    return _Status(False)


def _stationary_label(land: Landscape, p: np.ndarray) -> str:
    """Name the stationary point a racer settled at (a known one within 0.1, else its position)."""
    point, distance = _nearest((*land.minima, *land.others), p)
    if point is not None and distance < 0.1:
        return point.label
    return f"stationary at ({p[0]:.2f},{p[1]:.2f})"


def _unfinished_label(land: Landscape, p: np.ndarray) -> str:
    """Outcome of a racer that ran out of iterations: where it was heading, if close."""
    point, distance = _nearest(land.minima, p)
    if point is not None and distance < 0.5:
        return f"near {point.label}"
    return f"at ({p[0]:.2f},{p[1]:.2f})"


def race(
    land: Landscape,
    spec: str | OptimizerSpec,
    *,
    max_iters: int = 5000,
    tol: float = 1e-3,
    backend: str = "auto",
    start: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Run one optimizer on one landscape from ``start`` (default: the landscape's).

    Returns a dict: ``function``, ``optimizer`` (display name), ``spec``, ``hypers``,
    ``lr`` (the learning rate it ran with, None if it has none), ``converged`` (bool),
    ``iterations`` (steps until converged or escaped, else None), ``steps`` (steps taken),
    ``outcome`` (which minimum, "escaped", "diverged", ...),
    ``final_point``, ``final_value``, ``grad_norm``, ``seconds`` and ``path`` (an
    ``(steps + 1, 2)`` NumPy array of visited points, the start included).
    """
    spec = parse_optimizer_spec(spec)
    p = torch.tensor(start or land.start, dtype=torch.float64, device=racer_device(backend),
                     requires_grad=True)
    name, optimizer, hypers = make_optimizer(spec, [p], land.lrs, backend)
    path = [p.detach().cpu().numpy().copy()]
    began = time.perf_counter()
    status, steps = _Status(False), 0
    value, grad_norm = math.nan, math.nan
    while True:
        optimizer.zero_grad()
        loss = land.value(p)
        loss.backward()
        value, grad_norm = loss.item(), float(p.grad.norm())
        status = _check(land, path[-1], value, grad_norm, tol)
        if status.done or steps >= max_iters:
            break
        optimizer.step()
        steps += 1
        path.append(p.detach().cpu().numpy().copy())
    final = path[-1]
    outcome = status.outcome if status.done else _unfinished_label(land, final)
    return {
        "function": land.key,
        "optimizer": name,
        "spec": spec.text,
        "hypers": hypers,
        "lr": learning_rate(optimizer),
        "converged": status.converged,
        "iterations": steps if status.converged else None,
        "steps": steps,
        "outcome": outcome,
        "final_point": [float(final[0]), float(final[1])],
        "final_value": value,
        "grad_norm": grad_norm,
        "seconds": time.perf_counter() - began,
        "path": np.asarray(path),
    }


def _select_landscapes(functions: Sequence[str] | None) -> list[Landscape]:
    if functions is None:
        return list(LANDSCAPES.values())
    unknown = [key for key in functions if key not in LANDSCAPES]
    if unknown:
        raise ValueError(
            f"unknown function(s) {', '.join(unknown)}: expected {', '.join(LANDSCAPES)}"
        )
    return [LANDSCAPES[key] for key in functions]


def run_landscape(
    programs: Sequence[str | os.PathLike[str]] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    max_iters: int = 5000,
    tol: float = 1e-3,
    *,
    functions: Sequence[str] | None = None,
    backend: str = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Race optimizers on the 2-D landscapes; optionally draw one contour plot per function.

    Args:
        programs: racer specs as in :mod:`optdsl.apps.racers` (bundled names such as "adam",
            ``.opt`` paths, ``:name=value`` overrides such as ``mine.opt:lr=0.05``); None races
            :data:`DEFAULT_RACERS`.  A list of only ``.opt`` paths races them alongside the
            defaults.  Learning rates not given as overrides come from each landscape's table
            (a ``.opt`` program's own default lr, if it declares one, is kept).
        out_dir: if given, ``landscape_<function>.png`` is written there for each function,
            once every race has run (:func:`write_pictures`).
        max_iters: optimizer steps allowed per racer and function.
        tol: converged when the gradient norm, or the distance to a known minimum, is below it.
        functions: keys of :data:`LANDSCAPES` to run (default: all four).
        backend: "auto" or a back end's name ("numpy", "c", "triton", "torch"), passed to
            the compiled optimizers.
        progress: draw a progress bar per function on stderr.

    Returns:
        One :func:`race` dict per (function, racer), functions in order, racers in order.
    """
    specs = resolve_optimizer_specs(programs, DEFAULT_RACERS)
    landscapes = _select_landscapes(functions)
    for land in landscapes:
        check_racers(specs, land.lrs, backend, racer_device(backend), torch.float64)
    results: list[dict[str, Any]] = []
    for number, land in enumerate(landscapes, start=1):
        label = f"{land.key} ({number}/{len(landscapes)})"
        bar = Progress(label, len(specs), enabled=progress, label_width=20)
        with one_torch_thread():
            for done, spec in enumerate(specs, start=1):
                bar.update(done - 1, f"racing {spec.text}")
                results.append(race(land, spec, max_iters=max_iters, tol=tol, backend=backend))
        bar.close()
    if out_dir is not None:
        write_pictures(results, out_dir)
    return results


def write_pictures(
    results: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """One contour plot per function of ``results`` (``landscape_<function>.png`` in
    ``out_dir``, created if needed); returns the paths written."""
    by_function: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_function.setdefault(str(r["function"]), []).append(r)
    return [plot_landscape(LANDSCAPES[key], runs, Path(out_dir) / f"landscape_{key}.png")
            for key, runs in by_function.items()]


def format_landscape(results: Sequence[Mapping[str, Any]]) -> str:
    """The race results as an aligned table: function, optimizer, the lr it ran with,
    iterations, outcome, final f."""
    header = ("function", "optimizer", "lr", "iterations", "outcome", "final f")
    rows = [
        (
            str(r["function"]),
            str(r["optimizer"]),
            _format_lr(r.get("lr")),
            str(r["iterations"]) if r["converged"] else "did not converge",
            str(r["outcome"]),
            f"{r['final_value']:.4g}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {2, 3, 5}

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    return "\n".join(out)


def _format_lr(lr: Any) -> str:
    return "-" if lr is None else f"{lr:g}"


#: The same as :func:`format_landscape`, under the name :mod:`optdsl.apps.demo` uses.
format_table = format_landscape


def _grid_values(land: Landscape, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f on an n x n grid over the landscape's plot window."""
    xs = torch.linspace(*land.xlim, n, dtype=torch.float64)
    ys = torch.linspace(*land.ylim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    with torch.no_grad():
        z = land.value(torch.stack([gx, gy]))
    return gx.numpy(), gy.numpy(), z.numpy()


def plot_landscape(
    land: Landscape,
    runs: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
) -> Path:
    """Contour plot of ``land`` with each racer's path; writes a PNG and returns its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = landscape_figure(land, runs)
    fig.savefig(out, dpi=100, bbox_inches="tight")  # the whole legend, however long
    return out


def landscape_figure(land: Landscape, runs: Sequence[Mapping[str, Any]]) -> Any:
    """The matplotlib Figure of :func:`plot_landscape`: contours, paths, minima, legend.

    Each path has its own line style and marker; a path that a later one covers (within
    :data:`OVERLAP_TOLERANCE` of the window's diagonal) is drawn as a wide pale band under it,
    and its legend entry says which path covers it."""
    gx, gy, z = _grid_values(land)
    fig = new_agg_figure(figsize=(8, 7.6))
    ax = fig.subplots()
    label = "f(x, y)"
    if land.log_levels:  # log10 f shows a valley floor that linear levels flatten away
        z, label = np.log10(np.maximum(z, 1e-3)), r"$\log_{10} f(x, y)$"
    contour = ax.contourf(gx, gy, z, levels=land.levels, cmap="viridis", alpha=0.85)
    ax.contour(gx, gy, z, levels=contour.levels, colors="white", linewidths=0.3, alpha=0.5)
    fig.colorbar(contour, ax=ax, shrink=0.9, label=label)
    diagonal = math.hypot(land.xlim[1] - land.xlim[0], land.ylim[1] - land.ylim[0])
    paths = [_finite_points(run) for run in runs]
    notes = overlap_notes(
        [str(run["optimizer"]) for run in runs],
        lambda i, j: paths_coincide(paths[i], paths[j], OVERLAP_TOLERANCE * diagonal))
    for index, (run, points, note) in enumerate(zip(runs, paths, notes)):
        style = curve_style(index, len(runs), len(points), hidden=bool(note))
        _draw_path(ax, run, points, style, note)
    for point in land.minima:
        ax.plot(point.x, point.y, marker="*", color="gold", markeredgecolor="black",
                markersize=15, linestyle="none", zorder=5)
    for point in land.others:
        ax.plot(point.x, point.y, marker="x", color="white", markersize=9, mew=2,
                linestyle="none", zorder=5)
    ax.plot(*land.start, marker="o", color="white", markeredgecolor="black", markersize=8,
            linestyle="none", zorder=6, label="start")
    ax.set(xlim=land.xlim, ylim=land.ylim, xlabel="x", ylabel="y", title=land.title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def _finite_points(run: Mapping[str, Any]) -> np.ndarray:
    points = np.asarray(run["path"], dtype=float)
    return points[np.all(np.isfinite(points), axis=1)]


def _draw_path(
    ax: Any, run: Mapping[str, Any], points: np.ndarray, style: Mapping[str, Any], note: str
) -> None:
    """One racer's path: a line through the visited points (in ``style``) and a dot where it
    stopped; ``note`` (e.g. which path hides this one) ends its legend entry."""
    if len(points) == 0:
        return
    steps = "did not converge" if not run["converged"] else f"{run['iterations']} it"
    label = f"{run['optimizer']}: {run['outcome']} ({steps}){note}"
    (line,) = ax.plot(points[:, 0], points[:, 1], label=label, **style)
    ax.plot(points[-1, 0], points[-1, 1], "o", color=line.get_color(), markeredgecolor="black",
            markersize=6, zorder=7)
