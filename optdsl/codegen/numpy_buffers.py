"""Chunk-buffer allocation for the NumPy back end's element code.

Every tensor value of a sweep is computed into a slice of a preallocated buffer (``b<i>``,
``m<i>`` for masks) or straight into its destination (an output's chunk), and a buffer is
reused once its value is dead. Whether an output may share memory with an argument is a
property of the op's spelling, never of its name: a spelling lists the arguments it still
reads after it first writes its output (``reads_after_write``), and those may not alias the
output. A single ufunc reads all its inputs before writing, so any aliasing is safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optdsl.errors import located
from optdsl.ir.numbers import format_float
from optdsl.ir.ops import Level
from optdsl.ir.schedule import Schedule, Sweep


@dataclass(frozen=True)
class Spelling:
    """How NumPy element code writes an op into ``{out}`` ({0}, {1}...: the arguments)."""

    template: str
    reads_after_write: frozenset[int] = frozenset()


@dataclass
class Plan:
    code: list[tuple[str, str | None]] = field(default_factory=list)
    buffers: int = 0
    masks: int = 0


class _Pool:
    """Free buffers of one kind, lowest index first."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.free: list[int] = []
        self.count = 0

    def take(self) -> str:
        if self.free:
            return f"{self.prefix}{self.free.pop()}"
        self.count += 1
        return f"{self.prefix}{self.count - 1}"

    def release(self, name: str) -> None:
        if name[0] == self.prefix and name[1:].isdigit():
            self.free.append(int(name[1:]))
            self.free.sort(reverse=True)


class Allocator:
    """Orders a sweep's element ops and assigns each result a chunk name."""

    def __init__(self, schedule: Schedule, sweep: Sweep, storage: dict,
                 spelling: dict[str, Spelling], outputs: list[tuple[str, int]]) -> None:
        """``storage``: value read from memory (leaf, or stored value) or ("out", column)
        -> (array name, chunk name); ``outputs``: (column, value) the sweep writes."""
        self.schedule = schedule
        self.sweep = sweep
        self.eqs = schedule.graph.eqs
        self.spelling = spelling
        self.outputs = list(outputs)
        self.dest_chunk = {name: storage[("out", name)][1] for name, _ in self.outputs}
        self.ref = {v: chunk for v, (_, chunk) in storage.items() if isinstance(v, int)}
        self.in_memory = set(self.ref)
        self.buffers, self.masks = _Pool("b"), _Pool("m")
        self.plan = Plan()
        self.last_use = self._last_uses()

    def _last_uses(self) -> dict[int, int]:
        end = len(self.eqs)
        last: dict[int, int] = {}
        for v in self.sweep.tensor:
            for a in self.eqs[v].args:
                last[a] = max(last.get(a, -1), v)
        for r in self.sweep.reductions:
            for a in self.eqs[r].args:
                last[a] = max(last.get(a, -1), end)
        for _, v in self.outputs:
            last[v] = end + 1
        return last

    def _direct(self) -> dict[int, str]:
        """Outputs computed straight into their destination: the value is produced by an op
        of this sweep, the destination's old contents are not read after that op (except
        as an argument the spelling reads before writing), and no earlier output claimed
        the value."""
        eqs = self.eqs
        leaf_of = {}
        for v in self.sweep.tensor:
            if eqs[v].op == "w":
                leaf_of["w"] = v
            elif eqs[v].op == "state":
                leaf_of[eqs[v].attr] = v
        direct: dict[int, str] = {}
        for name, v in self.outputs:
            if v in direct or v not in self.sweep.tensor or v in self.in_memory:
                continue
            old = leaf_of.get(name)
            if old is not None:
                if self.last_use.get(old, -1) > v:
                    continue
                unsafe = self.spelling[eqs[v].op].reads_after_write
                if any(a == old for i, a in enumerate(eqs[v].args) if i in unsafe):
                    continue
            direct[v] = self.dest_chunk[name]
        return direct

    def arg(self, a: int) -> str:
        eq = self.eqs[a]
        if eq.kind.level == Level.TENSOR:
            return self.ref[a]
        if eq.op == "const":
            return format_float(eq.attr)
        return f"f{a}"

    def run(self) -> Plan:
        eqs, plan = self.eqs, self.plan
        direct = self._direct()
        for v in self.sweep.tensor:
            eq = eqs[v]
            if v in self.in_memory:
                continue
            target = direct.get(v) or (self.masks if eq.kind.mask else self.buffers).take()
            self.ref[v] = target
            with located(eq.span):
                text = self.spelling[eq.op].template.format(*[self.arg(a) for a in eq.args],
                                                            out=target)
            plan.code.append((text, f"line {eq.line}" if eq.line else None))
            for a in set(eq.args):
                if self.last_use.get(a) == v and a in self.ref:
                    self._release(self.ref[a])
        self._reductions()
        self._write_outputs(direct)
        plan.buffers, plan.masks = self.buffers.count, self.masks.count
        return plan

    def _release(self, name: str) -> None:
        self.buffers.release(name)
        self.masks.release(name)

    def _reductions(self) -> None:
        """Each reduction's chunk partial, combined into its accumulator in float64."""
        from optdsl.ir.reductions import REDUCTIONS

        for r in self.sweep.reductions:
            eq = self.eqs[r]
            value = self.arg(eq.args[0])
            if REDUCTIONS[eq.attr].combine == "add":
                self.plan.code.append((f"acc{r} += np.sum({value}, dtype=np.float64)", None))
            else:  # max; NaN propagates through np.maximum
                self.plan.code.append((f"acc{r} = np.maximum(acc{r}, np.max({value}))", None))

    def _write_outputs(self, direct: dict[int, str]) -> None:
        """Outputs not computed in place are copied; a value read from storage that another
        output overwrites is saved first."""
        eqs, code = self.eqs, self.plan.code
        written = {name for name, _ in self.outputs}
        saved: dict[int, str] = {}
        for name, v in self.outputs:
            eq = eqs[v]
            source = "w" if eq.op == "w" else eq.attr if eq.op == "state" else None
            if source is not None and source != name and source in written and v not in saved:
                tmp = self.buffers.take()
                code.append((f"np.copyto({tmp}, {self.ref[v]})", f"keep old {source}"))
                saved[v] = tmp
        for name, v in self.outputs:
            dest = self.dest_chunk[name]
            if direct.get(v) == dest:
                continue
            eq = eqs[v]
            if eq.op in ("w", "state") and (eq.attr if eq.op == "state" else "w") == name:
                continue  # unchanged
            value = saved.get(v) or (self.ref[v] if eq.kind.level == Level.TENSOR
                                     else self.arg(v))
            code.append((f"np.copyto({dest}, {value})", f"{name} ="))
