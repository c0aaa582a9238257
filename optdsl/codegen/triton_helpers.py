"""The @triton.jit helper functions that generated Triton modules call, as source text.

The Triton spellings of the ops and the generator (both optdsl.codegen.triton) name
helpers such as ``_div`` or ``_stored``; ``closure`` gives the helpers a set of names needs,
callees first, and ``HELPERS`` their source. Every generated module carries its own copy, so
each stands alone.

On a GPU the transcendental helpers call libdevice (triton.language.extra.libdevice, in every
Triton 3.x); the interpreter has no libdevice, so there they evaluate a float64 formula made of
operations it has. ``_INTERPRET`` (defined by the generated module) is a compile-time constant:
the other branch is never compiled.
"""

from __future__ import annotations

import math


def _atan_series(terms: int = 12) -> str:
    """Horner lines for atan(b) = b * sum_k (-1)^k b2^k / (2k + 1), |b| <= tan(pi/12)."""
    k = terms - 1
    lines = [f"    s = {(-1.0) ** k / (2 * k + 1)!r}"]
    for k in range(terms - 2, -1, -1):
        lines.append(f"    s = {(-1.0) ** k / (2 * k + 1)!r} + b2 * s")
    return "\n".join(lines)


HELPERS: dict[str, str] = {
    "_div": '''
@triton.jit
def _div(x, y):
    """x / y rounded to nearest, as NumPy divides (float32 `/` in Triton is approximate)."""
    if y.dtype == tl.float64:
        r = x / y
    else:
        r = tl.div_rn(x, y)
    return r
''',
    "_sqrt": '''
@triton.jit
def _sqrt(x):
    """Square root rounded to nearest (float32 tl.sqrt is approximate, float64 is exact)."""
    if x.dtype == tl.float64:
        r = tl.sqrt(x)
    else:
        r = tl.sqrt_rn(x)
    return r
''',
    "_exp": '''
@triton.jit
def _exp(x):
    """exp(x) to an ulp or two (libdevice; NumPy's exp in the interpreter)."""
    if _INTERPRET:
        r = tl.exp(x)
    else:
        r = libdevice.exp(x)
    return r
''',
    "_log": '''
@triton.jit
def _log(x):
    """log(x) to an ulp or two (libdevice; NumPy's log in the interpreter)."""
    if _INTERPRET:
        r = tl.log(x)
    else:
        r = libdevice.log(x)
    return r
''',
    "_sign": '''
@triton.jit
def _sign(x):
    """-1, 0 or 1 as np.sign: -0.0 gives 0.0, NaN gives NaN."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, tl.where(x == 0, 0.0, x)))
''',
    "_pow": '''
@triton.jit
def _pow(x, y):
    """x ** y as libm's pow (libdevice; a float64 formula in the interpreter)."""
    if _INTERPRET:
        r = _pow_f64(x.to(tl.float64), y.to(tl.float64)).to(x.dtype)
    else:
        r = libdevice.pow(x, y)
    return r
''',
    "_tanh": '''
@triton.jit
def _tanh(x):
    """tanh(x) (libdevice; a float64 formula in the interpreter)."""
    if _INTERPRET:
        r = _tanh_f64(x.to(tl.float64)).to(x.dtype)
    else:
        r = libdevice.tanh(x)
    return r
''',
    "_atan2": '''
@triton.jit
def _atan2(y, x):
    """atan2(y, x) (libdevice; a float64 formula in the interpreter)."""
    if _INTERPRET:
        r = _atan2_f64(y.to(tl.float64), x.to(tl.float64)).to(y.dtype)
    else:
        r = libdevice.atan2(y, x)
    return r
''',
    "_add": '''
@triton.jit
def _add(a, b):
    """The combine function of the sums (tl.reduce, a builtin, works in every mode)."""
    return a + b
''',
    "_mix32": '''
@triton.jit
def _mix32(h):
    """murmur3's finalizer: a bijection of uint32 in which every input bit moves every
    output bit."""
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h
''',
    "_random_bits": '''
@triton.jit
def _random_bits(seed, offs, ti, stream: tl.constexpr):
    """32 random bits per element: a hash of the offset under a key hashed from (seed,
    tensor, column), so every step, tensor and column draws its own stream. (Counter-based,
    like Philox; written here since triton.language.random cannot be called from interpreted
    kernels in every mode.)"""
    key = _mix32((seed & 0xFFFFFFFF).to(tl.uint32) ^ _mix32(ti.to(tl.uint32) * 0x9E3779B9))
    column = ti.to(tl.uint32) * 0 + stream
    key = _mix32(key ^ (seed >> 32).to(tl.uint32) ^ _mix32(column * 0x85EBCA6B + 1))
    h = _mix32(offs.to(tl.uint32) ^ key)
    return _mix32(h ^ (offs >> 32).to(tl.uint32) ^ _mix32(key))
''',
    "_bf16_high": '''
@triton.jit
def _bf16_high(x, r):
    """The bfloat16 whose bits are the high half of r, a rounded float32 x (by bits: the
    interpreter's own cast mishandles subnormals); a NaN x stays a quiet NaN."""
    r = tl.where(x != x, x.to(tl.uint32, bitcast=True) | 0x400000, r)
    return (r >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
''',
    "_loaded": '''
@triton.jit
def _loaded(ptr, offs, mask, CT: tl.constexpr):
    """The elements at ptr + offs in the compute dtype CT (a bfloat16 by its bits under the
    interpreter, whose own cast mishandles subnormals)."""
    if _INTERPRET:
        if ptr.dtype.element_ty == tl.bfloat16:
            bits = tl.load(ptr.to(tl.pointer_type(tl.uint16)) + offs, mask=mask)
            x = (bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        else:
            x = tl.load(ptr + offs, mask=mask)
    else:
        x = tl.load(ptr + offs, mask=mask)
    return x.to(CT)
''',
    "_stored": '''
@triton.jit
def _stored(x, DT: tl.constexpr, SR: tl.constexpr, seed, ti, stream: tl.constexpr, offs):
    """x in the storage dtype DT. A bfloat16 under SR rounds up or down at random, unbiased
    (16 random bits added below the kept bits); else round to nearest even (the interpreter
    truncates float32 to bfloat16, so there the bits are rounded first)."""
    if DT == tl.float16:  # through float32, as torch converts a float64 (and NumPy's path)
        x = x.to(tl.float32)
    if DT == tl.bfloat16:
        x = x.to(tl.float32)  # (float64 to bfloat16 is no conversion every Triton has right)
        b = x.to(tl.uint32, bitcast=True)
        if SR:
            y = _bf16_high(x, b + (_random_bits(seed, offs, ti, stream) & 0xFFFF))
        elif _INTERPRET:
            y = _bf16_high(x, b + 0x7FFF + ((b >> 16) & 1))
        else:
            y = x.to(DT)
    else:
        y = x.to(DT)
    return y
''',
    "_maxnan": '''
@triton.jit
def _maxnan(a, b):
    """max that propagates NaN: the combine function of maxabs."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)
''',
    "_signbit_f64": '''
@triton.jit
def _signbit_f64(x):
    """Whether a float64's sign bit is set (true for -0.0)."""
    return x.to(tl.int64, bitcast=True) < 0
''',
    "_pow_f64": '''
@triton.jit
def _pow_f64(x, y):
    """pow in float64 as exp2(y * log2|x|), with libm's signs and special cases (nested
    wheres: the interpreter mishandles & of a 0-d mask)."""
    r = tl.exp2(y * tl.log2(tl.abs(x)))
    odd = tl.floor(y * 0.5) != y * 0.5
    r = tl.where(tl.floor(y) == y, tl.where(odd, tl.where(_signbit_f64(x), r * -1.0, r), r),
                 tl.where(x < 0.0, tl.where(x == float('-inf'), r, float('nan')), r))
    r = tl.where(tl.abs(x) == 1.0, tl.where(tl.abs(y) == float('inf'), 1.0, r), r)
    return tl.where(y == 0.0, 1.0, tl.where(x == 1.0, 1.0, r))
''',
    "_tanh_f64": '''
@triton.jit
def _tanh_f64(x):
    """tanh in float64: (1 - e) / (1 + e) with e = exp(-2|x|); a series near zero."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    r = (1.0 - e) / (1.0 + e)
    r = tl.where(x < 0.0, r * -1.0, r)
    return tl.where(ax < 1e-4, x * (1.0 - x * x / 3.0), r)
''',
    "_atan2_f64": f'''
@triton.jit
def _atan2_f64(y, x):
    """atan2 in float64: octant reduction, then atan on [0, tan(pi/12)] by its series."""
    ay = tl.abs(y)
    ax = tl.abs(x)
    hi = tl.maximum(ax, ay, propagate_nan=tl.PropagateNan.ALL)
    lo = tl.minimum(ax, ay, propagate_nan=tl.PropagateNan.ALL)
    a = tl.where(hi == 0.0, 0.0, tl.where(lo == float('inf'), 1.0, lo / hi))
    big = a > {2.0 - math.sqrt(3.0)!r}
    b = tl.where(big, (a * {math.sqrt(3.0)!r} - 1.0) / (a + {math.sqrt(3.0)!r}), a)
    b2 = b * b
{_atan_series()}
    r = b * s
    r = tl.where(big, r + {math.pi / 6!r}, r)
    r = tl.where(ay > ax, {math.pi / 2!r} - r, r)
    r = tl.where(_signbit_f64(x), {math.pi!r} - r, r)
    return tl.where(_signbit_f64(y), r * -1.0, r)
''',
}

_DEPENDS = {
    "_pow": ("_pow_f64",), "_tanh": ("_tanh_f64",), "_atan2": ("_atan2_f64",),
    "_pow_f64": ("_signbit_f64",), "_atan2_f64": ("_signbit_f64",),
    "_stored": ("_random_bits", "_bf16_high"), "_random_bits": ("_mix32",),
}
# Emission order: callees before callers.
_ORDER = ("_signbit_f64", "_pow_f64", "_tanh_f64", "_atan2_f64", "_mix32", "_random_bits",
          "_bf16_high", "_add", "_atan2", "_div", "_exp", "_loaded", "_log", "_maxnan", "_pow",
          "_sign", "_sqrt", "_stored", "_tanh")
USES_LIBDEVICE = frozenset({"_exp", "_log", "_pow", "_tanh", "_atan2"})
USES_INTERPRET = USES_LIBDEVICE | {"_loaded", "_stored"}


def closure(names: set[str]) -> list[str]:
    """The helpers ``names`` need, with their callees, in emission order."""
    need: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in need:
            need.add(name)
            stack.extend(_DEPENDS.get(name, ()))
    unknown = need - set(HELPERS)
    assert not unknown, f"the op table names undefined Triton helpers {sorted(unknown)}"
    return [n for n in _ORDER if n in need]
