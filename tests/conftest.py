"""Test-suite settings.

- Under CI (CI=true) hypothesis draws the same examples every run, so a red CI always means a
  reproducible failure; locally it explores new examples each run.
- The suite writes only into pytest's temporary directories: for the whole session the kernel
  cache (``OPTDSL_CACHE_DIR``) and the temporary directory of this process and of every child
  it starts (``tempfile.tempdir``, ``TMPDIR``: where the cache's private fallback directories
  go) point into the session's base temporary directory. A test that needs another cache or
  HOME sets its own (``monkeypatch.setenv``, or a child's environment); tests/test_hermetic.py
  checks that a session leaves nothing in the real ``~/.cache/optdsl`` or the system's
  temporary directory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _files_stay_in_pytest_temporary_directories(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Point the kernel cache and the temporary directory into the session's tmp dir."""
    cache = tmp_path_factory.mktemp("optdsl-cache")
    scratch = tmp_path_factory.mktemp("tmp")
    saved_env = {name: os.environ.get(name) for name in ("OPTDSL_CACHE_DIR", "TMPDIR")}
    saved_tempdir = tempfile.tempdir
    os.environ["OPTDSL_CACHE_DIR"] = str(cache)
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = str(scratch)
    try:
        yield
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def triton_interpreter(monkeypatch: pytest.MonkeyPatch,
                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """Triton kernels run in its interpreter (``TRITON_INTERPRET=1``: no GPU here), with one
    kernel cache for the session's tests that ask for it (compiled once, shared)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "optdsl-cache"))
