"""What a code generator reads: one variant of a program, legalized for its back end and
scheduled (a compilation unit), with the names generated code gives its parts.

Names in generated code never contain user text except validated identifiers behind a
prefix: hypers are ``h_<name>``, states ``s_<name>``, values ``v<number>`` (``%<number>`` of
``optdsl show --ir`` on the lowered graph).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from optdsl.ir.nodes import Graph
from optdsl.ir.schedule import Library, Schedule, Sweep

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def hyper_name(name: str) -> str:
    return f"h_{name}"


def state_name(name: str) -> str:
    return f"s_{name}"


def value_name(v: int) -> str:
    return f"v{v}"


def temp_column(v: int) -> str:
    """The column of a value stored between sweeps (no user name starts with `__`)."""
    return f"__t{v}"


def column_var(column: str) -> str:
    """The part of generated names that stands for a column: w, g, s_<state>, t<value>."""
    if column in ("w", "g"):
        return column
    if column.startswith("__t"):
        return column[2:]
    return state_name(column)


@dataclass(frozen=True)
class Unit:
    title: str
    schedule: Schedule
    state_order: tuple[str, ...]  # every state of the program, in declaration order
    tensor_states: frozenset[str]
    shaped_states: frozenset[str] = frozenset()  # `per row` / `per col` ones: library only

    @property
    def graph(self) -> Graph:
        return self.schedule.graph

    @property
    def safe_title(self) -> str:
        """The title if it is an identifier (it names functions and files), else 'program'."""
        return self.title if _IDENT.fullmatch(self.title or "") else "program"

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        """A parameter's tensors: w, g, each tensor state in program order, then the
        scratch tensors of values stored between sweeps."""
        return (("w", "g") + tuple(n for n in self.state_order if n in self.tensor_states)
                + tuple(temp_column(v) for v in self.schedule.stored))

    @property
    def num_state_columns(self) -> int:
        """w, g and the tensor states: the columns that are the parameter's own."""
        return 2 + sum(1 for n in self.state_order if n in self.tensor_states)

    @functools.cached_property
    def slot(self) -> dict[int, int]:
        """Each reduction's slot (its index in the step's order of reductions)."""
        return {r: i for i, r in enumerate(self.schedule.reductions)}

    def stores(self, sweep: Sweep) -> tuple[tuple[str, int], ...]:
        """The tensor outputs a sweep writes: every changed one, in the final sweep only."""
        return self.schedule.tensor_outputs if sweep.final else ()

    def saves(self, sweep: Sweep) -> tuple[tuple[str, int], ...]:
        """The scratch columns a sweep writes, with their values."""
        return tuple((temp_column(v), v) for v in sweep.saves)

    def runs(self, sweep: Sweep) -> bool:
        """Whether a sweep has element work (it writes, saves, reduces or accumulates row
        and column statistics)."""
        return bool(self.stores(sweep) or sweep.reductions or sweep.saves or sweep.stats)

    def row(self, sweep: Sweep) -> tuple[int, ...]:
        """The scalar values a sweep's element code reads from each parameter's row (the
        constants are spelled in the code instead)."""
        eqs = self.graph.eqs
        return tuple(v for v in sweep.scalars_in if eqs[v].op != "const")

    def library_row(self, stage: Library) -> tuple[int, ...]:
        """The host scalars a library stage reads from each parameter's row."""
        eqs = self.graph.eqs
        return tuple(v for v in stage.scalars_in if eqs[v].op != "const")

    def reductions_of(self, sweep: Sweep) -> tuple[tuple[int, str], ...]:
        """(slot, descriptor name) of each reduction a sweep produces."""
        eqs = self.graph.eqs
        return tuple((self.slot[r], eqs[r].attr) for r in sweep.reductions)

    def cite(self, v: int) -> str | None:
        """The comment citing the DSL line a value came from."""
        line = self.graph.eqs[v].line
        return f"line {line}" if line else None
