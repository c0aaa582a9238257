"""The Triton back end: a compilation unit to the source of a Python module (the contract of
optdsl.codegen.contract) holding one @triton.jit kernel per sweep, the kernels that finish
reductions and step counts on the device, and the shared host step (which, every scalar
being placed on the device, only launches the sweeps).

One launch of ``sweep<k>_kernel`` covers every tensor of a (device, dtype) bucket of the
group: the runtime hands it a table of data pointers (one row per tensor: the columns of
TENSORS, a master weight's copy, the step count ``state["step"]``, then each scalar state),
the tensors' sizes, a block map (one ``(tensor, start)`` row per program), the group's
hyper table (float64, in the order of HYPERS), the finished reductions (``fin``: a row per
tensor, ``tot``: the group-wide ones) and torch.amp's scale and found_inf tensors. Each
program computes the scalars its element code reads in a prologue, once, in float64
(optdsl.codegen.triton_prologue), and passes them, rounded to the compute dtype, to the
block function. Sweeps that feed reductions store one float64 partial per block and
reduction, the descriptor's per-element map combined over the block (padding contributes
the identity); generated kernels combine them per tensor and over the group in a fixed
order and finish them (optdsl.codegen.triton_reduce). Matrix work runs between sweeps in
library stages, torch code on the device (optdsl.codegen.library: Inductor's extern
kernels), which compute the scalars they read from the same tables and hand scalars to
later kernels through ``fin``. A sweep that accumulates the row and column statistics a
library stage reads (``Sweep.stats``) runs over 2-D tiles of each tensor's matrix view
instead of flat blocks, and writes their float64 partials, which ``stats_finish`` adds in
tile order (optdsl.runtime.device_stats). ``finish_step`` then advances each tensor's step count and
writes its scalar states, on the device. With ``SKIP`` (in-step
AMP unscaling) the final sweep and finish_step write nothing when found_inf is set.
Mixed precision (optdsl.optim.precision) is compiled in by constexprs: with ``COPY`` the
copy column points at a low-precision parameter that receives the updated ``w`` (which is
then its fp32 master weight); with ``SR`` bfloat16 stores round stochastically from the
``seed`` argument.

Generated code is deterministic and readable: values are named after the lowered IR, each
element-wise line cites its DSL line, and the only names taken from the program are
validated identifiers behind a prefix (``h_lr``, ``s_m``). Constants are typed
``tl.full([], c, CT)`` values spelled by format_float (inf, nan and -0.0 included), so
float64 kernels keep them exact.
"""

from __future__ import annotations

import contextlib
import math
import re

from optdsl.codegen import host, library
from optdsl.codegen.buffer import CodeBuffer
from optdsl.codegen.triton_helpers import (
    HELPERS,
    NUMPY_HOOK,
    USES_INTERPRET,
    USES_LIBDEVICE,
    USES_NUMPY,
    closure,
)
from optdsl.codegen.triton_prologue import (
    Prologue,
    call,
    scalar_dtype_param,
    scalar_states,
    signature,
)
from optdsl.codegen.triton_prologue import ref as prologue_ref
from optdsl.codegen.triton_reduce import ReductionKernels
from optdsl.codegen.triton_stats import StatsKernels
from optdsl.codegen.unit import Unit, column_var, state_name, temp_column, value_name
from optdsl.errors import located
from optdsl.ir.numbers import format_float
from optdsl.ir.ops import LEAF, OPS, PARAM_FACTS, Level
from optdsl.ir.reductions import REDUCTIONS
from optdsl.ir.schedule import Sweep

_NAN = "tl.PropagateNan.ALL"

# How element code writes each op, as a Triton expression over {0}, {1}...; the helpers it
# names (_div _sqrt _pow ...) are optdsl.codegen.triton_helpers'. Triton negates as 0 - x up
# to 3.6 (so -(+0.0) is +0.0); x * -1.0 flips the sign in every version.
SPELLING: dict[str, str] = {
    "neg": "({0} * -1.0)", "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}",
    "div": "_div({0}, {1})", "pow": "_pow({0}, {1})", "square": "{0} * {0}",
    "sqrt": "_sqrt({0})", "rsqrt": "_div(1.0, _sqrt({0}))", "exp": "_exp({0})",
    "log": "_log({0})", "abs": "tl.abs({0})", "sign": "_sign({0})", "floor": "tl.floor({0})",
    "ceil": "tl.ceil({0})", "tanh": "_tanh({0})",
    "min": f"tl.minimum({{0}}, {{1}}, propagate_nan={_NAN})",
    "max": f"tl.maximum({{0}}, {{1}}, propagate_nan={_NAN})",
    "clamp": f"tl.minimum(tl.maximum({{0}}, {{1}}, propagate_nan={_NAN}), {{2}}, "
             f"propagate_nan={_NAN})",
    "atan2": "_atan2({0}, {1})", "precise": "{0}",
    "lt": "{0} < {1}", "le": "{0} <= {1}", "gt": "{0} > {1}", "ge": "{0} >= {1}",
    "eq": "{0} == {1}", "ne": "{0} != {1}",
    # (through int8: the interpreter cannot & a block of int1 with an int1 scalar)
    "and": "(({0}).to(tl.int8) & ({1}).to(tl.int8) != 0)",
    "or": "(({0}).to(tl.int8) | ({1}).to(tl.int8) != 0)", "not": "({0} == 0)",
    "where": "tl.where({0}, {1}, {2})",
}


def spells(name: str, tensor: bool) -> bool:
    return name in SPELLING if tensor else host.spells(name)


def generate(unit: Unit) -> str:
    """The source of the Triton module of a compilation unit."""
    return _Generator(unit).source()


def column_name(column: str) -> str:
    """The pointer variable of a pointer-table column (w, g, a tensor state, a scratch)."""
    return f"p_{column_var(column)}"


def dtype_param(column: str) -> str:
    """The constexpr kernel parameter holding a column's element dtype."""
    return f"DT_{column_var(column)}"


class _Generator:
    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.schedule = unit.schedule
        self.graph = unit.graph
        self.eqs = unit.graph.eqs
        self.columns = list(unit.columns)
        self.slot = unit.slot
        self.title = unit.safe_title
        self.helpers: set[str] = set()
        self.scalars = scalar_states(unit)
        # a pointer-table row: the columns, a master weight's copy, the step count, each
        # scalar state, then (if the step reads any) the tensor's facts (PARAM_FACTS)
        self.facts = any(eq.op in PARAM_FACTS for eq in self.eqs)
        self.width = len(self.columns) + 2 + len(self.scalars) + \
            (len(PARAM_FACTS) if self.facts else 0)
        self.prologue = Prologue(unit, SPELLING, self.width)
        self.reduce = ReductionKernels(unit, SPELLING)
        self.stats = StatsKernels(unit)

    # -- the module --------------------------------------------------------------------------
    def source(self) -> str:
        kernels = CodeBuffer()
        table, device = [], []
        for sweep in self.schedule.sweeps:
            table.append(self._emit_kernels(kernels, sweep))
            device.append(self.reduce.emit(kernels, sweep) if sweep.reductions and
                          self.unit.runs(sweep) else (None, None))
        self._emit_finish_step(kernels)
        if self.schedule.fused:
            self.stats.emit_finish(kernels)
        self.helpers |= self.prologue.helpers | self.reduce.helpers | self.stats.helpers
        steps = CodeBuffer()
        host.emit_step(steps, self.unit)
        libraries, library_rows = library.emit_libraries(self.unit)
        parts = [self._head(closure(self.helpers))]
        for name in closure(self.helpers):
            parts.append("\n" + HELPERS[name])
        parts.append(libraries)
        parts.append(kernels.text())
        parts.append(self._tables(table, device, library_rows))
        parts.append(steps.text())
        return "".join(parts)

    def _head(self, helpers: list[str]) -> str:
        head = CodeBuffer()
        head.line(f'"""Triton step of {self.title}, generated by optdsl. Do not edit.')
        head.line()
        head.line("Element-wise work runs in one kernel launch per sweep for all tensors of a")
        head.line("(device, dtype) bucket. Scalars are computed on the device, once per kernel")
        head.line("program, from device tables (hypers, step counts, scalar states, finished")
        if self.schedule.libraries:
            head.line("reductions); `step` launches, and between sweeps runs the library "
                      "stages (matrix")
            head.line("work, by torch, on the device: optdsl.codegen.library). Contract:")
            head.line("optdsl.codegen.contract.")
        else:
            head.line("reductions); `step` only launches. Contract: optdsl.codegen.contract.")
        head.line('"""')
        head.line("import numpy as np")
        if self.schedule.libraries:
            head.line("import torch")
        head.line("import triton")
        head.line("import triton.language as tl")
        if any(h in USES_LIBDEVICE for h in helpers):
            head.line("from triton.language.extra import libdevice")
        head.line()
        head.line(f"TENSORS = {tuple(self.columns)!r}  # pointer-table columns")
        head.line(f"SCALAR_STATES = {self.scalars!r}  # after the copy and step columns")
        head.line(f"HYPERS = {self.prologue.hypers!r}  # the hyper table")
        head.line(f"NUM_REDUCTIONS = {len(self.slot)}")
        if self.prologue.fin_width != len(self.slot):
            head.line(f"FIN_WIDTH = {self.prologue.fin_width}  # the reductions, then scalars "
                      f"of library stages")
        if self.unit.shaped_states:
            head.line(f"SHAPED = {tuple(sorted(self.unit.shaped_states))!r}  # states of "
                      f"library stages")
        if self.facts:
            head.line(f"PARAM_FACTS = {PARAM_FACTS!r}  # the last columns")
        if any(h in USES_INTERPRET for h in helpers):
            head.line()
            head.line()
            head.line("@triton.jit")
            head.line("def _probe():")
            head.line("    pass")
            head.line()
            head.line()
            head.line("# True under TRITON_INTERPRET=1 (no libdevice there), as triton.jit "
                      "decided.")
            head.line('_INTERPRET = tl.constexpr(type(_probe).__name__ == "InterpretedFunction")')
        if any(h in USES_NUMPY for h in helpers):
            head.line(NUMPY_HOOK)
        return head.text()

    def _tables(self, table, device, library_rows) -> str:
        meta = CodeBuffer()
        meta.line()
        meta.line()
        meta.line("# Per sweep: (kernel, scalar-table width, reductions produced as (slot, kind)).")
        with meta.block("SWEEPS = ("):
            for kernel, width, reds in table:
                meta.line(f"({kernel or 'None'}, {width}, {reds!r}),")
        meta.line(")")
        meta.line("# Per sweep: the kernels that finish its reductions (combine, finish).")
        with meta.block("REDUCE = ("):
            for combine, finish in device:
                meta.line(f"({combine or 'None'}, {finish or 'None'}),")
        meta.line(")")
        meta.line("FINISH_STEP = finish_step")
        if self.schedule.fused:
            self.stats.emit_table(meta)
        if library_rows:
            meta.line(library.TABLE_COMMENT)
            with meta.block("LIBRARIES = ("):
                for row in library_rows:
                    meta.line(row)
            meta.line(")")
        meta.line()
        meta.line()
        return meta.text()

    def _constexprs(self) -> list[str]:
        """Every sweep kernel's (and finish_step's) compile-time parameters."""
        return ([f"{dtype_param(c)}: tl.constexpr" for c in self.columns]
                + ["DT_wcopy: tl.constexpr"]
                + [f"{scalar_dtype_param(n)}: tl.constexpr" for n in ("step",) + self.scalars]
                + ["CT: tl.constexpr", "BLOCK: tl.constexpr", "ALIGNED: tl.constexpr",
                   "COPY: tl.constexpr", "SR: tl.constexpr", "SKIP: tl.constexpr"])

    # -- kernels -------------------------------------------------------------------------------
    def _emit_kernels(self, out: CodeBuffer, ps: Sweep):
        eqs = self.eqs
        k = ps.index
        stores = list(self.unit.stores(ps))
        if not self.unit.runs(ps):
            return None, 0, ()
        row = list(self.unit.row(ps))
        consts = [v for v in ps.scalars_in if eqs[v].op == "const"]
        loads = [v for v in ps.tensor if OPS[eqs[v].op].category == LEAF or v in ps.loads]
        written = stores + list(self.unit.saves(ps))
        used = []
        for col in self.columns:
            read = any(self._column_of(v) == col for v in loads)
            if read or any(name == col for name, _ in written):
                used.append(col)
        copy = any(name == "w" for name, _ in stores)  # a master weight's copy is written
        ptrs = [column_name(c) for c in used] + (["p_wcopy"] if copy else [])
        extra = [value_name(v) for v in row] + (["rp"] if ps.reductions else [])
        if stores:
            extra += ["ti", "seed"]
        tiled = bool(ps.stats)  # it accumulates row and column statistics: tiles
        stat_args = self.stats.args(ps)
        flags = ["COPY: tl.constexpr", "SR: tl.constexpr"] if stores else []
        what = "updates " + ", ".join(n for n, _ in stores) if ps.final else "reductions"
        out.line()
        out.line()
        out.line("@triton.jit")
        shape = ["TR: tl.constexpr", "TC: tl.constexpr"] if tiled else ["BLOCK: tl.constexpr"]
        *first, last = signature(f"sweep{k}_block", ["offs", "valid" if tiled else "n"] + ptrs
                                 + extra + stat_args + ["CT: tl.constexpr"] + shape + flags
                                 + ["MASKED: tl.constexpr"])
        for line in first:
            out.line(line)
        with out.block(last):
            self._emit_block(out, ps, what, consts, stores)

        out.line()
        out.line()
        out.line('@triton.jit(do_not_specialize=["seed"])')
        *first, last = signature(f"sweep{k}_kernel", [
            "ptrs", "sizes", "blocks", "hyp", "fin", "tot", "red", "gsc", "finf", "seed"]
            + (["shp", "sp"] if tiled else []) + self._constexprs()
            + (["TR: tl.constexpr", "TC: tl.constexpr"] if tiled else []))
        for line in first:
            out.line(line)
        with out.block(last):
            if tiled:
                self.stats.emit_tile(out, ps, what)
            else:
                out.line(f'"""Sweep {k} ({what}): one program per (tensor, start) row of '
                         f'`blocks`."""')
                out.line("pid = tl.program_id(0).to(tl.int64)")
                out.line("ti = tl.load(blocks + 2 * pid)")
                out.line("start = tl.multiple_of(tl.load(blocks + 2 * pid + 1), BLOCK)")
                out.line("n = tl.load(sizes + ti)")
                out.line("offs = start + tl.arange(0, BLOCK)")
            self._emit_pointers(out, used, copy)
            if row:
                out.line("# this tensor's scalars, once per program, in float64")
                self.prologue.emit(out, row)
            if ps.reductions:
                out.line(f"rp = red + {len(ps.reductions)} * pid")
            self.stats.emit_slots(out, ps)
            args = ", ".join(["offs", "valid" if tiled else "n"] + ptrs
                             + self.prologue.row_args(row)
                             + (["rp"] if ps.reductions else [])
                             + (["ti", "seed"] if stores else []) + stat_args + ["CT"]
                             + (["TR", "TC"] if tiled else ["BLOCK"])
                             + (["COPY", "SR"] if stores else []))
            if stores:
                with out.block("if SKIP:", "torch.amp found inf or NaN: nothing is written"):
                    out.line("go = tl.load(finf) == 0")
                with out.block("else:"):
                    out.line("go = tl.full([], 1, tl.int1)")
                guard = out.block("if go:")
            else:
                guard = contextlib.nullcontext()
            with guard:
                with out.block("if start + BLOCK <= n:" if not tiled else
                               "if tl.minimum(R - rows0 - TR, C - cols0 - TC) >= 0:",
                               "a whole tile" if tiled else None):
                    call(out, f"sweep{k}_block", args + ", False")
                with out.block("else:"):
                    call(out, f"sweep{k}_block", args + ", True")
        return f"sweep{k}_kernel", 0, self.unit.reductions_of(ps)

    def _emit_pointers(self, out: CodeBuffer, used: list[str], copy: bool) -> None:
        width = self.width
        for col in used:
            j = self.columns.index(col)
            out.line(f"{column_name(col)} = tl.load(ptrs + {width} * ti + {j})"
                     f".to(tl.pointer_type({dtype_param(col)}))")
        if copy:
            with out.block("if COPY:", "w is a master weight: its rounded copy"):
                out.line(f"p_wcopy = tl.load(ptrs + {width} * ti + {len(self.columns)})"
                         f".to(tl.pointer_type(DT_wcopy))")
            with out.block("else:"):
                out.line("p_wcopy = p_w")
        with out.block("if ALIGNED:", "every pointer of the launch is 16-byte aligned"):
            for col in used + (["wcopy"] if copy else []):
                name = "p_wcopy" if col == "wcopy" else column_name(col)
                out.line(f"{name} = tl.multiple_of({name}, 16)")

    def _emit_finish_step(self, out: CodeBuffer) -> None:
        """finish_step: after the last sweep, per tensor, its step count and scalar states
        (a separate launch: every program of the sweeps read the old values)."""
        writes = self.schedule.scalar_outputs
        out.line()
        out.line()
        out.line("@triton.jit")
        *first, last = signature("finish_step", ["ptrs", "hyp", "fin", "tot", "gsc", "finf"]
                                  + self._constexprs())
        for line in first:
            out.line(line)
        with out.block(last):
            out.line('"""After the last sweep, one program per tensor: its step count and '
                     'its scalar states."""')
            out.line("ti = tl.program_id(0).to(tl.int64)")
            out.line(self.prologue.pointer("step"))
            values = self.prologue.emit(out, [v for _, v in writes])
            with out.block("if SKIP:", "torch.amp found inf or NaN: the step did not happen"):
                out.line("go = tl.load(finf) == 0")
            with out.block("else:"):
                out.line("go = tl.full([], 1, tl.int1)")
            with out.block("if go:"):
                out.line("tl.store(p_step, tl.load(p_step) + 1)")
                for name, v in writes:
                    var = f"p_{state_name(name)}"
                    if not any(self.eqs[u].op == "state" and self.eqs[u].attr == name
                               for u in values):
                        out.line(self.prologue.pointer(name))
                    out.line(f"tl.store({var}, {prologue_ref(self.unit, v)}"
                             f".to({scalar_dtype_param(name)}))", f"{name} =")

    def _emit_block(self, out: CodeBuffer, ps: Sweep, what: str, consts: list[int],
                    stores: list[tuple[str, int]]) -> None:
        eqs = self.eqs
        tiled = bool(ps.stats)
        out.line(f'"""Sweep {ps.index} ({what}) on one {"tile" if tiled else "block"} of one '
                 f'tensor."""')
        with out.block("if MASKED:", "the tile is not all inside the tensor" if tiled
                       else "the tensor's last block"):
            out.line("mask = valid" if tiled else "mask = offs < n")
        with out.block("else:"):
            out.line("mask = None")
        for v in consts:
            out.line(f"{value_name(v)} = {_const(eqs[v].attr)}")
        for v in ps.tensor:
            eq = eqs[v]
            if OPS[eq.op].category == LEAF or v in ps.loads:
                col = self._column_of(v)
                self.helpers.add("_loaded")
                out.line(f"{value_name(v)} = _loaded({column_name(col)}, offs, mask, CT)", col)
                continue
            with located(eq.span):
                template = SPELLING[eq.op]
                self.helpers.update(re.findall(r"\b(_[a-z0-9]+)\(", template))
                text = template.format(*[value_name(a) for a in eq.args])
            out.line(f"{value_name(v)} = {text}", f"line {eq.line}" if eq.line else None)
        for j, r in enumerate(ps.reductions):
            self._emit_reduction(out, r, j, tiled)
        self.stats.emit_partials(out, ps)
        for name, v in self.unit.saves(ps):  # scratch, in the compute dtype: no rounding
            out.line(f"tl.store({column_name(name)} + offs, {value_name(v)}, mask=mask)",
                     "stored for later sweeps")
        for name, v in stores:
            ptr = column_name(name)
            value = value_name(v)
            if eqs[v].kind.level != Level.TENSOR:
                value = f"tl.broadcast_to({value}, {'[TR, TC]' if tiled else '[BLOCK]'})"
            self.helpers.add("_stored")
            stream = self.columns.index(name)  # random stream of the column under SR
            out.line(f"tl.store({ptr} + offs, _stored({value}, {ptr}.dtype.element_ty, SR, "
                     f"seed, ti, {stream}, offs), mask=mask)", f"{name} =")
            if name == "w":
                with out.block("if COPY:", "the low-precision parameter of a master weight"):
                    out.line(f"tl.store(p_wcopy + offs, _stored({value}, "
                             f"p_wcopy.dtype.element_ty, SR, seed, ti, "
                             f"{self.unit.num_state_columns}, offs), mask=mask)")

    def _column_of(self, v: int) -> str:
        eq = self.eqs[v]
        if eq.op == "state":
            return eq.attr
        return eq.op if OPS[eq.op].category == LEAF else temp_column(v)

    def _emit_reduction(self, out: CodeBuffer, r: int, j: int, tiled: bool = False) -> None:
        """The block's (or tile's) partial of one reduction: its mapped values (already
        computed) in float64, padding set to the identity, combined by the descriptor's
        combine (a tile's: over its columns, then its rows)."""
        eq = self.eqs[r]
        desc = REDUCTIONS[eq.attr]
        combine = "_maxnan" if desc.combine == "max" else "_add"
        self.helpers.add(combine)
        out.line(f"x = {value_name(eq.args[0])}.to(tl.float64)",
                 f"line {eq.line}: {desc.name}" if eq.line else desc.name)
        with out.block("if MASKED:"):
            out.line(f"x = tl.where(mask, x, {format_float(desc.identity)})")
        if tiled:
            out.line(f"tl.store(rp + {j}, tl.reduce(tl.reduce(x, 1, {combine}), 0, {combine}))")
        else:
            out.line(f"tl.store(rp + {j}, tl.reduce(x, 0, {combine}))")



def _const(value: float) -> str:
    """A typed kernel constant; -0.0 is spelled as +0.0 times -1.0, which every Triton keeps
    (Triton 3.6 negates as 0 - x, which gives +0.0)."""
    if value == 0.0 and math.copysign(1.0, value) < 0:
        return "tl.full([], 0.0, CT) * -1.0"
    return f"tl.full([], {format_float(value)}, CT)"
