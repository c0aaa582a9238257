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


# -- generated excerpts: the docs show code the compiler generates today ------------------------

GENERATED = re.compile(r"(<!-- generated: show (\S+) --(\w+)(?:, def (\w+))? -->\n```\w+\n)"
                       r"(.*?)(```)", re.S)


def excerpt(source: str, function: str | None) -> str:
    """The whole source, or one top-level function of it (to the next top-level line)."""
    if function is None:
        return source.rstrip("\n") + "\n"
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {function}("))
    end = start + 1
    while end < len(lines) and (not lines[end] or lines[end][0] in " \t"):
        end += 1
    return "\n".join(lines[start:end]).rstrip("\n") + "\n"


def _generated(match: re.Match) -> str:
    path, backend, function = match.group(2), match.group(3), match.group(4)
    return excerpt(optdsl.load(ROOT / path).source(backend), function)


GENERATED_DOCS = [p for p in DOCS if p.exists() and GENERATED.search(p.read_text())]


@pytest.mark.parametrize("path", GENERATED_DOCS, ids=lambda p: p.name)
def test_generated_excerpts_are_what_the_compiler_generates(path: Path) -> None:
    """Regenerate with ``UPDATE_DOCS=1 pytest tests/test_docs.py``."""
    import os

    text = path.read_text(encoding="utf-8")
    fresh = GENERATED.sub(lambda m: m.group(1) + _generated(m) + m.group(6), text)
    if os.environ.get("UPDATE_DOCS"):
        path.write_text(fresh, encoding="utf-8")
    assert fresh == text, f"{path.name} shows code the compiler no longer generates; " \
                          f"regenerate with UPDATE_DOCS=1 pytest tests/test_docs.py"


def test_how_it_works_shows_generated_code() -> None:
    assert len(GENERATED.findall((ROOT / "docs" / "how-it-works.md").read_text())) >= 4


def test_no_merge_conflict_markers_in_the_tree() -> None:
    """A merge left `<<<<<<< HEAD` blocks in docs/how-it-works.md once; no text file of the
    project may hold one."""
    markers = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)
    found = []
    for path in ROOT.rglob("*"):
        if any(part.startswith(".") or part in ("build", "dist") or part.endswith(".egg-info")
               for part in path.relative_to(ROOT).parts):
            continue
        if path.suffix in (".md", ".py", ".opt", ".lark", ".toml", ".txt") and path.is_file():
            if markers.search(path.read_text(encoding="utf-8", errors="replace")):
                found.append(str(path.relative_to(ROOT)))
    assert not found, found
