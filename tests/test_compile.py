"""torch.compile of a training step that calls ``opt.step()`` (issue 11, item 6): the step
sits behind a clean graph break (torch's lazy torch._dynamo.disable), so the compiled step
gives the eager step's results, for every bundled optimizer and for a program using
``where``, and compiles nothing new after its first call (counted with dynamo's counters, not
timed). The NumPy back end runs every case; the Triton back end (through its interpreter)
the reduction-heavy ones.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dynamo = pytest.importorskip("torch._dynamo")

import optdsl  # noqa: E402
from optdsl import library  # noqa: E402

STEPS = 4
WHERE = """
optimizer Clipped "sign-clipped SGD: a program using where"
hyper lr = 0.05
state m = 0
m = where(abs(g) > 1, 0.9 * m + g / abs(g), 0.9 * m + g)
w = where(m != 0, w - lr * m, w)
"""


def required(prog) -> dict:
    return {name: 0.1 for name, spec in prog.hypers.items() if spec.required}


def _train(prog, backend: str, compiled: bool):
    """Parameters after STEPS steps, and dynamo's (graphs, frames) counts after each."""
    torch.manual_seed(0)
    bias = not any(r.per_parameter for r in prog.requirements)  # (Muon: matrices only)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6, bias=bias), torch.nn.Tanh(),
                                torch.nn.Linear(6, 1, bias=bias))
    opt = prog.optimizer(model.parameters(), backend=backend, **required(prog))
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=gen), torch.randn(8, 1, generator=gen))
               for _ in range(STEPS)]

    def step(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    run = torch.compile(step, backend="eager") if compiled else step
    counts = []
    stats = dynamo.utils.counters
    for x, y in batches:
        run(x, y)
        counts.append((stats["stats"]["unique_graphs"], stats["frames"]["total"]))
    return [p.detach().clone() for p in model.parameters()], counts


def _check(prog, backend: str) -> None:
    dynamo.reset()
    dynamo.utils.counters.clear()
    want, _ = _train(prog, backend, compiled=False)
    got, counts = _train(prog, backend, compiled=True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert counts[0][0] >= 1  # the forward and backward were compiled
    assert all(c == counts[0] for c in counts[1:]), counts  # and nothing after warm-up


# (SparseAdam takes sparse gradients only)
DENSE = [n for n in library.STEPWISE if not library.program(n).sparse.only]


@pytest.mark.parametrize("name", DENSE)
def test_compiled_training_step_numpy(name):
    _check(library.program(name), "numpy")


def test_compiled_training_step_of_a_program_using_where():
    _check(optdsl.compile(WHERE), "numpy")


@pytest.mark.parametrize("name", ["Adam", "AdamWClip", "LAMB"])
def test_compiled_training_step_triton(name, monkeypatch, tmp_path):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    _check(library.program(name), "triton")


def test_the_step_is_behind_a_graph_break():
    dynamo.reset()
    dynamo.utils.counters.clear()
    _train(library.program("SGD"), "numpy", compiled=True)
    reasons = " ".join(dynamo.utils.counters["graph_break"])
    assert "DslOptimizer._step_behind_graph_break" in reasons
