"""A disk cache of generated source modules: Triton's @jit reads a kernel's source from its
file, so generated code is written to a real file and imported from there.

An entry is ``<tag>_<digest>.py`` where the digest hashes the source, the caller's options
(e.g. the block size), the optdsl version and the Triton version, so an upgrade never
reuses a stale file. (Element dtypes are constexpr kernel arguments: Triton's own cache
specializes on them, so they do not change the file.) Writes are atomic (a temporary file
in the same directory, then ``os.replace``). An entry that does not hold exactly the
expected text, or that fails to import, is a miss: it is rebuilt with a warning, never a
crash. The directory is per user: ``$OPTDSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/optdsl``,
else ``~/.cache/optdsl``, created with mode 0o700; when it cannot be written, a private
``tempfile.mkdtemp()`` directory is used for the rest of the process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

_LOCK = threading.RLock()
_MODULES: dict[tuple[str, str], ModuleType] = {}
_FALLBACK: Path | None = None


def default_dir() -> Path:
    """The cache directory this process would use (without creating it)."""
    explicit = os.environ.get("OPTDSL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "optdsl"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def cache_dir() -> Path:
    """The cache directory, created if needed; a private temporary one when unwritable."""
    path = default_dir()
    if _writable(path):
        return path
    return _fallback(f"optdsl cache directory {path} is not writable")


def _fallback(reason: str) -> Path:
    """The private temporary cache directory of this process, made (with a warning saying
    ``reason``) on first use."""
    global _FALLBACK
    with _LOCK:
        if _FALLBACK is None or not _FALLBACK.is_dir():
            _FALLBACK = Path(tempfile.mkdtemp(prefix="optdsl-cache-"))
            warnings.warn(f"{reason}; using {_FALLBACK} for this process (set "
                          f"OPTDSL_CACHE_DIR to choose another)", RuntimeWarning, stacklevel=4)
        return _FALLBACK


def _versions() -> dict[str, str]:
    from optdsl.version import VERSION as __version__

    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - the cache also serves sources without Triton
        triton_version = "none"
    return {"optdsl": __version__, "triton": triton_version}


def digest(source: str, options: Mapping[str, object] | None = None) -> str:
    """The hex digest that names the entry of ``source`` under ``options``."""
    key = {"source": source, "options": dict(options or {}), **_versions()}
    blob = json.dumps(key, sort_keys=True, default=repr).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


STALE_SECONDS = 600.0  # a temporary file older than this lost its writer (killed mid-write)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete what killed writers of ``path`` left (write_atomic's temporaries); a recent one
    may belong to a writer still at work and stays."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.stem}-*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to delete


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Triton resolves a kernel's globals through its module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def entry_path(source: str, tag: str, options: Mapping[str, object] | None = None) -> Path:
    """Where the entry of ``source`` lives (written if missing or corrupt)."""
    return _ensure(cache_dir(), source, tag, digest(source, options))


def _ensure(directory: Path, source: str, tag: str, key: str) -> Path:
    path = directory / f"{tag}_{key}.py"
    try:
        existing = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = None
    except (OSError, UnicodeDecodeError):
        existing = ""
    if existing != source:
        if existing is not None:
            warnings.warn(f"optdsl cache entry {path} is corrupt; rebuilding it",
                          RuntimeWarning, stacklevel=4)
        _remove_stale_temporaries(path)
        try:
            write_atomic(path, source)
        except OSError as exc:  # e.g. a directory in the entry's place, or a full disk
            fallback = _fallback(f"optdsl cache entry {path} cannot be written "
                                 f"({exc.strerror or type(exc).__name__})")
            if fallback == directory:
                raise
            return _ensure(fallback, source, tag, key)
    return path


def load_module(source: str, tag: str, options: Mapping[str, object] | None = None,
                variant: str = "") -> ModuleType:
    """Import ``source`` from its cache file (writing it first if needed), once per process
    and ``variant`` (e.g. whether the Triton interpreter is on when it is imported)."""
    if not tag.isidentifier():
        raise ValueError(f"cache tag must be an identifier, got {tag!r}")
    key = digest(source, options)
    with _LOCK:
        found = _MODULES.get((key, variant))
        if found is not None:
            return found
        directory = cache_dir()
        path = _ensure(directory, source, tag, key)
        name = f"optdsl_cache_{tag}_{key}{'_' + variant if variant else ''}"
        try:
            module = _import(path, name)
        except Exception as exc:  # noqa: BLE001 - an entry changed underfoot: rewrite, retry
            warnings.warn(f"optdsl cache entry {path} failed to import ({type(exc).__name__}); "
                          f"rebuilding it", RuntimeWarning, stacklevel=2)
            try:
                write_atomic(path, source)
            except OSError:
                path = _ensure(_fallback(f"optdsl cache entry {path} cannot be rewritten"),
                               source, tag, key)
            module = _import(path, name)
        _MODULES[(key, variant)] = module
        return module


def clear_memory() -> None:
    """Forget the modules imported by this process (the files stay); for tests."""
    with _LOCK:
        for key, variant in list(_MODULES):
            module = _MODULES.pop((key, variant))
            sys.modules.pop(module.__name__, None)
