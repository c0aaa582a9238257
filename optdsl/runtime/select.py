"""Backend choice: "auto", "numpy" or "triton", checked at construction, not at first step."""

from __future__ import annotations

import functools
import os
from typing import Iterable

BACKENDS = ("auto", "numpy", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def choose(backend: str, devices: Iterable[str]) -> str:
    """The concrete backend for parameters on ``devices`` (device types such as "cpu")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")
    # parameters built on the meta device have no device yet (module.to_empty gives them
    # one): the optimizer chooses again when a step sees them
    devices = set(devices) - {"meta"}
    on_gpu = bool(devices - {"cpu"})
    if backend == "auto":
        if not on_gpu:
            return "numpy"
        if not triton_available():
            raise ValueError("parameters are on a GPU but Triton cannot be imported; install "
                             "triton, or move the parameters to the CPU for the NumPy backend")
        return "triton"
    if backend == "numpy":
        if on_gpu:
            raise ValueError(f"backend='numpy' runs on CPU tensors, but parameters are on "
                             f"{', '.join(sorted(devices - {'cpu'}))}; use backend='triton' or "
                             f"'auto'")
        return "numpy"
    if not triton_available():
        raise ValueError("backend='triton' needs the triton package, which cannot be imported")
    if "cpu" in devices and not interpreting():
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run "
                         "kernels on CPU tensors through the Triton interpreter)")
    return "triton"
