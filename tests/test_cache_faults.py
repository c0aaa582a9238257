"""The kernel disk cache (optdsl.runtime.cache) under concurrency and faults.

- 8 processes compiling the same programs into one empty cache at the same moment all
  succeed, without warnings, and leave exactly one complete entry per program (no temporary
  files) that a later process loads silently and trains with;
- a writer killed (SIGKILL) in the middle of writing an entry leaves no entry (only its
  temporary file); the next process writes the entry afresh, without a warning, and sweeps
  the temporary file once it is stale;
- a corrupted entry (truncated, empty, NUL-filled, invalid UTF-8, other valid Python, a
  directory or a symbolic link in its place) is rebuilt with a RuntimeWarning and the
  program trains;
- with HOME unwritable (and no OPTDSL_CACHE_DIR / XDG_CACHE_HOME) training still works: the
  cache falls back to a private temporary directory with one warning.

Children are ``sys.executable`` subprocesses with their own environment (HOME,
OPTDSL_CACHE_DIR, TRITON_INTERPRET=1) under tmp_path; the kernels run in the Triton
interpreter, so no GPU is needed (the tests that import Triton skip without it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

import optdsl
from optdsl import library
from optdsl.runtime import cache

ROOT = Path(__file__).resolve().parent.parent

PROGRAMS = {  # name -> source; the children compile these by name
    "Adam": None,  # the bundled one
    "Clip": """optimizer Clip
hyper lr = 0.1, max_norm = 1.0
state m = 0
c = min(1, max_norm / (global_norm(g) + 1e-6))
m = 0.9 * m + c * g
w = w - lr * m / (norm(m) + 1)
""",
    "Sign": "optimizer Sign\nhyper lr = 0.01\nw = w - lr * sign(g) * exp(-abs(g))\n",
}
# Many entries, so that the racing processes' writes and reads interleave.
VARIANTS = {f"Clip{i}": PROGRAMS["Clip"].replace("0.9 *", f"{0.9 + i / 1000!r} *")
            for i in range(1, 25)}
PROGRAMS.update(VARIANTS)

# Shared by the children: build a program, its Triton module (as the runtime does), train.
PRELUDE = textwrap.dedent("""
    import json, os, sys, time, warnings
    warnings.simplefilter("error")  # a warning (corrupt entry, fallback) fails the child
    import optdsl
    from optdsl import library
    from optdsl.runtime import cache

    PROGRAMS = json.loads(os.environ["FAULT_PROGRAMS"])

    def program(name):
        return library.program(name) if PROGRAMS[name] is None else optdsl.compile(PROGRAMS[name])

    def module(name):  # what TritonRunner.module() does
        prog = program(name)
        return cache.load_module(prog.source("triton"), "triton_" + prog.name,
                                 {"kind": "triton-step"}, "interpret")

    def train(name, backend, steps=5):
        import torch
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1).double()
        x = torch.randn(64, 4, dtype=torch.float64)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
        opt = program(name).optimizer(model.parameters(), backend=backend, lr=0.05)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, [p.detach().numpy().tolist() for p in model.parameters()]
""")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    import json

    env = {k: v for k, v in os.environ.items()
           if k not in ("OPTDSL_CACHE_DIR", "XDG_CACHE_HOME", "TRITON_INTERPRET")}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
               HOME=str(tmp_path / "home"), TRITON_INTERPRET="1",
               FAULT_PROGRAMS=json.dumps(PROGRAMS), PYTHONDONTWRITEBYTECODE="1")
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


def _run(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, check=False, timeout=timeout, cwd=env["HOME"])


def _sources() -> dict[str, str]:
    out = {}
    for name, text in PROGRAMS.items():
        prog = library.program(name) if text is None else optdsl.compile(text)
        out[name] = prog.source("triton")
    return out


def _entries(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".py")


def _leftovers(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("."))


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="needs triton")


# -- 8 processes at once ---------------------------------------------------------------------------

@needs_triton
def test_eight_processes_fill_an_empty_cache_at_once(tmp_path):
    directory = tmp_path / "cache"  # does not exist yet: the children race to create it too
    go = tmp_path / "go"
    env = _env(tmp_path, OPTDSL_CACHE_DIR=str(directory), FAULT_GO=str(go))
    child = """
        import random
        import triton, triton.language  # imports done before the start signal
        real_fdopen = cache.os.fdopen

        class SlowWriter:  # a slow disk: every entry takes a few milliseconds to write
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                return self.f.__exit__(*exc)
            def write(self, text):
                for i in range(0, len(text), 1024):
                    self.f.write(text[i:i + 1024])
                    self.f.flush()
                    time.sleep(0.0005)
            def __getattr__(self, name):
                return getattr(self.f, name)

        cache.os.fdopen = lambda *a, **k: SlowWriter(real_fdopen(*a, **k))
        names = list(PROGRAMS)
        random.Random(os.getpid()).shuffle(names)  # each process in its own order
        programs = [program(name) for name in names]
        while not os.path.exists(os.environ["FAULT_GO"]):
            time.sleep(0.002)
        for round in range(2):  # the second round reads every entry back from disk
            cache.clear_memory()
            for name in names:
                m = module(name)
                assert callable(m.step) and m.SWEEPS, name
        print("ok", os.getpid())
    """
    procs = [subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(child)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=env["HOME"]) for _ in range(8)]
    time.sleep(1.5)  # let them import
    go.touch()
    outputs = [p.communicate(timeout=90) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and out.startswith("ok"), err[-2000:]
        assert "Warning" not in err, err[-2000:]

    sources = _sources()
    entries = _entries(directory)
    assert len(entries) == len(sources)
    assert sorted(e.read_text() for e in entries) == sorted(sources.values())
    assert not _leftovers(directory), _leftovers(directory)  # no temporary or probe files
    assert directory.stat().st_mode & 0o777 == 0o700
    for e in entries:
        assert e.stat().st_mode & 0o777 == 0o600

    # A later process finds every entry complete: it loads them silently and trains.
    done = _run("""
        losses, _ = train("Adam", "triton")
        assert losses[-1] < losses[0], losses
        for name in PROGRAMS:
            module(name)
        print("ok")
    """, env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    assert set(entries) <= set(_entries(directory))  # (training adds Adam's specialized step)
    assert sorted(e.read_text() for e in entries) == sorted(sources.values())
    assert not _leftovers(directory)


# -- a writer killed mid-write ---------------------------------------------------------------------

KILLED_WRITER = """
    warnings.simplefilter("ignore")  # (a corrupt entry being replaced warns)
    import os as _os
    real_fdopen = _os.fdopen
    marker = _os.environ["FAULT_MARKER"]

    class HalfWriter:  # writes half the entry, says so, then hangs until killed
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)
        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            open(marker, "w").close()
            time.sleep(120)
        def __getattr__(self, name):
            return getattr(self.f, name)

    cache.os.fdopen = lambda *a, **k: HalfWriter(real_fdopen(*a, **k))
    module("Clip")
    print("finished")  # never reached
"""


def _kill_mid_write(tmp_path: Path, env: dict[str, str]) -> None:
    marker = tmp_path / "writing"
    env = dict(env, FAULT_MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(KILLED_WRITER)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=env["HOME"])
    try:
        deadline = time.monotonic() + 45
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and "finished" not in out


@needs_triton
def test_writer_killed_mid_write_leaves_no_partial_entry(tmp_path):
    directory = tmp_path / "cache"
    env = _env(tmp_path, OPTDSL_CACHE_DIR=str(directory))
    _kill_mid_write(tmp_path, env)
    assert _entries(directory) == [], "a partial entry is visible under its final name"
    (tmp,) = _leftovers(directory)  # the dead writer's temporary file stays behind
    assert tmp.name.startswith(".triton_Clip_") and tmp.name.endswith(".tmp")
    source = _sources()["Clip"]
    assert 0 < len(tmp.read_text()) < len(source)
    # Aged past STALE_SECONDS, the dead writer's file is swept by the next writer of the
    # entry; a recent one (a writer that may still be at work) is left alone.
    old = time.time() - 2 * cache.STALE_SECONDS
    os.utime(tmp, (old, old))
    inflight = tmp.with_name(tmp.name.rsplit("-", 1)[0] + "-inflight.tmp")
    inflight.write_text("partial")

    # The next process sees a miss (not a corrupt entry: no warning), writes and trains.
    done = _run("""
        m = module("Clip")
        losses, _ = train("Clip", "triton")
        assert losses[-1] < losses[0], losses
        print("ok")
    """, env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    (entry,) = _entries(directory)
    assert entry.read_text() == source
    assert _leftovers(directory) == [inflight]


@needs_triton
def test_writer_killed_while_rebuilding_a_corrupt_entry(tmp_path, monkeypatch):
    """Killed while replacing a corrupt entry: the corrupt entry stays as it was (the
    replacement is atomic) and the next process rebuilds it, with a warning."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(directory))
    source = _sources()["Clip"]
    entry = cache.entry_path(source, "triton_Clip", {"kind": "triton-step"})
    entry.write_text("def step(:\n")
    env = _env(tmp_path, OPTDSL_CACHE_DIR=str(directory))
    _kill_mid_write(tmp_path, env)
    assert entry.read_text() == "def step(:\n"
    done = _run("""
        warnings.simplefilter("default")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module("Clip")
        assert any("corrupt" in str(w.message) for w in caught), caught
        print("ok")
    """, env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    assert entry.read_text() == source


# -- corrupted entries -------------------------------------------------------------------------------

CORRUPTIONS = {
    "truncated": lambda path, text: path.write_text(text[: len(text) // 3]),
    "empty": lambda path, text: path.write_text(""),
    "nul-filled": lambda path, text: path.write_bytes(b"\x00" * len(text.encode())),
    "invalid-utf8": lambda path, text: path.write_bytes(b"\xff\xfe" + text.encode()[2:]),
    "other-python": lambda path, text: path.write_text(
        "import os\nraise SystemExit('not the kernel')\n"),
    "one-byte-flipped": lambda path, text: path.write_text(text.replace("0.9", "0.8", 1)),
    "directory": lambda path, text: (path.unlink(), path.mkdir()),
    "dangling-link": lambda path, text: (path.unlink(), path.symlink_to(path.parent / "nowhere")),
    # a link is never followed, even to a file holding exactly the expected text
    "link-to-a-good-copy": lambda path, text: (
        (path.parent.parent / "copy.py").write_text(text), path.unlink(),
        path.symlink_to(path.parent.parent / "copy.py")),
    "link-to-dev-zero": lambda path, text: (path.unlink(), path.symlink_to("/dev/zero")),
}


@needs_triton
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_entry_is_rebuilt_with_a_warning(corruption, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(cache, "_FALLBACK", None)
    prog = optdsl.compile(PROGRAMS["Clip"])
    source = prog.source("triton")
    path = cache.entry_path(source, "triton_Clip", {"kind": "triton-step"})
    CORRUPTIONS[corruption](path, source)
    cache.clear_memory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = cache.load_module(source, "triton_Clip", {"kind": "triton-step"}, "interpret")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("corrupt" in m for m in messages), messages
    assert not path.is_symlink()
    assert Path(module.__file__).read_text() == source
    if corruption != "directory":  # rebuilt in place
        assert path.read_text() == source and Path(module.__file__) == path

    # and the program trains through it, like the NumPy backend
    cache.clear_memory()
    torch.manual_seed(0)
    base = [torch.randn(7, dtype=torch.float64), torch.randn(300, dtype=torch.float64)]
    grads = [[torch.randn_like(b) for b in base] for _ in range(3)]
    results = {}
    for backend in ("numpy", "triton"):
        ps = [torch.nn.Parameter(b.clone()) for b in base]
        opt = prog.optimizer(ps, backend=backend)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.step()
        results[backend] = ps
    for a, b in zip(results["numpy"], results["triton"]):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-9, atol=1e-12)


# -- HOME unwritable ----------------------------------------------------------------------------------

TRAIN_BOTH = """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref_losses, ref = train("Adam", "numpy", steps=8)
        losses, got = train("Adam", "triton", steps=8)
    assert losses[-1] < losses[0], losses
    import numpy as np
    for a, b in zip(ref, got):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-9, atol=1e-12)
    fallback = [str(w.message) for w in caught if "not writable" in str(w.message)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    print("ok", cache._FALLBACK)
"""


@needs_triton
def test_training_works_with_home_unwritable(tmp_path):
    """HOME below a regular file: nothing can be created there, whoever runs the test (root
    ignores permission bits, so a read-only HOME would not do)."""
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a directory")
    env = _env(tmp_path)
    env["HOME"] = str(blocker / "home")
    done = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(TRAIN_BOTH)],
                          env=env, capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]
    fallback = Path(done.stdout.split()[1])
    assert fallback.name.startswith("optdsl-cache-")
    assert blocker.is_file()


@needs_triton
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through read-only permission bits")
def test_training_works_with_home_read_only(tmp_path):
    home = tmp_path / "ro-home"
    home.mkdir()
    home.chmod(0o500)
    try:
        env = _env(tmp_path)
        env["HOME"] = str(home)
        done = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(TRAIN_BOTH)],
                              env=env, capture_output=True, text=True, check=False, timeout=120,
                              cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]
    finally:
        home.chmod(0o700)


# -- artifacts: built bytes (e.g. the C back end's shared objects) --------------------------------

def _payload(seed: str) -> bytes:
    return (b"\x7fELF not really a shared object " + seed.encode()) * 4000


class CountingBuilder:
    """Writes ``_payload(seed)`` to the path it is given, counting its runs."""

    def __init__(self, seed: str = "a") -> None:
        self.seed = seed
        self.runs = 0

    def __call__(self, path: Path) -> None:
        self.runs += 1
        path.write_bytes(_payload(self.seed))


@pytest.fixture
def artifact_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_FALLBACK", None)
    return tmp_path / "cache"


def _artifact(build, key=None, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = cache.artifact("c_Demo", key or {"source": "int f(void);", "cc": "gcc 13"},
                              ".so", build, **kw)
    return data, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def _artifact_entries(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".so")
                  and not p.name.startswith("."))


def test_artifact_is_built_once_then_read_and_verified(artifact_dir):
    build = CountingBuilder()
    data, messages = _artifact(build)
    assert data == _payload("a") and build.runs == 1 and not messages
    (entry,) = _artifact_entries(artifact_dir)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert entry.read_bytes().endswith(_payload("a"))  # behind a header with its SHA-256
    assert not [p for p in artifact_dir.iterdir() if p.name.startswith(".build-")]
    again, messages = _artifact(CountingBuilder("never-used"))
    assert again == data and not messages
    other = CountingBuilder("b")
    assert _artifact(other, key={"source": "int g(void);"})[0] == _payload("b")
    assert other.runs == 1 and len(_artifact_entries(artifact_dir)) == 2


ARTIFACT_CORRUPTIONS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-100]),
    "payload-byte-flipped": lambda p: p.write_bytes(p.read_bytes()[:-1] + b"X"),
    "size-changed": lambda p: p.write_bytes(p.read_bytes().replace(b"size=", b"size=1", 1)),
    "no-header": lambda p: p.write_bytes(_payload("a")),
    "empty": lambda p: p.write_bytes(b""),
    "header-only": lambda p: p.write_bytes(p.read_bytes().split(b"\n", 1)[0] + b"\n"),
    "directory": lambda p: (p.unlink(), p.mkdir()),
    "link-to-a-good-copy": lambda p: (p.parent.parent.joinpath("copy").write_bytes(
        p.read_bytes()), p.unlink(), p.symlink_to(p.parent.parent / "copy")),
    "fifo": lambda p: (p.unlink(), os.mkfifo(p)),
}


@pytest.mark.parametrize("corruption", list(ARTIFACT_CORRUPTIONS))
def test_corrupt_artifact_is_a_miss_with_a_warning(artifact_dir, corruption):
    _artifact(CountingBuilder())
    (entry,) = _artifact_entries(artifact_dir)
    ARTIFACT_CORRUPTIONS[corruption](entry)
    build = CountingBuilder()
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_artifact(build)), daemon=True)
    worker.start()
    worker.join(60)  # a FIFO opened blocking would hang here
    assert result, f"reading an artifact entry that is {corruption} hung"
    data, messages = result[0]
    assert data == _payload("a") and build.runs == 1
    assert "corrupt" in messages[0], messages
    if corruption == "directory":  # cannot be replaced: kept in the private fallback
        assert len(messages) == 2 and "cannot be written" in messages[1], messages
    else:
        assert len(messages) == 1, messages
        assert entry.is_file() and not entry.is_symlink()
    assert _artifact(CountingBuilder("unused")) == (data, [])


def test_failing_builder_leaves_no_entry(artifact_dir):
    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("the compiler failed")

    with pytest.raises(RuntimeError, match="the compiler failed"):
        _artifact(broken)
    assert not _artifact_entries(artifact_dir)
    assert not [p for p in artifact_dir.iterdir() if p.name.startswith(".build-")]
    with pytest.raises(RuntimeError, match="wrote nothing"):
        _artifact(lambda path: None)
    build = CountingBuilder()
    assert _artifact(build) == (_payload("a"), []) and build.runs == 1


def test_bad_artifact_suffix_is_refused(artifact_dir):
    for suffix in ("so", ".so/../x", ".", ".s o", ".verylongsuffix"):
        with pytest.raises(ValueError, match="suffix"):
            cache.artifact("c_Demo", {}, suffix, CountingBuilder())


def test_verified_copy_is_a_fresh_path_holding_the_verified_bytes(artifact_dir, monkeypatch):
    build = CountingBuilder()
    with cache.verified_copy("c_Demo", {"k": 1}, ".so", build) as first, \
            cache.verified_copy("c_Demo", {"k": 1}, ".so", build) as second:
        assert first != second and first.parent == second.parent == artifact_dir
        assert first.read_bytes() == second.read_bytes() == _payload("a")
    assert not first.exists() and not second.exists() and build.runs == 1
    # the entry is swapped right after it was verified: the copy holds the verified bytes
    real_read = cache._read

    def read_then_swap(dfd, name, limit):
        data = real_read(dfd, name, limit)
        if data is not None and not name.startswith("."):
            os.unlink(name, dir_fd=dfd)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dfd)
            os.write(fd, b"evil")
            os.close(fd)
        return data

    monkeypatch.setattr(cache, "_read", read_then_swap)
    with cache.verified_copy("c_Demo", {"k": 1}, ".so", build) as path:
        assert path.read_bytes() == _payload("a")


C_SOURCE = "int answer(void) { return %d; }\n"


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_verified_copies_load_as_distinct_shared_objects(artifact_dir):
    """What the C back end will do: build, verify, load. Two entries loaded one after the
    other from fresh paths are two libraries (the dynamic loader caches by path)."""
    import ctypes

    def compiled(value: int):
        def build(path: Path) -> None:
            source = path.with_suffix(".c")
            source.write_text(C_SOURCE % value)
            subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(path), str(source)],
                           check=True, capture_output=True)
        return build

    answers = []
    for value in (41, 42, 41):
        with cache.verified_copy("c_Answer", {"source": C_SOURCE % value}, ".so",
                                 compiled(value)) as path:
            answers.append(ctypes.CDLL(str(path)).answer())
    assert answers == [41, 42, 41]


ARTIFACT_CHILD = textwrap.dedent("""
    import hashlib, os, sys, time, warnings
    warnings.simplefilter("error")  # a warning (corrupt entry, fallback) fails the child
    from pathlib import Path
    from optdsl.runtime import cache

    def payload():
        return (b"\\x7fELF not really a shared object a") * 4000

    def build(path):
        with open(os.environ["BUILD_LOG"], "a") as log:
            log.write(f"{os.getpid()}\\n")
        data = payload()
        marker = os.environ.get("FAULT_MARKER")
        with open(path, "wb") as f:
            for i in range(0, len(data), 8192):  # a slow compiler
                f.write(data[i:i + 8192])
                f.flush()
                if marker and i >= len(data) // 2:
                    open(marker, "w").close()
                    time.sleep(120)  # killed here
                time.sleep(0.002)

    go = os.environ.get("FAULT_GO")
    while go and not os.path.exists(go):
        time.sleep(0.002)
    data = cache.artifact("c_Demo", {"source": "int f(void);", "cc": "gcc 13"}, ".so", build)
    assert data == payload()
    with cache.verified_copy("c_Demo", {"source": "int f(void);", "cc": "gcc 13"}, ".so",
                             build) as path:
        assert path.read_bytes() == data
    print("ok", hashlib.sha256(data).hexdigest())
""")


def _artifact_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OPTDSL_CACHE_DIR=str(tmp_path / "cache"),
               BUILD_LOG=str(tmp_path / "builds.log"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def test_eight_processes_build_one_artifact_at_once(tmp_path):
    go = tmp_path / "go"
    env = _artifact_env(tmp_path, FAULT_GO=str(go))
    procs = [subprocess.Popen([sys.executable, "-c", ARTIFACT_CHILD], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    time.sleep(1.0)  # let them import
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and out.startswith("ok"), err[-2000:]
    assert len({out for out, _ in outputs}) == 1
    assert len((tmp_path / "builds.log").read_text().split()) == 1  # built once
    directory = tmp_path / "cache"
    assert len(_artifact_entries(directory)) == 1
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".")]
    assert all(name.endswith(".lock") for name in leftovers), leftovers


def test_builder_killed_mid_build_leaves_no_entry(tmp_path):
    marker = tmp_path / "building"
    env = _artifact_env(tmp_path, FAULT_MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", ARTIFACT_CHILD], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the builder never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    directory = tmp_path / "cache"
    assert not _artifact_entries(directory), "a partial artifact is visible"
    (workdir,) = [p for p in directory.iterdir() if p.name.startswith(".build-")]
    old = time.time() - 2 * cache.STALE_SECONDS
    os.utime(workdir, (old, old))

    env.pop("FAULT_MARKER")
    done = subprocess.run([sys.executable, "-c", ARTIFACT_CHILD], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    assert len((tmp_path / "builds.log").read_text().split()) == 2  # killed, then built
    assert len(_artifact_entries(directory)) == 1
    assert not workdir.exists()  # the dead builder's directory was swept
