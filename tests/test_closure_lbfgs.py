"""optdsl.library.LBFGS is a twin of torch.optim.LBFGS: the same iterates on deterministic
problems (float64, within 1e-10; with and without the strong-Wolfe line search, histories
that fill and drop), torch's keywords, defaults, validation messages and state_dict layout
(everything on the first parameter, no per-parameter step), checkpoints both ways, one param
group, and the same on the Triton back end (through its interpreter)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import optdsl
from optdsl import library
from optdsl.library import LBFGS

TOL = 1e-10
KEYS = {"func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
        "prev_flat_grad", "prev_loss", "al"}


def quadratic(params):
    """0.5 sum a w^2 + b.w + a coupling term, over several tensors (float64)."""
    gen = torch.Generator().manual_seed(0)
    coeffs = [(torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5,
               torch.randn(p.shape, generator=gen, dtype=torch.float64)) for p in params]

    def loss():
        total = sum((0.5 * a * p * p + b * p).sum() for p, (a, b) in zip(params, coeffs))
        return total + 0.1 * (params[0].sum() * params[-1].sum()) ** 2
    return loss


def logistic(params):
    """Logistic regression of a fixed random data set (w: params[0], bias: params[1])."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, params[0].numel(), generator=gen, dtype=torch.float64)
    y = (torch.rand(64, generator=gen, dtype=torch.float64) > 0.5).to(torch.float64)

    def loss():
        logits = x @ params[0].reshape(-1) + params[1].sum()
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y) \
            + 1e-3 * (params[0] ** 2).sum()
    return loss


def make_params(shapes=((7,), (3, 4), (5,)), seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64))
            for s in shapes]


def closure_for(opt, params, problem):
    loss_fn = problem(params)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    return closure


def pair(problem=quadratic, shapes=((7,), (3, 4), (5,)), **kwargs):
    """torch.optim.LBFGS and the twin on copies of the same parameters."""
    out = []
    for cls in (torch.optim.LBFGS, LBFGS):
        params = make_params(shapes)
        opt = cls(params, **kwargs)
        out.append((params, opt, closure_for(opt, params, problem)))
    return out


def assert_same(ref, got, tol=TOL):
    (pr, optr, _), (pg, optg, _) = ref, got
    for a, b in zip(pr, pg):
        assert (a - b).abs().max().item() <= tol * max(1.0, a.abs().max().item())
    sr, sg = optr.state[pr[0]], optg.state[pg[0]]
    assert set(sr) == set(sg)
    for key in ("func_evals", "n_iter"):
        assert sr[key] == sg[key], key
        assert type(sg[key]) is int
    if "old_dirs" in sr:
        assert len(sr["old_dirs"]) == len(sg["old_dirs"]) == len(sg["ro"])
        for a, b in zip(sr["old_stps"], sg["old_stps"]):
            assert (a - b).abs().max().item() <= tol * max(1.0, a.abs().max().item())
        assert abs(float(sr["t"]) - float(sg["t"])) <= tol * max(1.0, abs(float(sr["t"])))
        assert (sr["d"] - sg["d"]).abs().max().item() <= tol * max(1.0, sr["d"].abs().max())


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("problem", [quadratic, logistic], ids=["quadratic", "logistic"])
def test_same_iterates_as_torch(problem, line_search_fn):
    shapes = ((7,), (3, 4), (5,)) if problem is quadratic else ((6,), (1,))
    ref, got = pair(problem, shapes, history_size=3, max_iter=4,
                    line_search_fn=line_search_fn, lr=1 if line_search_fn else 0.5)
    for _ in range(6):
        lr_, lg = ref[1].step(ref[2]), got[1].step(got[2])
        assert abs(lr_.item() - lg.item()) <= TOL
        assert_same(ref, got)
    assert len(got[1].state[got[0][0]]["old_dirs"]) == 3  # the history filled and dropped


def test_state_layout_is_torchs():
    ref, got = pair(history_size=5, max_iter=3)
    for side in (ref, got):
        side[1].step(side[2])
        side[1].step(side[2])
    (pr, optr, _), (pg, optg, _) = ref, got
    assert set(optg.state) == {pg[0]} and set(optr.state) == {pr[0]}  # the first only
    state = optg.state[pg[0]]
    assert set(state) == KEYS == set(optr.state[pr[0]])
    assert "step" not in state
    total = sum(p.numel() for p in pg)
    assert state["d"].shape == (total,) and state["prev_flat_grad"].shape == (total,)
    assert all(t.shape == (total,) for t in state["old_dirs"] + state["old_stps"])
    assert len(state["al"]) == 5 and state["al"][-1] is None
    assert isinstance(state["prev_loss"], float)
    assert optg.defaults == optr.defaults
    sd_r, sd_g = optr.state_dict(), optg.state_dict()
    assert sd_r["param_groups"] == sd_g["param_groups"]


def test_a_step_at_a_stationary_point_keeps_only_the_counters():
    for cls in (torch.optim.LBFGS, LBFGS):
        p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        opt = cls([p])
        loss = opt.step(lambda p=p: (p * 0).sum())  # no gradient: optimal at once
        assert float(loss) == 0.0
        assert opt.state[p] == {"func_evals": 1, "n_iter": 0}


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_checkpoints_move_both_ways(line_search_fn, tmp_path):
    for first, second in ((torch.optim.LBFGS, LBFGS), (LBFGS, torch.optim.LBFGS)):
        kwargs = {"history_size": 3, "max_iter": 3, "line_search_fn": line_search_fn}
        params = make_params()
        opt = first(params, **kwargs)
        closure = closure_for(opt, params, quadratic)
        for _ in range(2):
            opt.step(closure)
        torch.save(opt.state_dict(), tmp_path / "sd.pt")
        resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
        resumed = second(resumed_params, **kwargs)
        resumed.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=False))
        other = closure_for(resumed, resumed_params, quadratic)
        for _ in range(3):  # both carry on: the same iterates
            opt.step(closure)
            resumed.step(other)
            for a, b in zip(params, resumed_params):
                assert (a - b).abs().max().item() <= TOL


def test_one_param_group_and_torchs_messages():
    a, b = make_params(((2,), (3,)))
    for cls in (torch.optim.LBFGS, LBFGS):
        with pytest.raises(ValueError, match=r"doesn't support per-parameter options "
                                             r"\(parameter groups\)"):
            cls([{"params": [a]}, {"params": [b]}])
        with pytest.raises(ValueError, match="Invalid learning rate: -1"):
            cls([a], lr=-1)
        with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
            cls([a], lr=torch.tensor([1.0, 2.0]))
    opt = LBFGS([a])
    opt.add_param_group({"params": [b]})
    with pytest.raises(AssertionError, match="Expected exactly one param_group, but got 2"):
        opt.step(lambda: (a * a).sum())


def test_keywords_by_position_and_max_eval_derived_as_torch():
    p = make_params(((3,),))
    for cls in (torch.optim.LBFGS, LBFGS):
        assert cls(p, 0.5, 8).defaults["max_eval"] == 10  # max_iter * 5 // 4
        assert cls(p, max_eval=None, max_iter=7).defaults["max_eval"] == 8
        assert cls(p, max_eval=3).defaults["max_eval"] == 3
    assert LBFGS.positional == ("lr", "max_iter", "max_eval", "tolerance_grad",
                                "tolerance_change", "history_size", "line_search_fn")


def test_stepped_without_a_closure_is_a_clear_error():
    (p,) = make_params(((3,),))
    opt = LBFGS([p])
    with pytest.raises(TypeError) as info:
        opt.step()
    assert isinstance(info.value, optdsl.DslError)
    message = str(info.value)
    assert "evaluate() calls the closure" in message and "opt.step(closure)" in message
    assert info.value.filename.endswith("lbfgs.opt") and info.value.line > 1
    assert "^" in message
    assert opt.state[p] == {}  # nothing happened


def test_a_choice_outside_its_choices_is_refused():
    (p,) = make_params(((3,),))
    with pytest.raises(ValueError, match=r"Invalid line_search_fn value: 'armijo'"):
        LBFGS([p], line_search_fn="armijo")


def test_pickles_and_deepcopies():
    _, opt, closure = pair(history_size=3, max_iter=3)[1]
    opt.step(closure)
    clone = pickle.loads(pickle.dumps(opt))
    assert set(next(iter(clone.state.values()))) == KEYS
    twin = copy.deepcopy(opt)
    assert twin.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_is_registered_as_closure_driven():
    assert "LBFGS" in library.PROGRAMS and "LBFGS" in library.CLOSURE_DRIVEN
    assert library.program("LBFGS").closure_driven
    assert set(library.CLOSURE_DRIVEN) == {n for n in library.PROGRAMS
                                           if getattr(library.program(n), "closure_driven",
                                                      False)}
    assert set(library.STEPWISE) | set(library.CLOSURE_DRIVEN) == set(library.PROGRAMS)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_triton_back_end_matches_torch(line_search_fn, monkeypatch, tmp_path):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    shapes = ((5,), (2, 3))
    ref = [make_params(shapes)]
    ref.append(torch.optim.LBFGS(ref[0], history_size=2, max_iter=3,
                                 line_search_fn=line_search_fn))
    ref.append(closure_for(ref[1], ref[0], quadratic))
    got = [make_params(shapes)]
    got.append(LBFGS(got[0], history_size=2, max_iter=3, line_search_fn=line_search_fn,
                     backend="triton"))
    got.append(closure_for(got[1], got[0], quadratic))
    assert got[1].backend == "triton"
    for _ in range(2):
        ref[1].step(ref[2])
        got[1].step(got[2])
    assert_same(ref, got, tol=1e-9)


def test_c_back_end_matches_torch(monkeypatch, tmp_path):
    """The phases compiled to C (one shared object each) give torch's iterates too."""
    from optdsl.runtime import c_build

    if c_build.unavailable():
        pytest.skip("no C compiler")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    shapes = ((5,), (2, 3))
    ref = [make_params(shapes)]
    ref.append(torch.optim.LBFGS(ref[0], history_size=2, max_iter=3,
                                 line_search_fn="strong_wolfe"))
    ref.append(closure_for(ref[1], ref[0], quadratic))
    got = [make_params(shapes)]
    got.append(LBFGS(got[0], history_size=2, max_iter=3, line_search_fn="strong_wolfe",
                     backend="c"))
    got.append(closure_for(got[1], got[0], quadratic))
    assert got[1].backend == "c"
    for _ in range(2):
        ref[1].step(ref[2])
        got[1].step(got[2])
    assert_same(ref, got, tol=1e-9)


def test_auto_runs_cpu_tensors_on_numpy():
    """backend="auto" puts a small closure-driven step's phases on NumPy for CPU tensors
    (views kept on each vector), not on C, which "auto" picks for other programs (and for
    large groups: tests/test_closure_c_phases.py)."""
    w = torch.nn.Parameter(torch.zeros(3))
    assert library.LBFGS([w]).backend == "numpy"
    assert library.LBFGS([w], backend="numpy").backend == "numpy"


def test_lr_zero_with_strong_wolfe_leaves_the_parameters():
    """A warm-up's first step (lr = 0) with the line search moves nothing; torch.optim.LBFGS
    raises ZeroDivisionError there (its cubic interpolation divides by the zero bracket)."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = library.LBFGS([w], lr=0.0, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert w.detach().tolist() == [1.0, -2.0]
