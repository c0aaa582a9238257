"""Compiling generated C at first use and loading it: the system compiler, its flags, the
cached shared objects and their loading.

The compiler is ``$CC`` (a command, possibly with arguments), else ``gcc``, else ``clang``
on PATH, as Triton looks. Whether it works is found once per process (and compiler) by
building a small OpenMP test; a compiler without OpenMP support builds single-threaded
steps. The flags keep IEEE semantics: ``-O3`` with no fast-math, ``-ffp-contract=off`` (no
multiply-add contraction), round to nearest (the default; ``-frounding-math`` is not
needed), ``-fno-math-errno -fno-trapping-math`` (errno and traps are not values: they let
``sqrt`` vectorize, as torch is built), ``-march=native`` (vectorized for this CPU).

A step's shared object links the routines that do not depend on the program
(optdsl.codegen.c_routines), compiled once into an object file: a cache artifact of its
own, compiled in parallel with the step's source when it is not there yet.

A shared object is an artifact of optdsl.runtime.cache: keyed by the source (and the
routines' source), the compiler's identity (resolved path and ``--version``) and target,
the flags and the CPU (its model and feature flags), verified by its SHA-256 every time it
is read, published atomically (a compiler killed midway leaves no entry), built by one
process at a time, and loaded from a fresh path that holds exactly the verified bytes (the
dynamic loader caches by path). It is
loaded with ctypes after torch, whose OpenMP runtime (``libgomp.so.1``, found by its soname
among the loaded libraries) it then shares: the step's threads are torch's threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from optdsl.codegen import c_routines

COMPILE_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno",
                 "-fno-trapping-math", "-fPIC", "-std=gnu11")
FLAGS = COMPILE_FLAGS + ("-shared",)
OPENMP = ("-fopenmp",)
COMPILE_SECONDS = 120.0
_PROBE = "#include <math.h>\nint optdsl_probe(void) { int s = 0;\n" \
         "#pragma omp parallel for reduction(+:s)\nfor (int i = 0; i < 4; i++) s += i;\n" \
         "return s + (int)sqrt(0.0); }\n"
_LOCK = threading.Lock()


class CompilerUnavailable(RuntimeError):
    """No C compiler works here; the message says what was tried."""


@dataclass(frozen=True)
class Compiler:
    command: tuple[str, ...]  # the compiler and its own arguments (from $CC)
    identity: str  # resolved path and version text
    openmp: bool

    @property
    def flags(self) -> tuple[str, ...]:
        return FLAGS + (OPENMP if self.openmp else ())

    @property
    def compile_flags(self) -> tuple[str, ...]:
        """The flags that compile one source into an object file (with ``-c``)."""
        return COMPILE_FLAGS + (OPENMP if self.openmp else ())

    @property
    def link_flags(self) -> tuple[str, ...]:
        """The flags that link object files into a step's shared object."""
        return ("-shared",) + (OPENMP if self.openmp else ())


def _candidates() -> list[tuple[str, ...]]:
    found = []
    cc = os.environ.get("CC", "").strip()
    if cc:
        found.append(tuple(shlex.split(cc)))
    for name in ("gcc", "clang"):
        path = shutil.which(name)
        if path:
            found.append((path,))
    return found


def _identity(command: tuple[str, ...]) -> str:
    path = shutil.which(command[0]) or command[0]
    out = subprocess.run([*command, "--version"], check=False, capture_output=True, text=True, timeout=30)
    machine = subprocess.run([*command, "-dumpmachine"], check=False, capture_output=True,
                             text=True, timeout=30)
    return f"{os.path.realpath(path)} {' '.join(command[1:])} | {out.stdout.strip()} | " \
           f"{machine.stdout.strip()}"


def _builds(command: tuple[str, ...], flags: tuple[str, ...]) -> str | None:
    """None if ``command`` builds the probe with ``flags``, else why not."""
    with tempfile.TemporaryDirectory(prefix="optdsl-cc-") as tmp:
        src, out = Path(tmp) / "probe.c", Path(tmp) / "probe.so"
        src.write_text(_PROBE)
        try:
            done = subprocess.run([*command, *flags, str(src), "-o", str(out), "-lm"],
                                  check=False, capture_output=True, text=True,
                                  timeout=COMPILE_SECONDS)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{' '.join(command)} cannot run ({exc})"
        if done.returncode != 0 or not out.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"{' '.join(command)} failed ({last[:200]})"
    return None


@functools.lru_cache(maxsize=8)
def _find(candidates: tuple[tuple[str, ...], ...]) -> Compiler | str:
    problems = []
    for command in candidates:
        why = _builds(command, FLAGS + OPENMP)
        openmp = why is None
        if not openmp:
            why = _builds(command, FLAGS)
        if why is None:
            try:
                return Compiler(command, _identity(command), openmp)
            except (OSError, subprocess.SubprocessError) as exc:
                why = f"{' '.join(command)} cannot tell its version ({exc})"
        problems.append(why)
    if not candidates:
        return "no C compiler found ($CC is not set, and neither gcc nor clang is on PATH)"
    return "no working C compiler: " + "; ".join(problems)


def compiler() -> Compiler:
    """The compiler this process uses; CompilerUnavailable saying why there is none."""
    with _LOCK:
        found = _find(tuple(_candidates()))
    if isinstance(found, str):
        raise CompilerUnavailable(found)
    return found


def unavailable() -> str | None:
    """Why generated C cannot be built here, or None."""
    try:
        compiler()
    except CompilerUnavailable as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=1)
def target() -> str:
    """The CPU the code is built for (-march=native): machine, model and feature flags."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    digest = hashlib.sha256(flags.encode()).hexdigest()[:16]
    return f"{platform.machine()} {model} flags:{digest}"


def _key(source: str, cc: Compiler) -> dict[str, object]:
    return {"source": source, "compiler": cc.identity, "flags": list(cc.flags),
            "target": target()}


@functools.cache
def _routines_text() -> str:
    """The routines' sources as one text (a cache key's part; the same all process long)."""
    return "".join(c_routines.sources())


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _finish(compiling: subprocess.Popen, what: str) -> None:
    """Wait for a compile started by ``_start``; raise saying why if it failed."""
    _, err = compiling.communicate(timeout=COMPILE_SECONDS)
    if compiling.returncode != 0:
        raise RuntimeError(f"the C compiler failed on {what} (a bug; please report it): "
                           f"{err.strip()[-2000:]}")


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def _run(command: list[str], what: str) -> None:
    compiling = _start(command)
    try:
        _finish(compiling, what)
    finally:
        _stop([compiling])


def build_routines(out: Path, cc: Compiler) -> None:
    """Compile the routines every step links (optdsl.codegen.c_routines: its translation
    units in parallel) into the one relocatable object ``out``."""
    objects, started = [], []
    try:
        for k, text in enumerate(c_routines.sources()):
            src = out.parent / f"routines_{k}.c"
            src.write_text(text, encoding="utf-8")
            objects.append(str(src.with_suffix(".o")))
            started.append(_start([*cc.command, *cc.compile_flags, "-c", str(src), "-o",
                                   objects[-1]]))
        for compiling in started:
            _finish(compiling, "the steps' routines")
    finally:
        _stop(started)
    _run([*cc.command, "-r", "-nostdlib", *objects, "-o", str(out)], "the routines' link")


def build(source: str, out: Path, cc: Compiler) -> None:
    """Compile ``source`` into the shared object ``out``, linked with the routines' object
    (from the cache; compiled meanwhile, in parallel, when it is not there yet)."""
    src, obj = out.with_suffix(".c"), out.with_suffix(".o")
    src.write_text(source, encoding="utf-8")
    compiling = _start([*cc.command, *cc.compile_flags, "-c", str(src), "-o", str(obj)])
    try:
        from optdsl.runtime import cache

        with cache.verified_copy("c_routines", _key(_routines_text(), cc), ".o",
                                 lambda o: build_routines(o, cc)) as routines:
            _finish(compiling, "a generated step")
            _run([*cc.command, *cc.link_flags, str(obj), str(routines), "-o", str(out), "-lm"],
                 "a generated step's link")
    finally:
        _stop([compiling])


def load(source: str, tag: str) -> ctypes.CDLL:
    """The shared object of ``source``, built (or found in the cache) and loaded."""
    import torch  # noqa: F401 - loaded first: the step shares torch's OpenMP runtime

    from optdsl.runtime import cache

    cc = compiler()
    key = {**_key(source, cc), "routines": _routines_text()}
    with cache.verified_copy("c_" + tag, key, ".so", lambda out: build(source, out, cc)) as path:
        return ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
