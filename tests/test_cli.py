"""The command line, run as a user would: ``python -m optdsl ...`` in a subprocess, from an
unrelated working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted((ROOT / "examples").glob("*.opt")) + sorted(
    (ROOT / "optdsl" / "library").glob("*.opt"))


def optdsl_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OPTDSL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "optdsl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_help_lists_the_commands(tmp_path):
    result = optdsl_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("check", "show", "compile"):
        assert command in result.stdout


def test_check_every_bundled_program(tmp_path):
    assert PROGRAMS
    result = optdsl_cli("check", *map(str, PROGRAMS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for path in PROGRAMS:
        assert str(path) in result.stdout


def test_check_quiet(tmp_path):
    result = optdsl_cli("check", "-q", str(ROOT / "examples" / "adam.opt"), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == ""


def test_check_bad_file(tmp_path):
    (tmp_path / "bad.opt").write_text("hyper lr = 0.1\nw = w - lr * sqr(g)\n")
    result = optdsl_cli("check", "bad.opt", cwd=tmp_path)
    assert result.returncode == 1
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout
    assert err.count("error:") == 1
    assert "bad.opt:2:14:" in err
    lines = err.splitlines()
    src = next(i for i, row in enumerate(lines) if row.endswith("w = w - lr * sqr(g)"))
    gutter = lines[src].index("w = w - lr")
    assert lines[src + 1].index("^") - gutter + 1 == 14
    assert "did you mean `sqrt`" in err


def test_check_mixed_good_and_bad(tmp_path):
    (tmp_path / "bad.opt").write_text("w = w - (g > 0)\n")
    result = optdsl_cli("check", str(ROOT / "examples" / "adam.opt"), "bad.opt", cwd=tmp_path)
    assert result.returncode == 1
    assert "adam.opt: ok" in result.stdout
    assert re.search(r"bad\.opt:1:\d+: error: .*mask", result.stderr)
    assert "Traceback" not in result.stderr


def test_check_missing_file(tmp_path):
    result = optdsl_cli("check", "no_such_file.opt", cwd=tmp_path)
    assert result.returncode == 1
    assert "no_such_file.opt" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_non_utf8_file(tmp_path):
    (tmp_path / "latin1.opt").write_bytes(b"# caf\xe9\nw = w - g\n")
    result = optdsl_cli("check", "latin1.opt", cwd=tmp_path)
    assert result.returncode == 1
    assert "latin1.opt" in result.stderr and "Traceback" not in result.stderr


def test_show_ir(tmp_path):
    result = optdsl_cli("show", str(ROOT / "examples" / "adam.opt"), "--ir", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("graph Adam:")
    assert "hyper beta1" in result.stdout and "return w = " in result.stdout


def test_show_numpy(tmp_path):
    (tmp_path / "momentum.opt").write_text("v = a*v - lr*g; w = w + v\n")
    result = optdsl_cli("show", "momentum.opt", "--numpy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "def step(ctx, params):" in result.stdout
    compile(result.stdout, "<generated>", "exec")  # valid Python


def test_show_bad_file(tmp_path):
    (tmp_path / "bad.opt").write_text("w = w - * g\n")
    result = optdsl_cli("show", "bad.opt", "--ir", cwd=tmp_path)
    assert result.returncode == 1
    assert "bad.opt:1:9:" in result.stderr and "Traceback" not in result.stderr


def test_check_notes_an_undeclared_name_in_a_declared_program(tmp_path):
    """A misspelled hyper silently becomes a required one (LANGUAGE.md); check says so."""
    (tmp_path / "typo.opt").write_text("hyper lr = 0.1, eps = 1e-8\nstate v = 0\n"
                                       "v = v + g * g\nw = w - lr * g / (sqrt(v) + epsilon)\n")
    result = optdsl_cli("check", "typo.opt", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.strip() == ("typo.opt:4: note: `epsilon` is not declared, so it is a "
                                     "required hyperparameter (did you mean `eps`?)")
    (tmp_path / "one.opt").write_text("v = a*v - lr*g; w = w + v\n")  # declares nothing
    result = optdsl_cli("check", "one.opt", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""


def test_compile_to_a_file_or_under_one_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "afile").write_text("x")
    for out in ("afile", "afile/sub"):
        result = optdsl_cli("compile", str(ROOT / "examples" / "adam.opt"), "-o", out,
                            cwd=tmp_path)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("optdsl compile: error: afile")
