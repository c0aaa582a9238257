"""The device kernels that finish a sweep's reductions, generated from their descriptors
(optdsl.ir.reductions): how partials combine (``combine`` from ``identity``) and how a total
is finished (``finish_expr``, spelled with the element spelling), so no kind of reduction is
written by hand here and the host (optdsl.runtime.reduce) and the device finish alike.

A reduction sweep leaves one float64 partial per block and reduction. Two kernels follow it:

- ``sweep<k>_combine``, one program per tensor of a bucket: its blocks' partials combined in
  block order, ``CHUNK`` at a time (a fixed tree within a chunk, chunks in order), into the
  tensor's raw total (row ``ti`` of ``raw``); with ``FINISH`` the per-tensor reductions are
  finished at once with the tensor's element count (``cnt``) into ``fin``;
- ``sweep<k>_finish``, one program for the param group: the raw totals of the group's
  tensors combined in order into each group-wide reduction, finished with the group's
  element count into ``tot``; with ``TENSORS`` it also finishes the per-tensor reductions
  (when raw totals were first combined across ranks, FSDP2).

Orders are fixed, so results are the same bits from run to run whatever the grid's
scheduling.
"""

from __future__ import annotations

import re

from optdsl.codegen.buffer import CodeBuffer
from optdsl.codegen.triton_prologue import fin_width, signature, typed_const
from optdsl.codegen.unit import Unit
from optdsl.ir.numbers import format_float
from optdsl.ir.ops import Expr
from optdsl.ir.reductions import GROUP_SCOPE, REDUCTIONS, Reduction
from optdsl.ir.schedule import Sweep

COMBINE_HELPERS = {"add": "_add", "max": "_maxnan"}


class ReductionKernels:
    """Emits the combine and finish kernels of a unit's reduction sweeps."""

    def __init__(self, unit: Unit, spelling: dict[str, str]) -> None:
        self.unit = unit
        self.spelling = spelling
        self.width = fin_width(unit)  # of a row of raw / fin (one column per slot)
        self.helpers: set[str] = set()

    def finish(self, desc: Reduction, total: str, count: str) -> str:
        """The descriptor's finish of ``total`` over ``count`` elements, spelled."""
        return self._spell(desc.finish_expr, (total, count))

    def _spell(self, expr: Expr, args: tuple[str, ...]) -> str:
        if isinstance(expr, bool):
            raise TypeError("a finish argument is an index (int) or a constant (float)")
        if isinstance(expr, int):
            return args[expr]
        if isinstance(expr, float):
            return typed_const(expr, "tl.float64")
        name, *parts = expr
        template = self.spelling[name]
        self.helpers.update(re.findall(r"\b(_[a-z0-9]+)\(", template))
        return template.format(*[self._spell(p, args) for p in parts])

    def _reductions(self, sweep: Sweep) -> list[tuple[int, int, Reduction]]:
        """(index in the sweep, slot, descriptor) of each reduction of a sweep."""
        eqs = self.unit.graph.eqs
        return [(j, self.unit.slot[r], REDUCTIONS[eqs[r].attr])
                for j, r in enumerate(sweep.reductions)]

    def emit(self, out: CodeBuffer, sweep: Sweep) -> tuple[str, str]:
        """Both kernels of a reduction sweep; their names."""
        k = sweep.index
        items = self._reductions(sweep)
        self._emit_combine(out, k, items, len(sweep.reductions))
        self._emit_finish(out, k, items)
        return f"sweep{k}_combine", f"sweep{k}_finish"

    def _combine(self, desc: Reduction, acc: str, chunk: str) -> str:
        helper = COMBINE_HELPERS[desc.combine]
        self.helpers.add(helper)
        return f"{helper}({acc}, tl.reduce({chunk}, 0, {helper}))"

    def _emit_combine(self, out: CodeBuffer, k: int, items, per_block: int) -> None:
        nr = self.width
        out.line()
        out.line()
        out.line("@triton.jit")
        *first, last = signature(f"sweep{k}_combine", [
            "sizes", "firsts", "cnt", "red", "raw", "fin", "BLOCK: tl.constexpr",
            "CHUNK: tl.constexpr", "FINISH: tl.constexpr"])
        for line in first:
            out.line(line)
        with out.block(last):
            out.line(f'"""Sweep {k}\'s reductions of one tensor (one program each), in block '
                     f'order."""')
            out.line("ti = tl.program_id(0).to(tl.int64)")
            out.line("count = (tl.load(sizes + ti) + BLOCK - 1) // BLOCK  # the tensor's blocks")
            out.line("first = tl.load(firsts + ti)")
            out.line("lanes = tl.arange(0, CHUNK)")
            for j, _, desc in items:
                out.line(f"a{j} = {typed_const(desc.identity, 'tl.float64')}", desc.name)
            # (a while loop: Triton 3.6's interpreter cannot take a tensor bound in range)
            out.line("c = tl.full([], 0, tl.int64)")
            with out.block("while c < count:"):
                out.line("rows = first + c + lanes")
                out.line("inside = c + lanes < count")
                for j, _, desc in items:
                    out.line(f"x = tl.load(red + {per_block} * rows + {j}, mask=inside, "
                             f"other={format_float(desc.identity)})")
                    out.line(f"a{j} = {self._combine(desc, f'a{j}', 'x')}")
                out.line("c += CHUNK")
            for j, slot, desc in items:
                out.line(f"tl.store(raw + {nr} * ti + {slot}, a{j})")
            tensor_items = [(j, slot, desc) for j, slot, desc in items
                            if desc.scope != GROUP_SCOPE]
            if tensor_items:
                with out.block("if FINISH:", "no partials to combine across ranks first"):
                    out.line("k = tl.load(cnt + ti)  # the tensor's element count")
                    for j, slot, desc in tensor_items:
                        out.line(f"tl.store(fin + {nr} * ti + {slot}, "
                                 f"{self.finish(desc, f'a{j}', 'k')})", desc.name)

    def _emit_finish(self, out: CodeBuffer, k: int, items) -> None:
        nr = self.width
        group = [(j, slot, desc) for j, slot, desc in items if desc.scope == GROUP_SCOPE]
        tensor = [(j, slot, desc) for j, slot, desc in items if desc.scope != GROUP_SCOPE]
        out.line()
        out.line()
        out.line("@triton.jit")
        *first, last = signature(f"sweep{k}_finish", [
            "raw", "fin", "tot", "cnt", "rows", "CHUNK: tl.constexpr", "TENSORS: tl.constexpr"])
        for line in first:
            out.line(line)
        with out.block(last):
            out.line(f'"""Sweep {k}\'s reductions over the param group (one program), in '
                     f'tensor order."""')
            out.line("lanes = tl.arange(0, CHUNK)")
            out.line(f"n = {typed_const(0.0, 'tl.float64')}  # the group's element count")
            for j, slot, desc in group:
                out.line(f"a{j} = {typed_const(desc.identity, 'tl.float64')}", desc.name)
            out.line("c = tl.full([], 0, tl.int64)")
            with out.block("while c < rows:"):
                out.line("r = c + lanes")
                out.line("inside = r < rows")
                out.line("k = tl.load(cnt + r, mask=inside, other=0.0)")
                self.helpers.add("_add")
                out.line("n = _add(n, tl.reduce(k, 0, _add))")
                for j, slot, desc in group:
                    out.line(f"x = tl.load(raw + {nr} * r + {slot}, mask=inside, "
                             f"other={format_float(desc.identity)})")
                    out.line(f"a{j} = {self._combine(desc, f'a{j}', 'x')}")
                if tensor:
                    with out.block("if TENSORS:"):
                        for j, slot, desc in tensor:
                            out.line(f"x = tl.load(raw + {nr} * r + {slot}, mask=inside, "
                                     f"other={format_float(desc.identity)})")
                            out.line(f"tl.store(fin + {nr} * r + {slot}, "
                                     f"{self.finish(desc, 'x', 'k')}, mask=inside)", desc.name)
                out.line("c += CHUNK")
            for j, slot, desc in group:
                out.line(f"tl.store(tot + {slot}, {self.finish(desc, f'a{j}', 'n')})",
                         desc.name)
