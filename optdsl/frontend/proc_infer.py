"""Kind inference for closure-driven programs: what each local and state is (a number, a
vector, a mask, a matrix) and what a history holds, from what they are assigned and pushed.

A small fixed point, as plain programs infer scalar and tensor states: statements are read in
order, leniently at first (one whose kinds are not known yet is skipped), until nothing
changes; then once more strictly, so that the first mistake is the error. A local assigned a
number and a vector is a vector (numbers broadcast).
"""

from __future__ import annotations

from optdsl.errors import DslError, Span
from optdsl.frontend import ast
from optdsl.frontend.proc_kinds import FUNCTIONS, MULTI, VMASK, WORDS, Kinds
from optdsl.ir.procedure import MASK, SCALAR, VECTOR


def walk(statements):
    """Every statement, blocks' bodies included (pre-order)."""
    for stmt in statements:
        yield stmt
        if isinstance(stmt, ast.If):
            for _, body in stmt.branches:
                yield from walk(body)
            yield from walk(stmt.orelse or ())
        elif isinstance(stmt, (ast.While, ast.For, ast.Repeat)):
            yield from walk(stmt.body)


def exprs_of(stmt) -> list:
    if isinstance(stmt, (ast.Assign, ast.MultiAssign)):
        return [stmt.value]
    if isinstance(stmt, ast.IndexAssign):
        return [stmt.index, stmt.value]
    if isinstance(stmt, ast.CallStatement):
        return [stmt.call]
    if isinstance(stmt, ast.If):
        return [c for c, _ in stmt.branches]
    if isinstance(stmt, ast.While):
        return [stmt.condition]
    if isinstance(stmt, ast.For):
        return [stmt.iterable]
    if isinstance(stmt, ast.Repeat):
        return [stmt.count]
    return []


def assigned_names(body) -> dict[str, Span]:
    found: dict[str, Span] = {}
    for stmt in walk(body):
        if isinstance(stmt, ast.Assign):
            found.setdefault(stmt.target, stmt.target_span)
        elif isinstance(stmt, ast.MultiAssign):
            for name, span in stmt.targets:
                found.setdefault(name, span)
        elif isinstance(stmt, ast.For):
            found.setdefault(stmt.var, stmt.var_span)
    return found


def infer_kinds(body, kinds: Kinds) -> None:
    """Kinds of locals, states and history entries, to a fixed point (numbers widen to
    vectors; a history's entries are what is pushed)."""
    assigned = assigned_names(body)
    while True:  # leniently (a statement whose kinds are not known yet is skipped)
        before = (dict(kinds.locals), dict(kinds.states), dict(kinds.entries))
        for stmt in walk(body):
            try:
                _kinds_of_statement(kinds, stmt, assigned)
            except DslError:
                pass
        if before == (kinds.locals, kinds.states, kinds.entries):
            break
    for stmt in walk(body):  # then strictly: the first mistake is the error
        _kinds_of_statement(kinds, stmt, assigned)


def _merge(kinds: Kinds, name: str, kind: str, span: Span) -> None:
    table = kinds.states if name in kinds.states else kinds.locals
    have = table.get(name)
    if name == "w":
        if kind not in (VECTOR, SCALAR):
            raise kinds.error(f"`w` is the parameters' vector and cannot be {WORDS[kind]}", span)
        return
    if have is None or have == kind:
        table[name] = kind
    elif {have, kind} == {SCALAR, VECTOR}:
        table[name] = VECTOR
    elif {have, kind} == {VMASK, MASK}:
        table[name] = VMASK
    else:
        raise kinds.error(f"`{name}` is {WORDS.get(have, have)} and cannot be assigned "
                          f"{WORDS.get(kind, kind)}", span)


def _kinds_of_statement(kinds: Kinds, stmt, assigned) -> None:
    if isinstance(stmt, ast.Assign):
        _merge(kinds, stmt.target, _value_kind(kinds, stmt.value, assigned), stmt.target_span)
    elif isinstance(stmt, ast.MultiAssign):
        value = stmt.value
        if isinstance(value, ast.Call) and value.func in FUNCTIONS:
            results = FUNCTIONS[value.func].results
            kinds.of(value)
            for (name, span), kind in zip(stmt.targets, results):
                _merge(kinds, name, kind, span)
    elif isinstance(stmt, ast.For):
        kinds.locals.setdefault(stmt.var, SCALAR)
    elif isinstance(stmt, ast.CallStatement) and stmt.call.func == "push" and \
            len(stmt.call.args) == 2:
        history = kinds.history_name(stmt.call.args[0], "push")
        kind = _value_kind(kinds, stmt.call.args[1], assigned)
        if kind not in (SCALAR, VECTOR):
            raise kinds.error(f"a history holds numbers or vectors, not {WORDS.get(kind, kind)}",
                              stmt.call.args[1].span)
        have = kinds.entries.get(history)
        if have is not None and have != kind:
            raise kinds.error(f"`{history}` holds {WORDS[have]}s; this is {WORDS[kind]}",
                              stmt.call.args[1].span)
        kinds.entries[history] = kind


def _value_kind(kinds: Kinds, value: ast.Expr, assigned) -> str:
    try:
        kind = kinds.of(value)
    except DslError:
        _unknown_local(kinds, value, assigned)
        raise
    if kind == MULTI:
        func = value.func if isinstance(value, ast.Call) else "this"
        count = len(FUNCTIONS[func].results) if func in FUNCTIONS else "several"
        raise kinds.error(f"`{func}()` gives {count} results: "
                          + ("`loss, g = evaluate()`" if func == "evaluate" else
                             "assign them to as many names"), value.span)
    return kind


def _unknown_local(kinds: Kinds, value: ast.Expr, assigned) -> None:
    """A DslError for the first local read before the program assigns it (if any)."""
    for node in ast.iter_exprs(value):
        name = node.id if isinstance(node, ast.Name) else None
        if name in assigned and name not in ("w", "g", "t") and \
                name not in kinds.locals and name not in kinds.states:
            raise kinds.error(f"`{name}` may be read before it is assigned (locals start "
                              f"afresh at every step; keep a value between steps in a state: "
                              f"`state {name} = 0`)", node.span)
