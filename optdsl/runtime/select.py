"""What the machine offers the back ends: whether Triton imports, and whether its kernels
are interpreted (TRITON_INTERPRET=1). Backend choice itself is optdsl.runtime.backends'."""

from __future__ import annotations

import functools
import os


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


def interpret_mode() -> str:
    """Triton decides at import whether a module's kernels are interpreted: a module is
    loaded once per mode."""
    return "interpret" if interpreting() else ""
