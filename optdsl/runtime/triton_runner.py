"""Runs one param group's step through a program's generated Triton module.

Each optimizer has its own runner: its plans and device tables are that optimizer's.

What one launch is: for each sweep of the program, ONE kernel launch per bucket of the group,
a bucket being the parameters that share a device and element dtypes (of w, g and each
tensor state). The launch's grid is one program per block of BLOCK elements over all the
bucket's tensors; program ``i`` reads row ``i`` of a block map (tensor index, start offset;
int64) and finds its tensor's data pointers in a pointer table (one int64 row per tensor:
w, g, then each tensor state), its size in a size table, and its scalars in a scalar table
(one row per tensor in the compute dtype: each parameter's row from the generated host step).
The pointer, size and block tables live on the device and are cached while the set of
tensors (their addresses, sizes and dtypes) is unchanged; only the scalar table is copied
each step.

Reductions: a sweep that feeds reductions stores one float64 partial per block and
reduction; the partials come back to the host in one copy per bucket and are combined per
tensor in a fixed order (the descriptor's combine, ``reduceat`` over each tensor's blocks),
then finished with every other back end's (optdsl.runtime.reduce), so results are
deterministic (no float atomics).

Dtypes: float32, float16, bfloat16 and float64 tensors are read and written in place in
their own dtype; arithmetic is float32 (float64 for float64 parameters). Tensors that are
not contiguous, not on the parameter's device, or of another dtype are staged through a
contiguous copy and copied back after the step. Zero-size parameters take no part in the
launches (their reductions read as those of an empty tensor).

Mixed precision (optdsl.optim.precision): a parameter with an fp32 master weight comes as the
master (in the w column) and its low-precision tensor (``copies``), which the final pass
writes through the pointer table's last column (constexpr COPY; such parameters form their
own buckets). With a rounding seed, bfloat16 stores round stochastically (constexpr SR; the
seed of a bucket is hashed from the step's seed and the bucket's index).

Under TRITON_INTERPRET=1 the same kernels and tables run on CPU tensors through Triton's
interpreter (raw pointers loaded from a table work there, since everything lives in this
process's memory).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np
import torch

from optdsl.codegen.contract import GeneratedModule, ParamSlot
from optdsl.codegen.triton import dtype_param
from optdsl.ir.reductions import REDUCTIONS
from optdsl.runtime import select
from optdsl.runtime.library_stage import commit, machine_eps
from optdsl.runtime.rounding import derive_seed
from optdsl.runtime.step import Entry, OneStepAtATime, StepContext, StepOptions, whole_shape

_CACHED_PLANS = 8  # tensor sets remembered per runner (its param groups)


def _tl_dtypes() -> dict:
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float16: tl.float16,
            torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}


class _Bucket:
    """The parameters of one launch and their device tables."""

    def __init__(self, device: torch.device, dtypes: tuple, members: list[int],
                 rows: list[list[int]], sizes: list[int], block: int, columns: list[str],
                 blocks_cache: OrderedDict) -> None:
        """``dtypes``: of each column, then of the copy (None without one); ``rows``: the
        pointers of each column, then the copy's (0 without one)."""
        tl_types = _tl_dtypes()
        *dtypes, copy_dtype = dtypes
        self.device = device
        self.members = members
        self.sizes_host = np.asarray(sizes, dtype=np.int64)
        self.compute = torch.float64 if dtypes[0] == torch.float64 else torch.float32
        self.np_compute = np.float64 if self.compute == torch.float64 else np.float32
        # (a column of a state the step does not use has no tensor: a placeholder dtype)
        self.constexprs = {dtype_param(c): tl_types[d or torch.float32]
                           for c, d in zip(columns, dtypes)}
        self.constexprs["DT_wcopy"] = tl_types[copy_dtype or dtypes[0]]
        self.constexprs["COPY"] = copy_dtype is not None
        self.constexprs["CT"] = tl_types[self.compute]
        self.constexprs["BLOCK"] = block
        self.constexprs["ALIGNED"] = all(p % 16 == 0 for row in rows for p in row if p)
        self.ptrs = torch.tensor(rows, dtype=torch.int64).to(device)
        self.sizes = torch.from_numpy(self.sizes_host).to(device)
        key = (str(device), block, tuple(sizes))
        found = blocks_cache.get(key)
        if found is None:
            counts = -(-self.sizes_host // block)
            first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
            tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
            start = (np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts))
            table = np.stack([tensor, start * block], axis=1)
            found = (torch.from_numpy(np.ascontiguousarray(table)).to(device), first)
            blocks_cache[key] = found
            while len(blocks_cache) > _CACHED_PLANS:
                blocks_cache.popitem(last=False)
        else:
            blocks_cache.move_to_end(key)
        self.blocks, self.first = found
        self.num_blocks = int(self.blocks.shape[0])
        self.dummy = torch.zeros(1, dtype=self.compute, device=device)
        self.dummy_red = torch.zeros(1, dtype=torch.float64, device=device)


class _Plan:
    """How one set of tensors is launched: buckets, and what to copy back afterwards."""

    def __init__(self) -> None:
        self.buckets: list[_Bucket] = []
        self.writeback: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.numel: list[int] = []
        self.keep: list[torch.Tensor] = []  # staged copies the pointer table points into
        self.scratch: dict[int, list[torch.Tensor]] = {}  # per entry: its scratch tensors


def _usable(t: torch.Tensor, device: torch.device, tl_types: dict) -> bool:
    return t.device == device and t.dtype in tl_types and t.is_contiguous()


def _staged(t: torch.Tensor, device: torch.device, tl_types: dict) -> torch.Tensor:
    dtype = t.dtype if t.dtype in tl_types else torch.float32
    return t.detach().to(device=device, dtype=dtype, copy=True,
                         memory_format=torch.contiguous_format)


class TritonRunner:
    """One optimizer's runner of a program's generated Triton steps."""

    def __init__(self, program, block: int | None = None) -> None:
        self.program = program
        if block is None:
            block = 256 if select.interpreting() else 1024
        if block < 16 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block}")
        self.block = block
        self.num_warps = 4 if block <= 1024 else 8
        self.state_keys = [(s.key, s.tensor) for s in program.states.values()]
        # row/column statistics: read and written by library stages only (no column)
        self.shaped_keys = frozenset(s.key for s in program.states.values() if s.per)
        self._plans: OrderedDict = OrderedDict()
        self._blocks: OrderedDict = OrderedDict()
        self._busy = OneStepAtATime()

    def forget(self) -> None:
        """Drop the cached plans (after a load_state_dict replaced the states)."""
        self._plans.clear()

    # -- one step ------------------------------------------------------------------------------
    def run(self, variant, entries: list[Entry], options: StepOptions) -> None:
        """Step every entry in place. ``options.copies``: per entry, None or the tensor that
        receives a rounded copy of the updated parameter (the entry's parameter is then its
        fp32 master weight)."""
        with self._busy, np.errstate(all="ignore"):
            self._run(variant, variant.generated("triton"), entries, options)

    def _run(self, variant, module: GeneratedModule, entries: list[Entry],
             options: StepOptions) -> None:
        tensor_keys = [key for key, is_tensor in self.state_keys if is_tensor]
        if len(tensor_keys) != len(module.tensor_states):
            raise RuntimeError("state keys do not match the program's tensor states")
        slots = []
        for index, (param, grad, state, t) in enumerate(entries):
            variant.check_states(state)
            states = [None if is_tensor else np.float64(float(state[key]))
                      for key, is_tensor in self.state_keys]
            slot = ParamSlot(float(t), states, module.num_reductions)
            slot.set_facts(whole_shape(options, index, param), machine_eps(param.dtype))
            slots.append(slot)
        plan = self._plan(module, entries, tensor_keys,
                          options.copies or [None] * len(entries))

        def run_sweep(k: int, params) -> list | None:
            return self._launch(module, plan, k, params, options.rounding_seed)

        def library_tensors(i: int, p: ParamSlot) -> list:
            return self._library_tensors(module, entries[i], plan, i, tensor_keys)

        ctx = StepContext(module, options.hyper, options.inv_grad_scale, run_sweep,
                          plan.numel, options.combine, library_tensors)
        module.step(ctx, slots)
        for original, staged in plan.writeback:
            original.copy_(staged)
        if module.libraries:
            commit(slots, [entry.state for entry in entries], self.state_keys)
        for entry, slot in zip(entries, slots):
            for (key, is_tensor), value in zip(self.state_keys, slot.states):
                if not is_tensor:
                    # through a float64 tensor: a float32 state overflows to inf (fill_ of
                    # a Python float too large for the state's dtype raises)
                    entry.state[key].fill_(torch.tensor(float(value), dtype=torch.float64))

    def _library_tensors(self, module: GeneratedModule, entry: Entry, plan: _Plan,
                         index: int, tensor_keys: list[str]) -> list:
        """A library stage's view of a parameter's columns, in the compute dtype."""
        param = entry.param.detach()
        compute = torch.float64 if param.dtype == torch.float64 else torch.float32
        out = [param.to(compute), entry.grad.detach().to(compute)]
        for key in tensor_keys:
            value = entry.state.get(key)
            out.append(None if value is None else value.detach().to(compute))
        return out + list(plan.scratch.get(index, ()))

    # -- tables --------------------------------------------------------------------------------
    def _plan(self, module: GeneratedModule, entries: list, tensor_keys: list[str],
              copies: list) -> _Plan:
        tl_types = _tl_dtypes()
        signature: list = []
        add = signature.append
        direct = True
        # (runs every step for every tensor: kept to plain attribute reads, no device objects
        # per tensor; a tensor on another device than its parameter is not `direct`)
        for (param, grad, state, _), copy in zip(entries, copies):
            n = param.numel()
            device = param.device
            add((n, device, copy is not None))
            tensors = [param, grad] + [None if key in self.shaped_keys else state.get(key)
                                       for key in tensor_keys]
            if copy is not None:
                tensors.append(copy)
            for i, x in enumerate(tensors):
                if x is None:  # a state this step neither reads nor writes
                    add(None)
                    continue
                if x.numel() != n:
                    what = ("grad" if i == 1 else "the parameter of a master weight"
                            if i == len(tensor_keys) + 2 else f"state[{tensor_keys[i - 2]!r}]")
                    raise RuntimeError(f"{what} has {x.numel()} elements but its parameter has "
                                       f"{n}")
                dtype = x.dtype
                if direct and not (dtype in tl_types and x.is_contiguous()
                                   and (i == 0 or x.device == device)):
                    direct = False
                add((x.data_ptr(), dtype))
        signature = (module.columns, *signature)
        if direct:
            found = self._plans.get(signature)
            if found is not None:
                self._plans.move_to_end(signature)
                return found
        plan = self._build(module, entries, tensor_keys, copies, tl_types)
        if direct:
            self._plans[signature] = plan
            while len(self._plans) > _CACHED_PLANS:
                self._plans.popitem(last=False)
        return plan

    def _build(self, module: GeneratedModule, entries: list, tensor_keys: list[str],
               copies: list, tl_types: dict) -> _Plan:
        plan = _Plan()
        groups: dict = {}
        columns = list(module.columns)
        for index, ((param, grad, state, _), copy) in enumerate(zip(entries, copies)):
            plan.numel.append(param.numel())
            if param.numel() == 0:
                continue
            device = param.device
            used = []
            tensors = [param, grad] + [None if key in self.shaped_keys else state.get(key)
                                       for key in tensor_keys]
            compute = torch.float64 if param.dtype == torch.float64 else torch.float32
            scratch = [torch.empty(param.shape, dtype=compute, device=device)
                       for _ in module.scratch]  # values stored between stages
            plan.keep.extend(scratch)
            plan.scratch[index] = scratch
            for j, x in enumerate(tensors + scratch + ([] if copy is None else [copy])):
                if x is None:
                    used.append(None)
                    continue
                x = x.detach()
                if not _usable(x, device, tl_types):
                    staged = _staged(x, device, tl_types)
                    if j != 1:  # the gradient is only read
                        plan.writeback.append((x, staged))
                    plan.keep.append(staged)
                    x = staged
                used.append(x)
            dtypes = tuple(None if x is None else x.dtype for x in used)
            row = [0 if x is None else x.data_ptr() for x in used]
            if copy is None:
                key, row = (device, dtypes + (None,)), row + [0]
            else:
                key = (device, dtypes)
            members, rows, sizes = groups.setdefault(key, ([], [], []))
            members.append(index)
            rows.append(row)
            sizes.append(param.numel())
        for (device, dtypes), (members, rows, sizes) in groups.items():
            plan.buckets.append(_Bucket(device, dtypes, members, rows, sizes, self.block,
                                        columns, self._blocks))
        return plan

    # -- launches ------------------------------------------------------------------------------
    def _launch(self, module: GeneratedModule, plan: _Plan, k: int, params: list,
                rounding_seed: int | None = None) -> list | None:
        """Run sweep k over every bucket; the raw partials of its reductions per entry."""
        sweep = module.sweeps[k]
        width, reductions = sweep.width, sweep.reductions
        descs = [REDUCTIONS[name] for _, name in reductions]
        raw = [[np.float64(d.identity) for d in descs] for _ in params]  # (empty tensors)
        pending = []
        for number, bucket in enumerate(plan.buckets):
            if width:
                rows = np.array([params[i].scalars for i in bucket.members],
                                dtype=bucket.np_compute).reshape(len(bucket.members), width)
                scal = torch.from_numpy(rows)
                if bucket.device.type == "cuda":  # pinned: the copy does not wait for the GPU
                    scal = scal.pin_memory().to(bucket.device, non_blocking=True)
            else:
                scal = bucket.dummy
            if reductions:
                red = torch.empty((bucket.num_blocks, len(reductions)), dtype=torch.float64,
                                  device=bucket.device)
            else:
                red = bucket.dummy_red
            with _on(bucket.device):
                # (only the final sweep, the one without reductions, stores and so rounds)
                stores = rounding_seed is not None and not reductions
                seed = derive_seed(rounding_seed, number) if stores else 0
                sweep.kernel[(bucket.num_blocks,)](
                    bucket.ptrs, bucket.sizes, bucket.blocks, scal, red, seed,
                    **bucket.constexprs, SR=stores,
                    num_warps=self.num_warps, enable_fp_fusion=False)
            if reductions:
                pending.append((bucket, red))
        for bucket, red in pending:  # one device-to-host copy per bucket
            partials = red.cpu().numpy()
            for j, desc in enumerate(descs):
                totals = desc.combine_ufunc().reduceat(partials[:, j], bucket.first)
                for m, index in enumerate(bucket.members):
                    raw[index][j] = np.float64(totals[m])
        return raw if reductions else None


def _on(device: torch.device):
    """Launch on ``device`` (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
