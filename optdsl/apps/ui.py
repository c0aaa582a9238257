"""What the apps share: a one-line progress bar, one torch thread for tiny models, the device a
racer runs on, matplotlib figures drawn without pyplot, line styles that keep coinciding curves
apart, and the message for a missing demo extra."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import numpy as np
import torch


class Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal, else printed once."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        width: int = 24,
        label_width: int = 18,
    ) -> None:
        self.label = label
        self.total = max(1, total)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.label_width = label_width
        self.interactive = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()

    def _line(self, done: int, info: str) -> str:
        filled = round(self.width * min(done, self.total) / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        label = self.label[: self.label_width].ljust(self.label_width)
        return f"{label} [{bar}] {done}/{self.total} {elapsed:5.1f}s {info}".rstrip()

    def update(self, done: int, info: str = "") -> None:
        """Redraw the bar at ``done`` of ``total`` (only on an interactive terminal)."""
        if self.interactive:
            self.stream.write("\r\033[K" + self._line(done, info))
            self.stream.flush()

    def close(self, info: str = "") -> None:
        """Draw the finished bar and end the line."""
        if not self.enabled:
            return
        prefix = "\r\033[K" if self.interactive else ""
        self.stream.write(prefix + self._line(self.total, info) + "\n")
        self.stream.flush()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run tiny CPU models on one intra-op thread (more only contend on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def racer_device(backend: str) -> torch.device:
    """CPU, except that backend="triton" runs on the GPU when there is one."""
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def new_agg_figure(**kwargs: Any) -> Any:
    """A matplotlib Figure drawn by the Agg canvas: no pyplot, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


#: What ``pip install 'optdsl[demo]'`` brings, by import name: (distribution, what needs it).
DEMO_EXTRAS: dict[str, tuple[str, str]] = {
    "sklearn": ("scikit-learn", "the digits data"),
    "matplotlib": ("matplotlib", "the pictures"),
}


def missing_demo_extras(command: str, modules: Sequence[str]) -> str | None:
    """None when each of ``modules`` (keys of :data:`DEMO_EXTRAS`) imports, else the message
    that says which are missing and how to install them (checked before any work starts)."""
    import importlib

    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if not missing:
        return None
    needs = " and ".join(f"{DEMO_EXTRAS[m][0]} (for {DEMO_EXTRAS[m][1]})" for m in missing)
    verb = "is" if len(missing) == 1 else "are"
    return (f"optdsl {command}: error: it needs {needs}, which {verb} not installed; install "
            f"the demo extra: pip install 'optdsl[demo]' (in a checkout: pip install -e "
            f"'.[demo]', or `make demo`, which installs everything into .venv)")


#: Line styles and markers, one per curve in drawing order, so that curves are told apart by
#: more than their colour.
_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 2)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def curve_style(index: int, count: int, points: int, hidden: bool = False) -> dict[str, Any]:
    """matplotlib keywords for the ``index``-th of ``count`` curves of ``points`` points each.

    Later curves are a little thinner; a ``hidden`` one (a later curve lies on it) is drawn
    wide and pale, so that it shows as a band around the curve that covers it."""
    width = 2.2 - 0.8 * index / max(1, count - 1)
    every = max(1, points // 8)
    return {
        "linestyle": _LINESTYLES[index % len(_LINESTYLES)],
        "linewidth": width + 3.0 if hidden else width,
        "alpha": 0.45 if hidden else 0.95,
        "marker": _MARKERS[index % len(_MARKERS)],
        "markersize": 8 if hidden else 5,
        "markevery": (index * every // max(1, count), every),  # markers at staggered places
    }


def _point_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance from each of ``points`` (n, 2) to the polyline through ``line`` (m, 2)."""
    if len(line) == 1:
        return np.hypot(*(points - line[0]).T)
    start, end = line[:-1], line[1:]
    seg = end - start
    length2 = np.maximum((seg**2).sum(axis=1), 1e-300)
    rel = points[:, None, :] - start[None, :, :]
    along = np.clip((rel * seg[None]).sum(axis=2) / length2[None], 0.0, 1.0)
    nearest = start[None] + along[..., None] * seg[None]
    return np.sqrt(((points[:, None, :] - nearest) ** 2).sum(axis=2)).min(axis=1)


def _thin(points: np.ndarray, most: int = 300) -> np.ndarray:
    if len(points) <= most:
        return points
    keep = np.unique(np.linspace(0, len(points) - 1, most).round().astype(int))
    return points[keep]


def paths_coincide(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """Whether two paths (arrays of (x, y) points; a curve is (epoch, value)) lie within
    ``tolerance`` of each other everywhere: then one drawn over the other hides it."""
    a, b = _thin(np.asarray(a, dtype=float)), _thin(np.asarray(b, dtype=float))
    if len(a) == 0 or len(b) == 0:
        return False
    return bool(max(_point_to_polyline(a, b).max(), _point_to_polyline(b, a).max()) <= tolerance)


def overlap_notes(
    names: Sequence[str], coincide: Callable[[int, int], bool], what: str = "path"
) -> list[str]:
    """A legend note per curve, in drawing order: for one that later curves hide, which."""
    notes = []
    for i in range(len(names)):
        over = [names[j] for j in range(i + 1, len(names)) if coincide(i, j)]
        notes.append(f" [same {what} as {', '.join(over)}, drawn under it]" if over else "")
    return notes
