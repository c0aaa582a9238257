"""Property tests (hypothesis) over random valid programs.

A hand-written strategy builds programs from the whole language: expression trees over
``w g t``, declared, tuple and inferred hypers, declared (tensor and scalar) and inferred
states, temporaries, ``g`` rebinding, constants including 0, -0.0, inf and 1e300, every
function of optdsl.ir.ops.FUNCTIONS (where with every comparison, clamp, min/max, atan2, the
per-tensor and the group reductions), several statements separated by newlines or ``;``.

(a) compiling never raises anything but DslError (valid programs compile; random text and
    random token soup give a DslError or compile, never another exception);
(b) the optimized graph (and every switch-specialized variant) equals the unoptimized graph
    under the reference evaluator optdsl.ir.evaluate.evaluate_group. Every rewrite is exact
    (fold uses the evaluator's own NumPy functions, simplify only applies identities exact
    under IEEE 754, x^2 -> square is exactly rounded like pow(x, 2), CSE/DCE do not change any
    value), so results must be bitwise equal; a 1e-12 relative slack is allowed for finite
    values only, and NaN == NaN, -0.0 != 0.0;
(c) the generated NumPy step, run through prog.numpy_optimizer and through the torch wrapper
    (backend="numpy"), equals evaluate_group over two steps on float64 arrays of size 1, odd
    sizes and sizes above optdsl.codegen.numpy.CHUNK, with two parameters in one group so the
    global reductions mix parameters. For arrays longer than a chunk the generated code sums
    chunk by chunk, so there the reference reductions are accumulated in the same chunk order
    (the element-wise work is still the evaluator's); below a chunk the plain evaluator is the
    oracle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (  # the program strategies, shared with test_fuzz and bench/fuzz.py
    ELEMENTWISE_1,
    ELEMENTWISE_2,
    ELEMENT_FUNCTIONS,
    ELEMENTWISE_3,
    REDUCTIONS_1,
    REDUCTIONS_2,
    TOKENS,
    loose_programs,
    programs,
)

import optdsl
import optdsl.ir.evaluate as ev
from optdsl.optim import hypers as hyper_values
from optdsl.codegen.numpy import CHUNK
from optdsl.ir.ops import FUNCTIONS
from optdsl.passes import optimize

SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None,
            "report_multiple_bugs": False}

# -- the program strategy: tests/strategies.py ----------------------------------------------

def test_strategy_covers_every_function():
    covered = set(ELEMENTWISE_1) | set(ELEMENTWISE_2) | set(ELEMENTWISE_3) | set(REDUCTIONS_1)
    covered |= set(REDUCTIONS_2) | {"where"}
    assert covered == set(ELEMENT_FUNCTIONS), set(ELEMENT_FUNCTIONS) - covered
    for name in ("sum", "mean", "norm", "maxabs", "dot", "global_norm", "global_sum", "min",
                 "max", "clamp", "where"):
        assert name in FUNCTIONS


# -- helpers ------------------------------------------------------------------------------------

SPECIALS = [0.0, -0.0, 1.0, -1.5, 2.0, 0.5, 3.25, -7.0, np.inf, -np.inf, np.nan, 1e-300, 1e300]
HYPER_VALUES = [0.5, 2.0, -1.0, 0.0, -0.0, 3.0, np.inf]


def same(a, b, rtol: float = 1e-12) -> bool:
    """Equal as float64 arrays (broadcast): NaN == NaN, signed zeros must match, finite values
    may differ by ``rtol`` relative."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = np.broadcast_arrays(a, b)
    with np.errstate(all="ignore"):
        exact = (a == b) & (np.signbit(a) == np.signbit(b))
        nan = np.isnan(a) & np.isnan(b)
        close = (np.isfinite(a) & np.isfinite(b) & (a != 0) & (b != 0)
                 & (np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b))))
    return bool(np.all(exact | nan | close))


def compile_valid(source: str):
    try:
        return optdsl.compile(source)
    except optdsl.DslError as err:  # the strategy only makes valid programs
        raise AssertionError(f"valid program rejected:\n{source}\n{err}") from None


def hyper_keywords(prog, data) -> dict[str, float]:
    """Values for the required hypers; declared defaults otherwise."""
    return {name: data.draw(st.sampled_from(HYPER_VALUES), label=name)
            for name, spec in prog.hypers.items() if spec.required}


def initial_state(prog, scalars: dict[str, float], w: np.ndarray) -> dict:
    state = {}
    for name, spec in prog.states.items():
        value = ev.evaluate(spec.init, {"hyper": scalars, "w": w})["init"]
        if spec.tensor:
            state[name] = np.array(np.broadcast_to(value, w.shape), dtype=w.dtype)
        else:
            state[name] = np.float64(value)
    return state




# -- (a) compile raises only DslError -------------------------------------------------------------

@settings(max_examples=150, **SETTINGS)
@given(programs())
def test_valid_programs_compile(source):
    prog = compile_valid(source)
    optimize(prog.graph, check=True)
    assert prog.source("numpy")
    prog.ir()


def only_dsl_error(source: str) -> None:
    try:
        prog = optdsl.compile(source)
    except optdsl.DslError as err:
        text = str(err)
        assert "internal compiler error" not in text, (source, text)
        assert "Traceback" not in text and "site-packages" not in text
        assert err.line >= 1 and err.column >= 1
        return
    prog.source("numpy")


@settings(max_examples=300, **SETTINGS)
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_token_soup_raises_only_dsl_error(tokens):
    only_dsl_error("".join(t if t in "\n\t ;,()" else " " + t for t in tokens))


@settings(max_examples=300, **SETTINGS)
@given(st.text(alphabet=st.sampled_from(list("wgtlrmx =+-*/^(),;\n<>!#[]0123456789.eE_\"inf")),
               max_size=60))
def test_random_text_raises_only_dsl_error(source):
    only_dsl_error(source)


@settings(max_examples=300, **SETTINGS)
@given(loose_programs())
def test_loose_programs_raise_only_dsl_error(source):
    only_dsl_error(source)


# -- (b) optimized == unoptimized under the evaluator -----------------------------------------

@settings(max_examples=200, **SETTINGS)
@given(programs(), st.data())
def test_optimized_graph_equals_unoptimized(source, data):
    prog = compile_valid(source)
    values = hyper_values.resolve(prog.hypers, hyper_keywords(prog, data), extra={})
    scalars = hyper_values.scalars(prog.hypers, values)
    params = []
    def array(size):
        return np.array(data.draw(st.lists(st.sampled_from(SPECIALS), min_size=size,
                                           max_size=size)), dtype=np.float64)

    for size in (3, 1):
        state = {name: array(size) if spec.tensor
                 else np.float64(data.draw(st.sampled_from(SPECIALS)))
                 for name, spec in prog.states.items()}
        params.append({"w": array(size), "g": array(size), "t": data.draw(st.integers(1, 3)),
                       "state": state})
    reference = ev.evaluate_group(prog.graph, scalars, params)
    candidates = {"optimized": prog.optimized, "variant": prog.variant(scalars).graph}
    for label, graph in candidates.items():
        got = ev.evaluate_group(graph, scalars, params)
        for i, (want, have) in enumerate(zip(reference, got)):
            assert set(want) == set(have)
            for name in want:
                assert same(want[name], have[name]), (
                    f"{label} differs in {name} of param {i}\n{source}\n"
                    f"want {want[name]!r}\nhave {have[name]!r}")


# -- (c) the generated NumPy step == the evaluator ----------------------------------------------

def random_array(rng, size: int) -> np.ndarray:
    if size <= 64:
        return rng.choice(np.array(SPECIALS), size)
    x = rng.standard_normal(size)
    for i in (0, CHUNK - 1, CHUNK, size - 1):  # specials at the chunk seams
        if i < size:
            x[i] = rng.choice(np.array(SPECIALS))
    return x


def reference_steps(prog, scalars_per_step, ws, grads_per_step, chunked: bool):
    """Two steps of the evaluator; returns per step the list of (w, state dict)."""
    params = [{"w": w.copy(), "state": initial_state(prog, scalars_per_step[0], w)} for w in ws]
    history = []
    for step, (scalars, grads) in enumerate(zip(scalars_per_step, grads_per_step), start=1):
        inputs = [{"w": p["w"], "g": g, "t": step, "state": p["state"]}
                  for p, g in zip(params, grads)]
        # chunked: reductions accumulate chunk by chunk, in the order of the generated NumPy
        # code (only the summation order changes)
        outs = ev.evaluate_group(prog.graph, scalars, inputs, chunk=CHUNK if chunked else None)
        for p, out in zip(params, outs):
            p["w"] = np.array(np.broadcast_to(out["w"], p["w"].shape), dtype=np.float64)
            p["state"] = {
                name: (np.array(np.broadcast_to(out[name], p["w"].shape), dtype=np.float64)
                       if spec.tensor else np.float64(out[name]))
                for name, spec in prog.states.items()}
        history.append([(p["w"].copy(), dict(p["state"])) for p in params])
    return history


def run_numpy_optimizer(prog, keywords_per_step, ws, grads_per_step):
    arrays = [w.copy() for w in ws]
    opt = prog.numpy_optimizer(arrays, **keywords_per_step[0])
    history = []
    for keywords, grads in zip(keywords_per_step, grads_per_step):
        opt.hypers.update(keywords)
        before = [g.copy() for g in grads]
        opt.step(grads)
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(grads, before)), \
            "the step wrote into a gradient"
        history.append([
            (a.copy(), {name: np.array(opt.state[i][spec.key], dtype=np.float64)
                        for name, spec in prog.states.items()})
            for i, a in enumerate(arrays)])
    return history


def run_torch_optimizer(prog, keywords_per_step, ws, grads_per_step):
    import torch

    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # scalar state and `step` in float64, as torch does
    try:
        params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in ws]
        opt = prog.optimizer(params, backend="numpy", **keywords_per_step[0])
        history = []
        for keywords, grads in zip(keywords_per_step, grads_per_step):
            opt.param_groups[0].update(keywords)  # as an lr scheduler would
            for p, g in zip(params, grads):
                p.grad = torch.from_numpy(g.copy())
            opt.step()
            for p, g in zip(params, grads):
                assert np.array_equal(p.grad.numpy(), g, equal_nan=True)
            history.append([
                (p.detach().numpy().copy(),
                 {name: opt.state[p][spec.key].numpy().copy()
                  for name, spec in prog.states.items()})
                for p in params])
            for p, (w, _) in zip(params, history[-1]):
                assert opt.state[p]["step"].item() == len(history)
        return history
    finally:
        torch.set_default_dtype(saved)


def check_backend(source, data, sizes, runner):
    prog = compile_valid(source)
    keywords = [hyper_keywords(prog, data)]
    keywords.append({k: data.draw(st.sampled_from(HYPER_VALUES)) for k in keywords[0]}
                    if data.draw(st.booleans()) else dict(keywords[0]))
    scalars = [hyper_values.scalars(prog.hypers,
                                    hyper_values.resolve(prog.hypers, kw, extra={}))
               for kw in keywords]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ws = [random_array(rng, n) for n in sizes]
    grads = [[random_array(rng, n) for n in sizes] for _ in range(2)]
    want = reference_steps(prog, scalars, ws, grads, chunked=max(sizes) > CHUNK)
    have = runner(prog, keywords, ws, grads)
    for step, (want_step, have_step) in enumerate(zip(want, have), start=1):
        for i, ((w_ref, s_ref), (w_got, s_got)) in enumerate(zip(want_step, have_step)):
            assert same(w_ref, w_got), (f"w of param {i} after step {step}\n{source}\n"
                                        f"want {w_ref[:6]}\nhave {w_got[:6]}")
            for name in prog.states:
                assert same(s_ref[name], s_got[name]), (
                    f"state {name} of param {i} after step {step}\n{source}\n"
                    f"want {s_ref[name]!r}\nhave {s_got[name]!r}")


@settings(max_examples=120, **SETTINGS)
@given(programs(), st.data(), st.sampled_from([(3, 1), (1, 1), (7, 5), (1, 33)]))
def test_numpy_step_equals_evaluator_small(source, data, sizes):
    check_backend(source, data, sizes, run_numpy_optimizer)


@settings(max_examples=50, **SETTINGS)
@given(programs(), st.data(), st.sampled_from([(9000, 1), (5, CHUNK + 1), (2 * CHUNK + 3, 9000)]))
def test_numpy_step_equals_evaluator_beyond_one_chunk(source, data, sizes):
    check_backend(source, data, sizes, run_numpy_optimizer)


@settings(max_examples=50, **SETTINGS)
@given(programs(), st.data(), st.sampled_from([(3, 1), (9000, 1)]))
def test_torch_wrapper_equals_evaluator(source, data, sizes):
    check_backend(source, data, sizes, run_torch_optimizer)


# -- minimal reproductions of what the properties found ---------------------------------------

def evaluate_vs_numpy(source: str, size: int = 3, **keywords):
    prog = optdsl.compile(source)
    w = np.arange(1.0, size + 1.0)
    g = np.full(size, -0.5)
    scalars = hyper_values.scalars(prog.hypers,
                                   hyper_values.resolve(prog.hypers, keywords, extra={}))
    want = reference_steps(prog, [scalars], [w], [[g]], chunked=False)[0][0][0]
    arrays = [w.copy()]
    prog.numpy_optimizer(arrays, **keywords).step([g])
    return want, arrays[0]


@pytest.mark.parametrize("source", [
    "w = 3", "w = t + 5", "hyper a = 2\nw = a", "w = sum(g)", "state s = 4\nw = s",
    "w = where(g > 0, 1, 1)",
])
def test_w_assigned_a_scalar_is_written(source):
    """Bug: when the final pass has no element-wise value (w is assigned a scalar), the
    generated NumPy step writes nothing and w keeps its old value."""
    want, have = evaluate_vs_numpy(source)
    assert same(want, have), (want, have)


@pytest.mark.parametrize("source,reduced", [
    ("w = w - sum(where(0 < 0, w, t))", 3.0),
    ("w = w - sum(where(1 > 0, t, g))", 3.0),
    ("w = w - norm(where(g > 0, t, t))", math.sqrt(3.0)),
    ("hyper a = 1\nw = w - sum(where(a > 0, t, g))", 3.0),
])
def test_where_of_a_scalar_branch_keeps_its_tensor_kind(source, reduced):
    """Bug: simplify (and specialize) replace where(const mask, tensor, scalar) and
    where(mask, x, x) by the chosen branch even when it is a scalar, so a reduction then
    reads a scalar: the IR no longer verifies and sum() gives t instead of n*t."""
    prog = optdsl.compile(source)
    optimize(prog.graph, check=True)
    want, have = evaluate_vs_numpy(source)
    assert same(want, have), (want, have)
    np.testing.assert_array_equal(have, np.arange(1.0, 4.0) - reduced)  # t = 1, 3 elements


@pytest.mark.parametrize("source", [
    "w = where(0 < global_norm(g), w - g, w)",
    ("hyper max_norm = 1\n"
     "w = w - where(global_norm(g) > max_norm, max_norm / global_norm(g), 1) * g"),
    "w = where(global_sum(g) > 0, w, w - 1)",
])
def test_where_on_a_group_reduction_steps(source):
    """Bug: specialize.flag_masks treats every group-level comparison as a hyper switch,
    including ones that read a global reduction; flag_values then evaluates the `g` leaf
    (no evaluate function) and every step raises TypeError."""
    want, have = evaluate_vs_numpy(source)
    assert same(want, have), (want, have)


@pytest.mark.parametrize("source", [
    "w = w - (1 / where(t < 0, t, 0)) * g",
    "w = w - (0 / where(t < 0, t, 0)) * g",
    "w = w - where(t < 0, t, 0) ^ -1 * g",
    "w = w - where(t < 0, t, 10) ^ 400 * g",
])
def test_scalar_where_of_a_literal_follows_ieee(source):
    """Bug: the host form of a scalar where() returns the literal branch as a Python float,
    so the next host operation raises ZeroDivisionError / OverflowError instead of giving
    inf or nan as NumPy (and the evaluator) do."""
    want, have = evaluate_vs_numpy(source)
    assert same(want, have), (want, have)


@pytest.mark.parametrize("source", [
    "w = w - (-1)^t * g",
    "hyper b = 2\nw = w - (-2)^b * g",
    "hyper b = 0.5\nw = w - (-2)^b * g",
    "hyper b = 0.9\nw = w - abs(atan2(-inf, 0) ^ b) * g",
])
def test_negative_constant_base_of_a_host_power(source):
    """Bug: host code spells a negative constant bare, so (-1)^t becomes `(-1.0 ** t)`, which
    Python reads as -(1.0 ** t): -1 on every step instead of alternating (and (-2)^0.5 is
    -1.41 instead of nan)."""
    prog = optdsl.compile(source)
    arrays = [np.zeros(3)]
    opt = prog.numpy_optimizer(arrays)
    w = np.zeros(3)
    scalars = hyper_values.scalars(prog.hypers, hyper_values.resolve(prog.hypers, {}, extra={}))
    for t in (1, 2, 3):
        g = np.ones(3)
        opt.step([g])
        w = np.broadcast_to(ev.evaluate_group(prog.graph, scalars,
                                              [{"w": w, "g": g, "t": t, "state": {}}])[0]["w"],
                            (3,)).copy()
        assert same(w, arrays[0]), (t, w, arrays[0])
