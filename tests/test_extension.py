"""The compiler's extension points: ops, reductions and back ends are each added in one place.

- Coverage: every registered back end spells or legalizes every op of the table, at every
  level it can occur (host scalar code, element code), and every reduction's map.
- Extension through the registries alone: a throwaway element-wise function, a throwaway
  reduction and a throwaway back end (one that wraps the NumPy one) are registered with
  ``register``, ``register_reduction`` and ``backends.register`` only, and a program using
  them compiles and steps on every back end, matching the reference evaluator; nothing else
  is edited (the test would fail with an unknown-function error otherwise).
- Aliasing: every op runs with aliased arguments (``f(x, x)``) and with its output written
  over one of its inputs, on every back end, against the evaluator.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import optdsl
from optdsl.ir.evaluate import evaluate
from optdsl.ir.ops import ARITH, COMPARE, GLOBAL, LEAF, LOGIC, OPS, SELECT, Op, evaluate_expr
from optdsl.ir.ops import register, unregister
from optdsl.ir.reductions import REDUCTIONS, TENSOR_SCOPE, Reduction, register_reduction
from optdsl.ir.reductions import unregister_reduction
from optdsl.passes.legalize import legalize
from optdsl.codegen import library as library_codegen
from optdsl.runtime import backends


def _legal(spells, name: str, tensor: bool) -> bool:
    if spells(name, tensor):
        return True
    decomposition = OPS[name].decompose
    return decomposition is not None and _expr_legal(spells, decomposition, tensor)


def _expr_legal(spells, expr, tensor: bool) -> bool:
    if isinstance(expr, (int, float)):
        return True
    name, *parts = expr
    return _legal(spells, name, tensor) and all(_expr_legal(spells, p, tensor) for p in parts)


@pytest.mark.parametrize("backend", list(backends.BACKENDS))
def test_every_backend_spells_or_legalizes_every_op(backend):
    spells = backends.get(backend).spells
    for op in OPS.values():
        if op.category == LEAF or op.name in ("reduce", "reduce_group"):
            continue
        if op.reduction is not None:
            assert _expr_legal(spells, REDUCTIONS[op.reduction].map, True), op.name
            if op.category != GLOBAL:  # (the checker refuses group-wide ones of matrix work)
                assert library_codegen.spells(op.name), op.name
            continue
        if op.matrix:  # library stages (torch) compute matrix ops for every back end
            assert library_codegen.spells(op.name), op.name
            continue
        for tensor in (False, True):
            assert _legal(spells, op.name, tensor), (backend, op.name, tensor)
            if spells(op.name, True):  # element code next to matrix work runs in torch too
                assert library_codegen.spells(op.name), op.name


def test_legalize_expands_only_what_a_backend_cannot_spell():
    prog = optdsl.compile("w = w - 0.1 * softsign(g) * sigmoid(w) + lerp(w, g, 0.25)")
    unit = prog.generic.unit("numpy")
    ops = {eq.op for eq in unit.graph.eqs}
    assert not ops & {"softsign", "sigmoid", "lerp"}
    assert {"abs", "exp", "div", "sub"} <= ops
    everything = legalize(prog.optimized, lambda name, tensor: True)
    assert {"softsign", "sigmoid", "lerp"} <= {eq.op for eq in everything.eqs}


# -- extension through the registries alone -----------------------------------------------------

class _CountingRunner:
    """A throwaway back end's runner: the NumPy runner's steps, counted."""

    calls = 0

    def __init__(self, program) -> None:
        from optdsl.runtime.numpy_runner import NumpyRunner

        self.inner = NumpyRunner(program, backend="wrapped")  # runs this back end's modules

    def forget(self) -> None:
        self.inner.forget()

    def run(self, variant, entries, options) -> None:
        type(self).calls += 1
        assert variant.generated("wrapped").module.WRAPPED  # this back end's own module
        self.inner.run(variant, entries, options)


@pytest.fixture
def throwaways(monkeypatch):
    numpy_backend = backends.get("numpy")
    register(Op("cube", 1, ARITH, dsl="cube", decompose=("mul", 0, ("mul", 0, 0))))
    register_reduction(Reduction("sumabs", 1, TENSOR_SCOPE, ("abs", 0), "add", 0.0, "none",
                                 0.0))
    backends.register(backends.Backend(
        "wrapped", "the NumPy back end, counted", numpy_backend.spells,
        lambda unit: numpy_backend.generate(unit) + "WRAPPED = True\n", numpy_backend.load,
        _CountingRunner, lambda devices, auto: None if devices <= {"cpu"} else "CPU only",
        lambda devices: False))
    try:
        yield
    finally:
        backends.unregister("wrapped")
        unregister_reduction("sumabs")
        unregister("cube")


def test_a_function_a_reduction_and_a_backend_added_through_the_registries(
        throwaways, monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    source = "hyper lr = 0.1\nstate m = 0\nm = 0.5 * m + cube(g)\nw = w - lr * m / (1 + sumabs(g))"
    prog = optdsl.compile(source, name="Throwaway")
    assert "WRAPPED = True" in prog.source("wrapped")
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(n, generator=gen, dtype=torch.float64) for n in (5, 700)]
    grads = [[torch.randn(n, generator=gen, dtype=torch.float64) for n in (5, 700)]
             for _ in range(3)]
    # the reference: the evaluator on the unoptimized graph
    want = []
    for w0, gs in zip(start, zip(*grads)):
        w, m = w0.numpy().copy(), np.zeros_like(w0.numpy())
        for t, g in enumerate(gs, start=1):
            out = evaluate(prog.graph, {"hyper": {"lr": 0.1}, "w": w, "g": g.numpy(), "t": t,
                                        "state": {"m": m}})
            w, m = out["w"], out["m"]
        want.append(w)
    for backend in ("wrapped", "numpy", "triton"):
        params = [w.clone() for w in start]
        opt = prog.optimizer(params, backend=backend)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g
            opt.step()
        for p, w in zip(params, want):
            np.testing.assert_allclose(p.numpy(), w, rtol=1e-13, atol=1e-15, err_msg=backend)
    assert _CountingRunner.calls == 3
    with pytest.raises(ValueError, match="CPU only"):
        backends.choose("wrapped", ["cuda"])


def test_registries_refuse_duplicates():
    with pytest.raises(ValueError):
        register(Op("add", 2, ARITH, np.add))
    with pytest.raises(ValueError):
        register_reduction(Reduction("norm", 1, TENSOR_SCOPE, 0, "add", 0.0, "none", 0.0))
    with pytest.raises(ValueError, match="empty"):
        register_reduction(Reduction("bad", 1, TENSOR_SCOPE, 0, "add", 0.0, "none", 1.0))
    with pytest.raises(ValueError):
        backends.register(backends.get("numpy"))


# -- aliasing: every op with aliased arguments, and its output over an input -------------------

_TENSOR_ARGS = ("w", "g", "m")


def _op_expr(op: Op, args: tuple[str, ...]) -> str:
    if op.category in (COMPARE, LOGIC):
        if op.category == COMPARE:
            mask = f"({args[0]} {op.symbol} {args[1]})"
        elif op.name == "not":
            mask = f"(not ({args[0]} > 0))"
        else:
            mask = f"(({args[0]} > 0) {op.name} ({args[1]} < 0.5))"
        return f"where({mask}, {args[0]}, -{args[-1]})"
    if op.category == SELECT:
        return f"where({args[0]} > 0, {args[1]}, {args[2]})"
    if op.symbol and op.arity == 2:
        return f"({args[0]}) {op.symbol} ({args[1]})"
    if op.name == "neg":
        return f"-({args[0]})"
    return f"{op.dsl}({', '.join(args)})"


def _aliased_programs():
    for op in OPS.values():
        if op.category in (LEAF,) or op.is_reduction or op.name in ("reduce", "reduce_group") \
                or op.matrix or op.shape_rule is not None:  # (matrix ops: test_matrix.py)
            continue
        for args in {tuple([a] * op.arity) for a in _TENSOR_ARGS} | set(
                itertools.islice(itertools.product(_TENSOR_ARGS, repeat=op.arity), 6)):
            for target in ("w", "m"):
                expr = _op_expr(op, args)
                body = f"m = {expr}\nw = w - 0.125 * m" if target == "m" else f"w = {expr}"
                yield op.name, f"state m = 0.5 * w + 0.25\n{body}\n"


ALIASED = list(_aliased_programs())


def _reference(prog, ws, gs):
    out = []
    for w, g in zip(ws, gs):
        state = {"m": 0.5 * w + 0.25}
        result = evaluate(prog.graph, {"hyper": {}, "w": w.copy(), "g": g, "t": 1,
                                       "state": state})
        out.append(np.broadcast_to(result["w"], w.shape))
    return out


TORCH_OWN_FORMULAS = ("pow", "sqrt", "exp", "log", "tanh", "atan2", "sigmoid")


@pytest.mark.parametrize("backend", ["numpy", "triton", "torch"])
def test_every_op_with_aliased_arguments_matches_the_evaluator(backend, monkeypatch, tmp_path):
    if backend == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    ws = [rng.uniform(-2, 2, n) for n in (3, 300)]
    gs = [rng.uniform(-2, 2, n) for n in (3, 300)]
    seen = set()
    for name, source in ALIASED:
        seen.add(name)
        prog = optdsl.compile(source)
        want = _reference(prog, ws, gs)
        params = [torch.tensor(w) for w in ws]
        opt = prog.optimizer(params, backend=backend)
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g)
        with np.errstate(all="ignore"):
            opt.step()
        # the interpreter's pow, tanh and atan2 are float64 formulas of their own, and so
        # are torch's sqrt and transcendentals (its vectorized CPU kernels, SLEEF): a few
        # ulps from NumPy's (1.5e-15 where m = exp(w) is then subtracted from w); arithmetic,
        # comparisons and selections agree exactly
        tol = 0
        if backend == "triton" and name in ("pow", "tanh", "atan2"):
            tol = 1e-12
        elif backend == "torch" and name in TORCH_OWN_FORMULAS:
            tol = 1e-14
        for p, w in zip(params, want):
            np.testing.assert_allclose(p.numpy(), w, rtol=tol, atol=0, equal_nan=True,
                                       err_msg=f"{backend}: {source}")
    assert seen == {op.name for op in OPS.values() if op.category != LEAF
                    and not op.is_reduction and op.name not in ("reduce", "reduce_group")
                    and not op.matrix and op.shape_rule is None}


def test_softsign_in_place_is_not_clobbered():
    """The review's case: a spelling that reads its input after writing its output must not
    be given the input's memory."""
    w = torch.tensor([3.0, -1.0, 0.5])
    w.grad = torch.zeros(3)
    optdsl.compile("w = softsign(w)").optimizer([w], backend="numpy").step()
    np.testing.assert_allclose(w.numpy(), [0.75, -0.5, 1 / 3], rtol=1e-7)


def test_decompositions_mean_their_ops():
    x = np.array([-2.0, -0.0, 0.5, 3.0])
    for name in ("sigmoid", "softsign", "square", "rsqrt", "clamp", "lerp"):
        op = OPS[name]
        args = (x, x[::-1], np.full(4, 0.25))[:op.arity]
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(op.meaning(*args),
                                          evaluate_expr(op.decompose, args), err_msg=name)
