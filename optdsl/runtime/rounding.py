"""Stochastic rounding's random numbers, one generator for every back end: seeds derived
from words, the counter-based hash that gives each stored element its random bits, the
buckets that number the tensors, and the bfloat16 rounding of float32 arrays on the host
(the NumPy back end's; the C and Triton back ends compute the same hash in their kernels).

The bits of an element are a function of (seed of its bucket, its tensor's index in the
bucket, its column, its offset in the tensor) and nothing else, so the NumPy, C and Triton
steps round every element alike whatever their chunking, blocks or threads:

- a step's seed (optdsl.optim.precision) is hashed with a bucket's number into the bucket's
  seed (``bucket_seed``);
- the parameters of a step fall into buckets by the dtypes of their tensors (``buckets``):
  the Triton back end launches one kernel per bucket, and every back end numbers buckets and
  the tensors in them the same way;
- ``random_bits`` is the hash: murmur3's finalizer (``mix32``) keyed by (seed, tensor,
  column), applied to the element's offset (the Triton helper ``_random_bits`` of
  optdsl.codegen.triton_helpers, the C prelude's ``optdsl_random_bits``);
- a float32 value rounds to a bfloat16 by adding the low 16 of those bits below the 16 bits
  it keeps, then cutting them (``bf16_stochastic_bits``); NaN stays a quiet NaN.

The policy (when to round, which seed a step gets) is optdsl.optim.precision's.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

_M32 = 0xFFFFFFFF


def derive_seed(*words: int) -> int:
    """A seed hashed from ``words`` (SeedSequence: nearby inputs give unrelated seeds, which
    the kernels' hash needs; adding 1 to a seed would not do), in [2^61, 2^62): positive as
    an int64 and never small enough for Triton to pass it as an int32."""
    state = np.random.SeedSequence([int(w) & (2**64 - 1) for w in words]).generate_state(
        1, np.uint64)
    return int(state[0] >> np.uint64(3)) | (1 << 61)


def bucket_seed(step_seed: int, number: int) -> int:
    """The seed of bucket ``number`` of a step whose seed is ``step_seed``."""
    return derive_seed(step_seed, number)


def buckets(keys: Sequence[Hashable | None]) -> list[tuple[int, int] | None]:
    """(bucket number, index in the bucket) of each parameter, from its bucket key (the
    dtypes of its columns and of its master weight's copy; None: a zero-size parameter,
    which takes part in no bucket). Buckets are numbered in order of first appearance and
    tensors in order within their bucket, as the Triton back end launches them."""
    numbers: dict[Hashable, list[int]] = {}
    out: list[tuple[int, int] | None] = []
    for key in keys:
        if key is None:
            out.append(None)
            continue
        found = numbers.get(key)
        if found is None:
            found = numbers[key] = [len(numbers), 0]
        out.append((found[0], found[1]))
        found[1] += 1
    return out


def seeded_places(step_seed: int, keys: Sequence[Hashable | None]
                  ) -> list[tuple[int, int] | None]:
    """(seed of its bucket, index in the bucket) of each parameter of a step (``keys``: as
    for ``buckets``)."""
    seeds: dict[int, int] = {}
    out: list[tuple[int, int] | None] = []
    for place in buckets(keys):
        if place is None:
            out.append(None)
            continue
        number, index = place
        if number not in seeds:
            seeds[number] = bucket_seed(step_seed, number)
        out.append((seeds[number], index))
    return out


def mix32(h: np.ndarray) -> np.ndarray:
    """murmur3's finalizer on uint32 values: a bijection in which every input bit moves
    every output bit."""
    h = np.asarray(h, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


def _mix(value: int) -> int:
    return int(mix32(np.uint32(value & _M32)))


def stream_key(seed: int, tensor: int, column: int) -> int:
    """The 32-bit key of one (seed, tensor, column) stream."""
    key = _mix((seed & _M32) ^ _mix((tensor * 0x9E3779B9) & _M32))
    return _mix(key ^ ((seed >> 32) & _M32) ^ _mix((column * 0x85EBCA6B + 1) & _M32))


def random_bits(seed: int, tensor: int, column: int, offsets: np.ndarray) -> np.ndarray:
    """32 random bits (uint32) for each element offset of one tensor's column."""
    key = stream_key(seed, tensor, column)
    offsets = np.asarray(offsets, dtype=np.int64)
    low = (offsets & _M32).astype(np.uint32)
    high = (offsets >> 32).astype(np.uint32)
    h = mix32(low ^ np.uint32(key))
    return mix32(h ^ high ^ np.uint32(_mix(key)))


def bf16_stochastic_bits(values: np.ndarray, seed: int, tensor: int,
                         column: int) -> np.ndarray:
    """The bfloat16 bit patterns (uint16) of float32 ``values`` (a tensor's column, flat,
    in element order) rounded stochastically: up or down with probability proportional to
    the distance to the other; NaN stays a quiet NaN, inf stays inf."""
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    bits = values.view(np.uint32)
    noise = random_bits(seed, tensor, column, np.arange(bits.size, dtype=np.int64))
    with np.errstate(over="ignore"):
        rounded = bits + (noise & np.uint32(0xFFFF))
    rounded = np.where(np.isnan(values), bits | np.uint32(0x400000), rounded)
    return (rounded >> np.uint32(16)).astype(np.uint16)


def round_bf16_stochastic(values: np.ndarray, seed: int, tensor: int = 0,
                          column: int = 0) -> np.ndarray:
    """float32 ``values`` rounded stochastically to bfloat16 and returned as float32 (each
    is exactly a bfloat16: the value rounded up or down with probability proportional to
    its distance from the other; NaN stays NaN, inf stays inf)."""
    bits = bf16_stochastic_bits(values, seed, tensor, column).astype(np.uint32) << np.uint32(16)
    return bits.view(np.float32).reshape(np.shape(values))
