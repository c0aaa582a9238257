"""The scalar prologue of a Triton kernel program: the device-placed scalars its tensor needs
(optdsl.ir.schedule.Schedule.placement), computed once per program, in float64, from device
tables.

Where each leaf comes from: a hyper from the group's hyper table ``hyp`` (float64, in the
order of the module's HYPERS), ``t`` from the tensor's step count (``state["step"]``, through
the pointer table: this update's number is the stored count plus one), a scalar state from
its tensor (through the pointer table), a fact of the tensor (``rows``, ``cols``, ``ndim``,
``numel``: integers, ``dtype_eps``: a float64's bits) from the pointer table's last columns,
``inv_grad_scale`` from torch.amp's scale tensor
``gsc``, a per-tensor reduction from the finished table ``fin`` (one float64 row per tensor,
one column per reduction slot), a group-wide one from ``tot``, a scalar a library stage
computed from its slot of ``fin`` after the reductions' (optdsl.codegen.library.fin_slots). Every other value is the
element spelling of its op (optdsl.codegen.triton.SPELLING) at scalar level, with constants
typed float64, so a prologue computes what the host step computes, op for op in float64; the
element code then reads the values rounded to the compute dtype, as it read the host's row.
"""

from __future__ import annotations

import re

from optdsl.codegen.buffer import CodeBuffer
from optdsl.codegen.library import fin_slots
from optdsl.codegen.unit import Unit, hyper_name, state_name, value_name
from optdsl.errors import located
from optdsl.ir.numbers import format_float
from optdsl.ir.ops import PARAM_FACTS, Level
from optdsl.ir.schedule import Placement

F64 = "tl.float64"


def hypers_read(unit: Unit) -> tuple[str, ...]:
    """The hypers the device reads, in the order of the hyper table: the graph's (so that
    renaming a hyper changes nothing else in the generated code)."""
    eqs = unit.graph.eqs
    names = [eq.attr for v, eq in enumerate(eqs) if eq.op == "hyper"
             and unit.schedule.placement(v) == Placement.DEVICE]
    return tuple(dict.fromkeys(names))


def scalar_states(unit: Unit) -> tuple[str, ...]:
    """The program's scalar states, in declaration order (pointer-table columns after the
    step count)."""
    return tuple(n for n in unit.state_order if n not in unit.tensor_states)


def scalar_dtype_param(name: str) -> str:
    """The constexpr holding the dtype of a scalar state's tensor (``step``: the count's)."""
    return "DT_step" if name == "step" else f"DT_{state_name(name)}"


def needed(unit: Unit, roots) -> list[int]:
    """The device-placed scalar values ``roots`` need, in graph order (reductions are read
    from their tables, not recomputed; tensor values are not scalars)."""
    eqs = unit.graph.eqs
    schedule = unit.schedule

    def stop(v: int) -> bool:
        return (eqs[v].kind.level == Level.TENSOR or eqs[v].op in ("reduce", "reduce_group")
                or v in schedule.library)

    reach = unit.graph.ancestors(list(roots), stop)
    return sorted(v for v in reach if eqs[v].kind.level != Level.TENSOR
                  and (eqs[v].op == "const" or schedule.placement(v) == Placement.DEVICE))


def fin_width(unit: Unit) -> int:
    """The width of a row of the finished table: the reductions, then the scalars library
    stages hand to kernels."""
    return len(unit.slot) + len(fin_slots(unit))


def ref(unit: Unit, v: int) -> str:
    """How the prologue names scalar value v."""
    eq = unit.graph.eqs[v]
    if eq.op == "hyper":
        return hyper_name(eq.attr)
    if eq.op == "state":
        return state_name(eq.attr)
    if eq.op in ("t", "inv_grad_scale"):
        return eq.op
    return value_name(v)


class Prologue:
    """Emits prologues into kernels; collects the helpers they call."""

    def __init__(self, unit: Unit, spelling: dict[str, str], width: int) -> None:
        self.unit = unit
        self.spelling = spelling
        self.width = width  # of a pointer-table row
        self.helpers: set[str] = set()
        self.scalars = scalar_states(unit)
        self.hypers = hypers_read(unit)
        self.library_slots = fin_slots(unit)
        self.fin_width = fin_width(unit)

    def pointer(self, name: str) -> str:
        """The line loading the pointer of a scalar's tensor (``step`` or a scalar state)."""
        column = len(self.unit.columns) + 1 + (0 if name == "step" else
                                               1 + self.scalars.index(name))
        var = "p_step" if name == "step" else f"p_{state_name(name)}"
        return (f"{var} = tl.load(ptrs + {self.width} * ti + {column})"
                f".to(tl.pointer_type({scalar_dtype_param(name)}))")

    def emit(self, out: CodeBuffer, roots) -> list[int]:
        """Lines computing every value ``roots`` need; returns them in order."""
        unit, eqs = self.unit, self.unit.graph.eqs
        values = needed(unit, roots)
        ops = {eqs[v].op for v in values}
        if "t" in ops:
            out.line(self.pointer("step"))
        for name in self.scalars:
            if any(eqs[v].op == "state" and eqs[v].attr == name for v in values):
                out.line(self.pointer(name))
        for v in values:
            self._emit_value(out, v)
        return values

    def _emit_value(self, out: CodeBuffer, v: int) -> None:
        unit, eq = self.unit, self.unit.graph.eqs[v]
        name = ref(unit, v)
        if eq.op == "const":
            out.line(f"{name} = {typed_const(eq.attr, F64)}")
        elif eq.op == "hyper":
            out.line(f"{name} = tl.load(hyp + {self.hypers.index(eq.attr)})")
        elif eq.op == "t":
            out.line("t = (tl.load(p_step) + 1).to(tl.float64)", "this update's step number")
        elif eq.op == "state":
            out.line(f"{name} = tl.load(p_{state_name(eq.attr)}).to(tl.float64)")
        elif eq.op in PARAM_FACTS:
            column = self.width - len(PARAM_FACTS) + PARAM_FACTS.index(eq.op)
            cast = "tl.float64, bitcast=True" if eq.op == "dtype_eps" else "tl.float64"
            out.line(f"{name} = tl.load(ptrs + {self.width} * ti + {column}).to({cast})",
                     f"the tensor's {eq.op}")
        elif eq.op == "inv_grad_scale":
            self.helpers.add("_div")
            out.line(f"inv_grad_scale = _div({typed_const(1.0, F64)}, "
                     f"tl.load(gsc).to(tl.float64))", "1 / torch.amp's scale")
        elif eq.op == "reduce":
            out.line(f"{name} = tl.load(fin + {self.fin_width} * ti + {unit.slot[v]})",
                     cite(unit, v, eq.attr))
        elif v in self.library_slots:
            out.line(f"{name} = tl.load(fin + {self.fin_width} * ti + "
                     f"{self.library_slots[v]})", cite(unit, v, "from a library stage"))
        elif eq.op == "reduce_group":
            out.line(f"{name} = tl.load(tot + {unit.slot[v]})", cite(unit, v, eq.attr))
        else:
            with located(eq.span):
                template = self.spelling[eq.op]
                self.helpers.update(re.findall(r"\b(_[a-z0-9]+)\(", template))
                text = template.format(*[ref(unit, a) for a in eq.args])
            out.line(f"{name} = {text}", cite(unit, v))

    def row_args(self, row) -> list[str]:
        """The prologue's values as the element code reads them: numbers in the compute
        dtype CT, masks as they are."""
        eqs = self.unit.graph.eqs
        return [ref(self.unit, v) if eqs[v].kind.mask else f"{ref(self.unit, v)}.to(CT)"
                for v in row]


def cite(unit: Unit, v: int, what: str | None = None) -> str | None:
    line = unit.graph.eqs[v].line
    if line and what:
        return f"line {line}: {what}"
    return f"line {line}" if line else what


def typed_const(value: float, dtype: str) -> str:
    """A constant of a Triton dtype; -0.0 as +0.0 times -1.0, which every Triton keeps
    (Triton 3.6 negates as 0 - x, which gives +0.0)."""
    if value == 0.0 and str(value).startswith("-"):
        return f"tl.full([], 0.0, {dtype}) * -1.0"
    return f"tl.full([], {format_float(value)}, {dtype})"


def signature(name: str, params: list[str], limit: int = 96, lead: str = "def ") -> list[str]:
    """The lines of ``def name(params):``, wrapped at ``limit`` columns."""
    head = f"{lead}{name}("
    lines, current = [], head
    for i, p in enumerate(params):
        piece = p + (", " if i < len(params) - 1 else "):")
        if len(current) + len(piece.rstrip()) > limit and current.strip() != head.strip():
            lines.append(current.rstrip())
            current = " " * len(head)
        current += piece
    lines.append(current)
    return lines


def call(out: CodeBuffer, name: str, args: str) -> None:
    """The call ``name(args)``, wrapped at 96 columns from the buffer's indentation."""
    indent = len(out._indent) * out._level
    lines = signature(name, args.split(", "), 96 - indent, lead="")
    lines[-1] = lines[-1][:-1]  # (no colon)
    for line in lines:
        out.line(line)
