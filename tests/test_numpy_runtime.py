"""The NumPy runtime's two shortcuts: Slots kept between steps (zero-copy views rebuilt only
when a tensor moves or is replaced) and the step split across threads. Both must give bit for
bit what the plain path gives."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optdsl
from optdsl import library
from optdsl.runtime import numpy_step
from optdsl.runtime.numpy_runner import NumpyRunner
from optdsl.runtime.numpy_step import Slot, split_slots


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(1, 5))
def test_split_slots_covers_every_element_once(sizes, parts):
    slots = [Slot(1.0, np.arange(n, dtype=np.float64) + 1000 * i, np.zeros(n),
                  [np.zeros(n), np.float64(i)]) for i, n in enumerate(sizes)]
    pieces, firsts = split_slots(slots, parts)
    assert len(pieces) == parts and len(firsts) == len(slots)
    seen = np.concatenate([p.w for part in pieces for p in part] + [np.zeros(0)])
    assert np.array_equal(np.sort(seen), np.sort(np.concatenate([s.w for s in slots])))
    total = sum(sizes)
    for part in pieces:  # balanced to within one element
        assert abs(sum(p.w.shape[0] for p in part) - total / parts) <= 1
    for slot, first in zip(slots, firsts):
        assert first.states[1] == slot.states[1]  # scalar states travel with every piece
        assert np.shares_memory(first.w, slot.w) or slot.w.size == 0


def _train(name, threads, steps=4, **hypers):
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (5, 3000, 7, 9000)]
    opt = getattr(library, name)(params, **hypers)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (step == 1 and i == 2) else torch.randn(p.shape, generator=gen)
        opt.step()
    return params, opt


@pytest.mark.parametrize("name", ["Adam", "NAdam", "SGD", "LAMB"])  # LAMB: reductions
def test_threads_give_the_same_bits(name, monkeypatch):
    monkeypatch.setattr(numpy_step, "MIN_PER_THREAD", 16)
    before = torch.get_num_threads()
    try:
        (p1, o1), (p3, o3) = _train(name, 1, lr=1e-2), _train(name, 3, lr=1e-2)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(p1, p3):
        assert torch.equal(a, b)
        for key, value in o1.state[a].items():
            assert torch.equal(value, o3.state[b][key]), key


def _train_reload_move():
    params, opt = _train("Adam", 1)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # every state tensor replaced
    with torch.no_grad():
        params[1].data = params[1].data.clone()  # the storage moves
    for q in params:
        q.grad = torch.ones_like(q)
    opt.step()
    return params, opt


def test_kept_slots_follow_replaced_and_moved_tensors(monkeypatch):
    """A Slot kept between steps is rebuilt when a state tensor is replaced
    (load_state_dict) or the parameter's storage moves (param.data = ...): the result equals
    the plain path's, and the kept Slot views the new tensors and holds no gradient."""
    prog = library.program("Adam")
    runner = NumpyRunner(prog)
    monkeypatch.setitem(prog.__dict__, "numpy_runner", runner)  # its cache starts empty
    kept, opt = _train_reload_move()
    assert len(runner._views) == 4
    slot = runner._views[kept[1]].slot
    assert slot.g is None
    assert np.shares_memory(slot.w, kept[1].detach().numpy())
    assert np.shares_memory(slot.states[0], opt.state[kept[1]]["exp_avg"].numpy())
    monkeypatch.setattr(NumpyRunner, "_kept_slot", lambda *args: None)
    plain, _ = _train_reload_move()
    assert all(torch.equal(a, b) for a, b in zip(kept, plain))


def test_threads_follow_torch_set_num_threads(monkeypatch):
    calls = []
    real = numpy_step.NumpyStep.run

    def spy(self, hyper, slots, threads=1):
        calls.append(threads)
        return real(self, hyper, slots, threads)

    monkeypatch.setattr(numpy_step.NumpyStep, "run", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.ones(3)
        optdsl.compile("w = w - 0.1 * g").optimizer([p]).step()
    finally:
        torch.set_num_threads(before)
    assert calls == [2]
