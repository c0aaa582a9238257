"""Stochastic rounding's random numbers, shared by the runners: seeds derived from words, and
the bfloat16 rounding of float32 arrays on the host (the NumPy back end's).

The policy (when to round, which seed a step gets) is optdsl.optim.precision's.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*words: int) -> int:
    """A seed hashed from ``words`` (SeedSequence: nearby inputs give unrelated seeds, which
    the kernels' hash needs; adding 1 to a seed would not do), in [2^61, 2^62): positive as
    an int64 and never small enough for Triton to pass it as an int32."""
    state = np.random.SeedSequence([int(w) & (2**64 - 1) for w in words]).generate_state(
        1, np.uint64)
    return int(state[0] >> np.uint64(3)) | (1 << 61)


def round_bf16_stochastic(values: np.ndarray, seed: int) -> np.ndarray:
    """float32 ``values`` with the low 16 bits cleared after adding 16 random bits: each is
    then exactly a bfloat16 that is the value rounded up or down with probability
    proportional to its distance from the other (NaN stays NaN, inf stays inf)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    noise = np.random.default_rng(seed).integers(0, 1 << 16, size=bits.shape, dtype=np.uint32)
    rounded = ((bits + noise) & np.uint32(0xFFFF0000)).view(np.float32)
    return np.where(np.isnan(values), values, rounded)
