"""The test suite leaves no files outside pytest's temporary directories.

A pytest session is started in a child process with tests/conftest.py as a plugin, a HOME and a
TMPDIR of its own and no OPTDSL_CACHE_DIR or XDG_CACHE_HOME: the way a developer or CI runs the
suite. Its tests do each thing that used to leave files behind (about 960 in ~/.cache/optdsl
and five /tmp/optdsl-cache-* directories a run): write a kernel-cache entry, fall back to a
private cache directory when the cache cannot be written, and both again in a child process.
Afterwards neither HOME's cache nor the top of TMPDIR may hold anything from optdsl.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

INNER_TESTS = '''
import os
import subprocess
import sys
import warnings

import pytest

from optdsl.runtime import cache

CHILD = """
import warnings
from optdsl.runtime import cache
warnings.simplefilter("ignore")
print(cache.entry_path("VALUE = 3\\\\n", "hermetic_child"))
"""


def test_cache_entry():
    assert cache.entry_path("VALUE = 1\\n", "hermetic").is_file()


def test_private_fallback_when_the_cache_cannot_be_written(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(cache, "_FALLBACK", None)
    with pytest.warns(RuntimeWarning, match="not writable"):
        assert cache.entry_path("VALUE = 2\\n", "hermetic").is_file()


def test_children_inherit_the_cache_and_the_temporary_directory(tmp_path):
    subprocess.run([sys.executable, "-c", CHILD], check=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {k: v for k, v in os.environ.items() if k != "OPTDSL_CACHE_DIR"}
    env["HOME"] = str(blocker / "home")  # nothing can be created under it: a fallback
    subprocess.run([sys.executable, "-c", CHILD], env=env, check=True)
'''


def test_a_session_leaves_nothing_in_home_or_tmp(tmp_path):
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPTDSL_CACHE_DIR", "XDG_CACHE_HOME", "PYTEST_ADDOPTS")}
    env.update(HOME=str(home), TMPDIR=str(scratch),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT),
                                           env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
         "-W", "ignore::pytest.PytestAssertRewriteWarning", "test_inner.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 passed" in done.stdout, done.stdout[-3000:]
    assert not (home / ".cache" / "optdsl").exists(), sorted((home / ".cache").rglob("*"))
    left = sorted(p.name for p in scratch.iterdir() if p.name.startswith("optdsl"))
    assert left == [], f"optdsl directories left in TMPDIR: {left}"
