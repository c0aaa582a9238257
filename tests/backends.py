"""Helpers of the tests that run one test on several back ends (numpy, c, triton)."""

from __future__ import annotations

import pytest

from optdsl.runtime import c_build


def require_backend(name: str) -> str:
    """``name``, or skip the test where that back end cannot run here: Triton not
    installed, or no working C compiler (optdsl.runtime.c_build says why)."""
    if name == "triton":
        pytest.importorskip("triton")
    if name == "c" and c_build.unavailable() is not None:
        pytest.skip(f"no C compiler: {c_build.unavailable()}")
    return name
