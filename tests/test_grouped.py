"""GroupedOptimizer: param groups that each run their own optimizer (Muon for the hidden
matrices and AdamW for the rest, in one torch.optim.Optimizer; issue 13, item 4)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from optdsl import library
from optdsl.optim.grouped import GroupedOptimizer


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12),
                               torch.nn.Tanh(), torch.nn.Linear(12, 3))


def _split(model):
    hidden = [p for p in model.parameters() if p.dim() == 2]
    return hidden, [p for p in model.parameters() if p.dim() != 2]


def _grouped(model, backend="numpy"):
    hidden, rest = _split(model)
    return GroupedOptimizer([
        {"params": hidden, "optimizer": library.Muon, "lr": 0.02, "backend": backend},
        {"params": rest, "optimizer": library.AdamW, "lr": 1e-2, "betas": (0.9, 0.95),
         "backend": backend},
    ])


def _train(model, opts, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), y)
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
    return loss.item()


def _same(a, b) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_equals_one_optimizer_per_group():
    ours, ref = _model(), _model()
    grouped = _grouped(ours)
    hidden, rest = _split(ref)
    separate = [library.Muon(hidden, lr=0.02, backend="numpy"),
                library.AdamW(rest, lr=1e-2, betas=(0.9, 0.95), backend="numpy")]
    first = _train(ours, [grouped], 1)
    last = _train(ours, [grouped], 15, seed=2)
    _train(ref, separate, 1)
    _train(ref, separate, 15, seed=2)
    _same(ours, ref)
    assert last < first
    assert len(grouped.state) == len(list(ours.parameters()))
    assert set(grouped.state[_split(ours)[0][0]]) == {"step", "momentum_buffer"}


def test_checkpoint_resumes_bit_exactly_and_names_each_groups_optimizer():
    model, other = _model(), _model()
    opt = _grouped(model)
    _train(model, [opt], 3)
    other.load_state_dict(model.state_dict())
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    assert [g["optimizer"] for g in state["param_groups"]] == ["Muon", "AdamW"]
    resumed = _grouped(other)
    resumed.load_state_dict(state)
    _train(model, [opt], 4, seed=5)
    _train(other, [resumed], 4, seed=5)
    _same(model, other)


def test_a_checkpoint_of_another_arrangement_is_refused_and_changes_nothing():
    model = _model()
    opt = _grouped(model)
    _train(model, [opt], 2)
    state = copy.deepcopy(opt.state_dict())
    hidden, rest = _split(_model())
    swapped = GroupedOptimizer([{"params": hidden, "optimizer": library.AdamW},
                                {"params": rest, "optimizer": library.AdamW}])
    with pytest.raises(ValueError, match="param group 0 of the checkpoint was stepped by Muon"):
        swapped.load_state_dict(state)
    assert len(swapped.state) == 0
    target = _grouped(_model())
    broken = copy.deepcopy(state)
    last = max(broken["state"])
    del broken["state"][last]["exp_avg"]  # the AdamW part is bad: the Muon part is not loaded
    with pytest.raises(KeyError, match="exp_avg"):
        target.load_state_dict(broken)
    assert len(target.state) == 0


def test_lr_schedulers_reach_every_group():
    model = _model()
    opt = _grouped(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train(model, [opt], 1)
    sched.step()
    assert [inner.param_groups[0]["lr"] for inner in opt.optimizers] == [0.01, 5e-3]
    assert opt.param_groups[0] is opt.optimizers[0].param_groups[0]


def test_a_step_that_raises_changes_nothing():
    model = _model()
    opt = _grouped(model)
    _train(model, [opt], 2)
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    loss = model(torch.randn(4, 6)).sum()
    opt.zero_grad()
    loss.backward()
    _, rest = _split(model)
    rest[-1].grad.data = torch.zeros(rest[-1].numel() + 1)  # the last (AdamW) group's
    with pytest.raises(RuntimeError, match="shape"):
        opt.step()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert str(opt.state_dict()) == str(state)


def test_torch_optim_classes_may_run_a_group():
    model = _model()
    hidden, rest = _split(model)
    opt = GroupedOptimizer([{"params": hidden, "optimizer": library.Muon, "lr": 0.02},
                            {"params": rest, "optimizer": torch.optim.SGD, "lr": 0.1}])
    first = _train(model, [opt], 1)
    assert _train(model, [opt], 10) < first
    assert [g["optimizer"] for g in opt.state_dict()["param_groups"]] == ["Muon", "SGD"]


def test_copies_and_pickles():
    model = _model()
    opt = _grouped(model)
    _train(model, [opt], 2)
    twin = copy.deepcopy((model, opt))
    _train(model, [opt], 2, seed=9)
    _train(twin[0], [twin[1]], 2, seed=9)
    _same(model, twin[0])
    again = pickle.loads(pickle.dumps((model, opt)))
    assert len(again[1].state) == len(opt.state)
    assert "Muon" in repr(opt) and "AdamW" in repr(opt)


@pytest.mark.parametrize("groups, error, message", [
    (lambda h, r: [{"params": h}], ValueError, "needs an 'optimizer'"),
    (lambda h, r: [{"params": h, "optimizer": "Muon"}], TypeError, "Optimizer class"),
    (lambda h, r: h, TypeError, "param group dicts"),
    (lambda h, r: [], TypeError, "non-empty"),
    (lambda h, r: [{"params": h, "optimizer": library.Muon},
                   {"params": h[:1], "optimizer": library.AdamW}], ValueError,
     "more than one parameter group"),
    (lambda h, r: [{"params": r, "optimizer": library.Muon}], ValueError,
     "Muon only supports 2D parameters"),
    (lambda h, r: [{"params": h, "optimizer": library.Muon, "lr": -1}], ValueError,
     "Learning rate"),
])
def test_mistakes_are_named(groups, error, message):
    hidden, rest = _split(_model())
    with pytest.raises(error, match=message):
        GroupedOptimizer(groups(hidden, rest))


def test_a_group_may_be_empty():
    """As a rank's share of a group is under ZeroRedundancyOptimizer when the group has fewer
    parameters than ranks (tests/test_distributed_matrix.py runs that)."""
    model = _model()
    _, rest = _split(model)
    opt = GroupedOptimizer([{"params": [], "optimizer": library.Muon, "lr": 0.02},
                            {"params": rest, "optimizer": library.AdamW, "lr": 1e-2}])
    before = [p.detach().clone() for p in rest]
    _train(model, [opt], 1)
    assert opt.param_groups[0]["params"] == [] and opt.param_groups[0]["lr"] == 0.02
    assert all(not torch.equal(p, q) for p, q in zip(rest, before))
    again = GroupedOptimizer([{"params": [], "optimizer": library.Muon, "lr": 1.0},
                              {"params": rest, "optimizer": library.AdamW, "lr": 1.0}])
    again.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert again.param_groups[0]["lr"] == 0.02


def test_param_groups_stay_the_inner_optimizers_own_after_loading():
    """A checkpoint's hypers are what the groups show, and a change to a group (an lr
    scheduler's) reaches the optimizer that steps it, after load_state_dict as before."""
    model = _model()
    opt = _grouped(model)
    _train(model, [opt], 1)
    again_model = _model()
    again_model.load_state_dict(model.state_dict())
    again = _grouped(again_model)
    for group in again.param_groups:
        group["lr"] = 1.0
    again.load_state_dict(copy.deepcopy(opt.state_dict()))
    for group, inner in zip(again.param_groups, again.optimizers, strict=True):
        assert group is inner.param_groups[0]
    assert [g["lr"] for g in again.param_groups] == [0.02, 1e-2]
    scheduler = torch.optim.lr_scheduler.LambdaLR(again, lambda epoch: 0.5)
    assert [inner.param_groups[0]["lr"] for inner in again.optimizers] == [0.01, 5e-3]
    del scheduler
