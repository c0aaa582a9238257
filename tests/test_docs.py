"""Every ```opt block of the docs and the README compiles (and the README's Python runs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import optdsl

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


CASES = [(p.name, i, src) for p in DOCS if p.exists() for i, src in enumerate(blocks(p, "opt"))]


@pytest.mark.parametrize("doc,index,source", CASES, ids=[f"{d}-{i}" for d, i, _ in CASES])
def test_opt_block_compiles(doc: str, index: int, source: str) -> None:
    prog = optdsl.compile(source)
    assert prog.source("numpy")


def test_docs_have_examples() -> None:
    assert len(CASES) >= 5
