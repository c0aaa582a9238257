"""Matrix-shaped optimizers (Muon, Adafactor: library stages over whole matrices) under the
distributed engines, on gloo with two CPU processes, in the style of test_distributed.py.

- FSDP2 (fully_shard, Shard(0)): each optimizer steps the sharded model for STEPS steps
  against one process stepping an unsharded copy on the same gradients, gathered (so any
  difference is the optimizer's, not the data parallelism's). One parameter has no gradient
  on one step (both runs skip it); the last layer has fewer rows than ranks, so rank 1 holds
  zero-size shards of it. Row and column statistics (Adafactor's row_var, col_var) must be
  DTensors replicated over the mesh, whole on every rank; parameter-shaped states sharded
  like their parameter.
- A checkpoint of the sharded optimizer (torch.distributed.checkpoint: dcp.save of the
  sharded state dict, dcp.load into a fresh optimizer; and the full state dict, plain
  tensors, set back) is reloaded and continued, against the reference continuing.
- torch's ZeroRedundancyOptimizer (each rank steps whole parameters) around DDP, against one
  process on the global batch.

Float64 models, so tolerances are tight; Muon runs Newton-Schulz in bfloat16 (its default)
under FSDP2, where both runs orthogonalise the same gathered matrices, and in float32 under
ZeRO, where DDP's averaged gradients differ from the global batch's in the last bits.
The two processes are started once for the module (spawn, a FileStore rendezvous) and run
every scenario in turn; a hang fails the tests after RUN_TIMEOUT seconds.
"""

from __future__ import annotations

import copy
import datetime
import functools
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
import traceback

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from optdsl import library
from optdsl.optim import distributed
from optdsl.optim.grouped import GroupedOptimizer

WORLD = 2
PG_TIMEOUT = 45  # seconds a collective may wait before the process group raises
RUN_TIMEOUT = 240  # seconds for the whole two-process run
STEPS = 10
SAVE_AT = 6  # steps before the checkpoint; the rest are taken after reloading it
NO_GRAD = (3, 1)  # (step, parameter index): that parameter has no gradient on that step
TIGHT = 1e-10
# Under FSDP2 both runs step on the same gradients: Muon's step is element-wise work on
# shards and matrix work on the same gathered matrices, so it is the unsharded step bit for
# bit; Adafactor's norm(w) and norm(update) add the shards' partials in another order.
FSDP_TOLERANCE = {"Muon": 0.0, "Adafactor": TIGHT}

OPTIMIZERS = {  # name: (the optdsl twin, hypers, whether the model has biases)
    "Muon": (library.Muon, {"lr": 0.05, "momentum": 0.9, "nesterov": True}, False),
    "Adafactor": (library.Adafactor, {"lr": 0.05, "weight_decay": 0.01}, True),
}


# -- models and data (the same on every rank and in the single-process reference) ------------
def _model(bias: bool) -> torch.nn.Module:
    torch.manual_seed(1234)
    # (8, 6): taller than wide (Muon works on its transpose); (1, 4): fewer rows than ranks,
    # rank 1 holds a zero-size shard of it (and of its bias).
    model = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=bias), torch.nn.Tanh(),
                                torch.nn.Linear(8, 4, bias=bias), torch.nn.Tanh(),
                                torch.nn.Linear(4, 1, bias=bias))
    return model.double()


def _batches(steps: int = STEPS, seed: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=gen, dtype=torch.float64),
             torch.randn(8, 1, generator=gen, dtype=torch.float64)) for _ in range(steps)]


def _local(x: torch.Tensor, rank: int) -> torch.Tensor:
    return x.chunk(WORLD)[rank]


def _full(t) -> torch.Tensor:
    return t.full_tensor() if distributed.is_dtensor(t) else t


def _max_diff(a_params, b_params) -> float:
    return max((_full(a).detach() - _full(b).detach()).abs().max().item()
               for a, b in zip(a_params, b_params, strict=True) if a.numel())


def _state_diff(a: dict, b: dict) -> float:
    """Max difference between two optimizer ``state`` dicts (same keys; tensors or numbers)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    worst = 0.0
    for key, state in a.items():
        assert state.keys() == b[key].keys(), (key, sorted(state), sorted(b[key]))
        for name, value in state.items():
            x = torch.as_tensor(_full(value), dtype=torch.float64)
            y = torch.as_tensor(_full(b[key][name]), dtype=torch.float64)
            assert x.shape == y.shape, (key, name, x.shape, y.shape)
            worst = max(worst, (x - y).abs().max().item() if x.numel() else 0.0)
    return worst


def _drop_grad(model, step: int) -> None:
    if step == NO_GRAD[0]:
        list(model.parameters())[NO_GRAD[1]].grad = None


def _shard(model: torch.nn.Module, mesh) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _mesh():
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (WORLD,))


def _fsdp_step(model, opt, ref, ref_opt, x, y, rank: int, step: int) -> None:
    """A step of the sharded model on this rank's half batch, and of the unsharded reference
    on the same (gathered) gradients."""
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(_local(x, rank)), _local(y, rank)).backward()
    _drop_grad(model, step)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.full_tensor()
    opt.step()
    if ref_opt is not None:
        ref_opt.step()


def _layouts(model, opt) -> dict:
    """Per state key: how its values are held on this rank (type, and for a DTensor whether
    it is sharded like its parameter or replicated with the whole shape)."""
    found: dict = {}
    for p in model.parameters():
        for key, value in opt.state[p].items():
            if not distributed.is_dtensor(value):
                layout = type(value).__name__
            elif value.placements == p.placements and value.shape == p.shape:
                layout = "sharded like the parameter"
            elif all(pl.is_replicate() for pl in value.placements) and \
                    value.to_local().shape == value.shape:
                layout = "replicated, whole"
            else:
                layout = f"DTensor {value.placements}"
            found.setdefault(key, set()).add(layout)
    return found


# -- scenarios: run in both workers, return what they measured ------------------------------
class _CountGathers:
    """Counts the all-gathers of whole matrices the optimizer runs (``with`` block)."""

    def __enter__(self):
        self.count, self._gather = 0, distributed._Sharding.gather

        def gather(sharding, local):
            self.count += 1
            return self._gather(sharding, local)

        distributed._Sharding.gather = gather
        return self

    def __exit__(self, *exc) -> None:
        distributed._Sharding.gather = self._gather


def _fsdp(rank: int, name: str, backend: str | None = None) -> dict:
    mesh = _mesh()
    out = {}
    cls, hypers, bias = OPTIMIZERS[name]
    if backend is not None:  # (both runs on it: the unsharded reference too)
        hypers = {**hypers, "backend": backend}
    ref = _model(bias)
    ref_opt = cls(ref.parameters(), **hypers)
    model = _shard(_model(bias), mesh)
    opt = cls(model.parameters(), **hypers)
    with _CountGathers() as gathers:
        for step, (x, y) in enumerate(_batches()):
            _fsdp_step(model, opt, ref, ref_opt, x, y, rank, step)
    out[f"{name}/gathers"] = gathers.count
    out[f"{name}/ndims"] = [p.ndim for p in model.parameters()]
    out[f"{name}/params"] = _max_diff(model.parameters(), ref.parameters())
    out[f"{name}/moved"] = _max_diff(model.parameters(), _model(bias).parameters())
    out[f"{name}/state"] = _state_diff(opt.state_dict()["state"],
                                       ref_opt.state_dict()["state"])
    out[f"{name}/steps"] = [int(opt.state[p]["step"]) for p in model.parameters()]
    out[f"{name}/layouts"] = _layouts(model, opt)
    out[f"{name}/local_numel"] = [p.to_local().numel() for p in model.parameters()]
    return out


def _fsdp_checkpoint(rank: int, name: str) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    mesh = _mesh()
    out = {}
    full_options = StateDictOptions(full_state_dict=True)
    cls, hypers, bias = OPTIMIZERS[name]
    batches = _batches()
    ref = _model(bias)
    ref_opt = cls(ref.parameters(), **hypers)
    model = _shard(_model(bias), mesh)
    opt = cls(model.parameters(), **hypers)
    for step in range(SAVE_AT):
        _fsdp_step(model, opt, ref, ref_opt, *batches[step], rank, step)
    full = get_optimizer_state_dict(model, opt, options=full_options)
    names = [n for n, _ in ref.named_parameters()]
    ref_state = {names[i]: s for i, s in ref_opt.state_dict()["state"].items()}
    out[f"{name}/full_vs_reference"] = _state_diff(full["state"], ref_state)
    model_state = get_model_state_dict(model)
    whole_model = get_model_state_dict(model, options=full_options)
    path = os.path.join(_OUT_DIR, f"dcp-{name}")
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path)
    reloaded = {}
    # "unsharded": the sharded checkpoint loaded by an unsharded model (resharded by DCP)
    for label in ("full", "saved", "unsharded"):
        if label == "unsharded":
            again = _model(bias)
            again.load_state_dict(whole_model)
        else:
            again = _shard(_model(bias), mesh)
            set_model_state_dict(again, model_state)
        again_opt = cls(again.parameters(), **{**hypers, "lr": 1.0})  # the saved lr wins
        if label != "full":
            target = {"optim": get_optimizer_state_dict(again, again_opt)}
            dcp.load(target, checkpoint_id=path)
            set_optimizer_state_dict(again, again_opt, target["optim"])
        else:
            set_optimizer_state_dict(again, again_opt, copy.deepcopy(full),
                                     options=full_options)
        out[f"{name}/{label}/lr"] = again_opt.param_groups[0]["lr"]
        out[f"{name}/{label}/reloaded_state"] = _state_diff(
            get_optimizer_state_dict(again, again_opt, options=full_options)["state"],
            full["state"])
        reloaded[label] = (again, again_opt)
    for step in range(SAVE_AT, STEPS):
        x, y = batches[step]
        _fsdp_step(model, opt, ref, ref_opt, x, y, rank, step)
        for again, again_opt in reloaded.values():
            # the gradients the reference steps on, this rank's shards of them
            again_opt.zero_grad(set_to_none=True)
            for p, q in zip(again.parameters(), model.parameters(), strict=True):
                p.grad = q.grad if distributed.is_dtensor(p) or q.grad is None else \
                    q.grad.full_tensor()
            again_opt.step()
    for label, (again, again_opt) in reloaded.items():
        out[f"{name}/{label}/continued"] = _max_diff(again.parameters(), ref.parameters())
        out[f"{name}/{label}/layouts"] = _layouts(again, again_opt)
    return out


# Facts of the parameter (w.rows, w.cols, w.numel) in an element-wise program: the whole
# tensor's on every back end, not the shard's.
FACTS = """
optimizer Facts
hyper lr = 0.05
w = w - lr * g * (w.rows + 2 * w.cols + w.ndim) / w.numel
"""


def _facts_backends() -> list[str]:
    from optdsl.runtime import c_build, select

    return ["numpy"] + (["c"] if c_build.unavailable() is None else []) + \
        (["triton"] if select.triton_available() else [])


def _fsdp_facts(rank: int) -> dict:
    import optdsl

    mesh = _mesh()
    cls = optdsl.compile(FACTS).optimizer_class
    out = {}
    for backend in _facts_backends():
        ref = _model(True)
        ref_opt = cls(ref.parameters(), backend=backend)
        model = _shard(_model(True), mesh)
        opt = cls(model.parameters(), backend=backend)
        with _CountGathers() as gathers:
            for step, (x, y) in enumerate(_batches(2)):
                _fsdp_step(model, opt, ref, ref_opt, x, y, rank, step)
        out[backend] = _max_diff(model.parameters(), ref.parameters())
        out[f"{backend}/gathers"] = gathers.count
    return out


def _grouped(params) -> list[dict]:
    """GroupedOptimizer's groups: Muon for the hidden matrices, AdamW for the biases, SGD for
    the head (one parameter: under ZeRO one rank's share of its group is empty)."""
    w0, b0, w1, b1, head, head_bias = params
    return [{"params": [w0, w1], "optimizer": library.Muon, "lr": 0.05, "ns_dtype": "float32"},
            {"params": [b0, b1, head_bias], "optimizer": library.AdamW, "lr": 0.01},
            {"params": [head], "optimizer": library.SGD, "lr": 0.1, "momentum": 0.9}]


ZERO = [*OPTIMIZERS, "Grouped"]


def _zero_pair(name: str):
    """The unsharded reference and the model and optimizer that ZeRO wraps."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    if name == "Grouped":
        ref, model = _model(True), DDP(_model(True))
        return (ref, GroupedOptimizer(_grouped(list(ref.parameters()))), model,
                ZeroRedundancyOptimizer(_grouped(list(model.module.parameters())),
                                        optimizer_class=GroupedOptimizer))
    cls, hypers, bias = OPTIMIZERS[name]
    if name == "Muon":  # DDP's averaged gradients differ in the last bits: float32 NS
        hypers = {**hypers, "ns_dtype": "float32"}
    ref, model = _model(bias), DDP(_model(bias))
    return (ref, cls(ref.parameters(), **hypers), model,
            ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **hypers))


def _zero(rank: int, name: str) -> dict:
    out = {}
    ref, ref_opt, model, opt = _zero_pair(name)
    out[f"{name}/local_params"] = [len(g["params"]) for g in opt.optim.param_groups]
    for step, (x, y) in enumerate(_batches()):
        for net, optimizer, a, b in ((ref, ref_opt, x, y),
                                     (model, opt, _local(x, rank), _local(y, rank))):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(net(a), b).backward()
            _drop_grad(net, step)
            optimizer.step()
    out[f"{name}/params"] = _max_diff(model.module.parameters(), ref.parameters())
    out[f"{name}/moved"] = _max_diff(model.module.parameters(), _model(True).parameters()
                                     if name == "Grouped" else
                                     _model(OPTIMIZERS[name][2]).parameters())
    opt.consolidate_state_dict(to=0)
    holder = [opt.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    out[f"{name}/consolidated_state"] = _state_diff(holder[0]["state"],
                                                    ref_opt.state_dict()["state"])
    return out


# A scenario that raises stops both workers (the ranks may be out of step): each optimizer
# and engine is its own scenario, those that need least of the sharded path first.
def _triton_importable() -> bool:
    """Whether the Triton scenarios run (asked without importing Triton, which the workers
    must import only after TRITON_INTERPRET is set)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


SCENARIOS = {**{f"zero/{n}": functools.partial(_zero, name=n) for n in OPTIMIZERS},
             **{f"fsdp/{n}": functools.partial(_fsdp, name=n) for n in OPTIMIZERS},
             **{f"fsdp_checkpoint/{n}": functools.partial(_fsdp_checkpoint, name=n)
                for n in OPTIMIZERS},
             "fsdp_facts": _fsdp_facts,
             "zero/Grouped": functools.partial(_zero, name="Grouped"),
             # (last: the interpreter is slow; library stages between the device sweeps)
             **{f"fsdp_triton/{n}": functools.partial(_fsdp, name=n, backend="triton")
                for n in OPTIMIZERS if _triton_importable()}}
_OUT_DIR = ""  # the run's directory, shared by the workers


def _worker(rank: int, store: str, out_dir: str) -> None:
    global _OUT_DIR
    _OUT_DIR = out_dir
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported; the rest ignore it
    os.environ["OPTDSL_CACHE_DIR"] = os.path.join(out_dir, "optdsl-cache")
    torch.set_num_threads(1)
    results: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=WORLD,
                                timeout=datetime.timedelta(seconds=PG_TIMEOUT))
        for name, scenario in SCENARIOS.items():
            try:
                results[name] = ("ok", scenario(rank))
            except Exception:  # noqa: BLE001 - reported to the test, with its traceback
                results[name] = ("error", traceback.format_exc())
                break  # the ranks may be out of step now: stop
    except Exception:  # noqa: BLE001 - reported to the tests
        results["_setup"] = ("error", traceback.format_exc())
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (seconds on a small machine); results are saved


@pytest.fixture(scope="module")
def reports() -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as out_dir:
        store = os.path.join(out_dir, "store")
        procs = [ctx.Process(target=_worker, args=(rank, store, out_dir), daemon=True)
                 for rank in range(WORLD)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + RUN_TIMEOUT
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
            p.join()
        per_rank = []
        for rank in range(WORLD):
            path = os.path.join(out_dir, f"rank{rank}.pkl")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    per_rank.append(pickle.load(f))
            else:
                why = (f"rank {rank} wrote no report (exit code {procs[rank].exitcode}, "
                       f"hung: {procs[rank] in hung})")
                per_rank.append({"_setup": ("error", why)})
    return per_rank


def _report(reports: list[dict], name: str) -> list[dict]:
    """The scenario's result on each rank, or a failure that says why there is none."""
    found = []
    for rank, results in enumerate(reports):
        if name not in results:
            setup = results.get("_setup")
            why = setup[1] if setup else "an earlier scenario failed"
            pytest.fail(f"rank {rank}: {name} did not run: {why}")
        status, value = results[name]
        if status != "ok":
            pytest.fail(f"rank {rank}: {name} raised:\n{value}")
        found.append(value)
    return found


# -- the tests --------------------------------------------------------------------------------
# All-gathers per matrix and step (docs/distributed.md, "Matrix-shaped optimizers"): the one
# parameter-shaped column each one's library stage reads (Muon: the momentum direction;
# Adafactor: the gradient). Adafactor's vectors have no matrix work: no gather.
GATHERS = {"Muon": 1, "Adafactor": 1}

LAYOUTS = {  # per optimizer: how each state is held under FSDP2
    "Muon": {"step": {"Tensor"}, "momentum_buffer": {"sharded like the parameter"}},
    "Adafactor": {"step": {"Tensor"}, "row_var": {"replicated, whole"},
                  "col_var": {"replicated, whole"}, "variance": {"sharded like the parameter"}},
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fsdp2_equals_unsharded(reports, name):
    ranks = _report(reports, f"fsdp/{name}")
    assert ranks[0][f"{name}/local_numel"][-1] > 0
    assert ranks[1][f"{name}/local_numel"][-1] == 0  # Linear(4, 1): empty on rank 1
    steps = [STEPS] * len(ranks[0][f"{name}/steps"])
    steps[NO_GRAD[1]] -= 1  # the parameter without a gradient on one step
    for out in ranks:
        assert out[f"{name}/moved"] > 1e-3
        assert out[f"{name}/params"] <= FSDP_TOLERANCE[name]
        assert out[f"{name}/state"] <= FSDP_TOLERANCE[name]
        assert out[f"{name}/steps"] == steps
        matrix_steps = sum(n for n, ndim in zip(steps, out[f"{name}/ndims"]) if ndim == 2)
        assert out[f"{name}/gathers"] == GATHERS[name] * matrix_steps  # none without a grad
        # (1-D parameters keep no row or column statistic, only ``variance``)
        expected = LAYOUTS[name]
        assert out[f"{name}/layouts"].keys() == expected.keys()
        for key, layouts in expected.items():
            assert out[f"{name}/layouts"][key] == layouts, key


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fsdp2_on_the_triton_back_end_equals_unsharded(reports, name):
    """The Triton back end's library stages gather the whole matrices of shards as the CPU
    back ends' do (Triton's interpreter, on CPU tensors): the same as one process."""
    if not _triton_importable():
        pytest.skip("triton cannot be imported")
    ranks = _report(reports, f"fsdp_triton/{name}")
    steps = [STEPS] * len(ranks[0][f"{name}/steps"])
    steps[NO_GRAD[1]] -= 1
    for out in ranks:
        assert out[f"{name}/moved"] > 1e-3
        assert out[f"{name}/params"] <= FSDP_TOLERANCE[name]
        assert out[f"{name}/state"] <= FSDP_TOLERANCE[name]
        assert out[f"{name}/steps"] == steps
        matrix_steps = sum(n for n, ndim in zip(steps, out[f"{name}/ndims"]) if ndim == 2)
        assert out[f"{name}/gathers"] == GATHERS[name] * matrix_steps
        assert out[f"{name}/layouts"] == LAYOUTS[name]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fsdp2_checkpoint_saved_loaded_and_continued(reports, name):
    for out in _report(reports, f"fsdp_checkpoint/{name}"):
        assert out[f"{name}/full_vs_reference"] <= FSDP_TOLERANCE[name]
        for label in ("full", "saved", "unsharded"):
            assert out[f"{name}/{label}/lr"] == OPTIMIZERS[name][1]["lr"]
            assert out[f"{name}/{label}/reloaded_state"] == 0.0
            assert out[f"{name}/{label}/continued"] <= FSDP_TOLERANCE[name]
        for label in ("full", "saved"):
            assert out[f"{name}/{label}/layouts"] == LAYOUTS[name]
        assert out[f"{name}/unsharded/layouts"] == {k: {"Tensor"} for k in LAYOUTS[name]}


@pytest.mark.parametrize("name", ZERO)
def test_zero_redundancy_optimizer_equals_unsharded(reports, name):
    ranks = _report(reports, f"zero/{name}")
    local = [out[f"{name}/local_params"] for out in ranks]
    model = _model(name == "Grouped" or OPTIMIZERS[name][2])
    assert sum(map(sum, local)) == len(list(model.parameters()))
    assert all(sum(counts) > 0 for counts in local)
    if name == "Grouped":  # the head's group is empty on one rank
        assert sorted(counts[2] for counts in local) == [0, 1]
    for out in ranks:
        assert out[f"{name}/moved"] > 1e-3
        assert out[f"{name}/params"] < TIGHT
        assert out[f"{name}/consolidated_state"] < TIGHT


@pytest.mark.parametrize("backend", _facts_backends())
def test_fsdp2_facts_are_the_whole_parameters(reports, backend):
    """w.rows, w.cols and w.numel of a shard are its parameter's, on every back end (the
    Triton one in its interpreter)."""
    for out in _report(reports, "fsdp_facts"):
        assert out[backend] < TIGHT
        assert out[f"{backend}/gathers"] == 0  # element-wise: nothing gathered
