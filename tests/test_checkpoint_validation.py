"""load_state_dict checks a checkpoint against the program before it loads (issue 15, item 4):
keys, shapes and values; a refused checkpoint raises an error naming the parameter (group
and index) and the key, and changes nothing. torch's leniencies for older checkpoints stay
(float step, states the step does not use, SGD's missing step)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from optdsl import library


def params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=gen)),
            torch.nn.Parameter(torch.randn(5, generator=gen))]


def stepped(cls, ps, steps=2, **kwargs):
    opt = cls(ps, **kwargs)
    for i in range(steps):
        gen = torch.Generator().manual_seed(100 + i)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return opt


def fresh_and_snapshot(cls=library.Adam, **kwargs):
    """An optimizer with state (another run's) and a copy of what it holds."""
    ps = params(1)
    opt = stepped(cls, ps, steps=1, **kwargs)
    return opt, ps, (copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in ps])


def assert_unchanged(opt, ps, snapshot):
    sd, values = snapshot
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"]
    assert now["state"].keys() == sd["state"].keys()
    for index, entry in now["state"].items():
        assert entry.keys() == sd["state"][index].keys()
        for key, value in entry.items():
            assert torch.equal(value, sd["state"][index][key]), (index, key)
    for p, v in zip(ps, values):
        assert torch.equal(p.detach(), v)


def checkpoint(cls=library.Adam, **kwargs):
    return copy.deepcopy(stepped(cls, params(), **kwargs).state_dict())


def refused(sd, error, regex, cls=library.Adam, **kwargs):
    opt, ps, snap = fresh_and_snapshot(cls, **kwargs)
    with pytest.raises(error, match=regex):
        opt.load_state_dict(sd)
    assert_unchanged(opt, ps, snap)


def test_missing_exp_avg_is_a_key_error():
    sd = checkpoint()
    del sd["state"][1]["exp_avg"]
    refused(sd, KeyError, r"parameter 1 of param group 0.*'exp_avg'")


def test_torch_sgd_momentum_checkpoint_into_adam():
    ps = params()
    sgd = torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    for p in ps:
        p.grad = torch.ones_like(p)
    sgd.step()
    refused(copy.deepcopy(sgd.state_dict()), KeyError,
            r"parameter 0 of param group 0.*'momentum_buffer'.*another optimizer")


@pytest.mark.parametrize("step", [-1.0, math.nan, math.inf, 2.5, torch.tensor([1.0, 2.0]),
                                  "3"])
def test_bad_step_counts(step):
    sd = checkpoint()
    sd["state"][0]["step"] = torch.tensor(step) if isinstance(step, float) else step
    error = TypeError if isinstance(step, str) else ValueError
    refused(sd, error, r"state\['step'\] of parameter 0 of param group 0")


def test_missing_step_where_t_counts():
    sd = checkpoint()
    del sd["state"][1]["step"]
    refused(sd, KeyError, r"parameter 1 of param group 0.*'step'")


@pytest.mark.parametrize("value, error, regex", [
    (torch.zeros(3, 4), ValueError, r"shape \(3, 4\).*shape \(4, 3\)"),
    (torch.zeros(12), ValueError, r"shape \(12,\)"),
    (torch.zeros(4, 3, dtype=torch.int32), ValueError, "dtype torch.int32"),
    (torch.zeros(4, 3, dtype=torch.complex64), ValueError, "dtype torch.complex64"),
    ([0.0] * 12, TypeError, "must be a tensor"),
])
def test_bad_state_tensors(value, error, regex):
    sd = checkpoint()
    sd["state"][0]["exp_avg_sq"] = value
    refused(sd, error, r"state\['exp_avg_sq'\] of parameter 0 of param group 0.*" + regex)


def test_scalar_state_must_be_one_number():
    sd = checkpoint(library.NAdam)
    sd["state"][1]["mu_product"] = torch.ones(5)
    refused(sd, ValueError, r"state\['mu_product'\] of parameter 1", cls=library.NAdam)


def test_group_count_and_sizes_in_torchs_words():
    ps = params()
    sd = checkpoint()
    sd2 = copy.deepcopy(sd)
    sd2["param_groups"].append(copy.deepcopy(sd2["param_groups"][0]))
    refused(sd2, ValueError, "loaded state dict has a different number of parameter groups")
    sd3 = copy.deepcopy(sd)
    sd3["param_groups"][0]["params"] = sd3["param_groups"][0]["params"][:1]
    refused(sd3, ValueError, "loaded state dict contains a parameter group that doesn't match "
                             "the size of optimizer's group")
    with pytest.raises(ValueError, match="different number of parameter groups"):
        torch.optim.Adam(ps).load_state_dict(sd2)  # torch's words, as the regex says


def test_invalid_hyper_in_a_saved_group():
    sd = checkpoint()
    sd["param_groups"][0]["lr"] = -1.0
    refused(sd, ValueError, r"Invalid learning rate: -1.0.*param group 0 of the checkpoint")


def test_not_a_state_dict():
    opt, ps, snap = fresh_and_snapshot()
    with pytest.raises(KeyError):
        opt.load_state_dict({"state": {}})
    with pytest.raises(TypeError):
        opt.load_state_dict([1, 2])
    assert_unchanged(opt, ps, snap)


# -- what still loads -----------------------------------------------------------------------

def test_float_step_and_absent_unused_state_load():
    """A float step (older torch) and no max_exp_avg_sq without amsgrad (torch keeps none)."""
    sd = checkpoint()
    for entry in sd["state"].values():
        entry["step"] = float(entry["step"])
        entry.pop("max_exp_avg_sq", None)
    ps = params()
    opt = library.Adam(ps)
    opt.load_state_dict(sd)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert float(opt.state[ps[0]]["step"]) == 3.0


def test_amsgrad_needs_its_state():
    sd = checkpoint(amsgrad=True)
    del sd["state"][0]["max_exp_avg_sq"]
    refused(sd, KeyError, r"'max_exp_avg_sq'", amsgrad=True)


def test_torch_checkpoints_load_into_the_twins():
    """torch.optim's own checkpoints (SGD without step, Adam without max_exp_avg_sq) load,
    and the next step equals torch's."""
    for name, kwargs in (("SGD", {"momentum": 0.9}), ("Adam", {}), ("RMSprop", {}),
                         ("Rprop", {}), ("NAdam", {})):
        ps, qs = params(), params()
        ref = stepped(getattr(torch.optim, name), ps, **kwargs)
        ours = getattr(library, name)(qs, **kwargs)
        for p, q in zip(ps, qs):
            q.data.copy_(p.detach())
        ours.load_state_dict(copy.deepcopy(ref.state_dict()))
        for p, q in zip(ps, qs):
            p.grad = torch.full_like(p, 0.5)
            q.grad = torch.full_like(q, 0.5)
        ref.step()
        ours.step()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=name)


def test_validation_sees_what_pre_hooks_make():
    """A load_state_dict pre-hook that repairs a checkpoint runs once, before the check."""
    sd = checkpoint()
    saved = sd["state"][0].pop("exp_avg")
    calls = []

    def repair(optimizer, state_dict):
        calls.append(1)
        state_dict = copy.deepcopy(state_dict)
        state_dict["state"][0]["exp_avg"] = saved
        return state_dict

    ps = params()
    opt = library.Adam(ps)
    opt.register_load_state_dict_pre_hook(repair)
    opt.load_state_dict(sd)
    assert calls == [1]
    assert torch.equal(opt.state[ps[0]]["exp_avg"], saved)
