"""A per-user disk cache of generated modules and built artifacts, that executes or loads
exactly the bytes it verified.

Two kinds of entry, both ``<tag>_<digest><suffix>`` in one private directory:

- **text entries** (``load_module``, ``entry_path``): generated Python source whose text the
  caller knows. Triton's @jit reads a kernel's source, so the text is written to a real file;
  but what runs is never imported from it: the entry is read once (no symlink followed, no
  FIFO or device opened blocking, a regular file of this user), compared with the expected
  text, and that text is compiled into a fresh module, with ``linecache`` seeded with it (an
  entry with mtime None is never re-read from the file, so Triton sees the verified text
  too). No ``__pycache__`` bytecode is ever read or written.
- **artifacts** (``artifact``, ``verified_copy``): bytes made by a builder callback (e.g. a
  C compiler writing a shared object), stored behind a header with their SHA-256 and size,
  checked on every read. A builder runs at most once per key at a time, across processes
  (a lock file), writes into a private temporary directory, and its output is published
  atomically. ``verified_copy`` gives a fresh, never reused path holding the verified
  bytes, for loaders that cache by path (the dynamic loader).

The digest hashes the content's key (source and options, or the artifact's key material),
the optdsl version and the Triton version, so an upgrade never reuses a stale entry. A tag
is cut to MAX_TAG characters (the digest keeps names unique), so a name is bounded whatever
the program. Writes are atomic (a temporary file in the directory, then a rename). An entry
that is missing is written silently; one that does not hold what it must is rebuilt with a
RuntimeWarning saying what was found, never a crash.

The directory is ``$OPTDSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/optdsl``, else
``~/.cache/optdsl``, created with mode 0o700. It must be a real directory (not a symbolic
link), owned by this user and not writable by group or others; every entry is reached
through one descriptor of it, so it cannot be swapped between a check and a use. (A link
further up, such as a symlinked ``~/.cache``, is fine for that reason: whoever can rename
the directory can only put one of their own, which is refused, in its place.) When it is
refused or cannot be written, a private ``tempfile.mkdtemp()`` directory is used for the
rest of the process, with one warning that says why. (POSIX only, as Triton.)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import linecache
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType

_LOCK = threading.RLock()
_MODULES: dict[tuple[str, str], ModuleType] = {}
_FALLBACK: Path | None = None
_COPIES = itertools.count()
_MOVED: dict[tuple[Path, str], str] = {}  # (directory, entry) that could not be written: why

MAX_TAG = 64  # characters of a tag kept in entry names (the digest makes them unique)
MAX_ARTIFACT_BYTES = 1 << 30
STALE_SECONDS = 600.0  # a temporary file older than this lost its writer (killed mid-write)
LOCK_SECONDS = 900.0  # how long to wait for another process's build before building too

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # (getattr: the module still imports off POSIX)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
_SUFFIX = re.compile(r"(\.[A-Za-z0-9_]{1,8}){1,2}")
_HEADER = re.compile(rb"optdsl-artifact-v1 sha256=([0-9a-f]{64}) size=([0-9]{1,12})\n")


class _Refused(Exception):
    """A directory or an entry that is not what the cache may use; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- the directory --------------------------------------------------------------------------------

def default_dir() -> Path:
    """The cache directory this process would use (without creating it)."""
    explicit = os.environ.get("OPTDSL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "optdsl"


def _euid() -> int:
    return os.geteuid()


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return word
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def _not_private(st: os.stat_result) -> str | None:
    """Why a directory with status ``st`` may not hold the cache, or None."""
    if not stat.S_ISDIR(st.st_mode):
        return f"is {_kind(st.st_mode)}, not a directory"
    if st.st_uid != _euid():
        return f"is owned by another user (uid {st.st_uid}, not {_euid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _open_private(path: Path) -> int:
    """A descriptor of the directory at ``path`` (created 0o700 if missing) after checking
    it is private and writable; raises _Refused with the reason otherwise."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        if os.path.islink(path):
            raise _Refused("is a symbolic link") from None
        raise _Refused(f"is not writable ({exc.strerror or type(exc).__name__})") from None
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise _Refused("is a symbolic link") from None
        raise _Refused(f"is not usable ({exc.strerror or type(exc).__name__})") from None
    try:
        problem = _not_private(os.fstat(fd))
        if problem is not None:
            raise _Refused(problem)
        probe = f".probe-{secrets.token_hex(8)}"
        try:
            os.close(os.open(probe, _CREATE_FLAGS, 0o600, dir_fd=fd))
            os.unlink(probe, dir_fd=fd)
        except OSError as exc:
            raise _Refused(f"is not writable ({exc.strerror or type(exc).__name__})") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _directory(avoid: Path | None = None, why: str = "") -> Iterator[tuple[Path, int]]:
    """The cache directory and a descriptor of it (closed on exit): the configured one when
    it is private, else the fallback (``avoid``: a directory that just failed, ``why``)."""
    path = default_dir()
    if avoid is None:
        try:
            fd = _open_private(path)
        except _Refused as exc:
            path, fd = _fallback(f"optdsl cache directory {path} {exc.reason}")
    else:
        path, fd = _fallback(why)
        if path == avoid:
            os.close(fd)
            raise OSError(f"optdsl cannot write its cache: {why}")
    try:
        yield path, fd
    finally:
        os.close(fd)


def _fallback(reason: str) -> tuple[Path, int]:
    """The private temporary cache directory of this process and a descriptor of it, made
    (with a warning saying ``reason``) on first use."""
    global _FALLBACK
    with _LOCK:
        for _ in range(3):
            if _FALLBACK is None:
                _FALLBACK = Path(tempfile.mkdtemp(prefix="optdsl-cache-"))
                warnings.warn(f"{reason}; using {_FALLBACK} for this process (set "
                              f"OPTDSL_CACHE_DIR to a private directory to choose another)",
                              RuntimeWarning, stacklevel=5)
            try:
                return _FALLBACK, _open_private(_FALLBACK)
            except _Refused:
                _FALLBACK = None  # removed or tampered with: make another
        raise OSError(f"optdsl cannot make a private cache directory ({reason})")


def cache_dir() -> Path:
    """The cache directory, created if needed; a private temporary one (with a warning) when
    the configured one is refused or cannot be written."""
    with _directory() as (path, _):
        return path


# -- names and keys -----------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    from optdsl.version import VERSION as __version__

    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - the cache also serves sources without Triton
        triton_version = "none"
    return {"optdsl": __version__, "triton": triton_version}


def _hash(key: Mapping[str, object]) -> str:
    blob = json.dumps({**key, **_versions()}, sort_keys=True, default=repr).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def digest(source: str, options: Mapping[str, object] | None = None) -> str:
    """The hex digest that names the entry of ``source`` under ``options``."""
    return _hash({"source": source, "options": dict(options or {})})


def entry_name(tag: str, key: str, suffix: str = ".py") -> str:
    """The file name of an entry: the tag (an identifier, cut to MAX_TAG characters), the
    digest and the suffix; at most MAX_TAG + 50 characters whatever the program."""
    if not isinstance(tag, str) or not tag.isidentifier() or not tag.isascii():
        raise ValueError(f"cache tag must be an ASCII identifier, got {tag!r}")
    if not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"cache suffix must look like '.so' or '.tar.gz', got {suffix!r}")
    return f"{tag[:MAX_TAG]}_{key}{suffix}"


# -- reading and writing entries through the directory's descriptor --------------------------

def _read(dfd: int, name: str, limit: int) -> bytes | None:
    """The bytes of entry ``name`` (None when there is none), read once, without following a
    symlink or blocking on a FIFO or device; _Refused when it is not a regular file of this
    user of at most ``limit`` bytes."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):  # (looked at first: a device is never opened)
        raise _Refused(f"{_kind(st.st_mode)}, not a regular file")
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refused("a symbolic link, not a regular file") from None
        raise
    try:
        st = os.fstat(fd)  # what was opened, whatever the name holds now
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"{_kind(st.st_mode)}, not a regular file")
        if st.st_uid != _euid():
            raise _Refused(f"owned by another user (uid {st.st_uid})")
        if st.st_size > limit:
            raise _Refused(f"larger than expected ({st.st_size} bytes)")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _Refused("growing while it was read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _publish(dfd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` as entry ``name`` so that readers see the old entry or the whole new
    one: a temporary file ``.<stem>-<random>.tmp`` beside it, synced, then renamed."""
    stem = name.split(".", 1)[0]
    tmp = f".{stem}-{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, _CREATE_FLAGS, mode, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


def _remove_stale(directory: Path, dfd: int, prefixes: tuple[str, ...]) -> None:
    """Delete what killed writers and builders left (temporaries whose name starts with one
    of ``prefixes``); a recent one may belong to a writer still at work and stays."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(dfd) as entries:
        for entry in entries:
            if not entry.name.startswith(prefixes):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if now - st.st_mtime <= STALE_SECONDS:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(directory / entry.name)  # (a builder's, in our directory)
                else:
                    os.unlink(entry.name, dir_fd=dfd)
            except OSError:
                pass  # gone already, or not ours to delete


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one (for
    files outside the cache, e.g. ``optdsl compile -o``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _problem(path: Path, exc: BaseException) -> str:
    if isinstance(exc, _Refused):
        return f"optdsl cache entry {path} is corrupt ({exc.reason})"
    return f"optdsl cache entry {path} cannot be read ({getattr(exc, 'strerror', None) or exc})"


# -- text entries ------------------------------------------------------------------------------

def _ensure_text(name: str, text: str) -> Path:
    """The path of entry ``name`` after making sure it holds exactly ``text``."""
    data = text.encode("utf-8")
    avoid, why = _moved_before(name)
    while True:
        with _directory(avoid, why) as (directory, dfd):
            path = directory / name
            try:
                found = _read(dfd, name, len(data))
                if found == data:
                    return path
                if found is not None:
                    _warn(f"optdsl cache entry {path} is corrupt (not the expected text); "
                          f"rebuilding it")
            except (OSError, _Refused) as exc:
                _warn(_problem(path, exc) + "; rebuilding it")
            _remove_stale(directory, dfd, (f".{name.split('.', 1)[0]}-",))
            try:
                _publish(dfd, name, data)
                return path
            except OSError as exc:  # e.g. a directory in the entry's place, or a full disk
                avoid, why = _moved(name, directory, path, exc)


def _moved(name: str, directory: Path, path: Path, exc: OSError) -> tuple[Path, str]:
    """Remember for the rest of the process that entry ``name`` cannot be written in
    ``directory`` (it lives in the fallback)."""
    why = f"optdsl cache entry {path} cannot be written ({exc.strerror or type(exc).__name__})"
    _MOVED[(directory, name)] = why
    return directory, why


def _moved_before(name: str) -> tuple[Path | None, str]:
    """(the configured directory, why) when entry ``name`` could not be written there."""
    directory = default_dir()
    why = _MOVED.get((directory, name))
    return (directory, why) if why is not None else (None, "")


def entry_path(source: str, tag: str, options: Mapping[str, object] | None = None) -> Path:
    """Where the entry of ``source`` lives (written if missing or corrupt)."""
    return _ensure_text(entry_name(tag, digest(source, options)), source)


def _execute(text: str, path: Path, name: str) -> ModuleType:
    """A fresh module made by compiling ``text`` (never bytecode from beside ``path``),
    registered in sys.modules (Triton resolves a kernel's globals through its module), with
    linecache holding ``text`` for ``path`` (mtime None: never re-read from the file)."""
    filename = str(path)
    code = compile(text, filename, "exec", dont_inherit=True)
    module = ModuleType(name)
    module.__file__ = filename
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - the verified text, by design
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_module(source: str, tag: str, options: Mapping[str, object] | None = None,
                variant: str = "") -> ModuleType:
    """Run ``source`` as a module whose file is its cache entry (written first if needed),
    once per process and ``variant`` (e.g. whether the Triton interpreter is on when it is
    imported)."""
    key = digest(source, options)
    name = entry_name(tag, key)
    with _LOCK:
        found = _MODULES.get((key, variant))
        if found is not None:
            return found
        path = _ensure_text(name, source)
        module_name = f"optdsl_cache_{name[:-3]}{'_' + variant if variant else ''}"
        module = _execute(source, path, module_name)
        _MODULES[(key, variant)] = module
        return module


def clear_memory() -> None:
    """Forget the modules run by this process (the files stay); for tests."""
    with _LOCK:
        for key, variant in list(_MODULES):
            module = _MODULES.pop((key, variant))
            sys.modules.pop(module.__name__, None)


# -- artifacts -------------------------------------------------------------------------------

Builder = Callable[[Path], None]


def _frame(payload: bytes) -> bytes:
    sha = hashlib.sha256(payload).hexdigest()
    return f"optdsl-artifact-v1 sha256={sha} size={len(payload)}\n".encode("ascii") + payload


def _unframe(data: bytes) -> bytes:
    """The payload of a stored artifact after checking its size and SHA-256."""
    end = data.find(b"\n", 0, 128)
    match = _HEADER.fullmatch(data[:end + 1]) if end >= 0 else None
    if match is None:
        raise _Refused("without a valid artifact header")
    payload = data[end + 1:]
    if len(payload) != int(match.group(2)):
        raise _Refused(f"holding {len(payload)} bytes, not the {int(match.group(2))} recorded")
    if hashlib.sha256(payload).hexdigest() != match.group(1).decode("ascii"):
        raise _Refused("not matching its recorded SHA-256")
    return payload


def _read_artifact(dfd: int, path: Path, warn: bool) -> bytes | None:
    try:
        data = _read(dfd, path.name, MAX_ARTIFACT_BYTES + 128)
        return None if data is None else _unframe(data)
    except (OSError, _Refused) as exc:
        if warn:
            _warn(_problem(path, exc) + "; rebuilding it")
        return None


@contextlib.contextmanager
def _build_lock(dfd: int, name: str) -> Iterator[None]:
    """Hold ``.<name>.lock`` (flock) while building, so that one process builds a key at a
    time; after LOCK_SECONDS of waiting (a stuck builder) build without it."""
    import fcntl

    fd = os.open(f".{name}.lock", os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600,
                 dir_fd=dfd)
    try:
        deadline = time.monotonic() + LOCK_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


def _run_builder(directory: Path, dfd: int, build: Builder, suffix: str) -> bytes:
    """Run ``build(path)`` with a path in a fresh private directory; return what it wrote."""
    _remove_stale(directory, dfd, (".build-", ".load-"))
    workdir = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
    try:
        out = workdir / f"artifact{suffix}"
        build(out)
        wfd = os.open(workdir, _DIR_FLAGS)
        try:
            data = _read(wfd, out.name, MAX_ARTIFACT_BYTES)
        except _Refused as exc:
            raise RuntimeError(f"the cache builder's output {out} is {exc.reason}") from None
        finally:
            os.close(wfd)
        if data is None:
            raise RuntimeError(f"the cache builder wrote nothing at {out}")
        return data
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def artifact(tag: str, key: Mapping[str, object], suffix: str, build: Builder) -> bytes:
    """The bytes of the artifact that ``key`` names (e.g. source, compiler, flags, target),
    verified against the SHA-256 stored with them. On a miss (or a corrupt entry: with a
    warning) ``build(path)`` writes it to ``path``; it runs at most once per key at a time
    across processes, and its output is published atomically (a builder killed midway
    leaves no entry). A builder's exception propagates, leaving no entry."""
    name = entry_name(tag, _hash({"artifact": dict(key), "suffix": suffix}), suffix)
    (avoid, why), payload = _moved_before(name), None
    while True:
        with _directory(avoid, why) as (directory, dfd):
            path = directory / name
            found = _read_artifact(dfd, path, warn=True)
            if found is not None:
                return found
            with _build_lock(dfd, name):
                found = _read_artifact(dfd, path, warn=False)  # built while we waited?
                if found is not None:
                    return found
                if payload is None:
                    payload = _run_builder(directory, dfd, build, suffix)
                try:
                    _publish(dfd, name, _frame(payload))
                    return payload
                except OSError as exc:  # e.g. a directory in the entry's place
                    avoid, why = _moved(name, directory, path, exc)


@contextlib.contextmanager
def verified_copy(tag: str, key: Mapping[str, object], suffix: str,
                  build: Builder) -> Iterator[Path]:
    """``with verified_copy(...) as path``: a path that holds exactly the artifact's verified
    bytes (see ``artifact``), unique to this call and never reused (the dynamic loader caches
    by path), in the cache directory; removed on exit (a loaded shared object stays
    mapped)."""
    payload = artifact(tag, key, suffix, build)
    with _directory() as (directory, dfd):
        name = f".load-{os.getpid()}-{next(_COPIES)}-{secrets.token_hex(8)}{suffix}"
        fd = os.open(name, _CREATE_FLAGS, 0o700, dir_fd=dfd)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
    path = directory / name
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
