"""The IR of a closure-driven step: host statements around compiled phases.

A closure-driven program (docs/language.md, "Closure-driven steps") is a procedure: host
control (if, while, for over a history, repeat, break, return) around *phases*. A phase is
an ordinary step graph (optdsl.ir.nodes.Graph) over the group's vectors, compiled by the
same pipeline and back ends as a plain program: its ``hyper`` leaves are the host scalars it
reads, its tensor ``state`` leaves the vectors it reads (its *columns*), its tensor outputs
the vectors it writes, its scalar outputs (scalar states of the graph) the numbers it hands
back to the host, and ``w`` the parameters. Everything between phases runs on the host:
scalar arithmetic (float64, the host spelling of every back end), calls of the closure
(``evaluate``), Hessian-vector products (``hvp``), the strong-Wolfe line search, histories,
and dense matrices over the group's flattened vector (torch on the host).

Names: a ``Ref`` says where a value lives (a hyper, a local, a state, an entry of a history
or an array); host expressions are Graphs whose ``hyper`` leaves carry a Ref's key
(``Ref.key``), so they are printed, folded and spelt like any scalar code.
"""

from __future__ import annotations

from dataclasses import dataclass

from optdsl.ir.nodes import Graph

# What a value is, in a closure-driven program.
SCALAR = "scalar"  # one float64 number on the host (masks are host bools)
MASK = "mask"
VECTOR = "vector"  # the group's elements: one tensor per parameter (flat buffers on the host)
MATRIX = "matrix"  # dense, over the group's flattened vector (torch on the host)
HISTORY = "history"  # a bounded list of vectors or numbers, oldest first
ARRAY = "array"  # a fixed number of numbers, None until set


@dataclass(frozen=True)
class Ref:
    """Where a value lives: ``kind`` is "hyper", "local", "state", "item" (an entry of the
    history or array ``name`` at the host scalar local ``index``), or "w"."""

    kind: str
    name: str
    index: str | None = None

    @property
    def key(self) -> str:
        """The identifier that stands for it in host graphs and generated code."""
        if self.kind == "item":
            return f"{self.name}__at__{self.index}"
        return {"hyper": "h", "local": "v", "state": "s", "w": "w"}[self.kind] + "_" + self.name


@dataclass(frozen=True)
class HostExpr:
    """A scalar expression evaluated on the host: a Graph with one output ("value") whose
    ``hyper`` leaves are the keys of the Refs in ``refs``."""

    graph: Graph
    refs: tuple[Ref, ...]
    mask: bool = False


@dataclass(frozen=True)
class PhaseSpec:
    """A compiled phase: its graph and how its leaves and outputs bind to the procedure."""

    index: int
    graph: Graph  # leaves: w, hyper (inputs), state (columns; scalar outputs)
    inputs: tuple[tuple[str, Ref], ...]  # hyper leaf name -> the host value it reads
    columns: tuple[tuple[str, Ref], ...]  # tensor state -> the vector it reads or writes
    reads: frozenset[str]  # the columns the phase reads (the others it only writes)
    writes: tuple[tuple[str, Ref], ...]  # tensor outputs: column -> target vector
    results: tuple[tuple[str, Ref, bool], ...]  # scalar outputs: (state, target, is a mask)
    writes_w: bool
    line: int


# -- host statements -------------------------------------------------------------------------

@dataclass(frozen=True)
class SetScalar:
    target: Ref
    value: HostExpr
    line: int


@dataclass(frozen=True)
class RunPhase:
    phase: int
    line: int


@dataclass(frozen=True)
class Call:
    """A host function with vector or matrix results: ``evaluate``, ``hvp``,
    ``strong_wolfe``, ``index``, the dense functions. ``args`` are Refs or HostExprs;
    ``targets`` receive the results in order. ``snapshot``: vectors that may hold the
    closure's gradient and are still read after this call, which a call of the closure
    must copy first."""

    function: str
    args: tuple
    targets: tuple[Ref, ...]
    line: int
    column: int = 1
    snapshot: tuple[Ref, ...] = ()


@dataclass(frozen=True)
class Dense:
    """``target = expr`` computed on the host with torch over the flattened vector: an
    expression tree of ("op", args...) tuples whose leaves are Refs and floats."""

    target: Ref
    expr: tuple
    line: int


@dataclass(frozen=True)
class HistoryOp:
    """``push(h, v)`` (``value`` a Ref or HostExpr) or ``clear(h)``."""

    op: str
    history: str
    value: object
    line: int


@dataclass(frozen=True)
class If:
    branches: tuple[tuple[HostExpr, tuple], ...]
    orelse: tuple
    line: int


@dataclass(frozen=True)
class While:
    """``while`` (a host condition, tested before each iteration; ``prelude`` computes what
    the condition reads, each time)."""

    prelude: tuple
    condition: HostExpr
    body: tuple
    line: int


@dataclass(frozen=True)
class Loop:
    """``repeat n`` (``over`` None; ``count`` a HostExpr), ``for i in range(n)`` or ``for i in
    h`` / ``reversed(h)`` (``over`` the history or array): the host runs the body once per
    index, binding it to the local ``var`` (None for repeat)."""

    var: str | None
    over: str | None
    reverse: bool
    count: HostExpr | None
    body: tuple
    line: int


@dataclass(frozen=True)
class Break:
    line: int


@dataclass(frozen=True)
class Return:
    line: int


@dataclass(frozen=True)
class StateInfo:
    """A state of a closure-driven program: its kind, key, entry kind (histories) and
    initial value (a HostExpr; for a history or array its capacity; a dense matrix: the
    identity)."""

    name: str
    key: str
    kind: str
    entry: str | None  # a history's or array's entries: SCALAR or VECTOR
    init: HostExpr | None
    copies_w: bool
    integer: bool  # kept as an int while integral (torch's counters)
    line: int
    inferred: bool = False  # (closure-driven programs declare every state)

    @property
    def tensor(self) -> bool:
        """Whether it is kept as tensors (a vector, a matrix, a history of vectors)."""
        return self.kind in (VECTOR, MATRIX) or self.entry == VECTOR


@dataclass(frozen=True)
class Procedure:
    """A whole closure-driven step."""

    body: tuple
    phases: tuple[PhaseSpec, ...]
    states: tuple[StateInfo, ...]
    locals: dict[str, str]  # name -> kind
    needs_closure: tuple[tuple[str, int, int], ...]  # (construct, line, column) calling it
    second_order: tuple[tuple[str, int, int], ...]  # constructs that need create_graph
