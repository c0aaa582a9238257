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
class Index(Expr):
    """``h[i]``: an entry of a history or an array (closure-driven programs)."""

    name: str
    name_span: Span
    index: Expr


@dataclass(frozen=True, eq=False)
class ChoiceCompare(Expr):
    """``line_search_fn == "strong_wolfe"``: a choice hyper against one of its choices."""

    op: str  # "eq" or "ne"
    left: Expr
    choice: str
    choice_span: Span


@dataclass(frozen=True)
class Interval:
    low: Expr
    high: Expr
    low_closed: bool
    high_closed: bool
    span: Span


@dataclass(frozen=True)
class HyperItem:
    name: str
    span: Span
    default: Expr | None
    parts: tuple[tuple[str, Span, Expr], ...] | None  # a tuple hyper: (part, span, default)
    interval: Interval | None
    # a choice hyper (closure-driven programs): its choices (str, or None for None) and
    # their spans; the first is the default
    choices: tuple[tuple[str | None, Span], ...] | None = None


@dataclass(frozen=True)
class StateItem:
    name: str
    span: Span
    init: Expr
    key: str | None
    key_span: Span | None


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
    count: Expr
    body: tuple
    span: Span


@dataclass(frozen=True)
class Break:
    span: Span


@dataclass(frozen=True)
class Return:
    span: Span


Statement = Header | HyperDecl | StateDecl | Require | Assign
# the statements only closure-driven programs have (optdsl.frontend.procedure)
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
