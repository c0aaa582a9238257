"""optdsl optimizers under the distributed engines users already run, on the gloo backend with
two CPU processes: DDP, ZeroRedundancyOptimizer (a rank with empty groups included; state
consolidated and reloaded), FSDP2 (fully_shard: DTensor parameters, zero-size local shards)
with element-wise, per-tensor-reduction and global_norm programs (NumPy back end, and Triton's
in its interpreter when Triton is installed), and torch.distributed.checkpoint's
get/set_optimizer_state_dict (full and sharded, and through dcp.save/dcp.load). Each is
compared with one process running the same optimizer on the same global batch (float64, so
tolerances are tight). Mixed precision under FSDP2 (bfloat16 parameters: float32 state, fp32
master weights, stochastic rounding, a DCP round trip) is compared with one process stepping
on the same gradients, gathered.

The two processes are started once for the module (spawn, a FileStore rendezvous: no port to
pick) and run every scenario in turn; each test checks one scenario's report. Collectives
time out after PG_TIMEOUT seconds and the whole run after RUN_TIMEOUT, so a hang fails the
tests instead of blocking CI. A scenario that raises stops both workers; its traceback is the
failure message of its test, and the scenarios after it report that they did not run.
"""

from __future__ import annotations

import copy
import datetime
import math
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
import traceback

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import optdsl
from optdsl import library
from optdsl.optim import distributed
from optdsl.runtime.numpy_runner import NumpyRunner
from optdsl.runtime.step import Entry, StepOptions

WORLD = 2
PG_TIMEOUT = 45  # seconds a collective may wait before the process group raises
RUN_TIMEOUT = 150  # seconds for the whole two-process run
LR = 0.05
STEPS = 3

# Every reduction the language has, two reduction phases (mean(s) needs maxabs(m) first), so
# a sharded parameter must be combined across ranks in each pass.
REDUCTIONS = """
optimizer Reductions
hyper lr = 0.05
state m = 0
m = 0.9 * m + g
s = m / (maxabs(m) + 1e-3)
c = dot(g, w) / (norm(w) + 1) / (global_norm(g) + 1)
k = global_sum(g) / (sum(abs(g)) + 1)
w = w - lr * (s - mean(s)) - lr * 0.1 * c * w - lr * 0.01 * k
"""


# -- models and data (the same on every rank and in the single-process reference) ------------
def _model(kind: str = "mlp") -> torch.nn.Module:
    torch.manual_seed(1234)
    if kind == "single":  # one parameter: ZeroRedundancyOptimizer leaves rank 1 without any
        model = torch.nn.Linear(5, 1, bias=False)
    else:
        # Linear(3, 1): weight (1, 3) and bias (1,) have fewer rows than ranks, so under
        # fully_shard rank 1 holds zero-size local shards of both.
        model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    return model.double()


def _batches(steps: int = STEPS, seed: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=gen, dtype=torch.float64),
             torch.randn(8, 1, generator=gen, dtype=torch.float64)) for _ in range(steps)]


def _local(x: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's half of a global batch (equal halves: DDP/FSDP's mean of means is exact)."""
    return x.chunk(WORLD)[rank]


def _train_step(model, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()


def _full(t) -> torch.Tensor:
    return t.full_tensor() if distributed.is_dtensor(t) else t


def _max_diff(a_params, b_params) -> float:
    diffs = [(_full(a).detach() - _full(b).detach()).abs().max().item()
             for a, b in zip(a_params, b_params, strict=True) if a.numel()]
    return max(diffs)


def _state_diff(a: dict, b: dict) -> float:
    """Max difference between two optimizer ``state`` dicts (same keys; tensors or numbers)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    worst = 0.0
    for key, state in a.items():
        assert state.keys() == b[key].keys(), (key, sorted(state), sorted(b[key]))
        for name, value in state.items():
            x = torch.as_tensor(_full(value), dtype=torch.float64)
            y = torch.as_tensor(_full(b[key][name]), dtype=torch.float64)
            worst = max(worst, (x - y).abs().max().item() if x.numel() else 0.0)
    return worst


def _optimizer_class(name: str):
    if name == "Reductions":
        return optdsl.compile(REDUCTIONS).optimizer_class
    return getattr(library, name)


HYPERS = {  # max_norm small enough that clipping is active on every step
    "Adam": {"lr": LR},
    "AdamWClip": {"lr": LR, "max_norm": 0.05},
    "SGDClip": {"lr": LR, "max_norm": 0.05, "momentum": 0.9},
    "LAMB": {"lr": LR, "weight_decay": 0.01},
    "Reductions": {"lr": LR},
}


# -- scenarios: run in both workers, return what they measured ------------------------------
def _ddp(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for name in ("Adam", "AdamWClip", "LAMB"):
        cls = _optimizer_class(name)
        ref = _model()
        ref_opt = cls(ref.parameters(), **HYPERS[name])
        model = DDP(_model())
        opt = cls(model.parameters(), **HYPERS[name])
        for x, y in _batches():
            _train_step(ref, ref_opt, x, y)
            _train_step(model, opt, _local(x, rank), _local(y, rank))
        out[name] = _max_diff(model.module.parameters(), ref.parameters())
    return out


def _zero(rank: int) -> dict:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    hypers = {"lr": LR, "betas": (0.8, 0.99), "weight_decay": 0.01}
    for kind in ("mlp", "single"):
        ref = _model(kind)
        ref_opt = library.Adam(ref.parameters(), **hypers)
        model = DDP(_model(kind))
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=library.Adam,
                                      **hypers)
        out[f"{kind}/local_params"] = sum(len(g["params"]) for g in opt.optim.param_groups)
        batches = _batches(STEPS + 2)
        for x, y in batches[:STEPS]:
            _train_step(ref, ref_opt, x, y)
            _train_step(model, opt, _local(x, rank), _local(y, rank))
        out[f"{kind}/params"] = _max_diff(model.module.parameters(), ref.parameters())

        opt.consolidate_state_dict(to=0)
        holder = [opt.state_dict() if rank == 0 else None]
        dist.broadcast_object_list(holder, src=0)
        saved = holder[0]
        out[f"{kind}/consolidated_state"] = _state_diff(saved["state"],
                                                        ref_opt.state_dict()["state"])
        # A fresh model and optimizer (other hypers: the checkpoint's win), reloaded.
        again = DDP(_model(kind))
        again.module.load_state_dict(model.module.state_dict())
        again_opt = ZeroRedundancyOptimizer(again.parameters(), optimizer_class=library.Adam,
                                            lr=1.0)
        again_opt.load_state_dict(copy.deepcopy(saved))
        out[f"{kind}/reloaded_lr"] = again_opt.optim.param_groups[0]["lr"]
        for x, y in batches[STEPS:]:
            _train_step(ref, ref_opt, x, y)
            _train_step(again, again_opt, _local(x, rank), _local(y, rank))
        out[f"{kind}/reloaded_params"] = _max_diff(again.module.parameters(), ref.parameters())
    return out


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


def _fsdp(rank: int, backend: str = "numpy") -> dict:
    mesh = _mesh()
    out = {}
    names = ("Adam", "AdamWClip", "SGDClip", "LAMB", "Reductions")
    if backend == "triton":  # the interpreter is slow: the program with every reduction
        names = ("Reductions",)
    for name in names:
        cls = _optimizer_class(name)
        ref = _model()
        ref_opt = cls(ref.parameters(), backend=backend, **HYPERS[name])
        model = _shard(_model(), mesh)
        opt = cls(model.parameters(), backend=backend, **HYPERS[name])
        for x, y in _batches():
            _train_step(ref, ref_opt, x, y)
            _train_step(model, opt, _local(x, rank), _local(y, rank))
        out[name] = _max_diff(model.parameters(), ref.parameters())
        out[f"{name}/state"] = _state_diff(opt.state_dict()["state"],
                                           ref_opt.state_dict()["state"])
        if name == "Adam":
            params = list(model.parameters())
            out["local_numel"] = [p.to_local().numel() for p in params]
            state = opt.state[params[0]]
            out["state_types"] = {k: type(v).__name__ for k, v in state.items()}
    if backend == "numpy":  # skip_nonfinite: an inf in rank 1's shard skips the step on both
        model = _shard(_model(), mesh)
        opt = library.AdamWClip(model.parameters(), lr=LR, skip_nonfinite=True)
        x, y = _batches(1)[0]
        torch.nn.functional.mse_loss(model(_local(x, rank)), _local(y, rank)).backward()
        before = [_full(p).detach().clone() for p in model.parameters()]
        if rank == 1:
            next(model.parameters()).grad.to_local()[0, 0] = math.inf
        opt.step()
        out["skip/skipped"] = opt.skipped_steps
        out["skip/moved"] = _max_diff(model.parameters(), before)
    return out


def _fsdp_checkpoint(rank: int) -> dict:
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
    batches = _batches(STEPS + 2)
    ref = _model()
    ref_opt = library.Adam(ref.parameters(), lr=LR)
    model = _shard(_model(), mesh)
    opt = library.Adam(model.parameters(), lr=LR)
    for x, y in batches[:STEPS]:
        _train_step(ref, ref_opt, x, y)
        _train_step(model, opt, _local(x, rank), _local(y, rank))
    full_options = StateDictOptions(full_state_dict=True)
    full = get_optimizer_state_dict(model, opt, options=full_options)
    sharded = get_optimizer_state_dict(model, opt)
    out["full_types"] = sorted({type(v).__name__ for s in full["state"].values()
                                for v in s.values()})
    out["sharded_types"] = sorted({type(v).__name__ for s in sharded["state"].values()
                                   for v in s.values()})
    # The full state is the unsharded optimizer's state, keyed by parameter names.
    names = [n for n, _ in ref.named_parameters()]
    ref_state = {names[i]: s for i, s in ref_opt.state_dict()["state"].items()}
    out["full_vs_reference"] = _state_diff(full["state"], ref_state)

    model_state = get_model_state_dict(model)
    path = os.path.join(_OUT_DIR, "dcp")
    dcp.save({"optim": sharded}, checkpoint_id=path)  # files written by both ranks
    reloaded = {}
    for label, saved, options in (("full", full, full_options), ("sharded", sharded, None),
                                  ("saved", None, None)):
        again = _shard(_model(), mesh)
        set_model_state_dict(again, model_state)
        again_opt = library.Adam(again.parameters(), lr=1.0)  # the checkpoint's lr wins
        if saved is None:  # from disk: a state dict of the right shape, filled by dcp.load
            target = {"optim": get_optimizer_state_dict(again, again_opt)}
            dcp.load(target, checkpoint_id=path)
            saved = target["optim"]
        set_optimizer_state_dict(again, again_opt, copy.deepcopy(saved), options=options)
        out[f"{label}/lr"] = again_opt.param_groups[0]["lr"]
        out[f"{label}/reloaded_state"] = _state_diff(
            get_optimizer_state_dict(again, again_opt, options=full_options)["state"],
            full["state"])
        reloaded[label] = (again, again_opt)
    for x, y in batches[STEPS:]:
        _train_step(ref, ref_opt, x, y)
        for again, again_opt in reloaded.values():
            _train_step(again, again_opt, _local(x, rank), _local(y, rank))
    for label, (again, _) in reloaded.items():
        out[f"{label}/continued"] = _max_diff(again.parameters(), ref.parameters())
    return out


# -- mixed precision under FSDP2: bfloat16 parameters, float32 state and master weights -------
MASTER = "master_param"
MIXED = {  # label: (optimizer, its mixed-precision options); a step of each on bf16 shards
    "master": ("Adam", {"master_weights": True}),
    "master/LAMB": ("LAMB", {"master_weights": True}),  # norms of the master's shards
    "default": ("Adam", {}),  # no master: fp32 state, the bf16 parameter stepped directly
    "stochastic": ("Adam", {"master_weights": True, "stochastic_rounding": True}),
}
MIXED_LR = 0.01  # steps of a few bfloat16 ulps of these weights: rounding them shows


def _bf16_model() -> torch.nn.Module:
    return _model().to(torch.bfloat16)


def _rows(full: torch.Tensor, rank: int) -> torch.Tensor:
    """The rows of ``full`` that ``rank`` holds under fully_shard (Shard(0): torch.chunk's
    pieces; none when the tensor has fewer rows than ranks)."""
    pieces = full.chunk(WORLD)
    return pieces[rank] if rank < len(pieces) else full[:0]


def _mixed_step(model, opt, ref, ref_opt, x, y, rank) -> None:
    """A step of the sharded model on this rank's half batch, and of the unsharded reference
    on the same full gradients (FSDP2's averaged bfloat16 gradients, gathered)."""
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(_local(x, rank).to(torch.bfloat16)),
                                        _local(y, rank).to(torch.bfloat16))
    loss.backward()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        q.grad = p.grad.full_tensor()
    opt.step()
    ref_opt.step()


def _shard_report(param, state: dict, ref_param, ref_state: dict, rank: int) -> dict:
    """One DTensor parameter's local shard and state against the reference's rows."""
    out = {"param_dtype": param.dtype,
           "param_diff": (param.to_local().double()
                          - _rows(ref_param.detach(), rank).double()).abs().max().item()
           if param.to_local().numel() else 0.0,
           "states": {}}
    for key, value in state.items():
        entry = {"type": type(value).__name__, "dtype": value.dtype}
        if distributed.is_dtensor(value):
            entry["placements"] = value.placements == param.placements
            entry["mesh"] = value.device_mesh == param.device_mesh
            entry["shape"] = tuple(value.shape) == tuple(param.shape)
            local = value.to_local()
            expected = _rows(ref_state[key], rank)
            entry["local_shape"] = tuple(local.shape) == tuple(expected.shape)
            entry["diff"] = ((local.double() - expected.double()).abs().max().item()
                             if local.numel() else 0.0)
        else:
            entry["diff"] = abs(float(value) - float(ref_state[key]))
        out["states"][key] = entry
    master = state.get(MASTER)
    if master is not None:
        local = master.to_local()
        # The parameter is its master rounded to nearest bfloat16, bit for bit ...
        out["param_is_rounded_master"] = torch.equal(param.to_local(),
                                                     local.to(torch.bfloat16))
        # ... and the master holds what bfloat16 cannot (0 would make the master pointless).
        out["master_below_bf16"] = ((local - local.to(torch.bfloat16).float()).abs().max()
                                    .item() if local.numel() else 0.0)
        # Stochastic rounding: the parameter is its master rounded toward zero (the low 16
        # bits cleared) or away from it (one bfloat16 ulp more), whichever is nearer or not.
        toward = local.view(torch.int32) & -(1 << 16)
        written = param.to_local().float()
        out["param_brackets_master"] = bool(
            ((written == toward.view(torch.float32))
             | (written == (toward + (1 << 16)).view(torch.float32))).all())
        out["param_not_nearest"] = int((param.to_local() != local.to(torch.bfloat16)).sum())
    return out


def _fsdp_mixed(rank: int) -> dict:
    mesh = _mesh()
    out, finals = {}, {}
    for label, (name, options) in MIXED.items():
        cls = _optimizer_class(name)
        ref = _bf16_model()
        ref_opt = cls(ref.parameters(), backend="numpy", lr=MIXED_LR, **options)
        model = _shard(_bf16_model(), mesh)
        opt = cls(model.parameters(), backend="numpy", lr=MIXED_LR, **options)
        for x, y in _batches():
            _mixed_step(model, opt, ref, ref_opt, x, y, rank)
        out[label] = [_shard_report(p, opt.state[p], q, ref_opt.state[q], rank)
                      for p, q in zip(model.parameters(), ref.parameters(), strict=True)]
        out[f"{label}/local_numel"] = [p.to_local().numel() for p in model.parameters()]
        out[f"{label}/moved"] = _max_diff(model.parameters(), _bf16_model().parameters())
        # The updates reach what fully_shard gathers: both models compute the same outputs.
        x = _local(_batches(1, seed=11)[0][0], rank).to(torch.bfloat16)
        with torch.no_grad():
            out[f"{label}/forward"] = (model(x) - ref(x)).abs().max().item()
        finals[label] = [_full(p).detach() for p in model.parameters()]
    # Master weights change the result: the bfloat16 roundings do not accumulate with them.
    out["master_vs_default"] = _max_diff(finals["master"], finals["default"])
    return out


def _fsdp_mixed_checkpoint(rank: int) -> dict:
    """dcp.save / dcp.load (and a full state dict) of Adam with master weights on bf16
    shards: master and states stay float32, and training goes on as if never stopped."""
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
    batches = _batches(STEPS + 2)
    hypers = {"lr": MIXED_LR, "master_weights": True, "backend": "numpy"}
    ref = _bf16_model()
    ref_opt = library.Adam(ref.parameters(), **hypers)
    model = _shard(_bf16_model(), mesh)
    opt = library.Adam(model.parameters(), **hypers)
    for x, y in batches[:STEPS]:
        _mixed_step(model, opt, ref, ref_opt, x, y, rank)
    full_options = StateDictOptions(full_state_dict=True)
    full = get_optimizer_state_dict(model, opt, options=full_options)
    sharded = get_optimizer_state_dict(model, opt)
    out["sharded_dtypes"] = {(type(v).__name__, k, v.dtype) for s in sharded["state"].values()
                             for k, v in s.items()}
    out["full_dtypes"] = {(type(v).__name__, k, v.dtype) for s in full["state"].values()
                          for k, v in s.items()}
    names = [n for n, _ in ref.named_parameters()]
    ref_state = {names[i]: s for i, s in ref_opt.state_dict()["state"].items()}
    out["full_vs_reference"] = _state_diff(full["state"], ref_state)

    model_state = get_model_state_dict(model)
    path = os.path.join(_OUT_DIR, "dcp-mixed")
    dcp.save({"optim": sharded}, checkpoint_id=path)
    reloaded = {}
    for label, saved, options in (("full", full, full_options), ("saved", None, None)):
        again = _shard(_bf16_model(), mesh)
        set_model_state_dict(again, model_state)
        again_opt = library.Adam(again.parameters(), lr=1.0, master_weights=True,
                                 backend="numpy")
        if saved is None:
            target = {"optim": get_optimizer_state_dict(again, again_opt)}
            dcp.load(target, checkpoint_id=path)
            saved = target["optim"]
        set_optimizer_state_dict(again, again_opt, copy.deepcopy(saved), options=options)
        out[f"{label}/lr"] = again_opt.param_groups[0]["lr"]
        out[f"{label}/state"] = [
            {k: (type(v).__name__, v.dtype,
                 not distributed.is_dtensor(v) or v.placements == p.placements)
             for k, v in again_opt.state[p].items()} for p in again.parameters()]
        # Bit for bit: a master weight cast through bfloat16 on the way would differ here.
        out[f"{label}/reloaded_state"] = _state_diff(
            {i: again_opt.state[p] for i, p in enumerate(again.parameters())},
            {i: opt.state[p] for i, p in enumerate(model.parameters())})
        reloaded[label] = (again, again_opt)
    out["master_below_bf16"] = max(
        (_full(opt.state[p][MASTER]) - _full(p).float()).abs().max().item()
        for p in model.parameters())
    for x, y in batches[STEPS:]:
        _mixed_step(model, opt, ref, ref_opt, x, y, rank)
        for again, again_opt in reloaded.values():
            again_opt.zero_grad(set_to_none=True)
            for p, q in zip(again.parameters(), model.parameters(), strict=True):
                p.grad = q.grad  # the gradients the reference stepped on
            again_opt.step()
    for label, (again, again_opt) in reloaded.items():
        out[f"{label}/continued"] = [
            _shard_report(p, again_opt.state[p], q, ref_opt.state[q], rank)
            for p, q in zip(again.parameters(), ref.parameters(), strict=True)]
    return out


# -- torch.amp.GradScaler under FSDP2: an inf in one rank's shard skips the step on every rank --
SCALE = 2.0**8  # a power of two: scaling and unscaling are exact in float64


def _snapshot(model, opt) -> tuple[list[torch.Tensor], dict]:
    """The full parameters and optimizer state (gathered: every rank runs the same gathers)."""
    params = [_full(p).detach().clone() for p in model.parameters()]
    state = {i: {k: _full(v).detach().clone() if torch.is_tensor(v) else v
                 for k, v in opt.state[p].items()}
             for i, p in enumerate(model.parameters())}
    return params, state


def _scaled_step(model, opt, scaler, x, y, rank: int, inf_rank: int | None = None) -> float:
    """One iteration on this rank's half batch with a scaled loss; ``inf_rank`` puts an inf
    into that rank's local shard of the first gradient (after FSDP's reduce-scatter: no other
    rank holds it). Returns the found_inf the optimizer was given on this rank.

    ``scaler`` is a torch.amp.GradScaler, or None: then the step is driven as GradScaler
    drives an optimizer with ``_step_supports_amp_scaling`` (``grad_scale`` and ``found_inf``
    set on it around ``step()``), with found_inf from this rank's local gradient shards
    only, as GradScaler computed it before DTensor reduced it (pytorch/pytorch#132816) and
    as any unscaler that looks at local shards does (torch's GradScaler now gives both ranks
    the inf)."""
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(_local(x, rank)), _local(y, rank))
    (scaler.scale(loss) if scaler is not None else loss * SCALE).backward()
    if rank == inf_rank:
        next(model.parameters()).grad.to_local()[0, 0] = math.inf
    if scaler is not None:
        scaler.step(opt)  # sets opt.grad_scale and opt.found_inf, calls opt.step()
        found = sum(float(f) for f in scaler._found_inf_per_device(opt).values())
        scaler.update()
        return found
    grads = [p.grad.to_local() for p in model.parameters() if p.grad is not None]
    found = 0.0 if all(bool(torch.isfinite(g).all()) for g in grads) else 1.0
    opt.grad_scale, opt.found_inf = torch.tensor(SCALE), torch.tensor(found)
    try:
        opt.step()
    finally:
        del opt.grad_scale, opt.found_inf
    return found


def _fsdp_found_inf(rank: int) -> dict:
    mesh = _mesh()
    out = {}
    batches = _batches(3)
    # Adam is element-wise (a rank stepping alone would go unnoticed but for its shards);
    # AdamWClip's global_norm all-reduces in the step (a rank stepping alone would wait in
    # it for the other). The local found_inf runs last: without agreement it would hang.
    for mode in ("scaler", "local"):
        for name in ("Adam", "AdamWClip"):
            cls = _optimizer_class(name)
            ref = _model()
            ref_opt = cls(ref.parameters(), backend="numpy", **HYPERS[name])
            model = _shard(_model(), mesh)
            opt = cls(model.parameters(), backend="numpy", **HYPERS[name])
            scaler = torch.amp.GradScaler("cpu", init_scale=SCALE) if mode == "scaler" else None
            label = f"{mode}/{name}"
            _scaled_step(model, opt, scaler, *batches[0], rank)
            _train_step(ref, ref_opt, *batches[0])
            params, state = _snapshot(model, opt)
            out[f"{label}/found_inf"] = _scaled_step(model, opt, scaler, *batches[1], rank,
                                                     inf_rank=1)
            skipped_params, skipped_state = _snapshot(model, opt)
            out[f"{label}/skip/moved"] = _max_diff(skipped_params, params)
            out[f"{label}/skip/state"] = _state_diff(skipped_state, state)
            out[f"{label}/skip/steps"] = [int(opt.state[p]["step"])
                                          for p in model.parameters()]
            out[f"{label}/next/found_inf"] = _scaled_step(model, opt, scaler, *batches[2],
                                                          rank)
            _train_step(ref, ref_opt, *batches[2])  # the reference never saw batch 1
            out[f"{label}/next/steps"] = [int(opt.state[p]["step"])
                                          for p in model.parameters()]
            out[f"{label}/next/moved"] = _max_diff(model.parameters(), skipped_params)
            out[f"{label}/next/params"] = _max_diff(model.parameters(), ref.parameters())
            out[f"{label}/next/state"] = _state_diff(opt.state_dict()["state"],
                                                     ref_opt.state_dict()["state"])
    return out


SCENARIOS = {
    "ddp": _ddp,
    "zero": _zero,
    "fsdp": _fsdp,
    "fsdp_checkpoint": _fsdp_checkpoint,
    "fsdp_triton": lambda rank: _fsdp(rank, backend="triton"),
    "fsdp_mixed": _fsdp_mixed,
    "fsdp_mixed_checkpoint": _fsdp_mixed_checkpoint,
    "fsdp_found_inf": _fsdp_found_inf,
}


def _triton_importable() -> bool:
    from optdsl.runtime import select

    return select.triton_available()


_OUT_DIR = ""  # the run's directory, shared by the workers


def _worker(rank: int, store: str, out_dir: str, names: list[str]) -> None:
    global _OUT_DIR
    _OUT_DIR = out_dir
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported; the NumPy runs ignore it
    os.environ["OPTDSL_CACHE_DIR"] = os.path.join(out_dir, "optdsl-cache")
    torch.set_num_threads(1)
    results: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=WORLD,
                                timeout=datetime.timedelta(seconds=PG_TIMEOUT))
        for name in names:
            start = time.perf_counter()
            try:
                results[name] = ("ok", SCENARIOS[name](rank))
            except Exception:  # noqa: BLE001 - reported to the test, with its traceback
                results[name] = ("error", traceback.format_exc())
                break  # the ranks may be out of step now: stop
            finally:
                results.setdefault("_seconds", {})[name] = time.perf_counter() - start
    except Exception:  # noqa: BLE001 - reported to the tests
        results["_setup"] = ("error", traceback.format_exc())
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (seconds on a small machine); results are saved


@pytest.fixture(scope="module")
def reports() -> dict:
    names = [n for n in SCENARIOS if n != "fsdp_triton" or _triton_importable()]
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as out_dir:
        store = os.path.join(out_dir, "store")
        procs = [ctx.Process(target=_worker, args=(rank, store, out_dir, names), daemon=True)
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
    return {"names": names, "ranks": per_rank}


def _report(reports: dict, name: str) -> list[dict]:
    """The scenario's result on each rank, or a failure that says why there is none."""
    if name not in reports["names"]:
        pytest.skip(f"{name}: not run here")
    found = []
    for rank, results in enumerate(reports["ranks"]):
        if name not in results:
            setup = results.get("_setup")
            why = setup[1] if setup else "an earlier scenario failed"
            pytest.fail(f"rank {rank}: {name} did not run: {why}")
        status, value = results[name]
        if status != "ok":
            pytest.fail(f"rank {rank}: {name} raised:\n{value}")
        found.append(value)
    return found


TIGHT = 1e-10  # float64 runs; only the order of additions (allreduce, shards) differs


# -- the tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Adam", "AdamWClip", "LAMB"])
def test_ddp_equals_one_process_on_the_global_batch(reports, name):
    for out in _report(reports, "ddp"):
        assert out[name] < TIGHT


@pytest.mark.parametrize("kind", ["mlp", "single"])
def test_zero_redundancy_optimizer(reports, kind):
    ranks = _report(reports, "zero")
    local = [out[f"{kind}/local_params"] for out in ranks]
    assert sum(local) == len(list(_model(kind).parameters()))
    if kind == "single":
        assert local == [1, 0]  # rank 1's local optimizer has one group and no parameter
    for out in ranks:
        assert out[f"{kind}/params"] < TIGHT
        assert out[f"{kind}/consolidated_state"] < TIGHT
        assert out[f"{kind}/reloaded_lr"] == LR
        assert out[f"{kind}/reloaded_params"] < TIGHT


@pytest.mark.parametrize("name", ["Adam", "AdamWClip", "SGDClip", "LAMB", "Reductions"])
def test_fsdp2_equals_unsharded(reports, name):
    for out in _report(reports, "fsdp"):
        assert out[name] < TIGHT
        assert out[f"{name}/state"] < TIGHT


def test_fsdp2_skip_nonfinite_agrees_across_ranks(reports):
    for out in _report(reports, "fsdp"):
        assert out["skip/skipped"] == 1 and out["skip/moved"] == 0.0


@pytest.mark.parametrize("mode", ["scaler", "local"])
@pytest.mark.parametrize("name", ["Adam", "AdamWClip"])
def test_fsdp2_grad_scaler_found_inf_agrees_across_ranks(reports, mode, name):
    """An inf in rank 1's gradient shard under GradScaler: both ranks skip the step
    (parameters, state and step counts as they were), then both take the next one, as the
    unsharded optimizer does without the skipped batch. "local": the found_inf each rank gets
    is its own shards' (1 on rank 1 only); the step agrees across ranks itself."""
    ranks = _report(reports, "fsdp_found_inf")
    label = f"{mode}/{name}"
    found = [out[f"{label}/found_inf"] for out in ranks]
    assert found[1] == 1.0
    if mode == "local":
        assert found == [0.0, 1.0]
    for out in ranks:
        assert out[f"{label}/skip/moved"] == 0.0 and out[f"{label}/skip/state"] == 0.0
        assert out[f"{label}/skip/steps"] == [1, 1, 1, 1]
        assert out[f"{label}/next/found_inf"] == 0.0
        assert out[f"{label}/next/steps"] == [2, 2, 2, 2]
        assert out[f"{label}/next/moved"] > 0
        assert out[f"{label}/next/params"] < TIGHT and out[f"{label}/next/state"] < TIGHT


def test_fsdp2_zero_size_shards_and_dtensor_state(reports):
    ranks = _report(reports, "fsdp")
    assert ranks[0]["local_numel"] == [10, 2, 3, 1]
    assert ranks[1]["local_numel"] == [5, 1, 0, 0]  # Linear(3, 1): empty on rank 1
    for out in ranks:  # as torch.optim.Adam under fully_shard: DTensor state, a plain step
        assert out["state_types"] == {"step": "Tensor", "exp_avg": "DTensor",
                                      "exp_avg_sq": "DTensor"}  # no amsgrad: no max_exp_avg_sq


def test_fsdp2_triton_backend_equals_unsharded(reports):
    """The Triton runner (in its interpreter, on CPU) combines partials the same way."""
    for out in _report(reports, "fsdp_triton"):
        assert out["Reductions"] < TIGHT
        assert out["Reductions/state"] < TIGHT


def test_fsdp2_distributed_checkpoint_round_trip(reports):
    for out in _report(reports, "fsdp_checkpoint"):
        assert out["full_types"] == ["Tensor"]
        assert out["sharded_types"] == ["DTensor", "Tensor"]
        assert out["full_vs_reference"] < TIGHT
        for label in ("full", "sharded", "saved"):
            assert out[f"{label}/lr"] == LR
            assert out[f"{label}/reloaded_state"] == 0.0
            assert out[f"{label}/continued"] < TIGHT


# Mixed precision (bfloat16 parameters): the sharded step does on each rank's rows exactly what
# the unsharded one does on the same full gradients (Adam is element-wise: the same float32
# operations on the same numbers). LAMB's norms add the shards' partials in another order:
# float32 master and states then agree to a few ulps and a weight to one bfloat16 ulp (its
# weights are below 1 in magnitude).
MIXED_TOLERANCES = {  # label: (master and float32 states, bfloat16 parameter)
    "master": (0.0, 0.0),
    "master/LAMB": (1e-6, 2.0**-8),
    "default": (0.0, 0.0),
    "stochastic": (0.0, 2.0**-8),  # the master is exact; its copy rounds either way
}


def _check_fp32_dtensor_state(shard: dict, keys: set[str], tolerance: float) -> None:
    """Every tensor state (the master weight included) a float32 DTensor sharded like its
    bfloat16 parameter, equal to the reference's rows; ``step`` a plain float32 tensor."""
    states = shard["states"]
    assert set(states) == keys | {"step"}, sorted(states)
    assert shard["param_dtype"] == torch.bfloat16
    assert states["step"]["type"] == "Tensor" and states["step"]["dtype"] == torch.float32
    assert states["step"]["diff"] == 0.0
    for key in keys:
        entry = states[key]
        assert entry["type"] == "DTensor" and entry["dtype"] == torch.float32, (key, entry)
        assert entry["placements"] and entry["mesh"], (key, entry)
        assert entry["shape"] and entry["local_shape"], (key, entry)
        assert entry["diff"] <= tolerance, (key, entry)


@pytest.mark.parametrize("label", ["master", "master/LAMB"])
def test_fsdp2_bf16_master_weights_equal_unsharded(reports, label):
    ranks = _report(reports, "fsdp_mixed")
    assert ranks[0][f"{label}/local_numel"] == [10, 2, 3, 1]
    assert ranks[1][f"{label}/local_numel"] == [5, 1, 0, 0]  # zero-size shards on rank 1
    states, params = MIXED_TOLERANCES[label]
    keys = {"exp_avg", "exp_avg_sq"}  # (Adam without amsgrad keeps no max_exp_avg_sq)
    for out in ranks:
        assert out[f"{label}/moved"] > 0
        for shard in out[label]:
            _check_fp32_dtensor_state(shard, keys | {MASTER}, states)
            assert shard["param_is_rounded_master"]  # bit for bit, on every rank's shard
            assert shard["param_diff"] <= params
        if params == 0.0:
            assert out[f"{label}/forward"] == 0.0
    # The masters hold more than their bfloat16 parameters (else the checks above are moot).
    assert min(max(s["master_below_bf16"] for s in out[label]) for out in ranks) > 0


def test_fsdp2_bf16_stochastic_rounding_of_master_weights(reports):
    """Each rank rounds its shard's copy of the master up or down at random; the masters
    themselves are the unsharded run's, exactly."""
    ranks = _report(reports, "fsdp_mixed")
    states, params = MIXED_TOLERANCES["stochastic"]
    for out in ranks:
        for shard in out["stochastic"]:
            _check_fp32_dtensor_state(shard, {"exp_avg", "exp_avg_sq", MASTER}, states)
            assert shard["param_brackets_master"]
            assert shard["param_diff"] <= params
    # Rounded to nearest everywhere would mean the option did nothing.
    assert sum(s["param_not_nearest"] for out in ranks for s in out["stochastic"]) > 0
    assert all(s["param_not_nearest"] == 0 for out in ranks for s in out["master"])


def test_fsdp2_bf16_parameters_keep_fp32_state(reports):
    ranks = _report(reports, "fsdp_mixed")
    for out in ranks:
        assert out["default/moved"] > 0
        for shard in out["default"]:
            _check_fp32_dtensor_state(shard, {"exp_avg", "exp_avg_sq"}, 0.0)
            assert shard["param_diff"] == 0.0
        assert out["default/forward"] == 0.0
        # The same steps with master weights end elsewhere: the two runs are not one.
        assert out["master_vs_default"] > 0


def test_fsdp2_bf16_master_weights_distributed_checkpoint(reports):
    fp32_states = {"exp_avg", "exp_avg_sq", MASTER, "step"}
    for out in _report(reports, "fsdp_mixed_checkpoint"):
        assert out["sharded_dtypes"] == {("DTensor" if k != "step" else "Tensor", k,
                                          torch.float32) for k in fp32_states}
        assert out["full_dtypes"] == {("Tensor", k, torch.float32) for k in fp32_states}
        assert out["full_vs_reference"] == 0.0
        # A master cast through bfloat16 on the way would lose this much at least.
        assert out["master_below_bf16"] > 1e-4
        for label in ("full", "saved"):
            assert out[f"{label}/lr"] == MIXED_LR
            for state in out[f"{label}/state"]:
                assert state == {k: ("DTensor" if k != "step" else "Tensor", torch.float32,
                                     True) for k in fp32_states}
            assert out[f"{label}/reloaded_state"] == 0.0
            for shard in out[f"{label}/continued"]:
                _check_fp32_dtensor_state(shard, fp32_states - {"step"}, 0.0)
                assert shard["param_is_rounded_master"] and shard["param_diff"] == 0.0


# -- single process -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_distributed_checkpoint_round_trip_one_process(name):
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    cls = getattr(library, name)
    batches = _batches(4)
    model = _model()
    opt = cls(model.parameters(), lr=LR)
    for x, y in batches[:2]:
        _train_step(model, opt, x, y)
    saved = get_optimizer_state_dict(model, opt)
    assert set(saved["state"]) == {n for n, _ in model.named_parameters()}
    again = _model()
    again.load_state_dict(model.state_dict())
    again_opt = cls(again.parameters(), lr=1.0)
    set_optimizer_state_dict(again, again_opt, copy.deepcopy(saved))
    assert again_opt.param_groups[0]["lr"] == LR
    assert _state_diff(again_opt.state_dict()["state"], opt.state_dict()["state"]) == 0.0
    for x, y in batches[2:]:
        _train_step(model, opt, x, y)
        _train_step(again, again_opt, x, y)
    # Not bit-exact for NAdam: loading casts its float32 scalar state mu_product to the
    # parameters' float64, as torch.optim.Optimizer.load_state_dict does for torch's NAdam.
    assert _max_diff(again.parameters(), model.parameters()) < TIGHT


def test_plain_parameters_take_the_plain_path():
    entries = [(torch.zeros(3), torch.ones(3), {}, 1.0)]
    assert distributed.localize(entries, []) == (entries, None)


def _slots_run(prog, sizes, combine):
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(n, generator=gen, dtype=torch.float64) for n in sizes]
    grads = [torch.randn(n, generator=gen, dtype=torch.float64) for n in sizes]
    opt = prog.optimizer(params, backend="numpy")
    hyper = {"lr": LR}
    entries = []
    for p, g in zip(params, grads):
        state = opt.state[p]
        opt._init_state(p, state, hyper)
        entries.append((p, g, state, 1.0))
    options = StepOptions(hyper, combine=combine(sizes) if combine else None)
    NumpyRunner(prog).run(prog.variant(hyper), [Entry(*e) for e in entries], options)
    return params


def test_combiner_without_sharded_parameters_equals_the_plain_path():
    """The runtime hands raw partials to ``combine``; with nothing sharded, the result
    (norm, mean of a zero-size tensor) equals the plain path's."""
    prog = optdsl.compile(REDUCTIONS)
    sizes = [7, 0, 9000]
    plain = _slots_run(prog, sizes, None)
    hooked = _slots_run(prog, sizes,
                        lambda sizes: distributed.ShardCombiner([None] * len(sizes), sizes))
    for a, b in zip(plain, hooked):
        assert torch.equal(a, b)


def test_mean_of_a_zero_size_parameter_is_nan_under_the_combiner():
    from optdsl.codegen.contract import ParamSlot
    from optdsl.runtime.reduce import finish

    slot = ParamSlot(1.0, [], 2)
    combine = distributed.ShardCombiner([None], [0])
    finish(((0, "mean"), (1, "norm")), [slot], [[np.float64(0.0), np.float64(4.0)]], [0],
           [None, None], combine)
    assert math.isnan(slot.red[0]) and slot.red[1] == 2.0
