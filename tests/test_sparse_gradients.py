"""Sparse (COO) gradients: SparseAdam, and SGD and Adagrad where torch.optim takes them,
against torch.optim with the same sparse gradients.

- 30 steps, two param groups with different hypers (lr halved halfway, as a scheduler does),
  parameters of several shapes (an embedding table, a 1-D vector, a hybrid tensor whose
  gradient has two sparse dimensions and a dense one), uncoalesced gradients (duplicate
  indices), gradients with no values, and parameters that miss their gradient on some steps;
  float64 (relative error 1e-10) and float32 (1e-5); the NumPy back end and the Triton back
  end through its interpreter (TRITON_INTERPRET=1 per test);
- checkpoints both ways between each twin and its torch namesake;
- what the step touches: only the rows the gradient holds (the others keep their values bit
  for bit), gathered into scratch of the gradient's size (never a dense gradient), and no view
  of that scratch kept by the runner;
- the refusals, in torch's words, before anything is written: dense gradients for
  SparseAdam, sparse ones for optimizers that do not take them (with the reduction that
  prevents it), and the options torch refuses with sparse gradients.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch

from optdsl import library
from optdsl.runtime import c_build
from optdsl.runtime.c_runner import CRunner
from optdsl.runtime.numpy_runner import NumpyRunner

HOST_BACKENDS = ["numpy"] + ([] if c_build.unavailable() else ["c"])

STEPS = 30
# (shape, sparse dimensions of its gradient)
SHAPES = [((10, 4), 1), ((7,), 1), ((3, 4, 2), 2), ((6, 3), 1), ((5, 2), 1)]
SPLIT = 3
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

CONFIGS = {
    "SparseAdam": [
        ("plain", dict(lr=0.01), {}, dict(lr=0.005, betas=(0.8, 0.99))),
        ("maximize_eps", dict(lr=0.02, maximize=True), {}, dict(lr=0.01, eps=1e-3,
                                                                maximize=False)),
    ],
    "SGD": [
        ("plain", dict(lr=0.05), {}, dict(lr=0.02)),
        ("maximize", dict(lr=0.05, maximize=True), {}, dict(lr=0.02, dampening=0.3,
                                                            maximize=False)),
    ],
    "Adagrad": [
        ("plain", dict(lr=0.1), {}, dict(lr=0.05)),
        ("lr_decay_accumulator_maximize",
         dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.3, eps=1e-6), {},
         dict(lr=0.05, maximize=True)),
    ],
}
CASES = [pytest.param(name, kw, g0, g1, id=f"{name}-{cid}")
         for name, configs in CONFIGS.items() for cid, kw, g0, g1 in configs]
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


@pytest.fixture(autouse=True)
def _quiet_and_private(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "optdsl-cache"))
    with warnings.catch_warnings():  # torch's note on sparse invariant checks
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture
def triton_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def has_grad(index: int, step: int) -> bool:
    """Parameter 2 misses its first two steps and every fourth one; parameter 4 starts at
    step 7 and misses every fifth one after."""
    if index == 2:
        return step >= 2 and step % 4 != 1
    if index == 4:
        return step >= 7 and step % 5 != 3
    return True


class SparseProblem:
    """Initial values and, per step and parameter, a sparse gradient: random indices into
    the sparse dimensions (with duplicates, so uncoalesced), values of scales 1e-2 to 3, and
    on some steps no values at all."""

    def __init__(self, steps: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        self.init = [torch.randn(shape, generator=gen, dtype=f64) for shape, _ in SHAPES]
        self.grads = []
        for step in range(steps):
            row = []
            for i, (shape, sparse_dim) in enumerate(SHAPES):
                nnz = 0 if (step + i) % 9 == 4 else int(torch.randint(1, 7, (), generator=gen))
                index = torch.stack([torch.randint(0, n, (nnz,), generator=gen)
                                     for n in shape[:sparse_dim]])
                scale = 10.0 ** (torch.rand((nnz, *shape[sparse_dim:]), generator=gen,
                                            dtype=f64) * 2.5 - 2.0)
                values = torch.randn((nnz, *shape[sparse_dim:]), generator=gen,
                                     dtype=f64) * scale
                row.append((index, values, shape))
            self.grads.append(row)

    def params(self, dtype: torch.dtype) -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(v.to(dtype).clone()) for v in self.init]

    def set_grads(self, params, step: int) -> None:
        for i, p in enumerate(params):
            index, values, shape = self.grads[step][i]
            p.grad = (torch.sparse_coo_tensor(index, values.to(p.dtype), shape)
                      if has_grad(i, step) else None)


def groups(params, g0: dict, g1: dict) -> list[dict]:
    return [dict(params=list(params[:SPLIT]), **g0), dict(params=list(params[SPLIT:]), **g1)]


def rel_err(actual, expected) -> float:
    a = torch.as_tensor(actual).detach().to(torch.float64)
    e = torch.as_tensor(expected).detach().to(torch.float64)
    assert a.shape == e.shape
    diff = (a - e).abs().max().item() if e.numel() else 0.0
    return 0.0 if diff == 0.0 else diff / max(e.abs().max().item(), 1e-300)


def check_close(twin_params, ref_params, tol: float, where: str) -> None:
    for i, (pt, pr) in enumerate(zip(twin_params, ref_params)):
        err = rel_err(pt, pr)
        assert err <= tol, f"{where}: param {i}: rel err {err:.3e} > {tol:g}"


def check_state(twin, ref, tol: float, where: str) -> None:
    ref_state, twin_state = ref.state_dict()["state"], twin.state_dict()["state"]
    for index, entries in ref_state.items():
        live = {k: v for k, v in entries.items() if v is not None}
        if not live or ("step" in live and float(live["step"]) == 0 and index not in twin_state):
            continue  # torch.optim.SGD keeps None; torch.optim.Adagrad makes state early
        for key, value in live.items():
            if key == "step" and type(ref).__name__ == "SGD":
                continue
            got = twin_state[index][key]
            if key == "step":
                assert float(got) == float(value), f"{where}: param {index}: step"
                continue
            err = rel_err(got, value)
            assert err <= tol, f"{where}: param {index}: {key}: rel err {err:.3e}"


def run_pair(name, kwargs, g0, g1, dtype, backend="numpy", steps=STEPS):
    problem = SparseProblem(steps)
    p_ref, p_twin = problem.params(dtype), problem.params(dtype)
    ref = getattr(torch.optim, name)(groups(p_ref, g0, g1), **kwargs)
    twin = getattr(library, name)(groups(p_twin, g0, g1), backend=backend, **kwargs)
    for step in range(steps):
        if step == steps // 2:
            for opt in (ref, twin):
                for group in opt.param_groups:
                    group["lr"] *= 0.5
        for opt, ps in ((ref, p_ref), (twin, p_twin)):
            opt.zero_grad()
            problem.set_grads(ps, step)
            opt.step()
        check_close(p_twin, p_ref, TOL[dtype], f"{name} step {step + 1}")
    return ref, twin, p_ref, p_twin


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kwargs, g0, g1", CASES)
def test_matches_torch(name, kwargs, g0, g1, dtype):
    with default_dtype(dtype):
        ref, twin, _, _ = run_pair(name, kwargs, g0, g1, dtype)
        check_state(twin, ref, TOL[dtype], "final state")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_interpreter_matches_numpy(name, triton_interpreter):
    """The same generated step on the gathered rows: the interpreted Triton kernels give the
    NumPy step's numbers (and torch's)."""
    _, kwargs, g0, g1 = CONFIGS[name][-1]
    _, numpy_twin, _, p_numpy = run_pair(name, kwargs, g0, g1, torch.float32, steps=8)
    _, triton_twin, _, p_triton = run_pair(name, kwargs, g0, g1, torch.float32, "triton",
                                           steps=8)
    check_close(p_triton, p_numpy, 1e-6, name)
    check_state(triton_twin, numpy_twin, 1e-6, name)


@pytest.mark.skipif(c_build.unavailable() is not None, reason="no C compiler")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_c_backend_matches_numpy(name):
    """The compiled C step on the gathered rows gives the NumPy step's bits."""
    _, kwargs, g0, g1 = CONFIGS[name][-1]
    _, numpy_twin, _, p_numpy = run_pair(name, kwargs, g0, g1, torch.float32, steps=8)
    _, c_twin, _, p_c = run_pair(name, kwargs, g0, g1, torch.float32, "c", steps=8)
    check_close(p_c, p_numpy, 0.0, name)
    check_state(c_twin, numpy_twin, 0.0, name)


N_BEFORE, N_AFTER = 5, 12


@pytest.mark.parametrize("direction", ["torch_to_twin", "twin_to_torch"])
@pytest.mark.parametrize("name, kwargs, g0, g1", CASES)
def test_checkpoint_round_trip(name, kwargs, g0, g1, direction):
    """One side runs N_BEFORE steps; its state_dict loads into a fresh optimizer of the other
    kind (without the group overrides, which come back from the checkpoint); both go on."""
    Twin, Ref = getattr(library, name), getattr(torch.optim, name)
    first, second = (Ref, Twin) if direction == "torch_to_twin" else (Twin, Ref)
    tol = TOL[torch.float64]
    with default_dtype(torch.float64):
        problem = SparseProblem(N_BEFORE + N_AFTER)
        p_first = problem.params(torch.float64)
        opt_first = first(groups(p_first, g0, g1), **kwargs)
        for step in range(N_BEFORE):
            opt_first.zero_grad()
            problem.set_grads(p_first, step)
            opt_first.step()
        p_second = [torch.nn.Parameter(p.detach().clone()) for p in p_first]
        opt_second = second(groups(p_second, {}, {}), **kwargs)
        opt_second.load_state_dict(copy.deepcopy(opt_first.state_dict()))
        for step in range(N_BEFORE, N_BEFORE + N_AFTER):
            for opt, ps in ((opt_first, p_first), (opt_second, p_second)):
                opt.zero_grad()
                problem.set_grads(ps, step)
                opt.step()
            check_close(p_second, p_first, tol, f"{direction} step {step + 1}")


# -- what a step touches -----------------------------------------------------------------------

def embedding_grad(rows, dim: int, num: int, dtype=torch.float32):
    index = torch.tensor([rows])
    values = torch.arange(len(rows) * dim, dtype=dtype).reshape(len(rows), dim) / 10 + 1
    return torch.sparse_coo_tensor(index, values, (num, dim))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_only_the_gradients_rows_change(name):
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(50, 3))
    opt = getattr(library, name)([table], lr=0.1)
    before = table.detach().clone()
    table.grad = embedding_grad([4, 9, 4], 3, 50)
    opt.step()
    changed = (table.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [4, 9]
    for key, value in opt.state[table].items():
        if torch.is_tensor(value) and value.dim():
            untouched = torch.ones(50, dtype=torch.bool)
            untouched[[4, 9]] = False
            initial = value[untouched]
            assert torch.equal(initial, torch.full_like(initial, initial[0, 0].item())), key


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_the_gradient_is_never_made_dense(name, backend, monkeypatch):
    """A 200000-row table with a gradient on three rows (one twice): the runner steps 2 rows
    of 8, and no tensor is made dense."""
    seen = []
    runner_class = {"numpy": NumpyRunner, "c": CRunner}[backend]
    original = runner_class.run

    def spy(self, variant, entries, options):
        seen.append([(e.param.numel(), e.grad.numel(), options.transient) for e in entries])
        return original(self, variant, entries, options)

    def refuse(*args, **kwargs):
        raise AssertionError("a sparse tensor was made dense")

    monkeypatch.setattr(runner_class, "run", spy)
    monkeypatch.setattr(torch.Tensor, "to_dense", refuse)
    table = torch.nn.Parameter(torch.zeros(200_000, 8))
    opt = getattr(library, name)([table], lr=0.1, backend=backend)
    table.grad = embedding_grad([7, 123_456, 7], 8, 200_000)
    opt.step()
    assert seen == [[(16, 16, True)]]
    assert (table[7] != 0).all() and (table[123_456] != 0).all()
    assert table.detach().abs().sum(dim=1).count_nonzero() == 2


def test_runner_keeps_no_view_of_the_scratch():
    """The NumPy runner keeps views of dense parameters between steps, but not of the rows
    gathered for a sparse gradient (a new scratch every step would pile up)."""
    dense = torch.nn.Parameter(torch.randn(5))
    table = torch.nn.Parameter(torch.randn(20, 2))
    opt = library.SGD([dense, table], lr=0.1, backend="numpy")
    for step in range(6):
        dense.grad = torch.randn(5)
        table.grad = embedding_grad([step, step + 3], 2, 20)
        opt.step()
    runner = opt._runner_of[1]
    assert len(runner._views) == 1  # the dense parameter's


@pytest.mark.parametrize("name", list(CONFIGS))
def test_embedding_sparse_true_trains_like_torch(name):
    """nn.Embedding(sparse=True) under the twin, a dense layer under Adam, gradients from
    backward, against the same with torch.optim's."""
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Embedding(30, 4, sparse=True),
                                       torch.nn.Linear(4, 1))
    ours, theirs = make(), make()
    theirs.load_state_dict(ours.state_dict())
    runs = []
    for model, lib in ((ours, library), (theirs, torch.optim)):
        runs.append((model, [getattr(lib, name)(model[0].parameters(), lr=0.05),
                             lib.Adam(model[1].parameters(), lr=0.01)]))
    for _ in range(30):
        idx = torch.randint(0, 30, (8,))
        for model, opts in runs:
            for opt in opts:
                opt.zero_grad()
            model(idx).pow(2).sum().backward()
            assert model[0].weight.grad.is_sparse
            for opt in opts:
                opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert rel_err(a, b) <= 1e-5


def test_master_weights_and_bfloat16_states():
    """A bfloat16 table with an fp32 master weight steps the master's rows, and writes them
    rounded into the table; bfloat16 states are gathered and scattered in their dtype."""
    torch.manual_seed(0)
    start = torch.randn(12, 3)
    table = torch.nn.Parameter(start.to(torch.bfloat16))
    ref = torch.nn.Parameter(table.detach().float())
    ours = library.Adagrad([table], lr=0.05, master_weights=True)
    theirs = torch.optim.Adagrad([ref], lr=0.05)
    for step in range(10):
        grad = embedding_grad([step % 12, (step * 5) % 12], 3, 12)
        table.grad = grad.to(torch.bfloat16)
        ref.grad = grad.to(torch.bfloat16).float()
        ours.step()
        theirs.step()
    master = ours.state[table]["master_param"]
    assert rel_err(master, ref) <= 1e-6
    assert torch.equal(table.detach(), master.to(torch.bfloat16))
    small = torch.nn.Parameter(start.clone())
    opt = library.Adagrad([small], lr=0.05, state_dtype=torch.bfloat16)
    small.grad = embedding_grad([1, 2], 3, 12)
    opt.step()
    acc = opt.state[small]["sum"]
    assert acc.dtype == torch.bfloat16
    assert acc[0].abs().sum() == 0 != acc[1].sum()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_an_empty_gradient_counts_a_step_and_changes_nothing(name):
    """As torch.optim.SparseAdam: the step count goes up, nothing else moves."""
    table = torch.nn.Parameter(torch.randn(4, 2))
    before = table.detach().clone()
    opt = getattr(library, name)([table], lr=0.1)
    table.grad = torch.sparse_coo_tensor(torch.empty((1, 0), dtype=torch.int64),
                                         torch.empty((0, 2)), (4, 2))
    opt.step()
    assert torch.equal(table.detach(), before)
    assert float(opt.state[table]["step"]) == 1.0


def test_a_gradient_with_no_sparse_dimension():
    """A sparse tensor with all its dimensions dense holds the whole tensor (or nothing)."""
    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.ones(3))
    grad = torch.sparse_coo_tensor(torch.zeros((0, 1), dtype=torch.int64),
                                   torch.tensor([[1.0, 2.0, 3.0]]), (3,))
    assert grad.sparse_dim() == 0
    ours, theirs = library.Adagrad([p], lr=0.1), torch.optim.Adagrad([q], lr=0.1)
    p.grad, q.grad = grad, grad.clone()
    ours.step()
    theirs.step()
    assert rel_err(p, q) <= 1e-7 and not torch.equal(p.detach(), torch.ones(3))


def test_skip_nonfinite_reads_the_summed_values():
    """skip_nonfinite=True skips a step whose sparse gradient holds inf or NaN, also when
    only the sum of duplicate entries overflows."""
    table = torch.nn.Parameter(torch.ones(4, 2))
    opt = library.Adagrad([table], lr=0.1, skip_nonfinite=True)
    big = torch.tensor([[3e38, 1.0], [3e38, 1.0]])
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 1]]), big, (4, 2))
    opt.step()
    assert opt.skipped_steps == 1 and torch.equal(table.detach(), torch.ones(4, 2))
    table.grad = embedding_grad([1], 2, 4)
    opt.step()
    assert opt.skipped_steps == 1 and not torch.equal(table.detach(), torch.ones(4, 2))


def test_grad_scaler_unscales_sparse_gradients_as_for_torch():
    """torch.amp.GradScaler unscales (and checks) sparse .grad itself for the twins, as for
    torch's non-fused optimizers."""
    results = []
    for lib in (library, torch.optim):
        table = torch.nn.Parameter(torch.ones(6, 2))
        opt = lib.SGD([table], lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for rows in ([1, 2, 1], [0, 5]):
            opt.zero_grad()
            loss = torch.nn.functional.embedding(torch.tensor(rows), table, sparse=True).sum()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        results.append(table.detach())
    assert rel_err(*results) <= 1e-6


# -- refusals, before anything is written --------------------------------------------------------

def two_groups(name, g1: dict, dense_second: bool = False, **kwargs):
    ps = [torch.nn.Parameter(torch.randn(6, 2)) for _ in range(2)]
    opt = getattr(library, name)([{"params": [ps[0]]}, {"params": [ps[1]], **g1}], **kwargs)
    for i, p in enumerate(ps):
        p.grad = torch.randn(6, 2) if (dense_second and i == 1) else embedding_grad([1, 4], 2, 6)
    return opt, ps


REFUSALS = [
    ("SparseAdam", {}, True, {},
     "SparseAdam does not support dense gradients, please consider Adam instead"),
    ("SGD", {"weight_decay": 0.1}, False, {},
     (r"add\(sparse, dense\) is not supported. Use add\(dense, sparse\) instead. \(SGD takes "
      r"sparse gradients when weight_decay == 0; got weight_decay = 0.1 in param group 1\)")),
    ("SGD", {"momentum": 0.9}, False, {}, "SGD with momentum does not support sparse gradients"),
    ("SGD", {}, False, {"fused": True}, "`fused=True` does not support sparse gradients"),
    ("Adagrad", {"weight_decay": 0.1}, False, {},
     "weight_decay option is not compatible with sparse gradients"),
    ("Adam", {}, False, {},
     r"^Adam does not support sparse gradients \(parameter 0 of param group 0\)$"),
    ("LAMB", {}, False, {},
     (r"LAMB does not support sparse gradients \(parameter 0 of param group 0\): its step is "
      r"not element-wise \(`norm\(\)` at line \d+\)")),
]


@pytest.mark.parametrize("name, g1, dense_second, kwargs, message", REFUSALS,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSALS)])
def test_refusals_in_torchs_words_change_nothing(name, g1, dense_second, kwargs, message):
    opt, ps = two_groups(name, g1, dense_second, **kwargs)
    before = [p.detach().clone() for p in ps]
    with pytest.raises(RuntimeError, match=message):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(ps, before))
    assert not any(opt.state[p] for p in ps)


def test_other_sparse_gradients_are_refused():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = library.SGD([p], lr=0.1)
    p.grad = embedding_grad([1], 3, 4)
    p.grad.data = embedding_grad([1], 3, 5)  # (autograd's own check is passed by)
    with pytest.raises(RuntimeError, match=r"shape \(5, 3\).*shape \(4, 3\)"):
        opt.step()
    z = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
    opt = library.SGD([z], lr=0.1)
    z.grad = torch.randn(4, 3, dtype=torch.complex64).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients of complex parameters"):
        opt.step()


# -- SparseAdam ---------------------------------------------------------------------------------

def test_sparse_parameters_are_refused_at_construction():
    for params in ([torch.zeros(3, layout=torch.sparse_coo)],
                   [{"params": [torch.zeros(3, layout=torch.sparse_coo)]}]):
        with pytest.raises(ValueError, match="SparseAdam requires dense parameter tensors"):
            library.SparseAdam(params)
    with pytest.raises(ValueError, match=r"Sparse params at indices \[\[0, 0\]\]: SGD"):
        library.SGD([torch.zeros(3, layout=torch.sparse_coo)])


def test_sparse_adams_constructor_checks_as_torch():
    p = [torch.nn.Parameter(torch.ones(2))]
    for kwargs, message in ((dict(lr=0), "Invalid learning rate: 0"),
                            (dict(lr=-1.0), "Invalid learning rate: -1.0"),
                            (dict(eps=0.0), "Invalid epsilon value: 0.0"),
                            (dict(betas=(1.0, 0.0)), "Invalid beta parameter at index 0: 1.0"),
                            (dict(betas=(0.5, 1.0)), "Invalid beta parameter at index 1: 1.0")):
        with pytest.raises(ValueError, match=message):
            library.SparseAdam(p, **kwargs)
        with pytest.raises(ValueError, match=message):
            torch.optim.SparseAdam(p, **kwargs)
    opt = library.SparseAdam(p, lr=0.1)
    opt.param_groups[0]["lr"] = 0.0  # a scheduler may take it there, as in torch
    p[0].grad = torch.ones(2).to_sparse()
    opt.step()
    assert float(opt.state[p[0]]["step"]) == 1.0
