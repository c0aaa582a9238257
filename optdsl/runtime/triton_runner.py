"""Runs one param group's step through a program's generated Triton module, with every scalar
on the device: a steady-state step launches kernels and never waits for the GPU.

Each optimizer has its own runner: its plans and device tables (optdsl.runtime.device_tables)
are that optimizer's, kept per param group while the group's tensors are the same.

What one step launches, per bucket (the parameters that share a device and element dtypes):
one kernel per sweep of the program, whose grid is one program per block of BLOCK elements
over all the bucket's tensors (program ``i`` reads row ``i`` of the block map: tensor index,
start offset) and whose programs compute their tensor's scalars in a prologue from the
device tables (hypers, the step count ``state["step"]``, scalar states, finished reductions);
after a reduction sweep, the kernels that finish its reductions on the device
(optdsl.runtime.device_reduce); last, ``finish_step``, one program per tensor, which advances
the step count and writes the scalar states. Adam is two launches per bucket, AdamWClip
(global-norm clipping) five. A sweep that accumulates row and column statistics for a
library stage runs over tiles instead (optdsl.runtime.device_stats: its grid, tile map and
partials are the bucket's ``stats``), followed by one launch of ``stats_finish``. Orders
are fixed (no float atomics): the same bits every run.

What the host does in a steady-state step: check that the tensors are the planned ones,
point the table at gradients that moved, update the hyper table if a hyper changed, and
launch. With torch.amp's in-step unscaling (``fused=True``) the kernels read the scale and
found_inf tensors: a skipped step writes nothing, decided on the device.

Dtypes: float32, float16, bfloat16 and float64 tensors are read and written in place in
their own dtype; arithmetic is float32 (float64 for float64 parameters); scalars are
computed in float64. Tensors that are not contiguous, not on the parameter's device, or of
another dtype are staged through a contiguous copy and copied back after the step (a plan
that stages is rebuilt every step). Zero-size parameters take part in no sweep; their
reductions are those of an empty tensor and their step counts advance.

Mixed precision (optdsl.optim.precision): a parameter with an fp32 master weight comes as the
master (in the w column) and its low-precision tensor (``copies``), which the final sweep
writes through the copy column (constexpr COPY; such parameters form their own buckets).
With a rounding seed, bfloat16 stores round stochastically (constexpr SR; the seed of a
bucket is hashed from the step's seed and the bucket's index; the group's update count that
the seed derives from is kept on the host, so it costs no read of the step counts).

Under TRITON_INTERPRET=1 the same kernels and tables run on CPU tensors through Triton's
interpreter (raw pointers loaded from a table work there, since everything lives in this
process's memory). ``launcher`` is what launches a kernel: a benchmark of the host's share
of a step replaces it with one that does nothing.
"""

from __future__ import annotations

import contextlib
import struct
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch

from optdsl.codegen.contract import GeneratedModule
from optdsl.runtime import device_library, device_reduce, device_stats, library_stage, select
from optdsl.runtime.device_tables import (
    DTYPES,
    SCALAR_DTYPES,
    Bucket,
    DeviceBatch,
    DevicePlan,
    GroupTables,
    capturing,
    constexprs_of,
    tl_dtypes,
)
from optdsl.ir.ops import PARAM_FACTS
from optdsl.runtime.library_stage import tensor_facts
from optdsl.runtime.rounding import derive_seed
from optdsl.runtime.step import Entry, OneStepAtATime, StepOptions

_CACHED_PLANS = 8  # param groups whose tables a runner keeps


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """Launch a Triton kernel (the default launcher)."""
    kernel[grid](*args, **kwargs)


class _Context:
    """The generated step's ``ctx`` on the device path: ``sweep`` launches, ``library`` runs
    a library stage (torch, on the device)."""

    __slots__ = ("library", "sweep")

    def __init__(self, sweep: Callable, library: Callable | None = None) -> None:
        self.sweep = sweep
        self.library = library


class TritonRunner:
    """One optimizer's runner of a program's generated Triton steps."""

    steps_on_device = True  # step counts and scalar states live on the parameters' device

    def __init__(self, program, block: int | None = None,
                 chunk: int = device_reduce.CHUNK) -> None:
        self.program = program
        self.chunk = chunk  # reduction partials combined at a time (a power of two)
        if block is None:
            block = 256 if select.interpreting() else 1024
        if block < 16 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block}")
        self.block = block
        self.num_warps = 4 if block <= 1024 else 8
        self.state_keys = [(s.key, s.tensor) for s in program.states.values()]
        self.tensor_keys = [key for key, is_tensor in self.state_keys if is_tensor]
        self.scalar_keys = [key for key, is_tensor in self.state_keys if not is_tensor]
        # `per row` / `per col` states: read and committed by library stages, not streamed
        self.shaped_keys = frozenset(s.key for s in program.states.values() if s.per)
        self._plans: OrderedDict = OrderedDict()
        self._busy = OneStepAtATime()
        self.launcher: Callable = launch

    def forget(self) -> None:
        """Drop the kept plans (after a load_state_dict replaced the states)."""
        self._plans.clear()

    # -- one step ------------------------------------------------------------------------------
    def run(self, variant, entries: list[Entry], options: StepOptions) -> None:
        """Step every entry in place (the runner protocol of optdsl.runtime.step)."""
        batch = DeviceBatch(-1, [e.param for e in entries], [e.grad for e in entries],
                            [e.state for e in entries], dict(options.hyper),
                            copies=options.copies, combine=options.combine)
        if options.inv_grad_scale != 1.0:
            batch.grad_scale = torch.tensor(1.0 / options.inv_grad_scale)
        if options.rounding_seed is not None:
            seed = options.rounding_seed
            batch.seed_of = lambda count: seed
        self.run_device(variant, batch)

    def run_device(self, variant, batch: DeviceBatch, owners: list | None = None) -> None:
        """Step a group's tensors in place, on the device. ``owners``: the objects that
        identify the batch's tensors between steps (default: the batch's params and states;
        under FSDP2, the DTensors and their state dicts, whose local views are new each
        step)."""
        with self._busy, np.errstate(all="ignore"):
            module = variant.generated("triton")
            for state in batch.states:
                variant.check_states(state)
            plan = self._plan(module, batch, owners)
            self._launch_step(module, plan, batch)

    def step_again(self, variant, number: int, params: list, states: list, grads: list,
                   batch: DeviceBatch, known: tuple | None = None) -> bool:
        """A steady-state step's short way: when param group ``number``'s plan still fits
        (``params`` and their ``states`` are the planned objects, with the same storage),
        launch it with ``grads`` and return True. False: the caller gathers a whole batch
        (making missing state, finding master weights) and calls ``run_device``. ``batch``
        brings the step's other inputs (hypers, AMP tensors, seeds); its tensors are the
        plan's. ``known``: a key standing for the tensors' objects and storage (the
        parameters' record tokens, StepOptions.tables_key): while it is the one the plan was
        last found valid for, the plan is not checked again."""
        with self._busy, np.errstate(all="ignore"):
            module = variant.generated("triton")
            plan = self._plans.get(_plan_key(number, params, module))
            if plan is None or plan.module is not module or plan.sharded:
                return False
            if known is None or plan.known != known or plan.copies is not None:
                if not plan.still_valid((params, states), plan.stepped, states,
                                        None if plan.copies is None else plan.copies):
                    return False
                plan.known = known
            moved = plan.grads_moved(grads)
            if moved is None:
                return False
            if moved:
                plan.point_at_grads()
            batch.params, batch.grads, batch.states = plan.stepped, grads, states
            batch.copies = plan.copies
            self._launch_step(module, plan, batch)
            return True

    def _plan(self, module: GeneratedModule, batch: DeviceBatch, owners) -> DevicePlan:
        key = _plan_key(batch.number, batch.params, module)
        plan = self._plans.get(key)
        ident = owners if owners is not None else (batch.params, batch.states)
        if plan is not None and plan.module is module and plan.direct and \
                plan.still_valid(ident, batch.params, batch.states, batch.copies):
            moved = plan.grads_moved(batch.grads)
            if moved is not None:
                if moved:
                    plan.point_at_grads()
                self._plans.move_to_end(key)
                return plan
        if batch.capturable and capturing():
            raise RuntimeError("a CUDA graph is being captured, but this param group's tensors "
                               "changed since the last step (new parameters, states or "
                               "gradients of another layout): run one step with them outside "
                               "the capture first")
        plan = self._build(module, batch, ident)
        if plan.direct and batch.number >= 0:
            self._plans[key] = plan
            while len(self._plans) > _CACHED_PLANS:
                self._plans.popitem(last=False)
        return plan

    def _launch_step(self, module: GeneratedModule, plan: DevicePlan,
                     batch: DeviceBatch) -> None:
        plan.write_hypers(module.module.HYPERS, batch.hyper)
        skip = batch.found_inf is not None
        seeds = self._seeds(plan, batch)
        amp = self._amp_tensors(plan, batch)
        launcher = self.launcher

        tiled = {s for s, _, _ in getattr(module.module, "STATS", ())}

        def sweep(k: int, _params=None) -> None:
            info = module.sweeps[k]
            stores = not info.reductions
            for number, bucket in enumerate(plan.buckets):
                if not bucket.num_blocks:
                    continue
                tables = plan.tables[bucket.device]
                _, fin, _ = tables.at(bucket.offset)
                gsc, finf = amp[bucket.device]
                seed = seeds[number] if stores and seeds else 0
                grid, blocks, extra, shape = (bucket.num_blocks,), bucket.blocks, (), {}
                warps = self.num_warps
                if k in tiled:  # row and column statistics: over tiles (device_stats)
                    st = bucket.stats
                    grid, blocks, extra = (st.num_tiles,), st.blocks, (st.shp, st.sp)
                    shape, warps = {"TR": st.tr, "TC": st.tc}, device_stats.NUM_WARPS
                with _on(bucket.device):
                    launcher(info.kernel, grid, bucket.ptrs, bucket.sizes,
                             blocks, tables.hyp, fin, tables.tot, plan.red[id(bucket)],
                             gsc, finf, seed, *extra, **bucket.constexprs, **shape,
                             SR=stores and bool(seeds), SKIP=skip and stores,
                             num_warps=warps, enable_fp_fusion=False)
            if info.reductions:
                device_reduce.finish_sweep(plan, module, k, _launcher_on(launcher), self.block,
                                           batch.combine, self.chunk, k in tiled)
            if k in tiled:
                for bucket in plan.buckets:
                    st = bucket.stats
                    if st.finish_rows:
                        with _on(bucket.device):
                            launcher(module.module.STATS_FINISH, (st.finish_rows, st.chunks),
                                     st.finish, OUT=st.out_tl,
                                     CHUNK=device_stats.CHUNK, num_warps=4)

        module.step(_Context(sweep, self._library_stages(module, plan, batch, amp)), None)
        for bucket in plan.buckets:
            tables = plan.tables[bucket.device]
            _, fin, _ = tables.at(bucket.offset)
            gsc, finf = amp[bucket.device]
            with _on(bucket.device):
                launcher(module.module.FINISH_STEP, (len(bucket.members),), bucket.ptrs,
                         tables.hyp, fin, tables.tot, gsc, finf, **bucket.constexprs,
                         SR=False, SKIP=skip, num_warps=1)
        if module.libraries:
            found = {d: finf for d, (_, finf) in amp.items()} if skip else None
            device_library.commit(plan.slots, batch.states, self.state_keys, found)
        for original, staged in plan.writeback:
            original.copy_(staged)
        if seeds and plan.count is not None:
            plan.count += len(plan.params)
            if skip:  # (whether the step happened is known on the device only)
                plan.count = None

    def _library_stages(self, module: GeneratedModule, plan: DevicePlan, batch: DeviceBatch,
                        amp: dict) -> Callable | None:
        """``ctx.library``: this step's inputs handed to each tensor's slot, then a function
        running library stage ``k`` for every tensor (optdsl.runtime.device_library)."""
        if not module.libraries:
            return None
        hypers = {device: device_library.stage_hypers(module.module.HYPERS, batch.hyper,
                                                      tables.hyp)
                  for device, tables in plan.tables.items()}
        grads = batch.grads if plan.direct else [None] * len(plan.slots)
        for slot, grad, state in zip(plan.slots, grads, batch.states):
            slot.refresh(grad, state, hypers[slot.device], amp[slot.device][0].reshape(()))

        def run(k: int, _params=None) -> None:
            if not plan.slots:
                return
            with _on(plan.home):
                library_stage.run(module, module.libraries[k], plan.slots,
                                  lambda i, p: p.tensors, batch.combine)

        return run

    def _seeds(self, plan: DevicePlan, batch: DeviceBatch) -> list[int]:
        """Per bucket, the stochastic rounding seed of this step (none without rounding)."""
        if batch.seed_of is None:
            return []
        if capturing():
            raise RuntimeError("stochastic_rounding=True cannot be captured in a CUDA graph: "
                               "its seed changes every step and would be replayed as it was")
        steps = [s["step"] for s in batch.states]
        versions = [x._version for x in steps]  # (bumped by a step count changed in place)
        if plan.count is None or versions != plan.step_versions:
            # read once per plan (not in a steady state), and again after the counts were
            # written by other hands than the kernels' (`state["step"].fill_(...)`)
            plan.count = int(sum(float(x) for x in steps))
            plan.step_versions = versions
        seed = batch.seed_of(plan.count + len(plan.params))
        return [derive_seed(seed, number) for number in range(len(plan.buckets))]

    def _amp_tensors(self, plan: DevicePlan, batch: DeviceBatch) -> dict:
        """Per device: (the grad scale, found_inf) tensors the kernels read."""
        out = {}
        for device, tables in plan.tables.items():
            scale = tables.one if batch.grad_scale is None else batch.grad_scale
            found = tables.zero if batch.found_inf is None else batch.found_inf
            out[device] = (_on_device(scale, device), _on_device(found, device))
        return out

    # -- tables --------------------------------------------------------------------------------
    def _build(self, module: GeneratedModule, batch: DeviceBatch, ident) -> DevicePlan:
        tl_types = tl_dtypes()
        scalars = tuple(module.module.SCALAR_STATES)
        plan = DevicePlan(module, list(ident[0]), None if batch.copies is None
                          else list(batch.copies), [p.data_ptr() for p in batch.params],
                          [g.data_ptr() for g in batch.grads], [g.dtype for g in batch.grads],
                          [tuple(s.values()) for s in ident[1]])
        plan.stepped = list(batch.params)
        plan.param_shapes = [p.shape for p in batch.params]
        plan.sharded = batch.combine is not None
        plan.watch_keys = [tuple(k for k, v in s.items() if type(v) is torch.Tensor)
                           for s in batch.states]
        plan.watch_ptrs = [s[k].data_ptr() for s, keys in zip(batch.states, plan.watch_keys)
                           for k in keys]
        copies = batch.copies or [None] * len(batch.params)
        groups: dict = {}
        order = sorted(range(len(batch.params)), key=lambda i: batch.params[i].numel() == 0)
        for index in order:  # (non-empty tensors first: bucket numbers as before)
            row, dtypes, size = self._row(plan, module, batch, index, copies[index], tl_types)
            device = batch.params[index].device
            members, rows, sizes = groups.setdefault((device, dtypes), ([], [], []))
            members.append(index)
            rows.append(row)
            sizes.append(size)
        counts = batch.combine.numel if batch.combine is not None else \
            [p.numel() for p in batch.params]
        offset = 0
        plan.row_of = [0] * len(batch.params)
        for (device, dtypes), (members, rows, sizes) in groups.items():
            width = len(module.columns) + 1  # the columns and the copy: what sweeps stream
            aligned = all(p % 16 == 0 for row, n in zip(rows, sizes) if n
                          for p in row[:width] if p)
            constexprs = constexprs_of(module.columns, scalars, dtypes, self.block, aligned)
            bucket = Bucket(device, dtypes, members, rows, sizes, self.block, constexprs, offset)
            for j, index in enumerate(members):
                plan.row_of[index] = offset + j
            plan.buckets.append(bucket)
            programs = bucket.num_blocks
            stats = getattr(module.module, "STATS", ())
            if stats:  # (fused in no sharded step: the stage gathers the whole matrix)
                bucket.stats = device_stats.BucketStats(
                    stats, [batch.params[i] for i in members], self.block, device,
                    fuse=batch.combine is None)
                programs = max(programs, bucket.stats.num_tiles)
            widest = max((len(s.reductions) for s in module.sweeps), default=0)
            plan.red[id(bucket)] = torch.empty(max(programs * widest, 1),
                                               dtype=torch.float64, device=device)
            offset += len(members)
        full = np.zeros(offset)
        for index, row in enumerate(plan.row_of):
            full[row] = counts[index]
        plan.home = plan.buckets[0].device if plan.buckets else None
        width = getattr(module.module, "FIN_WIDTH", module.num_reductions)
        for bucket in plan.buckets:
            if bucket.device not in plan.tables:
                plan.tables[bucket.device] = GroupTables(
                    bucket.device, len(module.module.HYPERS), offset, width, full)
        if module.libraries:
            plan.slots = [self._slot(plan, module, batch, index)
                          for index in range(len(batch.params))]
            for bucket in plan.buckets:  # the statistics its stats sweep finishes
                if bucket.stats is not None:
                    for j, index in enumerate(bucket.members):
                        plan.slots[index].stats = bucket.stats.outs[j]
        return plan

    def _slot(self, plan: DevicePlan, module: GeneratedModule, batch: DeviceBatch,
              index: int) -> device_library.DeviceSlot:
        """A tensor's ``p`` in the library stages: views of what its pointer-table row
        points at, its row of the finished table, its facts."""
        columns, scalars = plan.columns[index]
        specs = self.program.states
        shaped = {c: specs[name].key for c, name in enumerate(module.columns)
                  if name in specs and specs[name].per}
        states, found = [], iter(scalars[1:])
        for _, is_tensor in self.state_keys:
            states.append(None if is_tensor else next(found))
        param = batch.params[index]
        tables = plan.tables[param.device]
        whole = None if batch.combine is None else batch.combine.whole_shape(index, param)
        return device_library.DeviceSlot(columns, shaped, scalars[0], states,
                                         tables.fin[plan.row_of[index]], tables.tot, param,
                                         whole)

    def _row(self, plan: DevicePlan, module: GeneratedModule, batch: DeviceBatch, index: int,
             copy, tl_types: dict) -> tuple[list[int], tuple, int]:
        """A tensor's pointer-table row, the dtypes that pick its bucket, and its size."""
        param, grad, state = batch.params[index], batch.grads[index], batch.states[index]
        device = param.device
        n = param.numel()
        compute = torch.float64 if param.dtype == torch.float64 else torch.float32
        # (a `per row` / `per col` state is read by library stages only: no column)
        tensors = [param, grad] + [None if key in self.shaped_keys else state.get(key)
                                   for key in self.tensor_keys]
        tensors += [torch.empty(n, dtype=compute, device=device) for _ in module.scratch]
        row, dtypes, columns, scalars = [], [], [], []
        for j, x in enumerate(tensors + [copy]):
            if x is None:  # a state this step neither reads nor writes, or no copy
                row.append(0)
                dtypes.append(None)
                columns.append(None)
                continue
            if x.numel() != n:
                what = ("grad" if j == 1 else "the parameter of a master weight"
                        if j == len(tensors) else f"state[{self.tensor_keys[j - 2]!r}]")
                raise RuntimeError(f"{what} has {x.numel()} elements but its parameter has {n}")
            x = self._usable(plan, x.detach(), device, DTYPES, written=j != 1)
            row.append(x.data_ptr())
            dtypes.append(x.dtype)
            columns.append(x)
        for key in ["step"] + self.scalar_keys:
            x = self._usable(plan, state[key].detach().reshape(()), device, SCALAR_DTYPES,
                             written=True)
            row.append(x.data_ptr())
            dtypes.append(x.dtype)
            scalars.append(x)
        plan.columns[index] = (columns[:len(tensors)], scalars)  # (library stages read them)
        if hasattr(module.module, "PARAM_FACTS"):
            row += _facts(param, None if batch.combine is None
                          else batch.combine.whole_shape(index, param))
        return row, tuple(dtypes), n

    def _usable(self, plan: DevicePlan, x: torch.Tensor, device: torch.device, dtypes,
                written: bool) -> torch.Tensor:
        """``x`` itself, or a contiguous copy on ``device`` in a supported dtype (then the
        plan stages: it copies back after the step and is rebuilt every step)."""
        plan.keep.append(x)
        if x.device == device and x.dtype in dtypes and x.is_contiguous():
            return x
        staged = x.to(device=device, dtype=x.dtype if x.dtype in dtypes else dtypes[0],
                      copy=True, memory_format=torch.contiguous_format)
        if written:
            plan.writeback.append((x, staged))
        plan.keep.append(staged)
        plan.direct = False
        return staged


def _plan_key(number: int, params: list, module: GeneratedModule) -> tuple:
    """Plans are kept per param group and variant: a group whose parameters take several
    variants (Adafactor's matrices and vectors) steps each with its own plan."""
    return number, len(params), id(module)


def _on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x if x.device == device else x.to(device, non_blocking=True)


def _launcher_on(launcher: Callable) -> Callable:
    def run(kernel, grid, *args, **kwargs) -> None:
        launcher(kernel, grid, *args, num_warps=4, **kwargs)

    return run


def _on(device: torch.device):
    """Launch on ``device`` (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _facts(param: torch.Tensor, shape: tuple[int, ...] | None = None) -> list[int]:
    """A tensor's facts as the last columns of its pointer-table row (PARAM_FACTS order):
    its matrix view's rows and columns, dimensions, elements, and its dtype's machine
    epsilon as the bits of a float64."""
    facts = tensor_facts(param, shape)  # (shape: the whole parameter's, of a shard)
    bits = struct.unpack("<q", struct.pack("<d", facts["dtype_eps"]))[0]
    return [bits if name == "dtype_eps" else int(facts[name]) for name in PARAM_FACTS]
