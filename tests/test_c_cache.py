"""The C back end's shared objects in the disk cache (optdsl.runtime.cache artifacts), with the
real compiler behind a wrapper ($CC) that logs each build:

- 8 processes stepping a never-seen program into one empty cache at the same moment all
  succeed with the same bits, the step is compiled once, and one entry is left;
- a compiler killed in the middle of a build (its process and the Python above it) leaves
  no entry; the next process builds it, silently;
- a corrupted entry (flipped bits, a directory in its place) is a miss: rebuilt
  with a RuntimeWarning, and the step runs;
- the routines every step links (optdsl.codegen.c_routines: storage conversions, block
  partials) are one cached object, compiled once for every program, and a corrupted one is
  rebuilt with a warning like a step; a compiler failing on them says so and caches nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from optdsl.runtime import c_build

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(c_build.unavailable() is not None,
                                reason=f"no C compiler: {c_build.unavailable()}")

CHILD = textwrap.dedent("""
    import hashlib, os, time, warnings
    import torch
    import optdsl
    go = os.environ.get("FAULT_GO")
    while go and not os.path.exists(go):
        time.sleep(0.002)
    prog = optdsl.compile("hyper lr = 0.1\\nstate m = 0\\nm = 0.9 * m + g\\n"
                          "w = w - lr * m / (1 + norm(m))", name="Cached")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = torch.nn.Parameter(torch.linspace(-1, 1, 5000))
        opt = prog.optimizer([p], backend="c")
        for _ in range(2):
            p.grad = torch.cos(p.detach() * 3)
            opt.step()
    print("ok", hashlib.sha256(p.detach().numpy().tobytes()).hexdigest())
    for w in caught:
        print("warning:", w.message)
""")

# A program of its own (its momentum the argument) with a bfloat16 parameter: its columns
# go through the routines' storage conversions, rounding stochastically.
CONVERTING = textwrap.dedent("""
    import hashlib, os, sys, warnings
    import torch
    import optdsl
    torch.manual_seed(0)  # the stochastic rounding's seed
    prog = optdsl.compile(f"hyper lr = 0.1\\nstate m = 0\\nm = {sys.argv[1]} * m + g\\n"
                          "w = w - lr * m", name="Converting")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = torch.nn.Parameter(torch.linspace(-1, 1, 5000, dtype=torch.bfloat16))
        opt = prog.optimizer([p], backend="c", stochastic_rounding=True)
        for _ in range(2):
            p.grad = torch.cos(p.detach().float() * 3).bfloat16()
            opt.step()
    print("ok", hashlib.sha256(p.detach().view(torch.int16).numpy().tobytes()).hexdigest())
    for w in caught:
        print("warning:", w.message)
""")


def _wrapper(tmp_path: Path, hang: bool = False) -> Path:
    """A $CC that logs each build of a step (not the probe) and may hang in one."""
    real = c_build.compiler().command[0]
    log, marker = tmp_path / "builds.log", tmp_path / "building"
    hang_line = f'touch {marker}; sleep 600\n' if hang else ""
    script = tmp_path / "cc"
    script.write_text("#!/bin/sh\ncase \"$*\" in *artifact.c*)\n"
                      f"  echo build >> {log}\n  {hang_line}  ;;\n"
                      f"*routines_0.c*) echo routines >> {log} ;;\nesac\n"
                      f"exec {real} \"$@\"\n")
    script.chmod(0o755)
    return script


def _env(tmp_path: Path, cc: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OPTDSL_CACHE_DIR=str(tmp_path / "cache"), CC=str(cc),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def _entries(tmp_path: Path) -> list[Path]:
    directory = tmp_path / "cache"
    return sorted(p for p in directory.glob("c_Cached_*.so")) if directory.exists() else []


def _builds(tmp_path: Path, what: str = "build") -> int:
    """How many times the wrapper compiled a step ("build") or the routines."""
    log = tmp_path / "builds.log"
    return log.read_text().split().count(what) if log.exists() else 0


def _run(code: str, env: dict[str, str], cwd: Path, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    return done.stdout.splitlines()


def test_eight_processes_compile_one_step_at_once(tmp_path):
    go = tmp_path / "go"
    env = _env(tmp_path, _wrapper(tmp_path), FAULT_GO=str(go))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    time.sleep(2.0)  # let them import
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and out.startswith("ok"), err[-2000:]
        assert "warning" not in out, out
    assert len({out for out, _ in outputs}) == 1  # the same bits everywhere
    assert _builds(tmp_path) == 1
    assert len(_entries(tmp_path)) == 1


def test_compiler_killed_mid_build_leaves_no_entry(tmp_path):
    env = _env(tmp_path, _wrapper(tmp_path, hang=True))
    proc = subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "building").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the Python process and the compiler
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not _entries(tmp_path), "a partial shared object is visible"
    env["CC"] = str(_wrapper(tmp_path))
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    assert "warning" not in done.stdout, done.stdout
    assert _builds(tmp_path) == 2 and len(_entries(tmp_path)) == 1


@pytest.mark.parametrize("corruption", ["flipped", "directory"])
def test_corrupt_shared_object_is_rebuilt_with_a_warning(tmp_path, corruption):
    env = _env(tmp_path, _wrapper(tmp_path))
    first = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    (entry,) = _entries(tmp_path)
    data = entry.read_bytes()
    if corruption == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif corruption == "flipped":
        middle = len(data) // 2
        entry.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    else:
        entry.unlink()
        entry.mkdir()
    again = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.splitlines()[0] == first.stdout.splitlines()[0]  # the same bits
    assert "warning:" in again.stdout and "corrupt" in again.stdout, again.stdout
    assert _builds(tmp_path) == 2


def test_routines_are_compiled_once_for_every_program(tmp_path):
    env = _env(tmp_path, _wrapper(tmp_path))
    outputs = [_run(CHILD, env, tmp_path), _run(CONVERTING, env, tmp_path, "0.9"),
               _run(CONVERTING, env, tmp_path, "0.8")]
    for lines in outputs:
        assert not any(line.startswith("warning:") for line in lines), lines
    assert _builds(tmp_path) == 3 and _builds(tmp_path, "routines") == 1
    (routines,) = sorted((tmp_path / "cache").glob("c_routines_*.o"))
    assert routines.stat().st_size > 0
    # the same bits as in a cache of their own: the linked routines are the ones built
    alone = _env(tmp_path, _wrapper(tmp_path), OPTDSL_CACHE_DIR=str(tmp_path / "alone"))
    assert _run(CONVERTING, alone, tmp_path, "0.8")[0] == outputs[2][0]


def test_corrupt_routines_object_is_rebuilt_with_a_warning(tmp_path):
    env = _env(tmp_path, _wrapper(tmp_path))
    _run(CONVERTING, env, tmp_path, "0.9")
    (routines,) = sorted((tmp_path / "cache").glob("c_routines_*.o"))
    data = routines.read_bytes()
    middle = len(data) // 2
    routines.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    lines = _run(CONVERTING, env, tmp_path, "0.7")  # a new step: it links the routines
    assert any("corrupt" in line for line in lines if line.startswith("warning:")), lines
    assert _builds(tmp_path, "routines") == 2 and _builds(tmp_path) == 2
    fresh = _env(tmp_path, _wrapper(tmp_path), OPTDSL_CACHE_DIR=str(tmp_path / "fresh"))
    assert _run(CONVERTING, fresh, tmp_path, "0.7")[0] == lines[0]


def test_a_failed_routines_build_says_so_and_leaves_no_entry(tmp_path):
    """A compiler that fails on one of the routines' translation units: the step raises the
    compiler's message before writing anything, no object or step is cached, and the next
    process, with a working compiler, builds both."""
    real = c_build.compiler().command[0]
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\ncase \"$*\" in *routines_1.c*)\n"
                      "  echo 'optdsl-test: no routines today' >&2; exit 1 ;;\nesac\n"
                      f"exec {real} \"$@\"\n")
    broken.chmod(0o755)
    code = textwrap.dedent("""
        import torch, optdsl
        prog = optdsl.compile("hyper lr = 0.1\\nw = w - lr * g", name="Broken")
        p = torch.nn.Parameter(torch.ones(10))
        p.grad = torch.ones(10)
        try:
            prog.optimizer([p], backend="c").step()
        except RuntimeError as exc:
            print("raised", "no routines today" in str(exc), bool((p == 1).all()))
        else:
            print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path, broken),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.stdout.split() == ["raised", "True", "True"], done.stdout + done.stderr[-2000:]
    cache = tmp_path / "cache"
    assert not list(cache.glob("c_routines_*.o")) and not list(cache.glob("c_Broken_*.so"))
    done = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path, _wrapper(tmp_path)),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.stdout.split() == ["ok"], done.stderr[-2000:]
    assert len(list(cache.glob("c_routines_*.o"))) == 1
