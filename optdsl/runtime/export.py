"""Writes generated code to a directory: ``optdsl compile FILE... -o DIR``.

Each program becomes ``<name>_triton.py`` (the Triton kernels and host step) and/or
``<name>_numpy.py`` (the chunked NumPy step); a program with matrix work (library stages)
asked of a back end without library stages (every registered one runs them today) would get
its NumPy step instead. The repository's ``kernels/`` directory is this output for every
bundled program (``make kernels``), and a test fails when it is stale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from optdsl.runtime import backends as registry
from optdsl.runtime.cache import write_atomic

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _chosen(backends: str) -> tuple[str, ...]:
    """The back ends a ``--backend`` value names: one registered back end, or "all"."""
    if backends == "all":
        return registry.names(with_auto=False)
    if backends not in registry.BACKENDS:
        choices = registry.names(with_auto=False) + ("all",)
        raise ValueError(f"backends must be one of {', '.join(map(repr, choices))}, got "
                         f"{backends!r}")
    return (backends,)


def runnable(program, backends: str = "triton") -> tuple[str, ...]:
    """The back ends ``write_kernels`` writes ``program`` for: the chosen ones, where a back
    end without library stages is replaced by NumPy for a program with matrix work (every
    registered back end runs them today); "all" leaves out a back end that refuses the
    program (the torch back end, for group-wide reductions)."""
    out: list[str] = []
    for b in _chosen(backends):
        if program.library_work and not registry.get(b).library_stages:
            b = "numpy"
        if backends == "all" and registry.get(b).refuses(program.generic.graph, program.name):
            continue
        if b not in out:
            out.append(b)
    return tuple(out)


def file_names(program, backends: str = "triton") -> list[str]:
    """The file names ``write_kernels`` gives ``program``'s generated code."""
    if not _NAME.fullmatch(program.name):
        raise ValueError(f"program name {program.name!r} is not an identifier; compile it "
                         f"with name=...")
    return [f"{program.name}_{b}{registry.get(b).suffix}" for b in runnable(program, backends)]


def write_kernels(programs: Iterable, out_dir: Path, backends: str = "triton") -> list[Path]:
    """Write each program's generated source into ``out_dir`` (created if needed); returns
    the paths written, in order. Two programs with one name are an error."""
    programs = list(programs)
    out_dir = Path(out_dir)
    planned: dict[str, tuple] = {}
    for program in programs:
        for file_name, backend in zip(file_names(program, backends),
                                      runnable(program, backends)):
            if file_name in planned:
                other = planned[file_name][0].filename
                raise ValueError(f"two programs are named {program.name!r} ({other} and "
                                 f"{program.filename}); rename one with `optimizer NAME`")
            planned[file_name] = (program, backend)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, (program, backend) in planned.items():
        path = out_dir / file_name
        _write(path, program.source(backend))
        written.append(path)
    return written


def _write(path: Path, text: str) -> None:
    """Write atomically, leaving an unchanged file untouched."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    try:
        write_atomic(path, text, mode=0o644)
    except OSError as exc:  # name the file asked for, not write_atomic's temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
