"""Runs one param group's step on CPU torch tensors through a program's generated C step.

A step is ONE foreign call (``optdsl_step``): the host scalars, every sweep over every
parameter (all dtypes: the C code reads and writes float32, float64, float16 and bfloat16
storage itself) and the reductions, finished in C in the descriptor's order. When a step
needs the runtime between sweeps (a distributed combiner all-reduces shards' partials, or a
reduction's finish has no C spelling) the same C host step calls back into Python for each
sweep, which runs the sweep (``optdsl_sweep``) and finishes its reductions in
optdsl.runtime.reduce. Library stages (matrix work: torch's BLAS GEMMs, row and column
statistics, bfloat16 work) run between sweeps as on the NumPy back end: the C host step
calls back into Python for each (optdsl.runtime.c_module), which runs the generated torch
code (optdsl.runtime.library_stage) on each parameter's columns in its shape and compute
dtype (``CTables.library_columns``); the shaped states they compute are committed at the
end of the step, as on NumPy (a stage never sees a state it changed).

Fused row and column statistics (the contract's ``stats``: optdsl.ir.stages.fused_stats):
the sweep before a stage accumulates each statistic into a tensor of the tables (the
statistic's shape, in the compute dtype) that the stage reads as ``p.stats[slot]``. The
rule, decided per step and parameter: the sweep computes it unless the step is sharded
(``options.combine``: a shard's facts are the whole parameter's and the stage gathers the
whole matrix), the parameter has no elements or no dimensions, or the statistic is a
column one and the parameter a vector; then its pointer is NULL, ``p.stats[slot]`` None,
and the stage computes it in torch.

Tables (``CTables``): the pointer table (one row per parameter: w, g, each tensor state,
the scratch columns of values stored between sweeps, the master weight's low-precision
copy), dtype codes, sizes, the block map (BLOCK elements per block) and the buffers the C
code writes (rows, reductions, partials) are built once for a set of tensors and kept while
their storage, sizes and dtypes are unchanged (at most _CACHED_PLANS sets per runner); a
step then writes only the gradients' pointers, the step numbers, the hypers and the
rounding seeds. Tensors that are not contiguous are staged through a contiguous copy
(copied back after the step), as are scalar states that are not a float32/float64 number
in memory.

Threads: the blocks run in parallel on torch's OpenMP runtime (the shared object links
``libgomp.so.1``, which resolves to the one torch loaded) with torch's thread count, so the
step's threads are the ones torch's own ops just used; each block's reduction partials are
combined in block order, so results do not depend on the thread count.
"""

from __future__ import annotations

import ctypes
import operator
from collections import OrderedDict

import numpy as np
import torch

from optdsl.codegen.c_prelude import BLOCK, DTYPE_CODES
from optdsl.codegen.contract import GeneratedModule, ParamSlot
from optdsl.ir.ops import PARAM_FACTS
from optdsl.runtime.c_abi import Args
from optdsl.runtime.library_stage import commit, tensor_facts
from optdsl.runtime.rounding import seeded_places
from optdsl.runtime.step import Entry, OneStepAtATime, StepContext, StepOptions

_CACHED_PLANS = 8
# Column statistics: a parameter's blocks are run in groups, one thread each, of about
# STAT_GROUP_ROWS of its rows' elements; each group keeps float64 partials of every
# column (a 4096 x 4096 matrix: 128 groups, 4 MiB), added in group order at the end.
STAT_GROUP_ROWS = 32
PARALLEL_MIN = 1 << 20  # elements below which a sweep runs on one thread (a barrier costs more)
TORCH_DTYPE_CODES = {getattr(torch, name): code
                     for name, code in DTYPE_CODES.items()}  # the dtypes C steps read


_dtype_of = operator.attrgetter("dtype")
_grad_of = operator.itemgetter(1)
_is_contiguous = torch.Tensor.is_contiguous
_data_ptr = torch.Tensor.data_ptr


def _ptr(array: np.ndarray) -> int:
    return array.ctypes.data


def _contiguous_copy(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(x.shape, dtype=dtype).copy_(x)


class CTables:
    """One set of tensors, laid out for the C step (see the module docstring)."""

    def __init__(self, lib, entries: list[Entry], tensor_keys: list[str],
                 scalar_keys: list[str], copies: list) -> None:
        n, ncol = len(entries), len(lib.TENSORS) + 1
        scratch = len(lib.TENSORS) - lib.STATE_COLUMNS
        self.n = n
        self.keep: list[torch.Tensor] = []  # staged copies and scratch the table points into
        self.writeback: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.scalar_writeback: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.grad_dtypes: list[torch.dtype] = []
        self.ptr = np.zeros(n * ncol, dtype=np.int64)
        self.dtype = np.zeros(n * ncol, dtype=np.int8)
        self.numel = np.zeros(n, dtype=np.int64)
        self.facts = np.zeros(n * len(PARAM_FACTS), dtype=np.float64)
        nss = max(len(scalar_keys), 1)
        self.sptr = np.zeros(n * nss, dtype=np.int64)
        self.sdtype = np.zeros(n * nss, dtype=np.int8)
        self.bucket_keys = []
        self.libraries = bool(getattr(lib, "LIBRARIES", ()))
        self.columns: list[list] = []  # per entry: the tensor of each column (library stages)
        for i, (entry, copy) in enumerate(zip(entries, copies)):
            param = entry.param
            numel = param.numel()
            self.numel[i] = numel
            self.facts[i * len(PARAM_FACTS):(i + 1) * len(PARAM_FACTS)] = _facts(param)
            compute = torch.float64 if param.dtype == torch.float64 else torch.float32
            tensors = [param, entry.grad] + [entry.state.get(k) for k in tensor_keys]
            tensors += [torch.empty(numel, dtype=compute) for _ in range(scratch)]
            tensors.append(copy)
            columns = [None] * len(tensors)
            self.columns.append(columns)
            for c, x in enumerate(tensors):
                if x is None:
                    continue
                x = x.detach()
                if not x.is_contiguous() or x.dtype not in TORCH_DTYPE_CODES:
                    staged = _contiguous_copy(x, x.dtype if x.dtype in TORCH_DTYPE_CODES
                                              else torch.float32)
                    if c != 1:  # the gradient is only read
                        self.writeback.append((x, staged))
                    x = staged
                self.keep.append(x)
                columns[c] = x
                self.ptr[i * ncol + c] = x.data_ptr()
                self.dtype[i * ncol + c] = TORCH_DTYPE_CODES[x.dtype]
            self.grad_dtypes.append(tensors[1].dtype)
            for j, key in enumerate(scalar_keys):
                value = entry.state[key].detach()
                if value.dtype not in (torch.float32, torch.float64) or not value.is_contiguous():
                    staged = _contiguous_copy(value, torch.float64)
                    self.scalar_writeback.append((value, staged))
                    value = staged
                self.keep.append(value)
                self.sptr[i * nss + j] = value.data_ptr()
                self.sdtype[i * nss + j] = TORCH_DTYPE_CODES[value.dtype]
            self.bucket_keys.append(None if numel == 0 else tuple(
                None if x is None else x.dtype for x in tensors[:2 + len(tensor_keys)]
            ) + (None if copy is None else copy.dtype,))
        counts = -(-self.numel // BLOCK)
        owner = np.repeat(np.arange(n, dtype=np.int64), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        starts = (np.arange(int(counts.sum()), dtype=np.int64) - first) * BLOCK
        self.blocks = np.ascontiguousarray(np.stack([owner, starts], axis=1).reshape(-1))
        nblocks = len(owner)
        width = max(lib.MAX_SWEEP_REDUCTIONS, 1)
        self.t = np.zeros(n, dtype=np.float64)
        self.sval = np.zeros(n * nss, dtype=np.float64)
        self.hyper = np.zeros(max(len(lib.HYPERS), 1), dtype=np.float64)
        self.rows = np.zeros(n * lib.ROW, dtype=np.float64)
        self.red = np.zeros(max(n * lib.NUM_REDUCTIONS, 1), dtype=np.float64)
        self.lib = np.zeros(max(n * lib.NUM_HANDED, 1), dtype=np.float64)
        self.totals = np.zeros(max(lib.NUM_REDUCTIONS, 1), dtype=np.float64)
        self.raw = np.zeros(max(n * width, 1), dtype=np.float64)
        self.partials = np.zeros(max(nblocks * width, 1), dtype=np.float64)
        self.seed = np.zeros(n, dtype=np.int64)
        self.ti = np.zeros(n, dtype=np.int64)
        self.num_reductions = lib.NUM_REDUCTIONS
        self.grad_column = 1
        self.ncol = ncol
        a = self.args = Args()
        a.n, a.ncol, a.nblocks = n, ncol, nblocks
        for name in ("ptr", "dtype", "numel", "t", "sptr", "sdtype", "sval", "hyper", "rows",
                     "red", "totals", "raw", "blocks", "partials", "seed", "ti", "facts", "lib"):
            setattr(a, name, _ptr(getattr(self, name)))
        a.parallel_min = PARALLEL_MIN
        self._step_counts(entries)
        self._stat_tables(lib, entries, counts)

    def _step_counts(self, entries: list[Entry]) -> None:
        """Each entry's step count (``state["step"]``) for a step that counts in C
        (``count_steps``, CRunner.run_counted): where every entry's is a float32 or float64
        number tensor of its own on the CPU, else ``counts_steps`` is False."""
        n = self.n
        self.steps = np.zeros(max(n, 1), dtype=np.int64)
        self.step_dtype = np.zeros(max(n, 1), dtype=np.int8)
        self.counts_steps = True
        for i, entry in enumerate(entries):
            step = entry.state.get("step")
            if not (type(step) is torch.Tensor and step.is_cpu and step.dim() == 0
                    and step.dtype in (torch.float32, torch.float64)
                    and not step.requires_grad):
                self.counts_steps = False
                break
            self.keep.append(step)
            self.steps[i] = step.data_ptr()
            self.step_dtype[i] = TORCH_DTYPE_CODES[step.dtype]
        a = self.args
        a.steps, a.step_dtype, a.count_steps = _ptr(self.steps), _ptr(self.step_dtype), 0

    def _stat_tables(self, lib, entries: list[Entry], counts: np.ndarray) -> None:
        """The fused row and column statistics' tensors and float64 partials (see
        optdsl.codegen.c_prelude), per entry and statistic, where the sweep can compute
        it: a parameter with elements, of one or more dimensions (two or more for a
        column statistic); else None, and the library stage computes it."""
        n, stats = self.n, lib.STATS
        ns = len(stats)
        self.stat_tensors: list[list] = [[None] * ns for _ in range(n)]
        self.stat_on = np.zeros(max(n * ns, 1), dtype=np.int64)
        self.stat_off = np.zeros(max(n * ns, 1), dtype=np.int64)
        self.statpart = np.zeros(max(n * ns, 1), dtype=np.int64)
        self.stat_group = np.ones(n, dtype=np.int64)
        self.stat_buffers: list = []
        for i, entry in enumerate(entries):
            param = entry.param
            shape, numel, nb = tuple(param.shape), int(self.numel[i]), int(counts[i])
            compute = torch.float64 if param.dtype == torch.float64 else torch.float32
            if any(axis == "col" for _, axis in stats) and param.dim() >= 2 and numel:
                groups = max(1, shape[-2] // STAT_GROUP_ROWS)
                self.stat_group[i] = -(-nb // groups)
            for j, (_, axis) in enumerate(stats):
                if numel == 0 or param.dim() < (1 if axis == "row" else 2):
                    continue
                if axis == "row":
                    out = torch.empty(shape[:-1] + (1,), dtype=compute)
                    part = np.empty(numel // shape[-1] + nb, dtype=np.float64)
                else:
                    out = torch.empty(shape[:-2] + (1, shape[-1]), dtype=compute)
                    groups = -(-nb // int(self.stat_group[i]))
                    part = np.empty(groups * (numel // shape[-2]), dtype=np.float64)
                self.stat_tensors[i][j] = out
                self.stat_buffers.append(part)
                self.stat_on[i * ns + j] = out.data_ptr()
                self.statpart[i * ns + j] = _ptr(part)
        units = []  # (only column statistics run blocks in units)
        if any(axis == "col" for _, axis in stats):
            first = 0
            for i in range(n):
                g, nb = int(self.stat_group[i]), int(counts[i])
                units += [(first + b, min(g, nb - b)) for b in range(0, nb, g)]
                first += nb
        self.units = np.array(units or [(0, 0)], dtype=np.int64).reshape(-1)
        a = self.args
        # (the two tables fuse_stats chooses between, as addresses: numpy's .ctypes costs
        # more than the rest of a small step's host work)
        self.stat_choice = (_ptr(self.stat_off), _ptr(self.stat_on))
        a.stat, a.statpart = self.stat_choice[1], _ptr(self.statpart)
        a.stat_group, a.units = _ptr(self.stat_group), _ptr(self.units)
        a.nunits = len(units)

    def set_scalars(self, lib, hyper: dict, inv_grad_scale: float) -> None:
        """Write a call's hyper values (``lib.HYPERS`` order), inverse grad scale and thread
        count (torch's) into the arguments."""
        for j, name in enumerate(lib.HYPERS):
            self.hyper[j] = hyper[name]
        self.args.inv_grad_scale = float(inv_grad_scale)
        self.args.threads = torch.get_num_threads()

    def fuse_stats(self, on: bool) -> None:
        """Whether this step's sweeps compute the row and column statistics they can (not
        for shards, whose facts are the whole parameter's: the stage gathers them)."""
        self.args.stat = self.stat_choice[on]

    def stats_of(self, i: int, on: bool) -> list:
        return list(self.stat_tensors[i]) if on else [None] * len(self.stat_tensors[i])

    def whole_facts(self, entries: list[Entry], combine) -> None:
        """Each shard's facts (``w.rows`` ...) from its whole parameter's shape."""
        width = len(PARAM_FACTS)
        for i, entry in enumerate(entries):
            shape = combine.whole_shape(i, entry.param)
            self.facts[i * width:(i + 1) * width] = _facts(entry.param, shape)

    def set_gradients(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Point the gradient column at this step's gradients, one per entry (staged where
        they are not contiguous or change dtype); returns what must stay alive during the
        step."""
        staged = []
        if not (all(map(operator.is_, map(_dtype_of, grads), self.grad_dtypes))
                and all(map(_is_contiguous, grads))):  # (the usual case: none staged)
            for i, (g, dtype) in enumerate(zip(grads, self.grad_dtypes)):
                if g.dtype is not dtype or not g.is_contiguous():
                    g = grads[i] = _contiguous_copy(g.detach(), dtype)
                    staged.append(g)
        self.ptr[1::self.ncol] = list(map(_data_ptr, grads))
        if self.libraries:
            for columns, g in zip(self.columns, grads):
                columns[1] = g
        return staged

    def forget_gradients(self) -> None:
        """Keep no gradient alive between steps (the tables are kept)."""
        if self.libraries:
            for columns in self.columns:
                columns[1] = None

    def library_columns(self, module: GeneratedModule, entry: Entry, i: int,
                        tensor_keys: list[str]) -> list:
        """Entry i's columns for a library stage (optdsl.runtime.library_stage): each in the
        parameter's shape and its compute dtype (the memory the sweeps work on, or a
        converted copy of a low-precision column, which stages only read); a row or column
        state, its state tensor in the compute dtype; None for a column the step does not
        use."""
        param = entry.param
        compute = torch.float64 if param.dtype == torch.float64 else torch.float32
        shape = param.shape
        out = []
        for c, name in enumerate(module.columns):
            if name in module.shaped:
                value = entry.state.get(tensor_keys[c - 2])
                out.append(None if value is None else value.to(compute))
                continue
            x = self.columns[i][c]
            if x is None:
                out.append(None)
                continue
            x = x.view(shape)
            out.append(x if x.dtype == compute else x.to(compute))
        return out

    def take_finished(self, reductions, params, totals) -> None:
        """Copy the reductions the runtime finished for a sweep into the C tables."""
        count = self.num_reductions
        for slot, _ in reductions:
            self.totals[slot] = np.float64(totals[slot]) if totals[slot] is not None else 0.0
            for i, p in enumerate(params):
                if p.red[slot] is not None:
                    self.red[i * count + slot] = p.red[slot]

    def raw_partials(self, count: int) -> list[list]:
        return self.raw[:self.n * count].reshape(self.n, count).tolist() if count else []


def _no_copies(copies: list) -> bool:
    """Whether no entry has a low-precision copy (master weights): the records' tokens do
    not stand for those."""
    return all(c is None for c in copies)


def _signature(lib, entries: list[Entry], tensor_keys: list[str],
               scalar_keys: list[str], copies: list) -> tuple:
    """What the cached tables depend on: the loaded step they were laid out for (another
    variant of the group's step, after a hyper such as weight_decay changed from 0, has
    other hypers, reductions and statistics: the tables' buffers are sized by it), each
    tensor's storage, dtype and layout, the parameter's shape (of the gradients only the
    dtype: set_gradients points at this step's). Runs for every parameter at every step: one
    flat list (unambiguous: a pointer is never None)."""
    out: list = [lib]
    add = out.extend
    for entry, copy in zip(entries, copies):
        param, state = entry.param, entry.state
        add((param.data_ptr(), param.shape, param.dtype, param.is_contiguous(),
             entry.grad.dtype))  # (the shape: the facts table, w.rows and w.cols, is its)
        for key in tensor_keys:
            x = state.get(key)
            if x is None:
                out.append(None)
            else:
                add((x.data_ptr(), x.dtype, x.is_contiguous()))
        for key in scalar_keys:
            x = state[key]
            add((x.data_ptr(), x.dtype))
        if copy is None:
            out.append(None)
        else:
            add((copy.data_ptr(), copy.dtype, copy.is_contiguous()))
    return tuple(out)


class CRunner:
    """One optimizer's runner of a program's generated C steps."""

    def __init__(self, program) -> None:
        self.program = program
        self.state_keys = [(s.key, s.tensor) for s in program.states.values()]
        self.tensor_keys = [k for k, is_tensor in self.state_keys if is_tensor]
        self.scalar_keys = [k for k, is_tensor in self.state_keys if not is_tensor]
        self._plans: OrderedDict = OrderedDict()
        self._last_known: tuple | None = None  # (lib, known key, tables) of the last step
        self._busy = OneStepAtATime()
        self.calls = 0  # foreign calls made (one per step, on the direct path)

    def forget(self) -> None:
        """Drop the cached tables (after a load_state_dict replaced the states)."""
        self._plans.clear()
        self._last_known = None

    def run(self, variant, entries: list[Entry], options: StepOptions) -> None:
        """Step every entry in place. ``options.copies``: per entry, None or the tensor that
        receives a rounded copy of the updated parameter (the entry's parameter is then its
        fp32 master weight)."""
        with self._busy:
            module = variant.generated("c")
            lib = module.module
            # (no list of copies: none has one, which the tables' key then need not say)
            copies = options.copies
            known = options.tables_key if copies is None or _no_copies(copies) else None
            copies = copies or [None] * len(entries)
            tables = self._tables(lib, variant, entries, copies, known)
            if options.combine is not None:  # shards: their facts are the whole parameter's
                tables.whole_facts(entries, options.combine)
            alive = tables.set_gradients([entry.grad for entry in entries])
            fused = options.combine is None  # shards: the stages compute the statistics
            tables.fuse_stats(fused)
            self._prepare(lib, tables, entries, options)
            slots = None
            try:
                if self._direct(lib, options) and not module.libraries:
                    self._call_step(lib, tables)
                else:
                    self.calls += 1
                    slots = [ParamSlot(e.t, [], module.num_reductions) for e in entries]
                    for i, slot in enumerate(slots):
                        slot.stats = tables.stats_of(i, fused)
                    ctx = self._context(module, tables, entries, options)
                    lib.run(ctx, slots, sweeps_by_runtime=not self._direct(lib, options))
            finally:
                tables.forget_gradients()
            del alive
            for original, staged in tables.writeback:
                original.copy_(staged)
            for original, staged in tables.scalar_writeback:
                original.copy_(staged)
            if module.libraries and slots is not None:
                commit(slots, [e.state for e in entries], self.state_keys)

    @staticmethod
    def _direct(lib, options: StepOptions) -> bool:
        """Whether the whole step runs in C (else each sweep goes through the runtime)."""
        return options.combine is None and lib.FINISHES_IN_C

    def _tables(self, lib, variant, entries, copies, known: tuple | None = None) -> CTables:
        """The cached tables of these entries' tensors, else new ones. ``known``: a key that
        stands for every tensor's storage, size, dtype and layout (StepOptions.tables_key,
        given only where no entry has a copy), which saves reading them all again."""
        # keyed by the library too (see _signature)
        if known is not None:
            found = self._known_tables(lib, known)
            if found is not None:
                return found
            signature = (lib, "known", known)
        else:
            signature = _signature(lib, entries, self.tensor_keys, self.scalar_keys, copies)
            found = self._plans.get(signature)
            if found is not None and not (found.writeback or found.scalar_writeback):
                self._plans.move_to_end(signature)
                return found
        for entry in entries:
            variant.check_states(entry.state)
        tables = CTables(lib, entries, self.tensor_keys, self.scalar_keys, copies)
        if not (tables.writeback or tables.scalar_writeback):  # (staged copies are per step)
            self._plans[signature] = tables
            if known is not None:
                self._last_known = (lib, known, tables)
            while len(self._plans) > _CACHED_PLANS:
                self._plans.popitem(last=False)
        return tables

    def _known_tables(self, lib, known: tuple) -> CTables | None:
        """The cached tables of the tensors ``known`` stands for (StepOptions.tables_key),
        or None."""
        last = self._last_known  # (the usual case, the same tables as the last step's:
        # comparing the keys' tuples reads only their items' identities, where hashing the
        # key would read every token)
        if last is not None and last[0] is lib and last[1] == known:
            return last[2]
        signature = (lib, "known", known)
        found = self._plans.get(signature)
        if found is None:
            return None
        self._plans.move_to_end(signature)
        self._last_known = (lib, known, found)
        return found

    def run_counted(self, variant, items: list[tuple[torch.Tensor, torch.Tensor]],
                    options: StepOptions) -> bool:
        """The steady step, where the step counts are counted in C: ``items`` are the
        (parameter, gradient) pairs of parameters whose state is made and checked, and
        ``options.tables_key`` stands for their tensors (their records' tokens). When this
        runner keeps tables for that key, whose step counts C can count, and the whole step
        runs in one C call, the call counts every update (``state["step"] += 1``) and runs
        the step; True. Else False, and nothing is written: the caller counts the steps and
        runs ``run``."""
        with self._busy:
            module = variant.generated("c")
            lib = module.module
            if module.libraries or not self._direct(lib, options) or options.copies or \
                    options.rounding_seed is not None:
                return False
            tables = self._known_tables(lib, options.tables_key)
            if tables is None or not tables.counts_steps:
                return False
            alive = tables.set_gradients(list(map(_grad_of, items)))
            tables.fuse_stats(True)
            tables.set_scalars(lib, options.hyper, options.inv_grad_scale)
            a = tables.args
            a.sr = 0
            a.count_steps = 1
            try:
                self._call_step(lib, tables)
            finally:
                a.count_steps = 0
                tables.forget_gradients()
            del alive
            return True

    def _call_step(self, lib, tables: CTables) -> None:
        """The whole step in one foreign call (``optdsl_step``) on these tables."""
        self.calls += 1
        rc = lib.optdsl_step(ctypes.byref(tables.args))
        if rc:
            raise RuntimeError(f"the generated C step failed (code {rc})")

    @staticmethod
    def prefetcher(variant):
        """The C library's ``optdsl_prefetch(addresses, n, lines)`` for this variant
        (optdsl.optim.host_prefetch)."""
        return variant.generated("c").module.optdsl_prefetch

    def _prepare(self, lib, tables: CTables, entries: list[Entry],
                 options: StepOptions) -> None:
        a = tables.args
        tables.t[:] = [e.t for e in entries]
        tables.set_scalars(lib, options.hyper, options.inv_grad_scale)
        a.sr = options.rounding_seed is not None
        if a.sr:
            places = seeded_places(options.rounding_seed, tables.bucket_keys)
            tables.seed[:] = [0 if p is None else p[0] for p in places]
            tables.ti[:] = [0 if p is None else p[1] for p in places]
        for original, staged in tables.scalar_writeback:
            staged.copy_(original)

    def _context(self, module: GeneratedModule, tables: CTables, entries: list[Entry],
                 options: StepOptions) -> StepContext:
        """The context of a step that calls back into the runtime: for each sweep (the
        distributed combiner, reductions finished only there) or library stage."""
        lib = module.module

        def run_sweep(k: int, params) -> list:
            self.calls += 1
            lib.optdsl_sweep(ctypes.byref(tables.args), k)
            return tables.raw_partials(len(module.sweeps[k].reductions))

        def library_tensors(i: int, p: ParamSlot) -> list:
            return tables.library_columns(module, entries[i], i, self.tensor_keys)

        ctx = StepContext(module, options.hyper, options.inv_grad_scale, run_sweep,
                          [int(x) for x in tables.numel], options.combine, library_tensors)
        ctx.tables = tables
        return ctx


def _facts(param: torch.Tensor, shape: tuple[int, ...] | None = None) -> list[float]:
    """A parameter's facts in PARAM_FACTS order (as optdsl.codegen.contract.ParamSlot's);
    ``shape``: the whole parameter's, when ``param`` is a shard."""
    facts = tensor_facts(param, shape)
    return [facts[name] for name in PARAM_FACTS]
