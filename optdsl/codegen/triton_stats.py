"""Row and column statistics fused into a Triton sweep (``Sweep.stats``: the statistics a
library stage reads of the sweep's element values or inputs, optdsl.ir.stages.fused_stats).

Such a sweep's kernel runs one program per TR x TC tile of a tensor's matrix view (``shp``:
its matrices, rows and columns; the tile map's rows are (tensor, tile number)) instead of
one per flat block; its block function computes the element values of the tile, 2-D, as of
a block. The tile's mapped values, in float64 (padding 0), summed over its columns (a row
statistic) or its rows (a column statistic) are stored, with no atomics, into the
statistic's partials (``q<slot>``: their address, handed by the runtime in ``sp``; 0 where
the library stage computes the statistic itself), laid out [part, output]: a row
statistic's part is the tile's column of tiles, a column statistic's its row of tiles.
``stats_finish`` then adds each output's parts in order, one at a time, and finishes them
(optdsl.runtime.device_stats plans the tiles and buffers and launches it).
"""

from __future__ import annotations

from optdsl.codegen.buffer import CodeBuffer
from optdsl.codegen.unit import Unit, value_name
from optdsl.ir.schedule import Sweep
from optdsl.ir.stages import STATS


class StatsKernels:
    """Emits the tile prologue, the block's partials and stats_finish of a unit's fused
    statistics."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.eqs = unit.graph.eqs
        self.fused = unit.schedule.fused
        self.helpers: set[str] = set()

    def axes(self, ps: Sweep) -> set[str]:
        """The axes (``"row"``, ``"col"``) a sweep's statistics reduce away."""
        return {STATS[self.eqs[v].op][0] for v in ps.stats}

    def args(self, ps: Sweep) -> list[str]:
        """The block function's arguments for the statistics a sweep accumulates: each
        one's partials (``q<slot>``), the tile's rows' and columns' places among them and
        which of its rows and columns are in the tensor."""
        if not ps.stats:
            return []
        axes = self.axes(ps)
        slots = [f"q{self.fused.index(v)}" for v in ps.stats]
        return (slots + (["srow", "row_ok"] if "row" in axes else [])
                + (["scol", "col_ok"] if "col" in axes else []))

    def emit_tile(self, out: CodeBuffer, ps: Sweep, what: str) -> None:
        """A stats sweep's program: its tile of its tensor, the tile's element offsets
        (``offs``) and which are inside (``valid``), and where its partials go."""
        axes = self.axes(ps)
        out.line(f'"""Sweep {ps.index} ({what}): one program per (tensor, tile) row of '
                 f'`blocks`, the tile\'s row and')
        out.line('column pieces of the row and column statistics summed in float64 into their '
                 'partials."""')
        out.line("pid = tl.program_id(0).to(tl.int64)")
        out.line("ti = tl.load(blocks + 2 * pid)")
        out.line("tile = tl.load(blocks + 2 * pid + 1)  # its number in the tensor")
        out.line("B = tl.load(shp + 3 * ti)  # the matrix view: matrices, rows, columns")
        out.line("R = tl.load(shp + 3 * ti + 1)")
        out.line("C = tl.load(shp + 3 * ti + 2)")
        out.line("across = (C + TC - 1) // TC  # tiles across a matrix")
        out.line("down = (R + TR - 1) // TR  # tiles down a matrix")
        out.line("b = tile // (down * across)  # the matrix")
        out.line("rows0 = tile // across % down * TR")
        out.line("cols0 = tile % across * TC")
        out.line("rows = rows0 + tl.arange(0, TR)")
        out.line("cols = cols0 + tl.arange(0, TC)")
        out.line("row_ok = rows < R")
        out.line("col_ok = cols < C")
        out.line("offs = (b * R + rows)[:, None] * C + cols[None, :]")
        out.line("valid = row_ok[:, None] & col_ok[None, :]")
        if "row" in axes:
            out.line("srow = tile % across * (B * R) + b * R + rows  # part: the tile's column")
        if "col" in axes:
            out.line("scol = tile // across % down * (B * C) + b * C + cols  # part: its row")

    def emit_slots(self, out: CodeBuffer, ps: Sweep) -> None:
        """The kernel's loads of the tensor's partials' addresses."""
        for v in ps.stats:
            slot = self.fused.index(v)
            out.line(f"q{slot} = tl.load(sp + {len(self.fused)} * ti + {slot})",
                     f"{self.eqs[v].op}'s partials (0: the library stage computes it)")

    def emit_partials(self, out: CodeBuffer, ps: Sweep) -> None:
        """The tile's partials of the statistics the sweep accumulates: the mapped values
        in float64 (padding 0), summed over the tile's columns (a row statistic) or rows (a
        column statistic), stored where the runtime handed partials. Statistics of one
        value and map share the mapped values."""
        groups: dict[tuple[int, str], list[int]] = {}
        for v in ps.stats:
            eq = self.eqs[v]
            groups.setdefault((eq.args[0], STATS[eq.op][1]), []).append(v)
        for (arg, how), members in groups.items():
            self.helpers.add("_add")
            names = ", ".join(self.eqs[v].op for v in members)
            line = self.eqs[members[0]].line
            out.line(f"x = {value_name(arg)}.to(tl.float64)",
                     f"line {line}: {names}" if line else names)
            if how == "square":
                out.line("x = x * x", "(exact for a float32 value)")
            with out.block("if MASKED:"):
                out.line("x = tl.where(mask, x, 0.0)")
            for v in members:
                slot = self.fused.index(v)
                row = STATS[self.eqs[v].op][0] == "row"
                where, ok, dim = ("srow", "row_ok", 1) if row else ("scol", "col_ok", 0)
                with out.block(f"if q{slot} != 0:", "fused for this tensor"):
                    out.line(f"tl.store(q{slot}.to(tl.pointer_type(tl.float64)) + {where}, "
                             f"tl.reduce(x, {dim}, _add), mask={ok})",
                             f"{self.eqs[v].op}: each {'row' if row else 'column'} over the tile")

    def emit_finish(self, out: CodeBuffer) -> None:
        """stats_finish: each fused statistic's outputs from their partials, added in tile
        order (one at a time: the sum does not depend on the launch), finished and stored in
        the compute dtype (the tensor ``p.stats[slot]`` that the library stage reads)."""
        out.line()
        out.line()
        out.line("@triton.jit")
        with out.block("def stats_finish(table, OUT: tl.constexpr, CHUNK: tl.constexpr):"):
            out.line('"""One program per (statistic of a tensor: a row of `table`, CHUNK of its '
                     'outputs): each')
            out.line("output's float64 partials added in tile order, finished (0: the sum, 1: "
                     "the mean, 2: the")
            out.line('square root) and stored in the compute dtype OUT."""')
            out.line("i = tl.program_id(0).to(tl.int64)")
            out.line("o = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK)")
            out.line("part = tl.load(table + 6 * i).to(tl.pointer_type(tl.float64))")
            out.line("res = tl.load(table + 6 * i + 1).to(tl.pointer_type(OUT))")
            out.line("outputs = tl.load(table + 6 * i + 2)")
            out.line("parts = tl.load(table + 6 * i + 3)")
            out.line("finish = tl.load(table + 6 * i + 4)")
            out.line("count = tl.load(table + 6 * i + 5)  # the elements of one output")
            out.line("ok = o < outputs")
            out.line("x = tl.load(part + o, mask=ok, other=0.0)")
            # (a while loop: Triton 3.6's interpreter cannot take a tensor bound in range)
            out.line("k = tl.full([], 1, tl.int64)")
            with out.block("while k < parts:"):
                out.line("x += tl.load(part + k * outputs + o, mask=ok, other=0.0)")
                out.line("k += 1")
            with out.block("if finish == 1:"):
                out.line("x = x / count.to(tl.float64)")
            with out.block("elif finish == 2:"):
                out.line("x = tl.sqrt(x)  # (float64: correctly rounded)")
            out.line("tl.store(res + o, x.to(OUT), mask=ok)")

    def emit_table(self, meta: CodeBuffer) -> None:
        """The module's STATS table and STATS_FINISH."""
        meta.line("# Per fused row or column statistic (its slot in p.stats): (sweep, axis "
                  "reduced, finish).")
        with meta.block("STATS = ("):
            for v in self.fused:
                axis, _, finish = STATS[self.eqs[v].op]
                meta.line(f"({self.unit.schedule.stat_sweep(v)}, {axis!r}, {finish!r}),  "
                          f"# line {self.eqs[v].line}: {self.eqs[v].op}")
        meta.line(")")
        meta.line("STATS_FINISH = stats_finish")
