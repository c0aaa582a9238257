"""The December 2026 additions to the language, on every back end against references:
``square sigmoid softsign lerp`` and ``rms``, the mask operators ``and or not``, augmented
assignment (``+= -= *= /=``) and the ``nan`` literal; and the positioned errors of their
misuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optdsl
from optdsl.runtime import c_build

BACKENDS = ["numpy", "triton", "c"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch, tmp_path):
    if request.param == "c" and c_build.unavailable():
        pytest.skip(c_build.unavailable())
    if request.param == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    return request.param


def _step(source: str, backend: str, w: np.ndarray, g: np.ndarray, **hypers) -> np.ndarray:
    p = torch.tensor(w)
    p.grad = torch.tensor(g)
    opt = optdsl.compile(source).optimizer([p], backend=backend, **hypers)
    with np.errstate(all="ignore"):
        opt.step()
    return p.numpy()


X = np.array([3.0, -1.0, 0.5, -0.0, 0.0, 40.0, -40.0, 1e-30, np.inf, -np.inf, np.nan],
             dtype=np.float32)
Y = np.array([0.5, 2.0, -3.0, 1.0, -1.0, 0.25, 8.0, -1e-30, 1.0, 2.0, 0.0], dtype=np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_functions_match_their_formulas(backend, dtype):
    x, y = X.astype(dtype), Y.astype(dtype)
    one = dtype(1)
    with np.errstate(all="ignore"):
        references = {
            "square(w)": x * x,
            "sigmoid(w)": one / (one + np.exp(-x)),
            "softsign(w)": x / (one + np.abs(x)),
            "lerp(w, g, 0.25)": x + dtype(0.25) * (y - x),
            "lerp(g, w, g)": y + y * (x - y),
        }
    for expr, want in references.items():
        got = _step(f"w = {expr}", backend, x, y)
        if backend == "c" and "sigmoid" in expr:  # libm's exp, not NumPy's: within a bound
            from optdsl.codegen.c import TRANSCENDENTAL_ULPS

            np.testing.assert_array_max_ulp(got, want, maxulp=TRANSCENDENTAL_ULPS)
            continue
        np.testing.assert_array_equal(got, want, err_msg=expr)
    assert _step("w = softsign(w)", backend, np.array([3.0, -1.0, 0.5], dtype), y[:3]) \
        .tolist() == pytest.approx([0.75, -0.5, 1 / 3])


def test_lerp_agrees_with_torch_lerp_to_rounding():
    a, b = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    for weight in (0.0, 0.25, 0.5, 0.9, 1.0):
        got = _step(f"w = lerp(w, g, {weight})", "numpy", a.numpy(), b.numpy())
        np.testing.assert_allclose(got, torch.lerp(a, b, weight).numpy(), rtol=1e-15,
                                   atol=1e-15)


def test_rms_is_the_root_mean_square(backend):
    rng = np.random.default_rng(1)
    for n in (1, 7, 1000, 40000):
        w, g = rng.standard_normal(n), rng.standard_normal(n)
        got = _step("w = w - 0.1 * g / (rms(g) + 1e-8)", backend, w, g)
        want = w - 0.1 * g / (np.sqrt(np.mean(g * g)) + 1e-8)
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_rms_of_an_empty_tensor_is_nan(backend):
    got = _step("state r = 0\nr = rms(g)\nw = w - g", backend, np.zeros(0), np.zeros(0))
    assert got.shape == (0,)
    prog = optdsl.compile("state r = 0\nr = rms(g)\nw = w - g")
    p = torch.zeros(0)
    p.grad = torch.zeros(0)
    opt = prog.optimizer([p], backend=backend)
    opt.step()
    assert np.isnan(opt.state[p]["r"].item())


def test_mask_operators_combine_masks(backend):
    x, y = X.astype(np.float64), Y.astype(np.float64)
    with np.errstate(invalid="ignore"):
        cases = {
            "w > 0 and g > 0": (x > 0) & (y > 0),
            "w > 0 or g > 0": (x > 0) | (y > 0),
            "not w > 0": ~(x > 0),
            "not w > 0 and g > 0": (~(x > 0)) & (y > 0),  # not binds tighter than and
            "w > 0 or g > 0 and w < 1": (x > 0) | ((y > 0) & (x < 1)),  # and before or
            "not not g < 0": y < 0,
        }
    for expr, mask in cases.items():
        got = _step(f"w = where({expr}, 1, -1)", backend, x, y)
        np.testing.assert_array_equal(got, np.where(mask, 1.0, -1.0), err_msg=expr)


def test_scalar_masks_combine_and_switch(backend):
    source = ("hyper a = 0, b = 0\nw = where(a != 0 and b != 0, w - g, "
              "where(a != 0 or b != 0, w + g, w))")
    w, g = np.ones(3), np.full(3, 0.5)
    assert _step(source, backend, w, g, a=1, b=1).tolist() == [0.5] * 3
    assert _step(source, backend, w, g, a=1, b=0).tolist() == [1.5] * 3
    assert _step(source, backend, w, g, a=0, b=0).tolist() == [1.0] * 3
    prog = optdsl.compile(source)
    assert len(prog.flags) == 2  # each combination of the switches compiles to its own step


def test_augmented_assignment_is_the_long_form():
    short = optdsl.compile("hyper lr = 0.1\nstate v = 0\nv *= 0.9\nv += g\nw -= lr * v\n"
                           "w /= 2")
    long = optdsl.compile("hyper lr = 0.1\nstate v = 0\nv = v * 0.9\nv = v + g\n"
                          "w = w - lr * v\nw = w / 2")
    assert short.ir() == long.ir()
    assert short.source("numpy") == long.source("numpy")


def test_augmented_assignment_of_an_unassigned_name_makes_state():
    prog = optdsl.compile("acc += g; w = w - 0.1 * acc")
    assert list(prog.states) == ["acc"]


def test_nan_is_a_number_literal(backend):
    got = _step("w = where(g > 0, w, nan)", backend, np.ones(3), np.array([1.0, -1.0, 0.0]))
    assert got[0] == 1.0 and np.isnan(got[1]) and np.isnan(got[2])
    assert optdsl.compile("hyper x = nan\nw = w - x").hypers["x"].default != 0


@pytest.mark.parametrize("source,caret,message", [
    ("w = where(g and w > 0, w, g)", "g", "`and` combines masks"),
    ("w = where(not g, w, g)", "g", "`not` combines masks"),
    ("w = where(w > 0 or 1, w, g)", "1", "`or` combines masks"),
    ("w = w * (g > 0 and w > 0)", "g > 0 and w > 0", "mask"),
    ("and = 1; w = w", "and", "keyword"),
    ("hyper nan = 1\nw = w", "nan", "keyword"),
    ("w = w - not", "not", "keyword"),
    ("w += ", "", "unexpected"),
])
def test_misuse_is_a_positioned_error(source, caret, message):
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(source)
    err = info.value
    assert message in err.message, str(err)
    line = source.split("\n")[err.line - 1]
    if caret:
        assert line[err.column - 1:].startswith(caret), str(err)


def test_the_keywords_of_the_additions():
    from optdsl.ir.ops import KEYWORDS

    assert {"and", "or", "not", "nan"} <= KEYWORDS
    # names that only start with a keyword stay names
    prog = optdsl.compile("android = 1; notes = 2; orbit = 3; nano = 4\n"
                          "w = w - (android + notes + orbit + nano) * g")
    assert prog.source("numpy")


@pytest.mark.parametrize("source,hint", [
    ("if g > 0: w = w - g", "where(mask, a, b)"),
    ("w = w if g > 0 else g", "where(mask, a, b)"),
    ("w = where(g > 0 && w > 0, w, g)", "`and`, `or`, `not`"),
    ("w = where(g > 0 & w > 0, w, g)", "`and`, `or`, `not`"),
    ("w = where(g > 0 || w > 0, w, g)", "`and`, `or`, `not`"),
    ("w = where(g > 0 | w > 0, w, g)", "`and`, `or`, `not`"),
    ("w = where(!(g > 0), w, g)", "`and`, `or`, `not`"),
    ("w++", "`x += 1`"),
    ("w--", "`x -= 1`"),
])
def test_constructs_of_other_languages_say_what_to_write(source, hint):
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(source)
    assert hint in info.value.message, str(info.value)
    assert info.value.source == source
