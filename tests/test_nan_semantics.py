"""NaN, infinities and signed zeros through min, max, clamp, where, sign and abs: the
documented semantics hold, and the NumPy back end and the Triton back end (through Triton's
interpreter, TRITON_INTERPRET=1 set per test) give the same bits.

The semantics (docs/language.md, "Numbers"): NaN propagates through ``min``, ``max`` and
``clamp`` -- a NaN in x, in lo or in hi gives NaN -- and ``sign(NaN)`` is NaN. Besides:
``sign(±0)`` is +0 and ``sign(±inf)`` is ±1; ``abs`` clears the sign bit (``abs(-0.0)`` is
+0.0, ``abs(NaN)`` is NaN); ``where`` returns the chosen branch bit for bit (-0.0, inf, NaN)
and a comparison with NaN is false (``!=`` true), so ``where(x > y, a, b)`` picks ``b`` when
either is NaN; ``clamp(x, lo, hi)`` is ``min(max(x, lo), hi)`` (so lo > hi gives hi). These are
NumPy's ``minimum``/``maximum``/``sign``/``absolute``/``where``, which is the reference here:
including the one case the docs leave open, min/max of two zeros of opposite sign, where
NumPy (and so both back ends) returns the second argument.

Each function is checked where it can run:
- element-wise, in the kernels (tensor arguments; every pair, and for clamp every triple, of
  the special values, float32 and float64);
- in host code, once per step (hyper arguments: group-level scalars; reductions such as
  ``maxabs``: per-parameter scalars);
- in the constant folder (arguments that are constants, ``inf - inf`` being NaN).

The last tests compare with torch (torch.minimum, torch.maximum, torch.clamp, torch.sign,
torch.abs, torch.where) and pin where torch differs: ``torch.sign(NaN)`` is 0, not NaN; and
on zeros of opposite sign torch.minimum/maximum return the first or the second argument
depending on dtype and tensor length (optdsl: always the second).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import optdsl
from optdsl.runtime import c_build

NAN, INF = math.nan, math.inf
SPECIAL = [NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0, 2.5, -2.5]
SMALL = [NAN, INF, -INF, 0.0, -0.0, 1.0]  # for triples of host-level arguments
BACKENDS = ["numpy", "triton", "c"]
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


@pytest.fixture(autouse=True)
def _environment(request, monkeypatch, tmp_path_factory):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "optdsl-cache"))
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("backend") == "c" and c_build.unavailable():
        pytest.skip(c_build.unavailable())
    if callspec is not None and callspec.params.get("backend") == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def same_bits(got: np.ndarray, want: np.ndarray, what: str, inputs=None) -> None:
    """Equal as floats, with NaN equal to NaN and the sign of zero significant."""
    got, want = np.asarray(got), np.asarray(want).astype(np.asarray(got).dtype)
    ok = ((got == want) & (np.signbit(got) == np.signbit(want))) | (np.isnan(got) &
                                                                       np.isnan(want))
    if not ok.all():
        bad = np.flatnonzero(~ok)[:10]
        lines = [f"  inputs {tuple(float(a[i]) for a in inputs) if inputs else i}: "
                 f"got {got[i]!r}, expected {want[i]!r}" for i in bad]
        raise AssertionError(f"{what}: {int((~ok).sum())} of {ok.size} differ\n"
                             + "\n".join(lines))


# -- the reference: NumPy, evaluated in float64 (exact for these functions) -----------------
def ref_clamp(x, lo, hi):
    return np.minimum(np.maximum(x, lo), hi)


REFERENCE = {
    "min": np.minimum,
    "max": np.maximum,
    "clamp": ref_clamp,
    "sign": np.sign,
    "abs": np.abs,
}


# ==========================================================================================
# element-wise (in the kernels)
# ==========================================================================================
def _pairs(values=SPECIAL):
    x, y = zip(*itertools.product(values, values))
    return np.array(x), np.array(y)


def _run(source: str, w, g, backend: str, dtype, steps=1, grads=None, **hypers):
    p = torch.nn.Parameter(torch.tensor(w, dtype=dtype))
    opt = optdsl.compile(source).optimizer([p], backend=backend, **hypers)
    for k in range(steps):
        p.grad = torch.tensor(grads[k] if grads else g, dtype=dtype)
        with np.errstate(all="ignore"):
            opt.step()
    return p.detach().numpy()


ELEMENTWISE = {
    # DSL expression over w and g -> the reference over (w, g)
    "min(w, g)": lambda w, g: np.minimum(w, g),
    "max(w, g)": lambda w, g: np.maximum(w, g),
    "min(g, w)": lambda w, g: np.minimum(g, w),
    "max(g, w)": lambda w, g: np.maximum(g, w),
    "clamp(w, g, 1)": lambda w, g: ref_clamp(w, g, 1.0),
    "clamp(w, -1, g)": lambda w, g: ref_clamp(w, -1.0, g),
    "clamp(0.5, w, g)": lambda w, g: ref_clamp(0.5, w, g),
    "sign(g)": lambda w, g: np.sign(g),
    "abs(g)": lambda w, g: np.abs(g),
    "where(w > g, w, g)": lambda w, g: np.where(w > g, w, g),
    "where(w <= g, g, w)": lambda w, g: np.where(w <= g, g, w),
    "where(w == g, -0.0, g)": lambda w, g: np.where(w == g, -0.0, g),
    "where(w != w, g, -w)": lambda w, g: np.where(np.isnan(w), g, -w),
    "where(g < 0, inf - inf, w)": lambda w, g: np.where(g < 0, np.nan, w),
}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("expr", list(ELEMENTWISE))
def test_elementwise_on_special_values(expr, backend, dtype):
    """Every pair of special values (NaN, ±inf, ±0, ±1, ±2.5) as tensor arguments."""
    w, g = _pairs()
    got = _run(f"w = {expr}", w, g, backend, DTYPES[dtype])
    with np.errstate(all="ignore"):
        want = ELEMENTWISE[expr](w, g)
    same_bits(got, want, f"{expr} [{backend}, {dtype}]", (w, g))


CLAMP3 = """
state lo = 0
w = where(t == 1, w, clamp(w, lo, g))
lo = g
"""


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_elementwise_clamp_every_triple(backend, dtype):
    """clamp(x, lo, hi) with NaN (or inf, or a signed zero) in any of x, lo, hi, all tensors:
    lo is the gradient of the first step (kept in a state), hi the gradient of the second."""
    x, lo, hi = (np.array(v) for v in zip(*itertools.product(SPECIAL, repeat=3)))
    got = _run(CLAMP3, x, None, backend, DTYPES[dtype], steps=2, grads=[lo, hi])
    same_bits(got, ref_clamp(x, lo, hi), f"clamp [{backend}, {dtype}]", (x, lo, hi))
    # the documented rule, spelled out
    assert np.isnan(got[np.isnan(x) | np.isnan(lo) | np.isnan(hi)]).all()
    assert not np.isnan(got[~(np.isnan(x) | np.isnan(lo) | np.isnan(hi))]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_documented_rules(backend):
    """The rules of docs/language.md, stated directly rather than through NumPy."""
    w, g = _pairs()
    nan_in = np.isnan(w) | np.isnan(g)
    for fn in ("min", "max"):
        got = _run(f"w = {fn}(w, g)", w, g, backend, torch.float32)
        assert np.isnan(got[nan_in]).all(), f"{fn} must propagate NaN"
        assert not np.isnan(got[~nan_in]).any()
        assert (got[~nan_in] == (np.minimum if fn == "min" else np.maximum)(w, g)[~nan_in]).all()
    got = _run("w = sign(g)", w, g, backend, torch.float32)
    assert np.isnan(got[np.isnan(g)]).all(), "sign(NaN) must be NaN"
    zero = g == 0
    assert (got[zero] == 0).all() and not np.signbit(got[zero]).any(), "sign(±0) is +0"
    assert (got[g == INF] == 1).all() and (got[g == -INF] == -1).all()
    got = _run("w = abs(g)", w, g, backend, torch.float32)
    assert np.isnan(got[np.isnan(g)]).all() and not np.signbit(got).any()
    got = _run("w = where(w > g, 1, 2) + where(w != g, 10, 20)", w, g, backend, torch.float32)
    assert (got[nan_in] == 12).all(), "comparisons with NaN are false (!= is true)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_storage(backend):
    """bf16/fp16 parameters compute in float32 and store NaN, ±inf and ±0 unchanged."""
    w, g = _pairs()
    for dtype in (torch.bfloat16, torch.float16):
        for expr in ("min(w, g)", "max(g, w)", "clamp(w, g, 1)", "sign(g)", "abs(g)",
                     "where(w > g, w, g)"):
            p = torch.nn.Parameter(torch.tensor(w, dtype=dtype))
            p.grad = torch.tensor(g, dtype=dtype)
            optdsl.compile(f"w = {expr}").optimizer([p], backend=backend).step()
            got = p.detach().float().numpy()
            with np.errstate(all="ignore"):
                want = ELEMENTWISE[expr](w, g)
            same_bits(got, want.astype(np.float32), f"{expr} [{backend}, {dtype}]", (w, g))


# ==========================================================================================
# host code: group scalars (hypers) and per-parameter scalars (reductions)
# ==========================================================================================
HOST = {
    "min(a, b)": lambda a, b, c: np.minimum(a, b),
    "max(a, b)": lambda a, b, c: np.maximum(a, b),
    "clamp(a, b, c)": lambda a, b, c: ref_clamp(a, b, c),
    "sign(a)": lambda a, b, c: np.sign(a),
    "abs(a)": lambda a, b, c: np.abs(a),
    "where(a > b, a, c)": lambda a, b, c: np.where(a > b, a, c),
    "where(a == a, b, c)": lambda a, b, c: np.where(~np.isnan(a), b, c),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("expr", list(HOST))
def test_host_scalars_from_hypers(expr, backend):
    """The functions on group-level scalars (evaluated once per step in host code): every
    triple of NaN, ±inf, ±0, 1 as hyper values; the parameter is set to the result."""
    prog = optdsl.compile(f"hyper a, b, c\nw = {expr}")
    got, want = [], []
    triples = list(itertools.product(SMALL, repeat=3))
    if "c" not in expr.split("(", 1)[1]:
        triples = [t for t in triples if t[2] == 1.0]
    for a, b, c in triples:
        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        prog.optimizer([p], backend=backend, a=a, b=b, c=c).step()
        assert p[0].item() == p[1].item() or math.isnan(p[0].item())
        got.append(p[0].item())
        want.append(HOST[expr](np.float64(a), np.float64(b), np.float64(c)))
    cols = [np.array(col) for col in zip(*triples)]
    same_bits(np.array(got), np.array(want), f"{expr} [{backend}, host]", cols)


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_scalars_from_reductions(backend):
    """Per-parameter scalars: a reduction of a tensor holding NaN or inf, then the functions
    on it. maxabs propagates NaN (its combine is a NaN-propagating max on both back ends)."""
    prog = optdsl.compile("""
state r1 = 0, r2 = 0, r3 = 0, r4 = 0, r5 = 0
m = maxabs(g)
r1 = m
r2 = min(m, 1)
r3 = clamp(1, -m, sum(g))
r4 = sign(sum(g))
r5 = where(m > 1, m, -1)
w = w
""")
    rows = {"nan": [1.0, NAN, -2.0], "inf": [1.0, -INF, 0.5], "both": [NAN, INF, -INF],
            "plain": [-3.0, 0.5, 0.25], "zeros": [-0.0, 0.0, -0.0]}
    ps = [torch.nn.Parameter(torch.zeros(3)) for _ in rows]
    for p, g in zip(ps, rows.values()):
        p.grad = torch.tensor(g)
    opt = prog.optimizer(ps, backend=backend)
    opt.step()
    for p, g in zip(ps, rows.values()):
        g = np.array(g, dtype=np.float32).astype(np.float64)
        with np.errstate(all="ignore"):
            m = np.max(np.abs(g))
            s = np.sum(g)
            want = [m, np.minimum(m, 1), ref_clamp(1, -m, s), np.sign(s),
                    np.where(m > 1, m, -1)]
        got = [float(opt.state[p][k]) for k in ("r1", "r2", "r3", "r4", "r5")]
        same_bits(np.array(got)[:4], np.array(want)[:4] + 0.0, f"reductions {g} [{backend}]")
        same_bits(np.array(got)[4:], np.array(want)[4:], f"where {g} [{backend}]")


# ==========================================================================================
# constants (the folder)
# ==========================================================================================
FOLDED = {
    # constant expression (NaN spelled inf - inf) -> value
    "min(inf - inf, 1)": NAN,
    "max(1, inf - inf)": NAN,
    "clamp(inf - inf, 0, 1)": NAN,
    "clamp(0.5, inf - inf, 1)": NAN,
    "clamp(0.5, 0, inf - inf)": NAN,
    "clamp(2, 1, 0)": 0.0,
    "sign(inf - inf)": NAN,
    "sign(-0.0)": 0.0,
    "sign(-inf)": -1.0,
    "abs(-0.0)": 0.0,
    "abs(inf - inf)": NAN,
    "min(-0.0, 0)": 0.0,
    "min(0, -0.0)": -0.0,
    "max(-0.0, 0)": 0.0,
    "max(0, -0.0)": -0.0,
    "where(inf - inf > 0, 1, -0.0)": -0.0,
    "where(inf - inf != inf - inf, -inf, 1)": -INF,
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_folding(backend):
    """The folder evaluates with the same meaning (NumPy's, in float64); the folded value is
    stored exactly (NaN, -0.0, -inf), in a tensor where() and mixed into a tensor min()."""
    for expr, value in FOLDED.items():
        prog = optdsl.compile(f"w = where(g > 0, {expr}, w)")
        p = torch.nn.Parameter(torch.tensor([7.0, 7.0]))
        p.grad = torch.tensor([1.0, -1.0])
        prog.optimizer([p], backend=backend).step()
        same_bits(p.detach().numpy(), np.array([value, 7.0]), f"{expr} [{backend}]")
    for expr in ("min(w, inf - inf)", "max(inf - inf, w)", "clamp(w, inf - inf, 1)",
                 "clamp(w, 0, inf - inf)"):
        p = torch.nn.Parameter(torch.tensor([0.5, -2.0, INF]))
        p.grad = torch.zeros(3)
        optdsl.compile(f"w = {expr}").optimizer([p], backend=backend).step()
        assert torch.isnan(p).all(), f"{expr} [{backend}]: {p}"


# ==========================================================================================
# torch: where it agrees and where it differs
# ==========================================================================================
def _torch_and_ours(expr: str, torch_fn):
    w, g = _pairs()
    ours = _run(f"w = {expr}", w, g, "numpy", torch.float64)
    theirs = torch_fn(torch.tensor(w), torch.tensor(g)).numpy()
    return w, g, ours, theirs


def _differ(ours, theirs):
    return ~(((ours == theirs) & (np.signbit(ours) == np.signbit(theirs)))
             | (np.isnan(ours) & np.isnan(theirs)))


@pytest.mark.parametrize("expr, torch_fn", [
    ("min(w, g)", torch.minimum),
    ("max(w, g)", torch.maximum),
])
def test_min_max_agree_with_torch_except_on_zero_ties(expr, torch_fn):
    """NaN propagates as in torch. They may differ only on zeros of opposite sign: optdsl
    returns the second argument (NumPy's rule, on both back ends); torch's choice depends on
    the dtype and the tensor's length (its vectorised and scalar loops differ: in float32
    and on short float64 tensors it returns the first argument, on long float64 ones the
    second), so it is no reference there."""
    w, g, ours, theirs = _torch_and_ours(expr, torch_fn)
    differ = _differ(ours, theirs)
    opposite_zeros = (w == 0) & (g == 0) & (np.signbit(w) != np.signbit(g))
    assert not (differ & ~opposite_zeros).any(), list(zip(w[differ], g[differ]))
    same_bits(ours[opposite_zeros], g[opposite_zeros], "optdsl returns the second zero")
    first = torch_fn(torch.tensor([-0.0, 0.0]), torch.tensor([0.0, -0.0])).numpy()
    same_bits(first, np.array([-0.0, 0.0]), "torch, float32: the first zero")


def test_clamp_abs_where_agree_with_torch():
    """torch.clamp with NaN in x, lo or hi gives NaN, as here; so do abs and where."""
    x, lo, hi = (np.array(v) for v in zip(*itertools.product(SPECIAL, repeat=3)))
    ours = _run(CLAMP3, x, None, "numpy", torch.float64, steps=2, grads=[lo, hi])
    theirs = torch.clamp(torch.tensor(x), torch.tensor(lo), torch.tensor(hi)).numpy()
    same_bits(ours, theirs, "clamp vs torch.clamp", (x, lo, hi))
    for expr, fn in (("abs(g)", lambda w, g: torch.abs(g)),
                     ("where(w > g, w, g)", lambda w, g: torch.where(w > g, w, g)),
                     ("where(w != g, -0.0, g)", lambda w, g: torch.where(w != g, -0.0, g))):
        w, g, ours, theirs = _torch_and_ours(expr, fn)
        same_bits(ours, theirs, f"{expr} vs torch", (w, g))


def test_sign_differs_from_torch_on_nan_only():
    """torch.sign(NaN) is 0; the language defines sign(NaN) as NaN (as NumPy's sign). Every
    other input agrees (sign(±0) = +0 in both)."""
    _, g, ours, theirs = _torch_and_ours("sign(g)", lambda w, g: torch.sign(g))
    differ = _differ(ours, theirs)
    assert (differ == np.isnan(g)).all()
    assert np.isnan(ours[np.isnan(g)]).all() and (theirs[np.isnan(g)] == 0).all()
