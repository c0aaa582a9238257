"""The NumPy runtime's Slots kept between steps: zero-copy views rebuilt only when a tensor
moves or is replaced, giving bit for bit what the plain path gives."""

from __future__ import annotations

import numpy as np
import torch

from optdsl import library
from optdsl.runtime.numpy_runner import NumpyRunner


def _train(name, steps=4, backend="numpy", **hypers):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (5, 3000, 7, 9000)]
    opt = getattr(library, name)(params, backend=backend, **hypers)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (step == 1 and i == 2) else torch.randn(p.shape, generator=gen)
        opt.step()
    return params, opt


def _train_reload_move(backend="numpy"):
    params, opt = _train("Adam", backend=backend)
    for p in params:  # every state tensor replaced, in place in the state dicts
        for key in ("exp_avg", "exp_avg_sq"):
            opt.state[p][key] = opt.state[p][key].clone()
    with torch.no_grad():
        params[1].data = params[1].data.clone()  # the storage moves
    for q in params:
        q.grad = torch.ones_like(q)
    opt.step()
    return params, opt


def test_kept_slots_follow_replaced_and_moved_tensors(monkeypatch):
    """A Slot kept between steps is rebuilt when a state tensor is replaced or the
    parameter's storage moves (param.data = ...): the result equals the plain path's, and
    the kept Slot views the new tensors and holds no gradient. (load_state_dict drops them
    all.)"""
    kept, opt = _train_reload_move()
    views = opt._runner()._views
    assert len(views) == 4
    slot = views[id(kept[1])].slot
    assert slot.arrays[1] is None  # (the gradient)
    assert np.shares_memory(slot.arrays[0], kept[1].detach().numpy())
    assert np.shares_memory(slot.arrays[2], opt.state[kept[1]]["exp_avg"].numpy())
    monkeypatch.setattr(NumpyRunner, "_kept_slot", lambda *args: None)
    plain, plain_opt = _train_reload_move()
    assert all(torch.equal(a, b) for a, b in zip(kept, plain))
    # params[0] only had its states replaced: the step must have updated the new ones
    for a, b in zip(kept, plain):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[a][key], plain_opt.state[b][key]), key
