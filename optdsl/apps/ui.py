"""What the apps share: a one-line progress bar, one torch thread for tiny models, the device a
racer runs on, and matplotlib figures drawn without pyplot."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

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
