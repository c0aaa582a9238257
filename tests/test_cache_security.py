"""The kernel cache runs exactly the text it verified, from a directory only its user controls.

Each test is an attack of issue 15, item 1, or its class:

- bytecode planted beside an entry (``__pycache__/<entry>.cpython-3XX.pyc`` with an
  unchecked hash, or a sourceless ``.pyc``) never runs, and the cache writes none;
- a cache directory that is a symbolic link (``$OPTDSL_CACHE_DIR`` or ``~/.cache/optdsl``),
  owned by another user, or writable by group or others is refused with one warning, and a
  private 0700 directory is used instead;
- a FIFO, a link to a device or another special file at an entry's path is never opened
  blocking: the load finishes (run in a child process under a timeout) and rebuilds it;
- an entry swapped between its check and its use: what runs, and what Triton's @jit reads
  through inspect/linecache, is the verified text;
- entry names stay short whatever the tag (issue 15, item 7), and a read failure says what
  happened instead of calling the entry corrupt.
"""

from __future__ import annotations

import errno
import importlib.util
import inspect
import linecache
import os
import py_compile
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from optdsl.runtime import cache

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "VALUE = 42\n\ndef answer():\n    return VALUE\n"
EVIL = """import os
open(os.environ["EVIL_MARKER"], "w").write("ran")
VALUE = 666

def answer():
    return VALUE
"""


@pytest.fixture
def private(tmp_path, monkeypatch):
    """A fresh cache directory (not yet created), no fallback yet, no modules in memory."""
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EVIL_MARKER", str(tmp_path / "evil-ran"))
    monkeypatch.setattr(cache, "_FALLBACK", None)
    cache.clear_memory()
    yield tmp_path
    cache.clear_memory()


def load(source: str = SOURCE, tag: str = "demo"):
    """load_module, returning the module and the RuntimeWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = cache.load_module(source, tag)
    return module, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


# -- planted bytecode ---------------------------------------------------------------------------

def _plant(entry: Path, target: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL)
    target.parent.mkdir(exist_ok=True)
    py_compile.compile(str(evil), cfile=str(target), dfile=str(entry),
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


@pytest.mark.parametrize("where", ["__pycache__", "sourceless"])
def test_planted_bytecode_never_runs(private, where):
    entry = cache.entry_path(SOURCE, "demo")
    if where == "__pycache__":  # what Python's loader prefers to the source
        target = Path(importlib.util.cache_from_source(str(entry)))
    else:
        target = entry.with_suffix(".pyc")
    _plant(entry, target, private)
    module, messages = load()
    assert module.VALUE == 42 and module.answer() == 42
    assert not (private / "evil-ran").exists()
    assert not messages  # the entry itself is fine


def test_the_cache_writes_no_bytecode(private, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    module, _ = load()
    assert module.VALUE == 42
    assert sorted(p.name for p in (private / "cache").iterdir()) == [Path(module.__file__).name]


# -- the directory --------------------------------------------------------------------------------

def _refused(private: Path, fragment: str, unused: Path) -> None:
    """Loading warns once with ``fragment``, runs from the private fallback, and leaves
    ``unused`` (the refused directory) without entries."""
    module, messages = load()
    assert module.VALUE == 42
    assert len(messages) == 1 and fragment in messages[0], messages
    assert Path(module.__file__).parent == cache._FALLBACK
    assert cache._FALLBACK.stat().st_mode & 0o777 == 0o700
    assert cache._FALLBACK.stat().st_uid == os.geteuid()
    assert not list(unused.glob("demo_*"))
    _, again = load(SOURCE.replace("42", "43"))  # warned once per process
    assert not again


@pytest.mark.parametrize("how", ["OPTDSL_CACHE_DIR", "HOME"])
def test_symlinked_cache_directory_is_refused(private, monkeypatch, how):
    shared = private / "shared"
    shared.mkdir(mode=0o700)
    if how == "HOME":  # ~/.cache/optdsl is a link to the shared directory
        monkeypatch.delenv("OPTDSL_CACHE_DIR")
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.setenv("HOME", str(private / "home"))
        link = private / "home" / ".cache" / "optdsl"
        link.parent.mkdir(parents=True)
    else:
        link = private / "cache"
    link.symlink_to(shared)
    assert cache.default_dir() == link
    _refused(private, "symbolic link", shared)


def test_cache_directory_owned_by_another_user_is_refused(private, monkeypatch):
    directory = private / "cache"
    directory.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(directory, 4242, 4242)
    else:  # cannot chown: be someone else instead
        monkeypatch.setattr(cache, "_euid", lambda: os.geteuid() + 4242)
    _refused(private, "owned by another user", directory)


@pytest.mark.parametrize("mode", [0o770, 0o720, 0o702, 0o777, 0o1777])
def test_group_or_world_writable_cache_directory_is_refused(private, mode):
    directory = private / "cache"
    directory.mkdir()
    directory.chmod(mode)
    _refused(private, "writable by other users", directory)


def test_cache_directory_that_is_a_file_is_refused(private):
    (private / "cache").write_text("not a directory")
    module, messages = load()
    assert module.VALUE == 42 and len(messages) == 1, messages


def test_a_private_directory_is_used_silently(private):
    directory = private / "cache"
    directory.mkdir(mode=0o755)  # readable by others is fine: only writing is a threat
    module, messages = load()
    assert not messages and Path(module.__file__).parent == directory


# -- special files at an entry's path ------------------------------------------------------------

SPECIAL_CHILD = """
import os, sys, warnings
from pathlib import Path
from optdsl.runtime import cache
source = "VALUE = 42\\n"
path = cache.entry_path(source, "demo")
path.unlink()
kind = sys.argv[1]
if kind == "fifo":
    os.mkfifo(path)
elif kind == "fifo-with-writer":  # a writer that never writes
    os.mkfifo(path)
    writer = os.open(path, os.O_RDWR)
elif kind == "link-to-fifo":
    os.mkfifo(path.parent.parent / "pipe")
    path.symlink_to(path.parent.parent / "pipe")
elif kind == "char-device":
    os.mknod(path, 0o600 | __import__("stat").S_IFCHR, os.makedev(1, 5))  # /dev/zero
elif kind == "socket":
    import socket
    s = socket.socket(socket.AF_UNIX)
    os.chdir(path.parent)  # (a socket's path is at most 108 bytes)
    s.bind(path.name)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    module = cache.load_module(source, "demo")
assert module.VALUE == 42
assert any("corrupt" in str(w.message) for w in caught), [str(w.message) for w in caught]
assert path.is_file() and not path.is_symlink() and path.read_text() == source
print("ok")
"""


@pytest.mark.parametrize("kind", ["fifo", "fifo-with-writer", "link-to-fifo", "char-device",
                                  "socket"])
def test_special_file_at_entry_path_never_blocks(tmp_path, kind):
    if kind == "char-device" and os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    env = dict(os.environ, OPTDSL_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:  # a hang is the failure: the timeout turns it into one
        done = subprocess.run([sys.executable, "-c", SPECIAL_CHILD, kind], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading an entry that is a {kind} hung")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# -- an entry swapped between its check and its use -----------------------------------------------

def _swap_after_reading(monkeypatch, evil: str) -> None:
    """Make every verification read succeed and then replace the entry with ``evil``."""
    real_read = cache._read

    def read_then_swap(dfd, name, limit):
        data = real_read(dfd, name, limit)
        fd = os.open(name, os.O_WRONLY | os.O_TRUNC, dir_fd=dfd)
        with os.fdopen(fd, "w") as f:
            f.write(evil)
        return data

    monkeypatch.setattr(cache, "_read", read_then_swap)


def test_what_runs_is_the_verified_text(private, monkeypatch):
    entry = cache.entry_path(SOURCE, "demo")
    _swap_after_reading(monkeypatch, EVIL)
    module, messages = load()
    assert entry.read_text() == EVIL  # the attack happened ...
    assert not (private / "evil-ran").exists()  # ... and did not run
    assert module.VALUE == 42 and module.answer() == 42 and not messages
    assert linecache.getlines(str(entry)) == SOURCE.splitlines(True)
    linecache.checkcache(str(entry))  # what traceback and inspect do: never re-read
    assert inspect.getsource(module.answer) == "def answer():\n    return VALUE\n"


KERNEL = """import triton
import triton.language as tl


@triton.jit
def fill(out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, tl.full([BLOCK], VALUE, tl.float32), mask=offsets < n)


VALUE = 42.0
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_compiles_the_verified_text(private, monkeypatch):
    """The interpreter re-reads a kernel's source (inspect/linecache) at its first launch,
    long after the load: it must still see the verified text."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cache.entry_path(KERNEL, "demo")
    _swap_after_reading(monkeypatch, KERNEL.replace("tl.full([BLOCK], VALUE", "tl.full([BLOCK], 666.0"))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        module = cache.load_module(KERNEL, "demo", variant="interpret")
    out = torch.zeros(8)
    module.fill[(1,)](out, 8, BLOCK=8)
    assert out.tolist() == [42.0] * 8


# -- names and messages -------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 63, 64, 65, 210, 1000, 100_000])
def test_entry_names_are_bounded(length):
    tag = "t" * length
    name = cache.entry_name(tag, "0" * 32, ".py")
    assert len(name) <= cache.MAX_TAG + 50 and name.endswith("_" + "0" * 32 + ".py")
    assert cache.entry_name(tag + "x", "1" * 32) != name


@pytest.mark.parametrize("tag", ["a b", "x/y", "..", "", "\u0430dam", None])
def test_bad_tags_are_refused(tag):
    with pytest.raises(ValueError, match="tag"):
        cache.entry_name(tag, "0" * 32)


def test_a_failed_read_says_what_happened(private, monkeypatch):
    cache.entry_path(SOURCE, "demo")

    def fails(dfd, name, limit):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cache, "_read", fails)
    module, messages = load()
    assert module.VALUE == 42
    assert len(messages) == 1 and "cannot be read (Input/output error)" in messages[0]
    assert "corrupt" not in messages[0]


LONG_CHILD = textwrap.dedent("""
    import warnings
    warnings.simplefilter("error")  # a warning (a misleading "corrupt") fails the child
    import numpy as np, torch, optdsl
    switches = 200
    lines = ["optimizer " + "L" * 210]
    lines += [f"hyper s{i} = {i % 2}" for i in range(switches)]
    lines += ["hyper lr = 0.1", "x = g"]
    lines += [f"x = where(s{i} != 0, x * 1.001, x)" for i in range(switches)]
    lines += ["w = w - lr * x"]
    prog = optdsl.compile("\\n".join(lines))
    torch.manual_seed(0)
    base = torch.randn(300, dtype=torch.float64)
    grads = [torch.randn(300, dtype=torch.float64) for _ in range(3)]
    got = {}
    for backend in ("numpy", "triton"):
        p = torch.nn.Parameter(base.clone())
        opt = prog.optimizer([p], backend=backend)
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        got[backend] = p.detach()
    torch.testing.assert_close(got["triton"], got["numpy"], rtol=1e-12, atol=1e-12)
    print("ok")
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_long_title_and_many_switches_run_on_triton(tmp_path):
    """Issue 15, item 7: a 210-character title and 200 switches gave `OSError: File name too
    long` after a misleading "cache entry is corrupt" warning."""
    env = dict(os.environ, OPTDSL_CACHE_DIR=str(tmp_path / "cache"), TRITON_INTERPRET="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", LONG_CHILD], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    names = [p.name for p in (tmp_path / "cache").iterdir()]
    assert names and all(len(n) <= cache.MAX_TAG + 50 for n in names), names
