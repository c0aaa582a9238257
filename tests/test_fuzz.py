"""Fuzzing the compiler with generated programs (the oracles live in bench/fuzz.py).

By default, small samples of every generator of tests/strategies.py:

- token soup from the grammar's alphabet, hypothesis.extra.lark.from_lark over
  grammars/optdsl.lark (raw, and with vocabulary terminals), a grammar-directed generator,
  mutated valid programs and often-wrong programs: compiling raises nothing but DslError, the
  error is never an internal compiler error, its line:col is inside the program and the
  line it shows is that line (without raw control characters);
- every program that compiles (valid ones, ones with hostile names, lucky mutants and
  grammar derivations): its NumPy and Triton sources parse, the IR verifies after every pass,
  the optimized and switch-specialized graphs equal the unoptimized graph under the reference
  evaluator, and two steps of the generated NumPy code equal two steps of the evaluator;
- Triton-interpreted == NumPy (TRITON_INTERPRET=1, CPU tensors, float64) on a few random
  valid programs (the interpreter is slow).

``pytest -m slow tests/test_fuzz.py`` runs the whole campaign of ``python bench/fuzz.py
--programs 10000 --seed 0`` (10,000 programs, 200 of them through the Triton interpreter)
and requires it to find nothing (bench/fuzz.py KNOWN_OPEN would list open bugs it tells
apart). Minimal reproductions of what fuzzing found are at the end.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import strategies as S
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import optdsl

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None,
            "report_multiple_bugs": False}


def _load_campaign():
    spec = importlib.util.spec_from_file_location("optdsl_bench_fuzz", ROOT / "bench" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load_campaign()


def only_dsl_error(source: str) -> None:
    """Compiling raises nothing but a well-positioned DslError."""
    try:
        fuzz.compile_checked(source)
    except fuzz.Failure as failure:
        raise AssertionError(f"{failure.kind}: {failure.detail}\nprogram: {source!r}") from None


def every_oracle(source: str, seed: int, triton: bool = False) -> dict:
    """Every oracle of the campaign; a failure of a known open kind (bench/fuzz.py
    KNOWN_OPEN, empty now) is tolerated."""
    outcome = fuzz.check_program(source, np.random.default_rng(seed), triton=triton)
    assert outcome["failure"] is None or outcome["failure"] in fuzz.KNOWN_OPEN, (
        f"{outcome['failure']}: {outcome['detail']}\nprogram:\n{source}")
    return outcome


SEEDS = st.integers(0, 2**32 - 1)


# -- compiling raises only DslError ----------------------------------------------------------------

@settings(max_examples=200, **SETTINGS)
@given(S.token_soup())
def test_token_soup(source):
    only_dsl_error(source)


@settings(max_examples=20, **SETTINGS)
@given(S.lark_programs())
def test_from_lark(source):
    """from_lark handles this LALR grammar, its `_NL` terminal and its ignored whitespace
    and comments (inserted between tokens); tokens may touch (`optimizerA`)."""
    only_dsl_error(source)


@settings(max_examples=20, **SETTINGS)
@given(S.lark_programs(spaced=True), SEEDS)
def test_from_lark_with_vocabulary(source, seed):
    every_oracle(source, seed)


@settings(max_examples=100, **SETTINGS)
@given(S.grammar_programs(spaced=False))
def test_grammar_derivations(source):
    only_dsl_error(source)


@settings(max_examples=100, **SETTINGS)
@given(S.grammar_optimizers(spaced=True), SEEDS)
def test_grammar_optimizers(source, seed):
    every_oracle(source, seed)


@settings(max_examples=150, **SETTINGS)
@given(S.mutated_programs(), SEEDS)
def test_mutated_programs(source, seed):
    every_oracle(source, seed)


@settings(max_examples=100, **SETTINGS)
@given(S.loose_programs())
def test_loose_programs(source):
    only_dsl_error(source)


def _compiling(strategy, examples: int = 60) -> int:
    """How many of ``examples`` draws of ``strategy`` compile."""
    compiled: list[str] = []

    # derandomized: a count over random draws must not make the suite flaky
    @settings(max_examples=examples, phases=[Phase.generate], derandomize=True, **SETTINGS)
    @given(strategy)
    def collect(source):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                optdsl.compile(source)
                compiled.append(source)
            except optdsl.DslError:
                pass

    collect()
    return len(compiled)


def test_generators_reach_the_back_ends():
    """The grammar-directed and mutation generators are not all syntax errors: a sample of
    each has programs that compile."""
    assert _compiling(S.grammar_optimizers(spaced=True)) >= 3
    assert _compiling(S.mutated_programs()) >= 3


# -- programs that compile: every oracle ---------------------------------------------------------

@settings(max_examples=60, **SETTINGS)
@given(S.programs(), SEEDS)
def test_valid_programs(source, seed):
    outcome = every_oracle(source, seed)
    assert outcome["status"] == "compiled", source


@settings(max_examples=30, **SETTINGS)
@given(S.renamed(S.programs(max_depth=3), fuzz.HOSTILE_NAMES), SEEDS)
def test_valid_programs_with_hostile_names(renamed, seed):
    source, _ = renamed
    every_oracle(source, seed)


@pytest.fixture
def interpreter(monkeypatch, tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fuzz-cache"))


@settings(max_examples=8, **SETTINGS)
@given(S.programs(max_depth=3), SEEDS)
def test_triton_interpreted_equals_numpy(interpreter, source, seed):
    outcome = every_oracle(source, seed, triton=True)
    assert outcome["triton"]


# -- the campaign ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_campaign_of_ten_thousand_programs(monkeypatch, tmp_path):
    """`python bench/fuzz.py --programs 10000 --seed 0` finds nothing new (about 6 minutes
    on 2 cores)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    results = fuzz.campaign(programs=10000, seed=0, triton=200, log=lambda *a: None)
    summary = results["summary"]
    assert summary["programs"] >= 10000
    assert summary["triton_checked"] == 200
    new = {kind: n for kind, n in summary["failures"].items() if kind not in fuzz.KNOWN_OPEN}
    assert summary["crashes"] == 0 and not new, (summary, results["failures"][:5])


def test_campaign_smoke():
    """The campaign script itself works (a tiny run, no Triton)."""
    results = fuzz.campaign(programs=60, seed=1, triton=0, log=lambda *a: None)
    summary = results["summary"]
    assert summary["programs"] >= 60
    assert summary["compiled"] > 0 and summary["dsl_errors"] > 0
    assert set(summary["failures"]) <= fuzz.KNOWN_OPEN, results["failures"][:3]
    assert set(results["generators"]) == {name for name, _, _ in fuzz.GENERATORS}


# -- what fuzzing found (minimal reproductions) -------------------------------------------------

@pytest.mark.parametrize("source", [
    "w = w - \uff11*g",  # fullwidth 1
    "w = w - \u0661\u0662e\u0663*g",  # Arabic-Indic digits: was 12000.0
    "w = w - \U0001d7cf*g",  # mathematical bold 1
    "hyper lr = \u0967e-3\nw = w - lr*g",  # Devanagari 1
])
def test_unicode_digits_are_not_numbers(source):
    """Bug: NUMBER was /\\d+.../, and Python's \\d matches every Unicode digit (float()
    accepts them too), so `１`, `١٢e٣` compiled as numbers. Numbers are ASCII now."""
    with pytest.raises(optdsl.DslError, match="U\\+"):
        optdsl.compile(source)


@pytest.mark.parametrize("separator", ["\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\x85",
                                       "\u2028", "\u2029"])
def test_errors_show_the_line_lark_counts(separator):
    """Bug: DslError numbered lines by str.splitlines(), which also splits at form feeds,
    \\x1c-\\x1e, \\x85 and U+2028/2029 (allowed in comments and descriptions, and \\f as
    whitespace), so the caret was drawn under another line; an error at the end of input
    could even name a line past the end."""
    source = f'optimizer A "x{separator}y" # c{separator}c\nhyper lr = 1\nw = w - lr * foo(g)'
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(source)
    err = info.value
    assert (err.line, err.column) == (3, 14)
    assert str(err).split("\n")[1] == "   3 | w = w - lr * foo(g)"
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(f"# a{separator}b{separator}c\nw = w -")
    assert (info.value.line, info.value.column) == (2, 8)


def test_form_feed_whitespace_keeps_the_number_text():
    """The checker reads a number's text (to keep `hyper n = 2` an int) through the same line
    numbering."""
    prog = optdsl.compile("hyper a = 1.0 \x0c\nhyper n = 2\nw = w - a*n*g")
    assert prog.hypers["n"].default == 2 and isinstance(prog.hypers["n"].default, int)
    assert isinstance(prog.hypers["a"].default, float)


@pytest.mark.parametrize("source", ['"-\x92" ,', "x = 1\rw = w", "w = w - g\x1b", 'optimizer A "\x07'])
def test_error_messages_hold_no_control_characters(source):
    """Bug: the message quoted the offending token or character raw (a carriage return,
    escape or C1 control in the terminal)."""
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(source)
    text = str(info.value)
    assert all(c.isprintable() for c in text.replace("\n", "")), repr(text)


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_scalar_state_overflowing_float32_is_inf(backend, monkeypatch, tmp_path):
    """Bug: the torch wrapper stores a scalar state as a tensor of the default dtype
    (float32) and wrote the new value with ``fill_(float(value))``, which raises
    "value cannot be converted to type float without overflow" when the float64 result
    exceeds float32 (here 1e300): the step crashed. Now it rounds to inf, as a float32
    state initialised to 1e300 already did."""
    torch = pytest.importorskip("torch")
    if backend == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path))
    prog = optdsl.compile("state s = 0\ns = s + 1e300 * t\nw = w - 0.1 * g")
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = prog.optimizer([p], backend=backend)
    opt.step()
    assert opt.state[p]["s"].item() == float("inf")
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))


@pytest.mark.parametrize("base,exponent", [("-inf", 0.5), ("-0.0", 0.5), ("2.5", 2.5),
                                           ("-inf", -0.5), ("-0.0", -0.5), ("-8.0", 3.0)])
def test_power_is_c_pow_everywhere(base, exponent):
    """Found by the campaign (hostile_names generator): a scalar x^y on the host is C's pow
    while the evaluator took NumPy's 0-d power ufunc, which on some CPUs gives nan for
    (-inf)^0.5 and -0.0 for (-0.0)^0.5. `^` is C99's pow (libdevice's pow, torch's
    tensor ** tensor; torch.pow(x, 0.5) is sqrt and gives nan for -inf): the host, the
    evaluator and the constant folder agree with it bit for bit."""
    from optdsl.ir.ops import OPS

    with np.errstate(all="ignore"):
        c_pow = np.float64(float(base)) ** np.float64(exponent)
    evaluated = OPS["pow"].evaluate(np.float64(float(base)), np.float64(exponent))
    reference = (torch.tensor(float(base), dtype=torch.float64) **
                 torch.tensor(exponent, dtype=torch.float64)).item()
    for value in (evaluated, reference):
        assert fuzz.same(value, c_pow, rtol=0) and np.signbit(value) == np.signbit(c_pow)
    prog = optdsl.compile(f"state s = {base}\nw = w * 0 + s ^ h")  # on the host
    arrays = [np.zeros(1)]
    prog.numpy_optimizer(arrays, h=exponent).step([np.ones(1)])
    folded = optdsl.compile(f"w = w * 0 + ({base}) ^ {exponent!r}")  # folded at compile
    folded_arrays = [np.zeros(1)]
    folded.numpy_optimizer(folded_arrays).step([np.ones(1)])
    for have in (arrays[0][0], folded_arrays[0][0]):
        assert fuzz.same(have, c_pow, rtol=0) and np.signbit(have) == np.signbit(c_pow)
