"""IR tests: golden dumps, the verifier after every pass, and what each pass may and may not do.

Golden files live in tests/golden/; regenerate them with ``UPDATE_GOLDEN=1 pytest
tests/test_ir.py`` and review the diff.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl.ir.evaluate import evaluate
from optdsl.ir.ops import LEAF, OPS, Level
from optdsl.ir.verify import IRError, verify
from optdsl.passes import PIPELINE, optimize
from optdsl.passes.cse_dce import cse_dce
from optdsl.passes.fold import fold
from optdsl.passes.simplify import simplify

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"

REDUCTIONS_PROGRAM = """\
optimizer ClipTrust "where, clamp and every reduction"
hyper lr = 0.1 in (0, inf)
hyper max_norm = 1.0 in (0, inf)
hyper beta = 0.9 in [0, 1)
state m = 0 as momentum_buffer
state count = 0
scale = min(1, max_norm / (global_norm(g) + 1e-6))
g = g * scale
trust = where(norm(w) > 0, norm(w) / (norm(g) + 1e-8), 1)
m = beta * m + clamp(g, -1, 1)
d = where(m * g > 0, m, 0.5 * m) - mean(g) * 0 + maxabs(g) * 1
count = count + 1 + dot(w, g) - global_sum(g) + sum(g) * 0
w = w - lr * trust * d - -0.0 * count
"""

GOLDEN_PROGRAMS = {
    "adam": lambda: optdsl.load(ROOT / "examples" / "adam.opt"),
    "momentum": lambda: optdsl.compile("v = a*v - lr*g; w = w + v", name="momentum"),
    "reductions": lambda: optdsl.compile(REDUCTIONS_PROGRAM),
}


def dump(prog) -> str:
    return ("# unoptimized\n" + prog.ir(optimized=False) + "\n\n# optimized\n" + prog.ir()
            + "\n")


@pytest.mark.parametrize("name", sorted(GOLDEN_PROGRAMS))
def test_golden_ir(name):
    text = dump(GOLDEN_PROGRAMS[name]())
    path = GOLDEN / f"{name}.ir"
    if os.environ.get("UPDATE_GOLDEN") or not path.exists():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not os.environ.get("UPDATE_GOLDEN"):
            pytest.fail(f"{path} was missing and has been written; review it and rerun")
    assert text == path.read_text(encoding="utf-8"), (
        f"IR of {name} changed; if intended, regenerate with UPDATE_GOLDEN=1")


def test_ir_dump_is_deterministic():
    a = optdsl.compile(REDUCTIONS_PROGRAM)
    b = optdsl.compile(REDUCTIONS_PROGRAM)
    assert dump(a) == dump(b)
    assert a.source("numpy") == b.source("numpy")


# -- the verifier ------------------------------------------------------------------------------

ALL_FILES = sorted((ROOT / "examples").glob("*.opt")) + sorted(
    (ROOT / "optdsl" / "library").glob("*.opt"))
# (closure-driven programs have phases, not one step: tests/test_closure_language.py checks
# each phase the way these tests check a step)
ALL_FILES = [p for p in ALL_FILES if not getattr(optdsl.load(p), "closure_driven", False)]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_verify_after_every_pass(path):
    prog = optdsl.load(path)
    graph = verify(prog.graph)
    for run in PIPELINE:
        graph = verify(run(graph))
    assert optimize(prog.graph, check=True) == graph
    verify(prog.optimized)


def test_verify_after_every_pass_golden_programs():
    for make in GOLDEN_PROGRAMS.values():
        optimize(make().graph, check=True)


def test_verifier_catches_broken_graphs():
    from dataclasses import replace

    graph = optdsl.compile("w = w - 2*g").graph
    eqs = list(graph.eqs)
    last = len(eqs) - 1
    bad_order = replace(graph, eqs=tuple(eqs[:last] + [replace(eqs[last], args=(last, 0))]))
    with pytest.raises(IRError):
        verify(bad_order)
    from optdsl.ir.ops import Kind

    bad_kind = replace(graph, eqs=tuple(eqs[:last] + [replace(eqs[last], kind=Kind(Level.PARAM))]))
    with pytest.raises(IRError):
        verify(bad_kind)
    with pytest.raises(IRError):
        verify(replace(graph, outputs=()))


# -- fold ----------------------------------------------------------------------------------------

def consts_of(graph) -> list[float]:
    live = graph.live()
    return [eq.attr for i, eq in enumerate(graph.eqs) if eq.op == "const" and live[i]]


def ops_of(graph) -> list[str]:
    live = graph.live()
    return [eq.op for i, eq in enumerate(graph.eqs) if live[i] and OPS[eq.op].category != LEAF]


def same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


@pytest.mark.parametrize("expr,value", [
    ("1/0", math.inf), ("-1/0", -math.inf), ("0/0", math.nan), ("sqrt(-1)", math.nan),
    ("0*inf", math.nan), ("inf - inf", math.nan), ("log(0)", -math.inf), ("log(-1)", math.nan),
    ("0 * -1", -0.0), ("-0.0 + 0", 0.0), ("-0.0 - 0", -0.0), ("1 / -0.0", -math.inf),
    ("exp(1000)", math.inf), ("2^1024", math.inf), ("rsqrt(0)", math.inf),
    ("max(0/0, 1)", math.nan), ("min(1, 0/0)", math.nan), ("clamp(0/0, 0, 1)", math.nan),
    ("atan2(0, -1)", math.pi), ("sign(-0.0)", float(np.sign(-0.0))), ("abs(-0.0)", 0.0),
    ("floor(-0.5)", -1.0),
    ("ceil(-0.5)", -0.0), ("0.1 + 0.2", 0.1 + 0.2), ("tanh(inf)", 1.0),
])
def test_fold_uses_numpy_semantics(expr, value):
    graph = optdsl.compile(f"w = w - ({expr}) * g").graph
    folded = fold(graph)
    verify(folded)
    k = [c for c in consts_of(folded)]
    assert ops_of(folded) == ["mul", "sub"], ops_of(folded)
    assert any(same_float(c, value) for c in k), (k, value)
    with np.errstate(all="ignore"):
        expected = evaluate(graph, {"w": np.array([0.0]), "g": np.array([1.0]), "t": 1})["w"]
        got = evaluate(folded, {"w": np.array([0.0]), "g": np.array([1.0]), "t": 1})["w"]
    assert same_float(float(expected[0]), float(got[0]))


def test_fold_leaves_non_constants_alone():
    graph = optdsl.compile("hyper a = 2\nw = w - a * (2 * 3) * g").graph
    folded = fold(graph)
    assert 6.0 in consts_of(folded)
    assert ops_of(folded).count("mul") == 2


# -- simplify --------------------------------------------------------------------------------

def optimized(source: str):
    return optdsl.compile(source).optimized


def test_simplify_keeps_x_times_zero():
    graph = optimized("w = w*0 + 0*g")
    assert ops_of(graph).count("mul") == 2
    out = evaluate(graph, {"w": np.array([np.inf, -1.0, np.nan]),
                           "g": np.array([1.0, 1.0, 1.0]), "t": 1})["w"]
    assert np.isnan(out[0]) and np.isnan(out[2])
    assert out[1] == 0.0 and not np.signbit(out[1])  # -0.0 + 0.0 = +0.0


def test_simplify_keeps_x_plus_zero():
    graph = optimized("w = w + 0")
    assert "add" in ops_of(graph)
    out = evaluate(graph, {"w": np.array([-0.0]), "g": np.array([1.0]), "t": 1})["w"]
    assert out[0] == 0.0 and not np.signbit(out[0])


def test_simplify_keeps_x_minus_negative_zero():
    graph = optimized("w = w - -0.0")
    assert "sub" in ops_of(graph)
    out = evaluate(graph, {"w": np.array([-0.0]), "g": np.array([1.0]), "t": 1})["w"]
    assert not np.signbit(out[0])


def test_simplify_keeps_negative_zero_distinct_from_zero():
    graph = optimized("w = w * 0.0 + g * -0.0")
    ks = consts_of(graph)
    assert any(same_float(k, 0.0) for k in ks) and any(same_float(k, -0.0) for k in ks)
    assert ops_of(graph).count("mul") == 2
    out = evaluate(graph, {"w": np.array([1.0]), "g": np.array([1.0]), "t": 1})["w"]
    assert out[0] == 0.0 and not np.signbit(out[0])  # 0.0 + -0.0
    out = evaluate(graph, {"w": np.array([-1.0]), "g": np.array([1.0]), "t": 1})["w"]
    assert np.signbit(out[0])  # -0.0 + -0.0


@pytest.mark.parametrize("source,removed", [
    ("w = w * 1 - g", "mul"), ("w = 1 * w - g", "mul"), ("w = w / 1 - g", "div"),
    ("w = (w - 0) * g", "sub"), ("w = --w * g", "neg"), ("w = w^1 * g", "pow"),
])
def test_simplify_exact_identities(source, removed):
    assert removed not in ops_of(optimized(source))


def test_simplify_square():
    graph = optimized("w = w - g^2")
    assert "pow" not in ops_of(graph) and "square" in ops_of(graph)
    x = np.array([3.0, -0.0, np.inf, np.nan, 1e200, 1.1])
    w = np.zeros_like(x)
    a = evaluate(optdsl.compile("w = w - g^2").graph, {"w": w, "g": x, "t": 1})["w"]
    b = evaluate(graph, {"w": w, "g": x, "t": 1})["w"]
    assert np.array_equal(a, b, equal_nan=True)


def test_simplify_does_not_turn_power_half_into_sqrt():
    assert "pow" in ops_of(optimized("w = w - g^0.5"))


def test_simplify_where_with_constant_mask_and_equal_branches():
    assert "where" not in ops_of(optimized("w = where(1 > 0, w - g, w + g)"))
    assert "sub" in ops_of(optimized("w = where(1 > 0, w - g, w + g)"))
    assert "where" not in ops_of(optimized("w = where(g > 0, w - g, w - g)"))


def test_simplify_does_not_change_x_minus_x():
    graph = optimized("w = w - (g - g)")
    out = evaluate(graph, {"w": np.array([1.0]), "g": np.array([np.inf]), "t": 1})["w"]
    assert np.isnan(out[0])


# -- cse and dce -----------------------------------------------------------------------------

def test_cse_merges_equal_expressions():
    graph = optimized("hyper a = 2\nw = w - (a*g + a*g)")
    assert ops_of(graph).count("mul") == 1
    assert ops_of(graph).count("add") == 1


def test_cse_across_statements():
    graph = optimized("x = sqrt(g) * 3\ny = sqrt(g) * 3\nw = w - x - y")
    assert ops_of(graph).count("sqrt") == 1 and ops_of(graph).count("mul") == 1


def test_dce_drops_unused_temporaries():
    graph = optimized("x = g * 3\ny = exp(x)\nw = w - g")
    assert ops_of(graph) == ["sub"]
    assert all(OPS[eq.op].category == LEAF or eq.op == "sub" for eq in graph.eqs)


def test_cse_dce_alone_on_unoptimized_graph():
    graph = optdsl.compile("x = g * 3\nw = w - (2*g + 2*g)").graph
    out = cse_dce(graph)
    verify(out)
    assert ops_of(out).count("mul") == 1 and len(out.eqs) < len(graph.eqs)


def test_simplify_alone_keeps_graph_valid():
    verify(simplify(optdsl.compile(REDUCTIONS_PROGRAM).graph))


# -- hoisting --------------------------------------------------------------------------------

def tensor_free(graph) -> list[bool]:
    """Values that depend only on hypers, t, literals and reductions (no element-wise input)."""
    free = []
    for eq in graph.eqs:
        if OPS[eq.op].is_reduction:
            free.append(True)
        elif not eq.args:
            free.append(eq.op in ("const", "hyper", "t") or eq.kind.level < Level.TENSOR)
        else:
            free.append(all(free[a] for a in eq.args))
    return free


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_scalar_values_have_scalar_levels(path):
    graph = optdsl.load(path).optimized
    for i, (eq, free) in enumerate(zip(graph.eqs, tensor_free(graph))):
        if free:
            assert eq.kind.level < Level.TENSOR, f"%{i} {eq.op} is per element"


def find(graph, op, args_ops):
    for i, eq in enumerate(graph.eqs):
        if eq.op == op and [graph.eqs[a].op if graph.eqs[a].op != "hyper"
                            else "hyper:" + graph.eqs[a].attr for a in eq.args] == args_ops:
            return i
    raise AssertionError(f"no {op}{args_ops} in graph")


def test_adam_bias_corrections_are_param_level_and_one_minus_beta_group_level():
    graph = optdsl.load(ROOT / "examples" / "adam.opt").optimized
    for beta in ("beta1", "beta2"):
        power = find(graph, "pow", [f"hyper:{beta}", "t"])
        assert graph.eqs[power].kind.level == Level.PARAM
        correction = find(graph, "sub", ["const", "pow"]) if beta == "beta1" else None
        if correction is not None:
            assert graph.eqs[correction].kind.level == Level.PARAM
        one_minus = find(graph, "sub", ["const", f"hyper:{beta}"])
        assert graph.eqs[one_minus].kind.level == Level.GROUP
    for eq in graph.eqs:
        if eq.op == "sub" and graph.eqs[eq.args[1]].op == "pow":
            assert eq.kind.level == Level.PARAM


def chunk_loops(source: str) -> list[list[str]]:
    """The bodies of the generated `for lo in range(...)` loops."""
    lines = source.splitlines()
    loops = []
    for i, line in enumerate(lines):
        if line.strip().startswith("for lo in range("):
            indent = len(line) - len(line.lstrip())
            body = []
            for row in lines[i + 1:]:
                if row.strip() and len(row) - len(row.lstrip()) <= indent:
                    break
                body.append(row)
            loops.append(body)
    return loops


@pytest.mark.parametrize("path", [ROOT / "examples" / "adam.opt"] + ALL_FILES,
                         ids=lambda p: p.name)
def test_scalar_work_is_outside_the_chunk_loop(path):
    prog = optdsl.load(path)
    source = prog.source("numpy")
    loops = chunk_loops(source)
    graph = prog.generic.graph
    scalar_values = {i for i, eq in enumerate(graph.eqs)
                     if eq.kind.level < Level.TENSOR and OPS[eq.op].category != LEAF}
    for body in loops:
        text = "\n".join(body)
        assert " ** " not in text and "h_" not in text, text
        for v in scalar_values:
            assert not re.search(rf"\bv{v} = ", text), f"v{v} computed per chunk:\n{text}"


def test_adam_numpy_source_computes_bias_corrections_once_per_parameter():
    source = optdsl.load(ROOT / "examples" / "adam.opt").source("numpy")
    assert source.count("h_beta1 ** t") == 1 and source.count("h_beta2 ** t") == 1
    assert source.count("(1.0 - h_beta1)") == 1
    loops = chunk_loops(source)
    assert len(loops) == 1
    for line in loops[0]:
        assert "beta" not in line and "** t" not in line
    # in the host step, the group-level 1 - beta1 comes before the loop over parameters, and
    # the param-level bias correction is inside that loop; the chunks are the sweep's
    step = source[source.index("def step(ctx, params):"):]
    assert step.index("(1.0 - h_beta1)") < step.index("for p in params")
    assert step.index("for p in params") < step.index("h_beta1 ** t")
    assert "for lo in range" not in step and "for lo in range" in source


def test_generated_source_contains_no_user_text_but_identifiers():
    prog = optdsl.compile('optimizer X "desc; import os"\n'
                          "hyper evil_name = 1\nstate s = 0 as os_system\n"
                          "s = s + g\nw = w - evil_name * s")
    source = prog.source("numpy")
    assert "import os" not in source and "desc" not in source
    assert "h_evil_name" in source
