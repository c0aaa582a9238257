"""The command line, run as a user would: ``python -m optdsl ...`` in a subprocess, from an
unrelated working directory."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_check_notes_a_hyper_named_like_a_python_keyword(tmp_path):
    """`hyper lambda` compiles, but Python can pass it only through **kwargs (issue 16.11)."""
    (tmp_path / "kw.opt").write_text("hyper lr = 0.1\nhyper lambda = 0.5, match = 1\n"
                                     "w = w - lr * lambda * match * g\n")
    result = optdsl_cli("check", "kw.opt", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.strip() == (
        "kw.opt:2: note: hyper `lambda` is a Python keyword, so Python code can only pass it "
        "as **{'lambda': value} (e.g. prog.optimizer(params, **{'lambda': 0.1})); a name "
        "such as `lambda_` avoids that")  # (`match` is a soft keyword: a fine keyword argument)


def test_compile_to_a_file_or_under_one_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "afile").write_text("x")
    for out in ("afile", "afile/sub"):
        result = optdsl_cli("compile", str(ROOT / "examples" / "adam.opt"), "-o", out,
                            cwd=tmp_path)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("optdsl compile: error: afile")


def _options(parser: argparse.ArgumentParser):
    """Every (command, option) of the parser and its subcommands, with the action."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for _, option, sub_action in _options(sub):
                    yield name, option, sub_action
        elif not isinstance(action, argparse._HelpAction):
            yield "optdsl", (action.option_strings or [action.dest])[-1], action


def test_every_option_of_every_command_has_help():
    from optdsl.cli import build_parser

    found = list(_options(build_parser()))
    commands = {command for command, _, _ in found}
    assert commands >= {"optdsl", "check", "show", "compile", "demo", "landscape", "bench"}
    missing = [f"{command} {option}" for command, option, action in found
               if not action.help or action.help == argparse.SUPPRESS]
    assert missing == []


def test_version(tmp_path):
    import optdsl

    result = optdsl_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"optdsl {optdsl.__version__}\n"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'\nversion = "{optdsl.__version__}"\n' in pyproject  # one version, two places


def test_racer_overrides_are_in_the_help(tmp_path):
    for command in ("demo", "landscape"):
        result = optdsl_cli(command, "--help", cwd=tmp_path)
        assert result.returncode == 0
        text = " ".join(result.stdout.split())
        assert "mine.opt:lr=0.05" in text and "FILE:lr=" in text, result.stdout
        assert "shows the lr each racer ran with" in text


def test_landscape_shows_progress_and_where_its_pictures_went(tmp_path):
    result = optdsl_cli("landscape", "sgd", "adam", "--max-iters", "30", "--out", "pics",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for number, key in enumerate(("bowl", "two_minima", "rosenbrock", "saddle"), start=1):
        bar = rf"^{key} \({number}/4\) +\[#+\] 2/2"  # one finished bar per function
        assert re.search(bar, result.stderr, re.MULTILINE), result.stderr
    names = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert len(names) == 4
    last = result.stdout.rstrip().splitlines()[-1]
    assert last.startswith(f"wrote 4 pictures to pics{os.sep}: ")
    assert sorted(last.split(": ", 1)[1].split(", ")) == names
    quiet = optdsl_cli("landscape", "sgd", "--max-iters", "5", "--out", "", "-q", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "" and "wrote" not in quiet.stdout


def test_landscape_prints_its_table_before_a_plotting_error(monkeypatch, capsys, tmp_path):
    from optdsl.apps import landscape
    from optdsl.cli import main

    def broken(results, out_dir):
        raise RuntimeError("no display for you")

    monkeypatch.setattr(landscape, "write_pictures", broken)
    code = main(["landscape", "sgd", "--max-iters", "5", "-q", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 1
    assert out.out.startswith("function") and "rosenbrock" in out.out  # the table survived
    assert out.err == ("optdsl landscape: error: the pictures could not be drawn "
                       "(RuntimeError: no display for you)\n")


def test_missing_demo_extras_say_what_to_install(monkeypatch, capsys):
    from optdsl.cli import main

    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now fails
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for argv, needs in ((["demo"], "scikit-learn (for the digits data) and matplotlib"),
                        (["demo", "--out", ""], "scikit-learn (for the digits data), which"),
                        (["landscape"], "matplotlib (for the pictures)")):
        assert main(argv) == 1
        out = capsys.readouterr()
        assert out.out == "" and "Traceback" not in out.err
        assert out.err.startswith(f"optdsl {argv[0]}: error: it needs {needs}"), out.err
        assert "pip install 'optdsl[demo]'" in out.err and "make demo" in out.err
    monkeypatch.delitem(sys.modules, "matplotlib")  # landscape without pictures needs neither
    assert main(["landscape", "sgd", "--max-iters", "2", "-q", "--out", ""]) == 0


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_compile_into_a_directory_that_refuses_files_names_the_file(tmp_path):
    """/proc refuses new files even to root (a read-only directory does not)."""
    result = optdsl_cli("compile", str(ROOT / "examples" / "adam.opt"), "-o", "/proc",
                        cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("optdsl compile: error: /proc/Adam_triton.py: "), result.stderr
    assert ".tmp" not in result.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through read-only permission bits")
def test_compile_into_a_read_only_directory_names_the_file(tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    try:
        result = optdsl_cli("compile", str(ROOT / "examples" / "adam.opt"), "-o", "ro",
                            cwd=tmp_path)
    finally:
        out.chmod(0o700)
    assert result.returncode == 1
    assert result.stderr == "optdsl compile: error: ro/Adam_triton.py: Permission denied\n"
