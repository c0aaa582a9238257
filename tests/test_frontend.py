"""Grammar and checker coverage: every form of LANGUAGE.md parses and means what it says.

Meaning is observed through the public Program (hypers, states, their defaults, kinds and
keys) and through the reference evaluator on the checked graph.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl.ir.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent


def run(prog, w, g, t=1, state=None, hyper=None):
    """One step of the unoptimized graph on float64 arrays; returns its outputs."""
    hyper = dict(hyper or {})
    for name, spec in prog.hypers.items():
        if spec.parts:
            for part, value in zip(spec.parts, spec.default):
                hyper.setdefault(part, value)
        elif spec.default is not None:
            hyper.setdefault(name, spec.default)
    if state is None:
        state = {}
        for name, spec in prog.states.items():
            init = evaluate(spec.init, {"hyper": hyper, "w": np.asarray(w, float)})["init"]
            state[name] = (np.broadcast_to(init, np.shape(w)).astype(float) if spec.tensor
                           else np.float64(init))
    return evaluate(prog.graph, {"w": np.asarray(w, float), "g": np.asarray(g, float), "t": t,
                                 "state": state, "hyper": hyper})


def default_of(source: str, name: str = "a"):
    return optdsl.compile(f"{source}\nw = w - g").hypers[name].default


# -- the two forms of LANGUAGE.md --------------------------------------------------------------

def test_declared_form_adam():
    prog = optdsl.load(ROOT / "examples" / "adam.opt")
    assert prog.name == "Adam"
    assert prog.description == "Adam (Kingma & Ba, 2014)"
    assert list(prog.hypers) == ["lr", "betas", "eps", "weight_decay"]
    lr, betas, eps, wd = (prog.hypers[n] for n in prog.hypers)
    assert lr.default == 1e-3 and not lr.required and not lr.inferred
    assert (lr.interval.low, lr.interval.high) == (0.0, math.inf)
    assert lr.interval.low_closed and not lr.interval.high_closed  # [0, inf): lr = 0 allowed
    assert betas.parts == ("beta1", "beta2") and betas.default == (0.9, 0.999)
    assert betas.interval.low_closed and not betas.interval.high_closed
    assert eps.default == 1e-8 and eps.interval.low_closed
    assert wd.default == 0 and wd.interval is None
    assert list(prog.states) == ["m", "v"]
    assert prog.states["m"].key == "exp_avg" and prog.states["v"].key == "exp_avg_sq"
    assert prog.states["m"].tensor and prog.states["v"].tensor
    assert not prog.states["m"].inferred


def test_one_liner_momentum():
    prog = optdsl.compile("v = a*v - lr*g; w = w + v", name="momentum")
    assert prog.name == "momentum"
    assert set(prog.hypers) == {"a", "lr"}
    for spec in prog.hypers.values():
        assert spec.required and spec.default is None and spec.inferred
    assert list(prog.states) == ["v"]
    v = prog.states["v"]
    assert v.inferred and v.tensor and v.key == "v"
    out = run(prog, [1.0, 2.0], [0.5, -1.0], hyper={"a": 0.9, "lr": 0.1},
              state={"v": np.array([1.0, 1.0])})
    np.testing.assert_allclose(out["v"], 0.9 * 1.0 - 0.1 * np.array([0.5, -1.0]))
    np.testing.assert_allclose(out["w"], np.array([1.0, 2.0]) + out["v"])


def test_one_liner_file_and_string_agree():
    from_file = optdsl.load(ROOT / "examples" / "momentum.opt")
    from_text = optdsl.compile("v = a*v - lr*g; w = w + v")
    assert from_file.ir().splitlines()[1:] == from_text.ir().splitlines()[1:]
    assert from_file.name == "momentum"  # named after the file


def test_default_name_of_a_string_program():
    prog = optdsl.compile("w = w - g")
    assert isinstance(prog.name, str) and prog.name.isidentifier()


def test_header_names_the_program_and_description_is_optional():
    assert optdsl.compile("optimizer Foo\nw = w - g").name == "Foo"
    assert optdsl.compile("optimizer Foo\nw = w - g").description is None
    assert optdsl.compile('optimizer Foo "a # not a comment"\nw = w - g').description == \
        "a # not a comment"


def test_name_argument_must_be_an_identifier():
    with pytest.raises(ValueError):
        optdsl.compile("w = w - g", name="not an identifier")


# -- lexical -------------------------------------------------------------------------------------

SEPARATORS = [
    "hyper lr = 0.5\nw = w - lr*g\n",
    "hyper lr = 0.5; w = w - lr*g",
    "hyper lr = 0.5;\n\n;w = w - lr*g;;",
    "\n\n# leading comment\nhyper lr = 0.5  # trailing comment\n\n\nw = w - lr*g # done",
    "hyper lr = 0.5\r\nw = w - lr*g\r\n",
    "   hyper   lr=0.5\t\n\tw=w-lr*g   ",
    "hyper lr = 0.5 # ; w = w - 100*g\nw = w - lr*g",
]


@pytest.mark.parametrize("source", SEPARATORS)
def test_separators_comments_and_blank_lines(source):
    prog = optdsl.compile(source)
    assert list(prog.hypers) == ["lr"] and prog.hypers["lr"].default == 0.5
    out = run(prog, [1.0], [1.0])
    assert out["w"][0] == 0.5


@pytest.mark.parametrize("text,value", [
    ("1", 1), ("0.9", 0.9), ("1e-8", 1e-8), (".5", 0.5), ("1.", 1.0), ("1.e2", 100.0),
    ("2E+3", 2000.0), ("inf", math.inf), ("-inf", -math.inf), ("0", 0), ("-0.0", -0.0),
])
def test_number_forms(text, value):
    got = default_of(f"hyper a = {text}")
    assert got == value
    if value == 0:
        assert math.copysign(1, got) == math.copysign(1, value)


def test_integer_literal_default_stays_an_integer():
    assert isinstance(default_of("hyper a = 0"), int)
    assert isinstance(default_of("hyper a = 0.0"), float)


# -- declarations ----------------------------------------------------------------------------

@pytest.mark.parametrize("brackets,low_closed,high_closed", [
    ("[0, 1]", True, True), ("[0, 1)", True, False), ("(0, 1]", False, True),
    ("(0, 1)", False, False),
])
def test_interval_bracket_kinds(brackets, low_closed, high_closed):
    spec = optdsl.compile(f"hyper a = 0.5 in {brackets}\nw = w - a*g").hypers["a"]
    assert (spec.interval.low, spec.interval.high) == (0.0, 1.0)
    assert (spec.interval.low_closed, spec.interval.high_closed) == (low_closed, high_closed)
    assert spec.interval.contains(0.5)
    assert spec.interval.contains(0.0) == low_closed
    assert spec.interval.contains(1.0) == high_closed
    assert not spec.interval.contains(float("nan"))


def test_interval_with_infinite_and_computed_bounds():
    spec = optdsl.compile("hyper a = -1 in (-inf, 2*0.5]\nw = w - a*g").hypers["a"]
    assert spec.interval.low == -math.inf and spec.interval.high == 1.0
    spec = optdsl.compile("hyper a = inf in [0, inf]\nw = w - a*g").hypers["a"]
    assert spec.default == math.inf and spec.interval.contains(math.inf)


def test_hyper_without_default_is_required():
    spec = optdsl.compile("hyper lr\nw = w - lr*g").hypers["lr"]
    assert spec.required and spec.default is None and not spec.inferred


def test_tuple_hyper():
    prog = optdsl.compile("hyper betas = (b1 = 0.9, b2 = 0.999, b3 = 1) in [0, 1]\n"
                          "w = w - b1*b2*b3*g")
    spec = prog.hypers["betas"]
    assert spec.parts == ("b1", "b2", "b3") and spec.default == (0.9, 0.999, 1)
    assert spec.scalar_names() == ("b1", "b2", "b3")
    assert "b1" not in prog.hypers
    out = run(prog, [0.0], [1.0])
    np.testing.assert_allclose(out["w"], [-0.9 * 0.999])


def test_several_hypers_on_one_line():
    prog = optdsl.compile("hyper a = 1, b = 2 in [0, 3], c\nw = w - a*b*c*g")
    assert list(prog.hypers) == ["a", "b", "c"]
    assert prog.hypers["a"].default == 1 and prog.hypers["b"].default == 2
    assert prog.hypers["b"].interval is not None and prog.hypers["a"].interval is None
    assert prog.hypers["c"].required


def test_several_states_on_one_line_with_keys():
    prog = optdsl.compile("state m = 0, v = 0 as exp_avg_sq, u = w\n"
                          "m = m + g; v = v + g*g; u = u - g\nw = w - m - v + u")
    assert list(prog.states) == ["m", "v", "u"]
    assert [s.key for s in prog.states.values()] == ["m", "exp_avg_sq", "u"]
    assert all(s.tensor for s in prog.states.values())
    out = run(prog, [2.0], [1.0])
    # state initial values: m = 0, v = 0, u = w = 2
    assert out["m"][0] == 1.0 and out["v"][0] == 1.0 and out["u"][0] == 1.0
    assert out["w"][0] == 2.0 - 1.0 - 1.0 + 1.0


def test_state_initial_value_from_hypers_and_w():
    prog = optdsl.compile("hyper c = 3\nstate m = c * w + 1\nm = m + g\nw = w - m")
    out = run(prog, [2.0], [1.0])
    assert out["m"][0] == 3 * 2 + 1 + 1


# -- operators -------------------------------------------------------------------------------

@pytest.mark.parametrize("expr,value", [
    ("2^3", 8.0), ("2**3", 8.0), ("2^3^2", 512.0), ("2**3**2", 512.0), ("2^3**2", 512.0),
    ("(2^3)^2", 64.0), ("-2^2", -4.0), ("-2**2", -4.0), ("(-2)^2", 4.0), ("2^-1", 0.5),
    ("-2^-2", -0.25), ("2*-3", -6.0), ("1 - -1", 2.0), ("--1", 1.0), ("1 - 2 - 3", -4.0),
    ("8 / 4 / 2", 1.0), ("2 + 3 * 4", 14.0), ("(2 + 3) * 4", 20.0), ("12 / 2 * 3", 18.0),
    ("-3 * 2", -6.0), ("2 * 3 ^ 2", 18.0), ("sqrt(16)", 4.0), ("min(1, 2) + max(1, 2)", 3.0),
    ("clamp(5, 0, 1)", 1.0), ("atan2(0, -1)", math.pi), ("abs(-2) + sign(-3)", 1.0),
    ("floor(1.5) + ceil(1.5)", 3.0), ("exp(0) + log(1) + tanh(0)", 1.0), ("rsqrt(4)", 0.5),
])
def test_operator_precedence_and_constant_functions(expr, value):
    assert default_of(f"hyper a = {expr}") == pytest.approx(value, rel=1e-15)


def test_unary_minus_binds_looser_than_power_in_tensor_code():
    prog = optdsl.compile("w = -g^2")
    out = run(prog, [0.0, 0.0], [3.0, -3.0])
    assert list(out["w"]) == [-9.0, -9.0]


def test_power_is_right_associative_in_tensor_code():
    prog = optdsl.compile("w = g^w^2")  # g^(w^2)
    out = run(prog, [2.0], [2.0])
    assert out["w"][0] == 16.0


@pytest.mark.parametrize("op,expected", [
    ("<", [1.0, 0.0, 0.0]), ("<=", [1.0, 1.0, 0.0]), (">", [0.0, 0.0, 1.0]),
    (">=", [0.0, 1.0, 1.0]), ("==", [0.0, 1.0, 0.0]), ("!=", [1.0, 0.0, 1.0]),
])
def test_comparisons(op, expected):
    prog = optdsl.compile(f"w = where(g {op} 0, 1, 0)")
    out = run(prog, [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0])
    assert list(out["w"]) == expected


def test_comparison_binds_loosest():
    prog = optdsl.compile("w = where(g + 1 > 2 * w, 1, 0)")  # (g + 1) > (2 * w)
    out = run(prog, [1.0, 0.0], [0.5, 0.5])
    assert list(out["w"]) == [0.0, 1.0]


def test_scalar_mask_with_tensor_branches_broadcasts():
    prog = optdsl.compile("w = where(t > 1, w - g, w + g)")
    assert list(run(prog, [1.0, 2.0], [1.0, 1.0], t=1)["w"]) == [2.0, 3.0]
    assert list(run(prog, [1.0, 2.0], [1.0, 1.0], t=2)["w"]) == [0.0, 1.0]


def test_statements_run_in_order_and_g_rebinds_locally():
    prog = optdsl.compile("g = 2*g\nx = g + 1\ng = x*10\nw = w - g")
    out = run(prog, [0.0], [1.0])
    assert out["w"][0] == -30.0
    assert set(out) == {"w"}


# -- names, kinds and inference ----------------------------------------------------------------

def test_scalar_state_inference_nadam_like():
    prog = optdsl.compile("hyper beta = 0.9\nstate mu = 1\nmu = mu * beta\n"
                          "w = w - (1 - mu) * g")
    assert prog.states["mu"].tensor is False
    out = run(prog, [0.0, 0.0], [1.0, 2.0])
    assert np.ndim(out["mu"]) == 0 and out["mu"] == pytest.approx(0.9)


def test_scalar_state_from_t_and_reductions():
    prog = optdsl.compile("state s = 0\ns = s + t + norm(g)\nw = w - s*g")
    assert prog.states["s"].tensor is False


def test_state_receiving_a_tensor_is_a_tensor():
    prog = optdsl.compile("state mu = 1\nmu = mu * 0.9 + 0*g\nw = w - mu*g")
    assert prog.states["mu"].tensor is True


def test_state_widened_through_another_state():
    # a is scalar until b (a tensor) flows into it; b reads a: the fixed point must widen both
    prog = optdsl.compile("state a = 1, b = 0\na = a * 0.5 + b\nb = g\nw = w - a*g")
    assert prog.states["a"].tensor and prog.states["b"].tensor


def test_state_initialised_from_w_is_a_tensor():
    prog = optdsl.compile("state s = w\ns = 0.5\nw = w - s*g")
    assert prog.states["s"].tensor is True


def test_inferred_states_and_hypers():
    prog = optdsl.compile("hyper lr = 0.1\nstate m = 0\n"
                          "m = beta*m + g\nacc = acc + g*g\ntmp = m / (sqrt(acc) + eps)\n"
                          "w = w - lr*tmp")
    assert not prog.hypers["lr"].inferred and prog.hypers["lr"].default == 0.1
    for name in ("beta", "eps"):
        assert prog.hypers[name].inferred and prog.hypers[name].default is None
        assert prog.hypers[name].required
    assert set(prog.hypers) == {"lr", "beta", "eps"}
    assert not prog.states["m"].inferred
    assert prog.states["acc"].inferred and prog.states["acc"].tensor
    assert "tmp" not in prog.states and "tmp" not in prog.hypers
    out = run(prog, [1.0], [2.0], hyper={"beta": 0.5, "eps": 0.0},
              state={"m": np.array([2.0]), "acc": np.array([0.0])})
    assert out["acc"][0] == 4.0 and out["m"][0] == 3.0
    assert out["w"][0] == pytest.approx(1.0 - 0.1 * 3.0 / 2.0)


def test_inferred_state_initialised_to_zero():
    prog = optdsl.compile("n = n + 1\nw = w - n*g")
    spec = prog.states["n"]
    assert spec.inferred and not spec.tensor
    assert evaluate(spec.init, {})["init"] == 0.0


def test_name_assigned_before_read_is_a_temporary():
    prog = optdsl.compile("x = 2*g\nx = x + 1\nw = w - x")
    assert not prog.states and not prog.hypers


def test_required_hypers_have_default_none():
    prog = optdsl.compile("hyper a, b = 2\nw = w - a*b*c*g")
    assert prog.hypers["a"].default is None and not prog.hypers["a"].inferred
    assert prog.hypers["b"].default == 2
    assert prog.hypers["c"].default is None and prog.hypers["c"].inferred


def test_hyper_order_is_declaration_then_first_use():
    prog = optdsl.compile("hyper z = 1\nw = w - b*a*z*g + c")
    assert list(prog.hypers) == ["z", "b", "a", "c"]


def test_w_assigned_several_times():
    prog = optdsl.compile("w = w * 0.5\nw = w - g")
    assert run(prog, [4.0], [1.0])["w"][0] == 1.0


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.opt"))
                         + sorted((ROOT / "optdsl" / "library").glob("*.opt")),
                         ids=lambda p: p.name)
def test_every_bundled_program_compiles(path):
    prog = optdsl.load(path)
    assert prog.hypers is not None and prog.states is not None
