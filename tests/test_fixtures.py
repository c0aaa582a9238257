"""Checkpoints written by an earlier version of optdsl still load and continue bit for bit.

tests/fixtures/checkpoints/ holds, for every bundled optimizer and both back ends, a
state_dict after three steps, the parameters then, and what two more steps gave (written by
tests/fixtures/make_checkpoints.py on 2026-12-01, before the compiler's middle was
reorganised); plus bf16 runs with master weights and stochastic-rounding seeds, and a whole
optimizer pickled with ``torch.save``. A refactor must keep every one of them loading into
today's code and stepping to the same bits.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import make_checkpoints as mk  # noqa: E402

FIXTURES = sorted(mk.OUT.glob("*-*-*.pt"))
CASES = [p for p in FIXTURES if not p.name.startswith("pickled-")]


def test_fixtures_exist():
    assert len(CASES) >= 2 * 17 + 4, [p.name for p in CASES]
    assert (mk.OUT / "pickled-Adam-numpy.pt").is_file()


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_checkpoint_continues_identically(path, monkeypatch, tmp_path):
    from optdsl import library

    data = torch.load(path, weights_only=True)
    if data["backend"] == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    name = data["name"]
    cls = getattr(library, name)
    prog = library.program(name)
    params = [p.clone().requires_grad_() for p in data["params_before"]]
    torch.manual_seed(data["seed"])
    opt = mk.build(cls, prog, params, data["backend"], **data["options"])
    opt.load_state_dict(data["state_dict"])
    mk.run_steps(opt, params, mk.STEPS_BEFORE, mk.STEPS_AFTER)
    for got, want in zip(params, data["params_after"]):
        assert got.dtype == want.dtype
        assert torch.equal(got.detach(), want), (got - want).abs().max()
    state = opt.state_dict()["state"]
    for index, entry in data["state_after"]["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(state[index][key]), torch.as_tensor(value)), \
                (index, key)


def test_pickled_optimizer_continues_identically():
    data = torch.load(mk.OUT / "pickled-Adam-numpy.pt", weights_only=True)
    opt = torch.load(io.BytesIO(data["blob"]), weights_only=False)
    params = [p for g in opt.param_groups for p in g["params"]]
    mk.run_steps(opt, params, mk.STEPS_BEFORE, mk.STEPS_AFTER)
    for got, want in zip(params, data["params_after"]):
        assert torch.equal(got.detach(), want)
