"""fp16 AMP (issue 16, item 2): towards torch.amp.GradScaler the twins behave as torch.optim's
non-fused optimizers by default (GradScaler unscales .grad itself and skips the step on
inf/NaN; ``_step_supports_amp_scaling`` is false), and as torch's fused ones with
``fused=True`` (the step unscales and skips itself). Both paths are compared with
torch.optim.Adam under the same GradScaler.

The frameworks decide on that flag. The checks they make are emulated here exactly, so that
they run without the frameworks installed (tests/test_frameworks.py runs the frameworks
themselves when they are, see the README):

- Lightning 2.6 (lightning/fabric/plugins/precision/amp.py, ``_optimizer_handles_unscaling``:
  ``getattr(optimizer, "_step_supports_amp_scaling", False)``; lightning/pytorch/plugins/
  precision/amp.py, ``MixedPrecision.clip_gradients``: ``clip_val > 0`` and that flag raise
  "does not allow for gradient clipping because it performs unscaling of gradients
  internally"; ``MixedPrecision.optimizer_step`` calls ``scaler.unscale_`` only without it).
- accelerate 1.15 (accelerate/optimizer.py, ``AcceleratedOptimizer.step``: with a scaler it
  patches ``optimizer.step`` to record that it was called, runs ``scaler.step``, and
  ``step_was_skipped`` is true when the optimizer's step was not called).
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from optdsl import library


def params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=gen)),
            torch.nn.Parameter(torch.randn(3, generator=gen))]


def grads_at(step):
    gen = torch.Generator().manual_seed(50 + step)
    gs = [torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen)]
    if step == 2:
        gs[1][0] = math.inf
    if step == 4:
        gs[0][1, 1] = math.nan
    return gs


def lightning_handles_unscaling(optimizer) -> bool:
    """lightning.fabric.plugins.precision.amp._optimizer_handles_unscaling, verbatim."""
    return getattr(optimizer, "_step_supports_amp_scaling", False)


def lightning_clip_gradients(optimizer, clip_val: float) -> None:
    """lightning.pytorch MixedPrecision.clip_gradients: the check, then norm clipping."""
    if clip_val > 0 and lightning_handles_unscaling(optimizer):
        raise RuntimeError(f"The current optimizer, {type(optimizer).__qualname__}, does not "
                           f"allow for gradient clipping because it performs unscaling of "
                           f"gradients internally. HINT: Are you using a 'fused' optimizer?")
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                   clip_val)


def lightning_step(optimizer, scaler, closure, clip_val=1.0):
    """lightning.pytorch MixedPrecision.optimizer_step with gradient clipping between
    unscaling and the step (Lightning clips in _after_closure)."""
    closure()
    if not lightning_handles_unscaling(optimizer):
        scaler.unscale_(optimizer)
    lightning_clip_gradients(optimizer, clip_val)
    scaler.step(optimizer)
    scaler.update()


def accelerate_step(optimizer, scaler) -> bool:
    """accelerate's AcceleratedOptimizer.step with a scaler; returns step_was_skipped."""
    called = []
    original = optimizer.step

    def patched(*args, **kwargs):
        called.append(True)
        return original(*args, **kwargs)

    optimizer.step = patched
    try:
        scaler.step(optimizer)
        scaler.update()
    finally:
        optimizer.step = original
    return not called


def scaled_backward(ps, gs, scaler):
    for p in ps:
        p.grad = None
    loss = sum((p * g).sum() for p, g in zip(ps, gs))
    scaler.scale(loss).backward()


def scaler():
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=2)


def test_flag_is_torchs_non_fused_by_default_and_fused_on_request():
    assert library.Adam._step_supports_amp_scaling is False
    assert library.Adam(params())._step_supports_amp_scaling is False
    fused = library.Adam(params(), fused=True)
    assert fused._step_supports_amp_scaling is True
    assert copy.deepcopy(fused)._step_supports_amp_scaling is True
    assert pickle.loads(pickle.dumps(fused))._step_supports_amp_scaling is True
    assert not getattr(torch.optim.Adam(params()), "_step_supports_amp_scaling", False)
    assert torch.optim.Adam(params(), fused=True)._step_supports_amp_scaling is True


@pytest.mark.parametrize("fused", [False, True])
def test_under_grad_scaler_equals_torch_adam(fused):
    """Six steps with an inf and a NaN step: the same parameters, scale and step counts as
    torch.optim.Adam(fused=...) under the same GradScaler."""
    ps, qs = params(), params()
    ours, ref = library.Adam(ps, lr=0.05, fused=fused), torch.optim.Adam(qs, lr=0.05,
                                                                           fused=fused)
    s1, s2 = scaler(), scaler()
    for step in range(6):
        for opt, xs, s in ((ours, ps, s1), (ref, qs, s2)):
            scaled_backward(xs, grads_at(step), s)
            s.step(opt)
            s.update()
        assert s1.get_scale() == s2.get_scale()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert [float(ours.state[p]["step"]) for p in ps] == \
            [float(ref.state[q]["step"]) for q in qs]
    assert float(ours.state[ps[0]]["step"]) == 4  # two of six steps skipped


def test_default_path_leaves_unscaling_to_the_scaler():
    """GradScaler unscales .grad before a non-fused step: the step sees plain gradients (and
    sets no grad_scale or found_inf on the optimizer)."""
    ps = params()
    opt = library.Adam(ps)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(
        (ps[0].grad.clone(), hasattr(o, "grad_scale"), hasattr(o, "found_inf"))))
    s = scaler()
    scaled_backward(ps, grads_at(0), s)
    s.step(opt)
    grad, has_scale, has_found = seen[0]
    torch.testing.assert_close(grad, grads_at(0)[0], rtol=0, atol=0)
    assert not has_scale and not has_found


@pytest.mark.parametrize("fused", [False, True])
def test_lightning_gradient_clipping(fused):
    """Lightning's 16-mixed precision with gradient_clip_val: clipping works by default (and
    equals torch.optim.Adam's run); with fused=True Lightning refuses, as for torch's fused
    Adam."""
    ps, qs = params(), params()
    ours, ref = library.Adam(ps, lr=0.05, fused=fused), torch.optim.Adam(qs, lr=0.05,
                                                                           fused=fused)
    s1, s2 = scaler(), scaler()
    for step in range(5):
        results = []
        for opt, xs, s in ((ours, ps, s1), (ref, qs, s2)):
            try:
                lightning_step(opt, s, lambda xs=xs, s=s, step=step: scaled_backward(
                    xs, grads_at(step), s))
                results.append(None)
            except RuntimeError as exc:
                results.append(str(exc))
        if fused:
            assert results[0] is not None and "does not allow for gradient clipping" in \
                results[0]
            assert results[1] is not None  # torch's fused Adam is refused alike
            return
        assert results == [None, None]
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fused", [False, True])
def test_accelerate_step_was_skipped(fused):
    """accelerate's step_was_skipped (which the HF Trainer's and accelerate's schedulers
    read): true exactly on the inf/NaN steps by default; with fused=True the step is always
    called (it skips itself), so it is never true, as with torch's fused Adam."""
    ps, qs = params(), params()
    ours, ref = library.Adam(ps, fused=fused), torch.optim.Adam(qs, fused=fused)
    s1, s2 = scaler(), scaler()
    skipped_ours, skipped_ref = [], []
    for step in range(6):
        scaled_backward(ps, grads_at(step), s1)
        skipped_ours.append(accelerate_step(ours, s1))
        scaled_backward(qs, grads_at(step), s2)
        skipped_ref.append(accelerate_step(ref, s2))
    assert skipped_ours == skipped_ref
    want = [False] * 6 if fused else [False, False, True, False, True, False]
    assert skipped_ours == want
