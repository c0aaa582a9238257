"""Programs copied from the docs accept lr = 0 (issue 16, item 3).

Hugging Face's linear warmup starts at lr = 0, ``CosineAnnealingLR(eta_min=0)`` ends there
and ``torch.distributed.checkpoint`` steps once with lr = 0; a program that declares
``lr in (0, inf)`` raises ``Invalid lr: 0.0`` in each. Every shipped ``.opt`` file (examples/
and the bundled library) and every ```opt block of the docs and the README that has an
``lr`` is built with lr = 0 and stepped, and stepped again under a warmup that starts at 0.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import optdsl

ROOT = Path(__file__).resolve().parent.parent
FILES = [*sorted((ROOT / "examples").glob("*.opt")),
         *sorted((ROOT / "optdsl" / "library").glob("*.opt"))]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "examples/README.md"]


def _doc_programs() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        blocks = re.findall(r"```opt\n(.*?)```", doc.read_text(), re.DOTALL)
        found += [(f"{doc.name}-{index}", block) for index, block in enumerate(blocks)]
    return found


CASES = [(path.relative_to(ROOT).as_posix(), path.read_text()) for path in FILES]
CASES += _doc_programs()
# Twins of torch.optim classes that refuse lr = 0 themselves (torch.optim.SparseAdam checks
# `0.0 < lr`): the twin keeps torch's contract and its message.
REFUSES_LR_ZERO = {"optdsl/library/sparse_adam.opt"}


def _value_inside(spec) -> float | tuple[float, ...]:
    """A value for a required hyper that its interval (if any) accepts."""
    candidates = (0.5, 0.9, 1.0, 2.0, 1e-3, -0.5)
    value = next(x for x in candidates if spec.interval is None or spec.interval.contains(x))
    return tuple(value for _ in spec.parts) if spec.parts else value


def _build(source: str, lr: float) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    prog = optdsl.compile(source)
    hypers = {name: _value_inside(spec) for name, spec in prog.hypers.items()
              if spec.required and name != "lr"}
    w = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    if prog.library_work or any(r.per_parameter for r in prog.requirements):  # matrices
        w = w.reshape(2, 2)
    w.requires_grad_()
    return w, prog.optimizer([w], lr=lr, **hypers)


def _step(w: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    slope = torch.tensor([0.3, -0.1, 0.2, 0.4], dtype=torch.float64).reshape(w.shape)
    if getattr(opt, "program", None) is not None and getattr(opt.program, "closure_driven",
                                                             False):
        def closure():  # (a graph for hvp(): Newton's)
            opt.zero_grad()
            loss = 0.5 * (w * w).sum() + (slope * w).sum()
            loss.backward(create_graph=True)
            return loss

        opt.step(closure)
    else:
        w.grad = slope
        opt.step()
    assert all(math.isfinite(x) for x in w.detach().flatten().tolist())


def test_the_cases_are_there():
    names = [name for name, _ in CASES]
    assert "examples/adam.opt" in names and "optdsl/library/adam.opt" in names
    assert sum(name.startswith("cookbook.md-") for name in names) >= 15


@pytest.mark.parametrize("name,source", CASES, ids=[name for name, _ in CASES])
def test_accepts_lr_zero(name: str, source: str) -> None:
    prog = optdsl.compile(source)
    if "lr" not in prog.hypers and name.startswith("language.md-") and \
            getattr(prog, "closure_driven", False):
        pytest.skip("a closure-driven example of the language reference without an lr")
    assert "lr" in prog.hypers  # every shipped program has one
    if name in REFUSES_LR_ZERO:
        with pytest.raises(ValueError, match="Invalid learning rate: 0.0"):
            _build(source, lr=0.0)
        return
    lr_line = re.search(r"^hyper\b.*\blr\b.*$", source, re.MULTILINE)
    assert not (lr_line and "(0, inf)" in lr_line.group()), lr_line.group()
    w, opt = _build(source, lr=0.0)  # torch.distributed.checkpoint's first step
    _step(w, opt)
    w, opt = _build(source, lr=1e-2)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: step / 10)  # starts at 0
    assert opt.param_groups[0]["lr"] == 0.0
    for _ in range(3):
        _step(w, opt)
        warmup.step()
