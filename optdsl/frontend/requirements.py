"""``require`` statements: conditions on hypers that an interval cannot say.

    require 0 < etaminus, etaminus < 1, 1 < etaplus, "Invalid eta values: {etaminus}, {etaplus}"

Each condition is a comparison of hypers and numbers (no `w`, `g`, `t`, state or temporary:
it is checked when hyper values are set, before any step); all of them must hold. The
optional message may name hypers in braces, replaced by their values when the check fails.
Lowering gives a Requirement (optdsl.frontend.signature) whose graph has one mask output per
condition; the optimizer layer (optdsl.optim.hypers) evaluates it.
"""

from __future__ import annotations

import string

from optdsl.errors import Span
from optdsl.frontend import ast
from optdsl.frontend.signature import Requirement
from optdsl.ir.builder import Builder
from optdsl.ir.ops import GLOBAL, REDUCE

_BUILTIN = ("w", "g", "t")


def lower_requirement(checker, stmt: ast.Require) -> Requirement:
    """The Requirement of one ``require`` statement; a positioned DslError for a misuse.
    ``checker`` is the frontend's _Checker, after hypers are declared and inferred."""
    builder = Builder()
    env = {name: builder.leaf("hyper", name) for name in checker.hyper_scalars}
    names: list[str] = []
    outputs = []
    for index, condition in enumerate(stmt.conditions):
        for node in ast.iter_exprs(condition):
            if isinstance(node, ast.Name):
                _check_name(checker, node, env)
                if node.id not in names:
                    names.append(node.id)
            elif isinstance(node, ast.Call) and checker.function(node).category in (REDUCE,
                                                                                      GLOBAL):
                raise checker.error(f"`{node.func}()` reduces a tensor; a requirement is about "
                                    f"hypers only", node.func_span)
        value = checker.lower_expr(condition, env, builder)
        if not builder.kind(value).mask:
            raise checker.error("a requirement must be a comparison (such as `a < b`), so that "
                                "it holds or not", condition.span)
        outputs.append((f"c{index}", value))
    if stmt.message is not None:
        _check_message(checker, stmt.message, stmt.message_span)
    text = ", ".join(checker.text(c.span) or "?" for c in stmt.conditions)
    return Requirement(builder.graph(outputs), text, stmt.message, tuple(names),
                       stmt.span.line)


def _check_name(checker, node: ast.Name, env: dict) -> None:
    name = node.id
    if name in env:
        return
    if name in checker.tuple_names:
        parts = ", ".join(f"`{p}`" for p in checker.tuple_names[name].parts)
        raise checker.error(f"`{name}` is a tuple of hypers; use its parts {parts}", node.span)
    if name in _BUILTIN or name in checker.state_items or name in checker.inferred_states or \
            any(a.target == name for a in checker.assigns):
        raise checker.error(f"a requirement is checked when hypers are set, before any step: it "
                            f"may use hypers and numbers, not `{name}`", node.span)
    raise checker.unknown_name(node, env)


def _check_message(checker, message: str, span: Span | None) -> None:
    """Braces in a message name hypers: ``{lr}``; ``{{`` and ``}}`` are literal braces."""
    try:
        fields = list(string.Formatter().parse(message))
    except ValueError as exc:
        raise checker.error(f"the message of a requirement has unbalanced braces ({exc}); "
                            f"write `{{{{` or `}}}}` for a literal brace", span) from None
    for _, field, spec, conversion in fields:
        if field is None:
            continue
        if field == "w.shape":  # a per-parameter requirement's parameter
            continue
        if spec or conversion or field not in checker.hyper_scalars:
            known = ", ".join(f"{{{n}}}" for n in checker.hyper_scalars) or "none"
            raise checker.error(f"`{{{field}{'!' + conversion if conversion else ''}"
                                f"{':' + spec if spec else ''}}}` in the message of a "
                                f"requirement must name a hyper: {known}", span)
