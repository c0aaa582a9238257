"""kernels/ holds the generated Triton source of every bundled program (Muon's and Adafactor's
with their library stages), committed so that readers can see what the compiler emits; it
must equal freshly generated source."""

from __future__ import annotations

from pathlib import Path

import pytest

import optdsl
from optdsl import library
from optdsl.runtime.export import file_names, runnable, write_kernels

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
REGENERATE = "python -m optdsl compile optdsl/library/*.opt -o kernels  (or: make kernels)"


def _programs():
    return [library.program(name) for name in library.PROGRAMS]


def test_kernels_dir_is_fresh():
    expected = {}
    for prog in _programs():
        ((name, backend),) = zip(file_names(prog, "triton"), runnable(prog, "triton"))
        expected[name] = prog.source(backend)
    present = {p.name for p in KERNELS.glob("*.py")}
    missing = sorted(set(expected) - present)
    extra = sorted(present - set(expected))
    stale = sorted(n for n in set(expected) & present
                   if (KERNELS / n).read_text(encoding="utf-8") != expected[n])
    assert not (missing or extra or stale), (
        f"kernels/ is stale (missing: {missing}, not generated: {extra}, changed: {stale}); "
        f"regenerate it with: {REGENERATE}")


def test_write_kernels(tmp_path):
    progs = _programs()[:2]
    paths = write_kernels(progs, tmp_path / "out", backends="all")
    assert [p.name for p in paths] == [n for prog in progs for n in file_names(prog, "all")]
    for prog in progs:
        assert (tmp_path / "out" / f"{prog.name}_triton.py").read_text() == prog.source("triton")
        assert (tmp_path / "out" / f"{prog.name}_numpy.py").read_text() == prog.source("numpy")
    again = write_kernels(progs, tmp_path / "out", backends="numpy")  # unchanged: rewritten ok
    assert len(again) == 2


def test_programs_with_matrix_work_get_their_triton_step():
    for name in ("Muon", "Adafactor"):
        prog = library.program(name)
        assert file_names(prog, "triton") == [f"{name}_triton.py"]
        assert "ctx.library(0, params)" in prog.source("triton")


def test_write_kernels_rejects_two_programs_of_one_name(tmp_path):
    a = optdsl.compile("w = w - g", name="Same")
    b = optdsl.compile("w = w - 2 * g", name="Same")
    with pytest.raises(ValueError, match="two programs"):
        write_kernels([a, b], tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
