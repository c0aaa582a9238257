"""IR data: a Graph is a flat SSA list of equations plus the named outputs of a step.

Value ``i`` is the result of ``graph.eqs[i]``; arguments always refer to earlier values, so
the list is topologically ordered by construction. Inputs are leaf equations: ``const``
(attr: the float), ``hyper`` (attr: the hyperparameter's name), ``state`` (attr: the state
variable's name), and ``w``, ``g``, ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optdsl.ir.ops import OPS, Kind, Op


@dataclass(frozen=True)
class Eq:
    op: str
    args: tuple[int, ...]
    attr: object
    kind: Kind
    line: int = 0  # the DSL line this value came from (0: synthesized)

    @property
    def info(self) -> Op:
        return OPS[self.op]


@dataclass(frozen=True)
class Graph:
    eqs: tuple[Eq, ...]
    # ("w", id) first, then one (state name, id) per state variable, in declaration order.
    outputs: tuple[tuple[str, int], ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def output(self, name: str) -> int:
        return dict(self.outputs)[name]

    def uses(self) -> list[list[int]]:
        """For each value, the values that read it."""
        users: list[list[int]] = [[] for _ in self.eqs]
        for i, eq in enumerate(self.eqs):
            for a in eq.args:
                users[a].append(i)
        return users

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
