"""The @triton.jit helper functions that generated Triton modules call, as source text.

The Triton spellings of the ops and the generator (both optdsl.codegen.triton) name
helpers such as ``_div`` or ``_stored``; ``closure`` gives the helpers a set of names needs,
callees first, and ``HELPERS`` their source. Every generated module carries its own copy, so
each stands alone.

On a GPU the transcendental helpers call libdevice (triton.language.extra.libdevice, in every
Triton 3.x); the interpreter has no libdevice, so there they call NumPy's function on the
interpreted values (``NUMPY_HOOK``, a plain function the generated module defines: the
interpreter runs kernels as Python), which is what the NumPy back end and the host step
compute, bit for bit: ``np.power`` on blocks, C's pow (NumPy's scalar ``**``) on scalars.
``_INTERPRET`` (defined by the generated module) is a compile-time constant: the other
branch is never compiled.
"""

from __future__ import annotations

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
    """x ** y as libm's pow (libdevice; NumPy's in the interpreter)."""
    if _INTERPRET:
        x, y = tl.broadcast(x, y)
        r = _NUMPY("power", x, y)
    else:
        r = libdevice.pow(x, y)
    return r
''',
    "_tanh": '''
@triton.jit
def _tanh(x):
    """tanh(x) (libdevice; NumPy's in the interpreter)."""
    if _INTERPRET:
        r = _NUMPY("tanh", x, x)
    else:
        r = libdevice.tanh(x)
    return r
''',
    "_atan2": '''
@triton.jit
def _atan2(y, x):
    """atan2(y, x) (libdevice; NumPy's in the interpreter)."""
    if _INTERPRET:
        y, x = tl.broadcast(y, x)
        r = _NUMPY("arctan2", y, x)
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
}

_DEPENDS = {
    "_stored": ("_random_bits", "_bf16_high"), "_random_bits": ("_mix32",),
}
# Emission order: callees before callers.
_ORDER = ("_mix32", "_random_bits", "_bf16_high", "_add", "_atan2", "_div", "_exp", "_loaded",
          "_log", "_maxnan", "_pow", "_sign", "_sqrt", "_stored", "_tanh")
USES_LIBDEVICE = frozenset({"_exp", "_log", "_pow", "_tanh", "_atan2"})
USES_INTERPRET = USES_LIBDEVICE | {"_loaded", "_stored"}
USES_NUMPY = frozenset({"_pow", "_tanh", "_atan2"})

# Defined by a generated module whose helpers call NumPy under the interpreter (USES_NUMPY).
NUMPY_HOOK = '''

def _numpy_of(name, x, y):
    """NumPy's ufunc `name` of interpreted values (TRITON_INTERPRET=1 only: the interpreter
    runs kernels as Python over NumPy arrays), as the NumPy back end computes it; on scalars,
    pow is C's (NumPy's scalar `**`), as the host step computes it."""
    from triton.runtime.interpreter import TensorHandle

    a, b = x.handle.data, y.handle.data
    if name == "power" and not x.type.is_block():
        out = np.array([a.dtype.type(a.item()) ** b.dtype.type(b.item())], dtype=a.dtype)
    elif name == "tanh":
        out = np.tanh(a)
    else:
        out = getattr(np, name)(a, b)
    return tl.tensor(TensorHandle(out.astype(a.dtype), x.handle.dtype), x.type)


_NUMPY = tl.constexpr(_numpy_of)'''


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
