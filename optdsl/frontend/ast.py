"""The abstract syntax tree: plain frozen dataclasses, each node carrying its source Span.

Nodes compare by identity (eq=False) so that very deep expressions never recurse in
__eq__/__hash__; passes walk them with explicit stacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optdsl.errors import Span


@dataclass(frozen=True, eq=False)
class Expr:
    span: Span


@dataclass(frozen=True, eq=False)
class Num(Expr):
    value: float


@dataclass(frozen=True, eq=False)
class Name(Expr):
    id: str


@dataclass(frozen=True, eq=False)
class Call(Expr):
    func: str
    args: tuple[Expr, ...]
    func_span: Span = field(default=None)  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Unary(Expr):
    op: str  # "neg"
    operand: Expr


@dataclass(frozen=True, eq=False)
class Binary(Expr):
    op: str  # "add" "sub" "mul" "div" "pow" or a comparison "lt" "le" "gt" "ge" "eq" "ne"
    left: Expr
    right: Expr
    op_span: Span = field(default=None)  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Attribute(Expr):
    """``w.rows``: a fact of the parameter (rows, cols, ndim, numel, eps)."""

    obj: str
    name: str


@dataclass(frozen=True, eq=False)
class Index(Expr):
    """``h[i]``: an entry of a history or an array (closure-driven programs)."""

    name: str
    name_span: Span
    index: Expr


@dataclass(frozen=True, eq=False)
class ChoiceCompare(Expr):
    """``mode == "original"``: a choice hyper (or an optional one) against one of its values
    (a string, or None)."""

    op: str  # "eq" or "ne"
    left: Expr
    value: str | None
    value_span: Span = field(default=None)  # type: ignore[assignment]


@dataclass(frozen=True)
class Interval:
    low: Expr
    high: Expr
    low_closed: bool
    high_closed: bool
    span: Span


NONE = None  # the default or choice `None` (an optional hyper's "not given")


@dataclass(frozen=True)
class Word:
    """A string or None written as a hyper's default or choice."""

    value: str | None
    span: Span


@dataclass(frozen=True)
class HyperItem:
    name: str
    span: Span
    default: Expr | Word | None  # None: required
    # a tuple hyper: (part, span, default: an expression, or Word(None) for `None`)
    parts: tuple[tuple[str, Span, Expr | Word], ...] | None
    interval: Interval | None
    choices: tuple[Word, ...] | None = None  # `in {None, "a", "b"}`


@dataclass(frozen=True)
class StateItem:
    name: str
    span: Span
    init: Expr
    key: str | None
    key_span: Span | None
    per: str | None = None  # "row" or "col": one value per row (column) of the matrix view


@dataclass(frozen=True)
class Header:
    name: str
    description: str | None
    span: Span


@dataclass(frozen=True)
class HyperDecl:
    items: tuple[HyperItem, ...]
    span: Span


@dataclass(frozen=True)
class StateDecl:
    items: tuple[StateItem, ...]
    span: Span


@dataclass(frozen=True)
class Assign:
    target: str
    target_span: Span
    value: Expr
    span: Span


@dataclass(frozen=True)
class Require:
    """``require c1, c2, "message"``: conditions on hypers, all of which must hold."""

    conditions: tuple[Expr, ...]
    message: str | None
    message_span: Span | None
    span: Span


@dataclass(frozen=True)
class IndexAssign:
    """``a[i] = e``: set an entry of a history or an array."""

    target: str
    target_span: Span
    index: Expr
    value: Expr
    span: Span


@dataclass(frozen=True)
class MultiAssign:
    """``loss, g = evaluate()``: the results of a function that gives several."""

    targets: tuple[tuple[str, Span], ...]
    value: Expr
    span: Span


@dataclass(frozen=True)
class CallStatement:
    """``push(h, y)``: a function called for what it does."""

    call: Call
    span: Span


@dataclass(frozen=True)
class If:
    """``if c: ... elif c2: ... else: ...``: ``branches`` are (condition, body) pairs."""

    branches: tuple[tuple[Expr, tuple], ...]
    orelse: tuple | None
    span: Span


@dataclass(frozen=True)
class While:
    condition: Expr
    body: tuple
    span: Span


@dataclass(frozen=True)
class For:
    """``for i in h:`` / ``for i in reversed(h):`` / ``for i in range(n):``."""

    var: str
    var_span: Span
    iterable: Expr
    body: tuple
    span: Span


@dataclass(frozen=True)
class Repeat:
    """``repeat n:`` and an indented body: the body n times (in a plain program n is known
    when the step is compiled: a number or a hyper)."""

    count: Expr
    body: tuple
    span: Span


@dataclass(frozen=True)
class Sparse:
    """``sparse``, ``sparse only [, "message"]`` or ``sparse require c1, c2 [, "message"]``:
    the program takes sparse gradients (only, or when the conditions on hypers hold)."""

    only: bool
    conditions: tuple[Expr, ...]
    message: str | None
    message_span: Span | None
    span: Span


@dataclass(frozen=True)
class Break:
    span: Span


@dataclass(frozen=True)
class Return:
    span: Span


Statement = Header | HyperDecl | StateDecl | Require | Repeat | Sparse | Assign
# the statements of closure-driven programs (optdsl.frontend.procedure; a plain program may
# have `repeat n:` blocks of assignments)
BLOCK_STATEMENTS = (IndexAssign, MultiAssign, CallStatement, If, While, For, Repeat, Break,
                    Return)


@dataclass(frozen=True)
class Module:
    statements: tuple[Statement, ...]
    filename: str
    source: str


def iter_exprs(root: Expr):
    """Yield every node of an expression tree, parents before children, without recursion."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Call):
            stack.extend(reversed(node.args))
        elif isinstance(node, Unary):
            stack.append(node.operand)
        elif isinstance(node, Binary):
            stack.append(node.right)
            stack.append(node.left)
        elif isinstance(node, Index):
            stack.append(node.index)
        elif isinstance(node, ChoiceCompare):
            stack.append(node.left)
