"""Reductions: LAMB, LARS, clipping by global and per-tensor norm, and t-schedules, against
hand-written torch references (NumPy backend; the Triton backend is compared with the NumPy
one in tests/test_triton_interp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import optdsl
from optdsl.codegen.numpy import CHUNK
from optdsl.library import LAMB, LARS, AdamWClip, SGDClip, SGDClipPerTensor

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(7,), (3, 5), (1,), (2, 3, 4), (CHUNK + 9,)]  # more than one NumPy chunk


def params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def grads(ps, step, skip_last_every=3):
    gen = torch.Generator().manual_seed(100 + step)
    out = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in ps]
    if step % skip_last_every == 1:
        out[-2] = None  # a parameter that misses its gradient on some steps
    return out


def run_pair(make_ours, reference_step, dtype, steps=30):
    ours, theirs = params(dtype), params(dtype)
    opt = make_ours(ours)
    ref_state: dict = {}
    for step in range(steps):
        gs = grads(ours, step)
        for p, q, g in zip(ours, theirs, gs):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        opt.step()
        with torch.no_grad():
            reference_step(theirs, ref_state)
    return ours, theirs


def assert_close(ours, theirs, dtype):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, **tol)


def ref_clip(ps, max_norm):
    live = [p for p in ps if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(live, max_norm)


DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_clip_matches_clip_grad_norm_then_sgd(dtype):
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.01)
    holder = {}

    def reference(ps, state):
        if "opt" not in state:
            state["opt"] = torch.optim.SGD(ps, **kw)
        ref_clip(ps, 0.5)
        state["opt"].step()

    ours, theirs = run_pair(lambda ps: SGDClip(ps, max_norm=0.5, **kw), reference, dtype)
    assert_close(ours, theirs, dtype)
    del holder


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_clip_matches_clip_grad_norm_then_adamw(dtype):
    kw = dict(lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99))

    def reference(ps, state):
        if "opt" not in state:
            state["opt"] = torch.optim.AdamW(ps, **kw)
        ref_clip(ps, 1.0)
        state["opt"].step()

    ours, theirs = run_pair(lambda ps: AdamWClip(ps, max_norm=1.0, **kw), reference, dtype)
    assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_tensor_clip(dtype):
    def reference(ps, state):
        for p in ps:
            if p.grad is None:
                continue
            torch.nn.utils.clip_grad_norm_([p], 0.3)
            buf = state.get(p)
            if buf is None:
                buf = state[p] = p.grad.clone()
            else:
                buf.mul_(0.9).add_(p.grad)
            p.sub_(0.1 * buf)

    ours, theirs = run_pair(lambda ps: SGDClipPerTensor(ps, lr=0.1, max_norm=0.3, momentum=0.9),
                            reference, dtype)
    assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lamb(dtype):
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-6, 0.01

    def reference(ps, state):
        for p in ps:
            if p.grad is None:
                continue
            s = state.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            s["t"] += 1
            t, g = s["t"], p.grad
            s["m"].mul_(b1).add_(g, alpha=1 - b1)
            s["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
            r = (s["m"] / (1 - b1**t)) / ((s["v"] / (1 - b2**t)).sqrt() + eps) + wd * p
            wn, rn = p.norm().item(), r.norm().item()
            trust = wn / rn if wn > 0 and rn > 0 else 1.0
            p.sub_(lr * trust * r)

    ours, theirs = run_pair(lambda ps: LAMB(ps, lr=lr, eps=eps, weight_decay=wd), reference,
                            dtype)
    assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lars(dtype):
    lr, mom, wd, tc = 0.1, 0.9, 1e-4, 1e-3

    def reference(ps, state):
        for p in ps:
            if p.grad is None:
                continue
            g = p.grad
            wn, gn = p.norm().item(), g.norm().item()
            local = tc * wn / (gn + wd * wn) if wn > 0 and gn > 0 else 1.0
            buf = state.setdefault(p, torch.zeros_like(p))
            buf.mul_(mom).add_(lr * local * (g + wd * p))
            p.sub_(buf)

    ours, theirs = run_pair(lambda ps: LARS(ps, lr=lr, momentum=mom, weight_decay=wd,
                                            trust_coefficient=tc), reference, dtype)
    assert_close(ours, theirs, dtype)


def test_global_norm_excludes_params_without_grad_and_is_per_group():
    prog = optdsl.load(ROOT / "examples" / "clip_global_norm.opt")
    a = torch.ones(4, dtype=torch.float64)
    b = torch.ones(3, dtype=torch.float64)
    c = torch.ones(2, dtype=torch.float64)
    opt = prog.optimizer([{"params": [a, b]}, {"params": [c], "max_norm": 100.0}], lr=1.0,
                         max_norm=1.0)
    a.grad = torch.full((4,), 3.0, dtype=torch.float64)  # norm 6
    b.grad = None
    c.grad = torch.full((2,), 3.0, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(a, torch.full((4,), 1 - 3.0 / (6 + 1e-6), dtype=torch.float64))
    assert torch.equal(b, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(c, torch.full((2,), -2.0, dtype=torch.float64))  # unclipped


@pytest.mark.parametrize("size", [1, 2, CHUNK - 1, CHUNK, CHUNK + 1])
def test_reductions_of_every_kind(size):
    src = """
    hyper lr = 0.1
    s = sum(g) + mean(g * w) + maxabs(g) + dot(g, w) + norm(w) + global_sum(g)
    w = w - lr * s * g
    """
    prog = optdsl.compile("\n".join(line.strip() for line in src.splitlines()))
    gen = torch.Generator().manual_seed(size)
    w = torch.randn(size, generator=gen, dtype=torch.float64)
    g = torch.randn(size, generator=gen, dtype=torch.float64)
    expected = w - 0.1 * (g.sum() + (g * w).mean() + g.abs().max() + g.dot(w) + w.norm()
                          + g.sum()) * g
    opt = prog.optimizer([w], lr=0.1)
    w.grad = g
    opt.step()
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=1e-12)


SCHEDULES = {
    "step_decay.opt": (dict(lr=0.1, gamma=0.5, step_size=3),
                       lambda t: 0.1 * 0.5 ** ((t - 1) // 3)),
    "exp_decay.opt": (dict(lr=0.1, gamma=0.9), lambda t: 0.1 * 0.9 ** (t - 1)),
    "inverse_time.opt": (dict(lr=0.1, k=0.5), lambda t: 0.1 / (1 + 0.5 * t)),
    "linear_decay.opt": (dict(lr=0.1, lr_final=0.01, tau=5),
                         lambda t: (1 - min(t / 5, 1)) * 0.1 + min(t / 5, 1) * 0.01),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_equal_their_formulas(name):
    kw, rate = SCHEDULES[name]
    prog = optdsl.load(ROOT / "examples" / name)
    w = torch.zeros(3, dtype=torch.float64)
    opt = prog.optimizer([w], **kw)
    expected = torch.zeros(3, dtype=torch.float64)
    for t in range(1, 13):
        w.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
        expected -= rate(t)
        torch.testing.assert_close(w, expected, rtol=1e-14, atol=1e-14)


def test_schedule_composes_with_torch_lr_scheduler():
    prog = optdsl.load(ROOT / "examples" / "exp_decay.opt")
    w = torch.zeros(2, dtype=torch.float64)
    opt = prog.optimizer([w], lr=0.1, gamma=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    expected = 0.0
    for t in range(1, 7):
        w.grad = torch.ones(2, dtype=torch.float64)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        expected -= lr * 0.9 ** (t - 1)
        torch.testing.assert_close(w, torch.full((2,), expected, dtype=torch.float64))


def test_skip_nonfinite_leaves_everything_unchanged():
    from optdsl.library import Adam

    p = torch.nn.Parameter(torch.ones(3))
    opt = Adam([p], lr=0.1, skip_nonfinite=True)
    p.grad = torch.ones(3)
    opt.step()
    before = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
    p.grad = torch.tensor([1.0, float("inf"), 1.0])
    opt.step()
    assert opt.skipped_steps == 1
    assert torch.equal(p.detach(), before[0])
    for key, value in opt.state[p].items():
        assert torch.equal(value, before[1][key]), key
