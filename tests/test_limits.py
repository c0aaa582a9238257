"""The front end's documented limits (issue 15, item 6).

- each limit of optdsl.frontend.limits (docs/language.md, "Limits"): a program at the limit
  is accepted; one just above it is refused with a DslError at the first character past the
  limit, before the parser runs ("at once");
- files are read once and only up to the size limit: /dev/zero, a FIFO without a writer
  and an endless pipe end with a message instead of hanging (in a child under a timeout);
- the limits documented in docs/language.md are the enforced ones.
(tests/test_linear.py: checking grows linearly up to them.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import optdsl
from optdsl import DslError
from optdsl.frontend import limits, parse
from optdsl.frontend.check import check
from optdsl.frontend.limits import (
    MAX_LINE_CHARS,
    MAX_NESTING,
    MAX_SOURCE_BYTES,
    MAX_STATEMENTS,
    MAX_WORD_CHARS,
)
from optdsl.frontend.to_ast import to_ast

ROOT = Path(__file__).resolve().parent.parent
BODY = "hyper lr = 0.1\nw = w - lr * g\n"


@pytest.fixture
def no_parser(monkeypatch):
    """Fail if the parser runs: a refusal must come before any costly work."""
    def refuse():
        raise AssertionError("the parser ran on a program above a limit")

    monkeypatch.setattr(parse, "_parser", refuse)


def refused(source: str, line: int, column: int, fragment: str) -> DslError:
    with pytest.raises(DslError) as info:
        optdsl.compile(source)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)[:300]
    assert fragment in err.message and "limit" in err.message
    assert len(str(err)) < 600  # the shown line is cut around the caret
    return err


def padded(size: int, filler: str = "x") -> str:
    """BODY followed by comment lines, ``size`` UTF-8 bytes in all."""
    text = BODY
    line = "#" + filler * ((MAX_LINE_CHARS - 1) // len(filler.encode())) + "\n"
    while len((text + line).encode()) <= size:
        text += line
    rest = size - len(text.encode()) - 1
    text += "#" + filler * (rest // len(filler.encode())) + "x" * (rest % len(filler.encode()))
    assert len(text.encode()) == size
    return text


@pytest.mark.parametrize("filler", ["x", "\u00e9", "\u20ac"])  # 1, 2 and 3 bytes each
def test_program_size_limit(filler, monkeypatch):
    source = padded(MAX_SOURCE_BYTES, filler)
    assert optdsl.compile(source).hypers["lr"].default == 0.1
    big = source + "x"
    lines = big.split("\n")
    monkeypatch.setattr(parse, "_parser", lambda: pytest.fail("parsed a program above a limit"))
    refused(big, len(lines), len(lines[-1]), "program text is longer")


def test_line_length_limit(no_parser):
    name = "a" * 50
    line = f"x = {name}" + f" + {name}" * ((MAX_LINE_CHARS - 54) // 53)
    line += " " * (MAX_LINE_CHARS - len(line))
    assert len(line) == MAX_LINE_CHARS
    limits.check_text(BODY + line + "\r\nw = w - x\n")  # (a CRLF line end is not counted)
    refused(BODY + line + "+\nw = w - x\n", 3, MAX_LINE_CHARS + 1, "line is longer")


def test_line_at_the_limit_compiles():
    line = "x = g" + " + g" * ((MAX_LINE_CHARS - 5) // 4)
    assert len(line) <= MAX_LINE_CHARS
    assert optdsl.compile(BODY + line + "\nw = w - x\n")


def test_nesting_limit(no_parser):
    deep = "w = w - " + "(" * MAX_NESTING + "g" + ")" * MAX_NESTING
    limits.check_text(deep)
    limits.check_text("w = w - " + "sqrt(" * (MAX_NESTING - 1) + "(g" + ")" * MAX_NESTING)
    # brackets in comments and descriptions, or on earlier lines, do not count
    limits.check_text('optimizer A "' + "(" * 500 + '"\n# ' + "(" * 500 + "\n" + deep)
    refused("hyper lr = 1\nw = w - " + "(" * (MAX_NESTING + 1) + "g" + ")" * (MAX_NESTING + 1),
            2, 9 + MAX_NESTING, "nested deeper")
    refused("w = " + "sqrt(" * (MAX_NESTING + 1) + "g" + ")" * (MAX_NESTING + 1),
            1, 5 + 5 * MAX_NESTING + 4, "nested deeper")


def test_nesting_at_the_limit_compiles():
    prog = optdsl.compile("w = w - " + "(" * MAX_NESTING + "g" + ")" * MAX_NESTING)
    assert prog.source("numpy")


def test_word_limit(no_parser):
    name = "n" * MAX_WORD_CHARS
    limits.check_text(f"hyper {name} = 1\nw = w - {name} * g  # " + "c" * 1000)
    refused(f"hyper lr = 1\nw = w - {name}x * g", 2, 9, "name or number")
    refused("w = w - 0." + "1" * MAX_WORD_CHARS + " * g", 1, 9, "name or number")


def test_name_at_the_limit_compiles():
    name = "n" * MAX_WORD_CHARS
    prog = optdsl.compile(f"optimizer {name}\nhyper {name} = 1\nw = w - {name} * g")
    assert name in prog.hypers


def _frontend(source: str):
    return check(to_ast(parse.parse(source), "<string>", source))


def test_statement_limit():
    at_limit = "w = w - g\n" * MAX_STATEMENTS
    assert _frontend(at_limit)
    with pytest.raises(DslError) as info:
        _frontend(at_limit + "w = w - g\n")
    assert (info.value.line, info.value.column) == (MAX_STATEMENTS + 1, 1)
    assert "more than the limit" in info.value.message
    # a declaration counts once per name it declares, tuple parts included
    rows = [", ".join(f"h{i}_{j} = 1" for j in range(50)) for i in range(MAX_STATEMENTS // 50 - 1)]
    decls = ["hyper b = (b1 = 1, b2 = 2, b3 = 3)"] + [f"hyper {row}" for row in rows]
    source = "\n".join(decls) + "\n" + "w = w - g\n" * 47  # 3 + 50 * len(rows) + 47 in all
    assert _frontend(source)
    with pytest.raises(DslError) as info:
        _frontend(source + "state m = 0, v = 0\n")
    assert info.value.line == len(decls) + 48


# -- reading files ------------------------------------------------------------------------------

def _check_cli(*args: str, stdin: str | None = None, timeout: float = 60):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        return subprocess.run([sys.executable, "-m", "optdsl", "check", *args], env=env,
                              input=stdin, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"optdsl check {' '.join(args)} hung")


def test_check_dev_zero_ends_with_one_short_message():
    done = _check_cli("/dev/zero")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"/dev/zero:1:{MAX_SOURCE_BYTES + 1}: error: program text "
                                  f"is longer than the limit")
    assert len(done.stderr) < 600


def test_check_an_endless_pipe_ends(tmp_path):
    reader = subprocess.Popen(["yes", "w = w - g"], stdout=subprocess.PIPE)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run([sys.executable, "-m", "optdsl", "check", "/dev/stdin"],
                              stdin=reader.stdout, env=env, capture_output=True, text=True,
                              timeout=60, check=False, cwd=ROOT)
    finally:
        reader.kill()
        reader.wait()
    assert done.returncode == 1 and "longer than the limit" in done.stderr


def test_check_a_fifo_without_writer_does_not_wait(tmp_path):
    fifo = tmp_path / "prog.opt"
    os.mkfifo(fifo)
    done = _check_cli(str(fifo))
    assert done.returncode == 1 and "never assigns `w`" in done.stderr  # read as empty


def test_check_reads_a_pipe():
    done = _check_cli("/dev/stdin", stdin="hyper lr = 0.1\nw = w - lr * g\n")
    assert done.returncode == 0 and ": ok (" in done.stdout, done.stderr


def test_file_above_the_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.opt"
    path.write_bytes(b"w = w - g\n" + b"\xff" * MAX_SOURCE_BYTES)
    with pytest.raises(DslError, match="longer than the limit"):
        optdsl.load(path)


def test_non_utf8_byte_is_positioned(tmp_path):
    path = tmp_path / "latin1.opt"
    path.write_bytes("w = w - g\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DslError) as info:
        optdsl.load(path)
    assert (info.value.line, info.value.column) == (2, 6) and "UTF-8" in info.value.message


def test_the_documented_limits_are_the_enforced_ones():
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    section = text[text.index("## Limits"):]
    table = dict(re.findall(r"^\| ([^|]+?) \| ([0-9,]+)", section, re.MULTILINE))
    numbers = {what.split(",")[0].split(" (")[0]: int(value.replace(",", ""))
               for what, value in table.items()}
    assert numbers == {"program text": MAX_SOURCE_BYTES, "one line": MAX_LINE_CHARS,
                       "parentheses open at once": MAX_NESTING,
                       "one name or number": MAX_WORD_CHARS, "statements": MAX_STATEMENTS}
    from optdsl.cli import MAX_NOTES
    from optdsl.errors import SHOWN_CHARS

    assert f"at most {SHOWN_CHARS} characters" in section and f"first {MAX_NOTES}" in section
