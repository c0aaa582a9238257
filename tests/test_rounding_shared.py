"""Stochastic rounding draws one set of bits on every back end (optdsl.runtime.rounding).

The same optimizer, seed and tensors give the same bfloat16 bits on the NumPy step, the C
step and the Triton kernels (through the interpreter): the bits of an element depend only
on (its bucket's seed, its tensor's index in the bucket, its column, its offset), not on
chunks, blocks or threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optdsl.library import Adam
from optdsl.runtime import rounding


def test_hash_is_murmur3_keyed_by_stream():
    # murmur3's finalizer: fixed points of the published constants
    assert int(rounding.mix32(np.uint32(0))) == 0
    assert int(rounding.mix32(np.uint32(1))) == 0x514E28B7
    # (offset 0 hashes to 0 in every stream: the Triton kernels' hash, kept bit for bit;
    # element 0 of a tensor always rounds towards zero)
    assert not rounding.random_bits(5, 3, 2, np.arange(1)).any()
    offsets = np.arange(1, 5)
    bits = rounding.random_bits(5, 0, 0, offsets)
    assert len(set(bits.tolist())) == 4
    # a different tensor, column or seed gives an unrelated stream
    for other in (rounding.random_bits(5, 1, 0, offsets),
                  rounding.random_bits(5, 0, 2, offsets),
                  rounding.random_bits(6, 0, 0, offsets)):
        assert not np.any(other == bits)
    # offsets above 2^32 take their high word into account
    far = rounding.random_bits(5, 0, 0, np.array([3, 3 + 2**32]))
    assert far[0] != far[1]


def test_buckets_number_by_first_appearance():
    assert rounding.buckets(["a", "b", None, "a", "b", "c"]) == [
        (0, 0), (1, 0), None, (0, 1), (1, 1), (2, 0)]


def test_stochastic_bits_are_unbiased_and_keep_specials():
    x = np.full(40000, 1.0 + 2.0 ** -9, dtype=np.float32)  # a quarter ulp above 1.0
    bits = rounding.bf16_stochastic_bits(x, rounding.derive_seed(3), 0, 0)
    assert set(np.unique(bits).tolist()) == {0x3F80, 0x3F81}
    assert abs(float(np.mean(bits == 0x3F81)) - 0.25) < 0.02
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 1.0], dtype=np.float32)
    out = rounding.bf16_stochastic_bits(special, 7, 0, 0)
    assert out[0] & 0x7FC0 == 0x7FC0 and out[1] == 0x7F80 and out[2] == 0xFF80
    assert out[3] == 0x8000 and out[4] == 0x3F80


def _run(backend: str, steps: int = 3) -> list[torch.Tensor]:
    """bf16 parameters in three buckets (a master weight, bf16 states, fp32 states), with
    stochastic rounding, stepped on ``backend``."""
    gen = torch.Generator().manual_seed(11)
    shapes = [(37, 3), (5,), (300,), (0,), (1, 7)]
    params = [torch.randn(s, generator=gen).to(torch.bfloat16).requires_grad_() for s in shapes]
    torch.manual_seed(2024)
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    opt = Adam(groups, lr=0.01, backend=backend, master_weights=True,
               stochastic_rounding=True)
    states = Adam([p2 := params[2].detach().clone().requires_grad_()], lr=0.01,
                  backend=backend, state_dtype=torch.bfloat16, stochastic_rounding=True)
    for step in range(steps):
        g = torch.Generator().manual_seed(100 + step)
        for p in params + [p2]:
            p.grad = torch.randn(p.shape, generator=g).to(torch.bfloat16)
        opt.step()
        states.step()
    return [p.detach().clone() for p in params + [p2]] + [
        s.clone() for s in states.state[p2].values() if s.dim()]


def _bits(tensors):
    return [t.view(torch.int16) for t in tensors]


def test_numpy_and_triton_round_alike(monkeypatch, tmp_path):
    pytest.importorskip("triton")
    want = _bits(_run("numpy"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    got = _bits(_run("triton"))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
