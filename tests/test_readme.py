"""The README's first-hour parts say what the project does (issue 16, items 6, 9, 10).

- Its "Command line" block names only commands and options that exist.
- Its "What optdsl compile writes" example runs on what `optdsl compile` writes and prints
  what its comment says.
- The README and the docs send no reader to ../shared/ (not part of a clone): the project's
  own docs/language.md is the reference.
- The Makefile makes and uses a project-local environment unless one is active or given.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

from optdsl.cli import build_parser
from optdsl.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# docs/language.md is being rewritten for the language additions (the lead's); until then it
# may still cite the specification it implements.
PENDING_REWRITE = {"language.md"}


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def subcommands() -> dict[str, object]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return dict(sub.choices)


def test_command_line_block_names_real_commands_and_options():
    (block,) = re.findall(r"```\n(.*?)```", section("Command line"), re.DOTALL)
    commands = subcommands()
    lines = [line.split("#")[0].split() for line in block.splitlines() if line.strip()]
    assert {words[1] for words in lines} == {*commands, "--version"}
    for words in lines:
        if words[1] == "--version":
            continue
        known = {option for action in commands[words[1]]._actions
                 for option in action.option_strings}
        shown = {word.strip("[]").split("|")[0] for word in words[2:] if "--" in word}
        assert shown <= known, (words[1], shown - known)


def test_compile_section_example_runs(tmp_path, monkeypatch):
    (example,) = re.findall(r"```python\n(.*?)```", section("What `optdsl compile` writes"),
                            re.DOTALL)
    command = re.search(r"# after: (optdsl compile .*)", example).group(1).split()
    monkeypatch.chdir(tmp_path)
    args = [str(ROOT / a) if a.startswith("examples/") else a for a in command[1:]]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_main(args) == 0
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        runpy.run_path(str(script), run_name="__main__")
    promised = re.search(r"print\(w\) +# (\[.*\])", example).group(1)
    assert printed.getvalue().strip() == promised


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_no_reader_is_sent_outside_the_clone(doc: Path):
    text = doc.read_text(encoding="utf-8")
    stale = re.findall(r".{0,40}(?:\.\./shared|LANGUAGE\.md).{0,20}", text)
    if stale and doc.name in PENDING_REWRITE:
        pytest.xfail(f"{doc.name} is being rewritten: {stale}")
    assert stale == []


def _make_dry_run(*args: str, env: dict[str, str]) -> str:
    """What make would run, as if nothing were installed yet (-B: every target out of date)."""
    done = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), *args], env=env,
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_chooses_the_environment(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    local = _make_dry_run("demo", env=base)
    assert ".venv/bin/python -m optdsl demo" in local
    venv = _make_dry_run("demo", env={**base, "VIRTUAL_ENV": str(tmp_path / "env")})
    assert f"{tmp_path}/env/bin/python -m optdsl demo" in venv and ".venv" not in venv
    own = _make_dry_run("demo", env={**base, "VIRTUAL_ENV": str(ROOT / ".venv")})  # activated
    assert ".venv/bin/python -m optdsl demo" in own and ".venv/.optdsl-installed" in own
    conda = _make_dry_run("test", env={**base, "CONDA_PREFIX": str(tmp_path / "conda")})
    assert f"{tmp_path}/conda/bin/python -m pytest" in conda
    given = _make_dry_run("test", "PYTHON=/opt/py/bin/python3", env={**base, "PYTHON": "x"})
    assert "/opt/py/bin/python3 -m pytest" in given and ".venv" not in given
    from_env = _make_dry_run("test", env={**base, "PYTHON": "python2"})  # an unrelated PYTHON
    assert ".venv/bin/python -m pytest" in from_env
    assert "torch==2.13.0" in local and "-q " not in local  # pinned CPU torch, pip's progress
