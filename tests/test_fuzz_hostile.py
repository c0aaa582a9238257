"""Samples of the fuzz generators for the hostile cases of issue 15 (tests/strategies.py),
through every oracle of bench/fuzz.py, as tests/test_fuzz.py samples the others:

- state key collisions (item 3): every program compiles with one key per state, or is a
  positioned DslError;
- programs at and just past the front end's limits (item 6): a DslError that names the
  limit, or a program that passes every oracle;
- long titles and names with many switches (item 7), also through the Triton interpreter;
- number literals at the ends of float64 and errors on long lines (item 9): the oracle that
  the shown line is the program's line accepts a line cut around the caret, and only that.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import strategies as S
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optdsl

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None,
            "report_multiple_bugs": False}
SEEDS = st.integers(0, 2**32 - 1)


def _load_campaign():
    name = "optdsl_bench_fuzz"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load_campaign()


def every_oracle(source: str, seed: int, triton: bool = False) -> dict:
    outcome = fuzz.check_program(source, np.random.default_rng(seed), triton=triton)
    assert outcome["failure"] is None, f"{outcome['failure']}: {outcome['detail']}\n{source}"
    return outcome


@settings(max_examples=80, **SETTINGS)
@given(S.key_collision_programs(), SEEDS)
def test_key_collisions(source, seed):
    outcome = every_oracle(source, seed)
    if outcome["status"] == "compiled":
        prog = optdsl.compile(source)
        keys = [spec.key for spec in prog.states.values()]
        assert len(set(keys)) == len(keys) and not {"step", "master_param"} & set(keys)
    else:
        assert outcome["category"] in ("twice", "reserved", "state_init"), outcome


@settings(max_examples=25, **SETTINGS)
@given(S.oversized_programs(), SEEDS)
def test_programs_at_the_limits(source, seed):
    outcome = every_oracle(source, seed)
    assert outcome["status"] == "compiled" or outcome["category"] == "limit", outcome


@settings(max_examples=10, **SETTINGS)
@given(S.long_name_programs(), SEEDS)
def test_long_names_and_many_switches(source, seed):
    assert every_oracle(source, seed)["status"] == "compiled"


@pytest.fixture
def interpreter(monkeypatch, tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fuzz-cache"))


@settings(max_examples=2, **SETTINGS)
@given(S.long_name_programs(), SEEDS)
def test_long_names_in_the_triton_interpreter(interpreter, source, seed):
    assert every_oracle(source, seed, triton=True)["triton"]


@settings(max_examples=60, **SETTINGS)
@given(S.number_edge_programs(), SEEDS)
def test_number_edges_and_long_error_lines(source, seed):
    every_oracle(source, seed)


LINE = "w = w - 0.001 * (" + " + ".join(["g"] * 400) + ")"


@pytest.mark.parametrize("column", [1, 20, 800, len(LINE), len(LINE) + 1])
def test_the_shown_line_oracle_accepts_the_cut_line(column):
    err = optdsl.DslError("x", optdsl.errors.Span(1, column), source=LINE)
    _, row, caret = str(err).split("\n")
    assert fuzz.shows_line(row, caret, LINE, column)


def test_the_shown_line_oracle_refuses_other_lines():
    err = optdsl.DslError("x", optdsl.errors.Span(1, 800), source=LINE)
    _, row, caret = str(err).split("\n")
    assert not fuzz.shows_line(row, caret, LINE, 801)  # caret not under the column
    assert not fuzz.shows_line(row.replace("g", "h", 1), caret, LINE, 800)  # not its text
    assert not fuzz.shows_line(row, caret, "w = w - g", 800)
    long_row = row[:row.index("| ") + 2] + LINE  # the whole long line, uncut
    assert not fuzz.shows_line(long_row, " " * 806 + "^", LINE, 800)
    assert fuzz.shows_line("   1 | w = w - g", "     |     ^", "w = w - g", 5)
