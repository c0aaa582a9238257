"""IR data: a Graph is a flat SSA list of equations plus the named outputs of a step.

Value ``i`` is the result of ``graph.eqs[i]``; arguments always refer to earlier values, so
the list is topologically ordered by construction. Inputs are leaf equations: ``const``
(attr: the float), ``hyper`` (attr: the hyperparameter's name), ``state`` (attr: the state
variable's name), ``w``, ``g``, ``t`` and ``inv_grad_scale``. A lowered reduction
(``reduce``, ``reduce_group``) has its descriptor's name as attr. Each equation keeps the
span of the DSL text it came from (None: synthesized), so that generated code can cite the
line and a compiler failure can point at the expression.
"""

from __future__ import annotations

from dataclasses import dataclass

from optdsl.errors import Span
from optdsl.ir.ops import Kind


@dataclass(frozen=True)
class Eq:
    op: str
    args: tuple[int, ...]
    attr: object
    kind: Kind
    span: Span | None = None

    @property
    def line(self) -> int:
        """The DSL line this value came from (0: synthesized)."""
        return self.span.line if self.span is not None else 0


@dataclass(frozen=True)
class Graph:
    eqs: tuple[Eq, ...]
    # ("w", id) first, then one (state name, id) per state variable, in declaration order.
    outputs: tuple[tuple[str, int], ...]

    def ancestors(self, roots, stop=None) -> set[int]:
        """Values reachable from ``roots`` through arguments (roots included), not expanding
        the arguments of a value for which ``stop(v)`` is true."""
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if stop is None or not stop(v):
                stack.extend(self.eqs[v].args)
        return seen

    def users(self) -> list[list[int]]:
        """Per value, the values that read it (one entry per argument position, in order)."""
        out: list[list[int]] = [[] for _ in self.eqs]
        for i, eq in enumerate(self.eqs):
            for a in eq.args:
                out[a].append(i)
        return out

    def live(self) -> list[bool]:
        """Which values some output depends on."""
        alive = [False] * len(self.eqs)
        for _, v in self.outputs:
            alive[v] = True
        for i in range(len(self.eqs) - 1, -1, -1):
            if alive[i]:
                for a in self.eqs[i].args:
                    alive[a] = True
        return alive
