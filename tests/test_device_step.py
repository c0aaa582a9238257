"""The Triton step with every scalar on the device (issue 11), on CPU tensors through Triton's
interpreter: steady-state steps of every bundled optimizer read nothing back from the device
(every device-to-host read raises while they run), step counts and scalar states advance in
the kernels, a hyper given as a tensor is read on the device (changed in place, it needs no
recompilation), torch.amp's found_inf skips the step on the device, reductions are finished
on the device in a fixed order (the same bits every run, within float64 rounding of the
host's), the placement of scalars is the schedule's decision, and row and column statistics
fused into a sweep (Adafactor's) read nothing back either.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import optdsl  # noqa: E402
from optdsl import library  # noqa: E402
from optdsl.ir.schedule import Placement  # noqa: E402

SIZES = (7, 300, 0, 513)


# every test runs Triton kernels in the interpreter (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("triton_interpreter")


class DeviceRead(AssertionError):
    """A device-to-host read during a steady-state step."""


READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__",
         "__array__")


@contextlib.contextmanager
def no_device_reads():
    """Every device-to-host read of a tensor raises (Triton's interpreter, which runs the
    kernels on the host, may still read: it stands for the GPU), and so does making the host
    step's per-parameter object (on CPU tensors the host step's scalar arithmetic reads no
    tensor, so that is how it shows)."""
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def guard(name, original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("triton"):
                return original(self, *args, **kwargs)
            raise DeviceRead(f"Tensor.{name}() during a steady-state step (from {caller})")
        return read

    for name, original in saved.items():
        setattr(torch.Tensor, name, guard(name, original))
    from optdsl.codegen.contract import ParamSlot

    def slot(self, *args, **kwargs):  # the host step's per-parameter object: not needed here
        raise DeviceRead("a ParamSlot was made during a steady-state step")

    saved_init = ParamSlot.__init__
    ParamSlot.__init__ = slot
    try:
        yield
    finally:
        ParamSlot.__init__ = saved_init
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def required(prog) -> dict:
    return {name: 0.1 for name, spec in prog.hypers.items() if spec.required}


def params(dtype=torch.float32, seed=0, shapes=SIZES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64).to(dtype))
            for n in shapes]


def set_grads(ps, step, dtype=None):
    gen = torch.Generator().manual_seed(100 + step)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype or p.dtype)


def test_the_guard_catches_reads():
    x = torch.ones(2)
    with no_device_reads():
        for read in (lambda: x.sum().item(), lambda: float(x[0]), lambda: x.tolist(),
                     lambda: bool(x[0]), lambda: x.cpu(), lambda: np.asarray(x)):
            with pytest.raises(DeviceRead):
                read()


# The programs the Triton back end runs on dense gradients (SparseAdam takes sparse ones
# only, gathered by the host: test_sparse_*). Matrix work (Muon, Adafactor: library stages
# between the sweeps) runs on matrices (Muon takes 2-D parameters only).
ON_TRITON = [n for n in library.STEPWISE if not library.program(n).sparse.only]
MATRIX_SHAPES = ((7, 3), (12, 25), (0, 4), (513, 2))


@pytest.mark.parametrize("name", ON_TRITON)
def test_steady_state_steps_read_nothing_back(name):
    prog = library.program(name)
    ps = params(shapes=MATRIX_SHAPES if prog.library_work else SIZES)
    opt = prog.optimizer(ps, backend="triton", **required(prog))
    for step in range(2):  # warm-up: states made, tables built
        set_grads(ps, step)
        opt.step()
    for step in range(2, 4):
        set_grads(ps, step)  # new gradient tensors, as after zero_grad()
        with no_device_reads():
            opt.step()
    assert all(float(opt.state[p]["step"]) == 4 for p in ps)


def test_fused_row_and_column_statistics_read_nothing_back():
    """Adafactor's rownorm(g) and colnorm(g) accumulated by the Triton sweep (tiles, float64
    partials, stats_finish: optdsl.runtime.device_stats) in a steady state: nothing is read
    back, and the stage is handed the finished statistics of every non-empty matrix."""
    ps = params(shapes=MATRIX_SHAPES + ((2, 3, 5),))
    opt = library.Adafactor(ps, backend="triton")
    for step in range(4):
        set_grads(ps, step)
        with no_device_reads() if step >= 2 else contextlib.nullcontext():
            opt.step()
    (plan,) = [plan for plan in opt._runner_of[1]._plans.values() if plan.slots]
    for p, slot in zip(ps, plan.slots):
        assert [s is not None for s in slot.stats] == [p.numel() > 0] * 2
    assert all(float(opt.state[p]["step"]) == 4 for p in ps)


@pytest.mark.parametrize("amp", [True, False], ids=["amp", "stochastic-rounding"])
def test_reads_nothing_back_with_amp_or_stochastic_rounding(amp):
    ps = params(torch.bfloat16)
    opt = library.AdamW(ps, backend="triton", fused=amp, master_weights=True,
                        stochastic_rounding=not amp)
    for step in range(4):
        set_grads(ps, step)
        if amp:
            opt.grad_scale = torch.tensor(1024.0)
            opt.found_inf = torch.tensor(0.0)
        with no_device_reads() if step >= 2 else contextlib.nullcontext():
            opt.step()
    assert all(float(opt.state[p]["step"]) == 4 for p in ps)


def test_stochastic_rounding_after_a_skippable_step_reads_the_counts_once():
    """Stochastic rounding's seed comes from the group's update count, kept on the host; a
    step that found_inf may have skipped on the device leaves it unknown, and the next step
    reads the counts (the one read back with both in-step AMP and stochastic rounding)."""
    ps = params(torch.bfloat16)
    opt = library.AdamW(ps, backend="triton", fused=True, stochastic_rounding=True)
    for step in range(3):
        set_grads(ps, step)
        opt.grad_scale = torch.tensor(1.0)
        opt.found_inf = torch.tensor(1.0 if step == 1 else 0.0)
        opt.step()
    assert all(float(opt.state[p]["step"]) == 2 for p in ps)
    set_grads(ps, 3)
    opt.grad_scale = torch.tensor(1.0)
    opt.found_inf = torch.tensor(0.0)
    with pytest.raises(DeviceRead), no_device_reads():
        opt.step()


def test_found_inf_skips_the_step_on_the_device():
    ps, qs = params(), params()
    ours = library.Adam(ps, backend="triton", fused=True, lr=0.1)
    ref = library.Adam(qs, backend="numpy", fused=True, lr=0.1)
    for step in range(4):
        for opt, xs in ((ours, ps), (ref, qs)):
            set_grads(xs, step)
            for p in xs:
                p.grad.mul_(256.0)
            opt.grad_scale = torch.tensor(256.0)
            opt.found_inf = torch.tensor(1.0 if step == 2 else 0.0)
            with no_device_reads() if opt is ours and step >= 2 else contextlib.nullcontext():
                opt.step()
        if step == 2:
            assert all(float(ours.state[p]["step"]) == 2 for p in ps)
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ours.state[p][key], ref.state[q][key])


def test_a_tensor_lr_is_read_on_the_device():
    prog = library.program("Adam")
    ps, qs = params(), params()
    lr = torch.tensor(0.01)
    ours = prog.optimizer(ps, backend="triton", lr=lr)
    ref = prog.optimizer(qs, backend="numpy", lr=0.01)
    compiled = None
    for step, value in enumerate((0.01, 0.01, 0.003, 0.05)):
        lr.fill_(value)  # in place, as a scheduler of a captured step does
        ref.param_groups[0]["lr"] = float(torch.tensor(value))  # (the same float32 number)
        for opt, xs in ((ours, ps), (ref, qs)):
            set_grads(xs, step)
            with no_device_reads() if opt is ours and step >= 2 else contextlib.nullcontext():
                opt.step()
        sources = sum(len(v._sources) for v in prog._variants.values())
        compiled = sources if compiled is None else compiled
        assert sources == compiled  # nothing compiled again for a new value
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)


MATRIX_WORK = [n for n in ON_TRITON if library.program(n).library_work]


def _close_to_numpy(ours, ref, ps, qs, rtol):
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=rtol)
        assert ours.state[p].keys() == ref.state[q].keys()
        for key, value in ours.state[p].items():  # (NaN: the column statistic of 0 rows)
            torch.testing.assert_close(value, ref.state[q][key], rtol=rtol, atol=rtol,
                                       equal_nan=True)


@pytest.mark.parametrize("name", MATRIX_WORK)
def test_library_stages_read_tensor_hypers_on_the_device(name):
    """A library stage reads a hyper given as a tensor from the device hyper table (Muon's
    Newton-Schulz coefficients, which then take addmm's float32 form; Adafactor's lr and
    beta2_decay): changed in place, it needs no recompilation and no read back, and the
    steps follow the NumPy back end's with the same numbers (Muon orthogonalises in float32
    here: bfloat16 roundings would move with the GEMM's summation order)."""
    prog = library.program(name)
    values = ({"lr": (0.02, 0.02, 0.01, 0.05), "a": (3.4445,) * 2 + (3.0,) * 2}
              if name == "Muon" else
              {"lr": (0.01, 0.01, 0.003, 0.05), "beta2_decay": (-0.8, -0.8, -0.5, -0.7)})
    extra = {"ns_dtype": "float32"} if name == "Muon" else {}
    ps, qs = params(shapes=MATRIX_SHAPES), params(shapes=MATRIX_SHAPES)
    given = {k: torch.tensor(v[0], dtype=torch.float64) for k, v in values.items()}
    if name == "Muon":
        a = given.pop("a")
        given["ns_coefficients"] = (a, torch.tensor(-4.7750, dtype=torch.float64),
                                    torch.tensor(2.0315, dtype=torch.float64))
    ours = prog.optimizer(ps, backend="triton", **given, **extra)
    ref = prog.optimizer(qs, backend="numpy", **extra)
    compiled = None
    for step in range(4):
        for key, series in values.items():
            (given[key] if key != "a" else a).fill_(series[step])
            if key == "a":
                ref.param_groups[0]["ns_coefficients"] = (series[step], -4.7750, 2.0315)
            else:
                ref.param_groups[0][key] = series[step]
        for opt, xs in ((ours, ps), (ref, qs)):
            set_grads(xs, step)
            with no_device_reads() if opt is ours and step >= 2 else contextlib.nullcontext():
                opt.step()
        sources = sum(len(v._sources) for v in prog._variants.values())
        compiled = sources if compiled is None else compiled
        assert sources == compiled  # nothing compiled again for a new value
    _close_to_numpy(ours, ref, ps, qs, 1e-5)


def test_a_group_of_two_variants_keeps_both_plans(monkeypatch):
    """Adafactor steps a group's matrices and vectors with two variants (factored or not),
    each its own plan: steady-state steps build no table again and read nothing back."""
    from optdsl.runtime.triton_runner import TritonRunner

    builds = []
    build = TritonRunner._build
    monkeypatch.setattr(TritonRunner, "_build",
                        lambda self, *args: builds.append(1) or build(self, *args))
    ps = params(shapes=((4, 3), (5,), (6, 2), (7,)))
    opt = library.Adafactor(ps, backend="triton")
    for step in range(4):
        set_grads(ps, step)
        with no_device_reads() if step >= 2 else contextlib.nullcontext():
            opt.step()
    assert len(builds) == 2


def test_found_inf_keeps_the_states_of_library_stages():
    """torch.amp's found_inf skips a step on the device: Adafactor's row and column
    statistics, committed at the end of the step by torch code, keep their old values then
    too (decided on the device: nothing is read back), as on the NumPy back end."""
    ps, qs = params(shapes=MATRIX_SHAPES), params(shapes=MATRIX_SHAPES)
    ours = library.Adafactor(ps, backend="triton", fused=True, lr=0.1)
    ref = library.Adafactor(qs, backend="numpy", fused=True, lr=0.1)
    for step in range(4):
        for opt, xs in ((ours, ps), (ref, qs)):
            set_grads(xs, step)
            for p in xs:
                p.grad.mul_(256.0)
            opt.grad_scale = torch.tensor(256.0)
            opt.found_inf = torch.tensor(1.0 if step == 2 else 0.0)
            with no_device_reads() if opt is ours and step >= 2 else contextlib.nullcontext():
                opt.step()
        if step == 2:
            assert all(float(ours.state[p]["step"]) == 2 for p in ps)
    _close_to_numpy(ours, ref, ps, qs, 1e-6)


REDUCTIONS = """
optimizer Reductions
hyper lr = 0.1, max_norm = 1.0
state m = 0
state k = 1
gn = global_norm(g)
g = g * min(1, max_norm / (gn + 1e-6))
m = 0.9 * m + g
s = sum(m) / (mean(abs(w)) + 1) + global_sum(g) * 1e-3
n = norm(m) + maxabs(g) + dot(m, g) * 0.01
k = k * 0.5 + n
w = w - lr * m / (n + 1) - 0.001 * s
"""


def test_reductions_finish_on_the_device_in_a_fixed_order():
    from optdsl.runtime.triton_runner import TritonRunner

    prog = optdsl.compile(REDUCTIONS)
    sizes = (99, 1, 0, 16 * 4 * 3 + 5)  # 16-element blocks, 4 partials a chunk: 4 chunks
    runs = []
    for backend in ("triton", "triton", "numpy"):
        gen = torch.Generator().manual_seed(5)
        ps = [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64))
              for n in sizes]
        opt = prog.optimizer(ps, backend=backend)
        if backend == "triton":
            opt._runner_of = ("triton", TritonRunner(prog, block=16, chunk=4))
        for step in range(3):
            set_grads(ps, step)
            opt.step()
        runs.append((ps, opt))
    (a, opt_a), (b, _), (ref, opt_ref) = runs
    for p, q, r in zip(a, b, ref):
        assert torch.equal(p, q)  # the same bits every run
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-14)
    for p, r in zip(a, ref):
        torch.testing.assert_close(opt_a.state[p]["k"], opt_ref.state[r]["k"], rtol=1e-12,
                                   atol=0)


def test_placement_is_the_back_ends_decision():
    prog = library.program("Adam")
    for backend, where in (("numpy", Placement.HOST), ("triton", Placement.DEVICE)):
        unit = prog.generic.unit(backend)
        eqs = unit.graph.eqs
        scalars = [v for v, eq in enumerate(eqs) if eq.kind.level in (1, 2)
                   and eq.op != "const"]
        assert scalars and all(unit.schedule.placement(v) == where for v in scalars)
    triton_step = prog.source("triton").split("def step(ctx, params):")[1]
    assert "for p in params" not in triton_step and "ctx.hyper" not in triton_step
    assert "for p in params" in prog.source("numpy").split("def step(ctx, params):")[1]
