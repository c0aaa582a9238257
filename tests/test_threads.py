"""Optimizers under threads (issue 15 item 2): separate optimizers built from one program are
independent when stepped from separate threads at once (each has its own runner: plans,
tables, scratch buffers), and one optimizer stepped from two threads at once is refused
with a clear error that changes nothing."""

from __future__ import annotations

import threading

import pytest
import torch

from optdsl import library
from optdsl.runtime import backends

HOST_BACKENDS = [b for b in ("numpy", "c") if not backends.get(b).unavailable({"cpu"}, False)]


def _model(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(70_000, generator=gen)),  # > one 32K chunk
            torch.nn.Parameter(torch.randn(3, 5, generator=gen))]


def _grads(seed: int, step: int, params) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * seed + step)
    return [torch.randn(p.shape, generator=gen) for p in params]


def _train(opt, params, seed: int, steps: int, start=None) -> None:
    if start is not None:
        start.wait()
    for step in range(steps):
        for p, g in zip(params, _grads(seed, step, params)):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_separate_optimizers_are_independent_under_threads(backend):
    steps = 12
    alone = []
    for seed in (1, 2):
        params = _model(seed)
        _train(library.Adam(params, lr=1e-2, backend=backend), params, seed, steps)
        alone.append(params)
    together = [_model(1), _model(2)]
    opts = [library.Adam(p, lr=1e-2, backend=backend) for p in together]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            _train(opts[k], together[k], k + 1, steps, start)
        except BaseException as exc:  # (reported below, not lost in the thread)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(together, alone):
        for a, b in zip(got, want):
            assert torch.equal(a, b)  # bit for bit: nothing shared between the two


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_one_optimizer_from_two_threads_at_once_is_refused(backend):
    """Thread A's step is held inside the runner; thread B's step on the same optimizer is
    refused, and writes nothing (no step count, state or parameter changes)."""
    params = _model(3)
    opt = library.Adam(params, lr=1e-2, backend=backend)
    _train(opt, params, 3, 1)  # (its runner made)
    runner = opt._runner_of[1]
    entered, release = threading.Event(), threading.Event()

    def holding(original):
        def held(*args, **kwargs):
            entered.set()
            assert release.wait(60)
            return original(*args, **kwargs)
        return held

    # (a steady C step runs through run_counted, the others through run)
    for name in ("run", "run_counted"):
        if hasattr(runner, name):
            setattr(runner, name, holding(getattr(runner, name)))
    for p, g in zip(params, _grads(3, 1, params)):
        p.grad = g
    first: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(opt.step, first))
    worker.start()
    try:
        assert entered.wait(60)
        before = [p.detach().clone() for p in params]
        state_before = {k: v.clone() for k, v in opt.state[params[0]].items()}
        with pytest.raises(RuntimeError, match="already running in another thread"):
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(params, before))
        assert all(torch.equal(opt.state[params[0]][k], v) for k, v in state_before.items())
    finally:
        release.set()
        worker.join()
    assert not first, first
    assert not torch.equal(params[0], before[0])  # A's step went through


def _capture(fn, out: list) -> None:
    try:
        fn()
    except BaseException as exc:
        out.append(exc)
