"""Lark parse tree to AST (optdsl.frontend.ast), without recursion.

Expressions can be nested thousands deep (a long sum is a deep left-leaning tree), so the
conversion keeps an explicit stack. Numbers are converted here and checked to be finite or
`inf`; keyword-like misuse that the grammar lets through is reported here.
"""

from __future__ import annotations

import math
import re

import lark

from optdsl.errors import DslError, Span
from optdsl.frontend import ast
from optdsl.frontend.limits import MAX_STATEMENTS

_COMPARISONS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
_BINARY = {"add", "sub", "mul", "div", "pow", "matmul"}
_LOGIC = {"and_": "and", "or_": "or"}
_AUGMENTED = {"+=": "add", "-=": "sub", "*=": "mul", "/=": "div"}
_NONZERO_DIGIT = re.compile(r"[1-9]")


def _span_of(node: lark.Tree | lark.Token) -> Span:
    if isinstance(node, lark.Token):
        return Span(node.line or 1, node.column or 1, max(1, len(str(node))))
    meta = node.meta
    if getattr(meta, "empty", True):
        return Span(1, 1)
    length = meta.end_column - meta.column if meta.end_line == meta.line else 1
    return Span(meta.line, meta.column, max(1, length), meta.end_line)


def _op_span(tree: lark.Tree, left: lark.Tree | lark.Token) -> Span:
    """Span of a binary operator: just after the left operand (best effort, for carets)."""
    if isinstance(left, lark.Token):
        end_line, end_col = left.end_line or left.line, left.end_column or left.column
    elif not getattr(left.meta, "empty", True):
        end_line, end_col = left.meta.end_line, left.meta.end_column
    else:
        return _span_of(tree)
    return Span(end_line, end_col)


class _Converter:
    def __init__(self, filename: str, source: str) -> None:
        self.filename = filename
        self.source = source

    def error(self, message: str, span: Span) -> DslError:
        return DslError(message, span, filename=self.filename, source=self.source)

    # -- expressions -------------------------------------------------------------------------
    def expr(self, root: lark.Tree | lark.Token) -> ast.Expr:
        """Convert an expression subtree with an explicit post-order stack."""
        done: dict[int, ast.Expr] = {}
        stack: list[tuple[lark.Tree | lark.Token, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if isinstance(node, lark.Token):
                done[id(node)] = self._leaf_token(node)
                continue
            if not expanded:
                stack.append((node, True))
                for child in reversed(self._expr_children(node)):
                    stack.append((child, False))
                continue
            done[id(node)] = self._build(node, done)
        return done[id(root)]

    def _expr_children(self, node: lark.Tree) -> list:
        if node.data in ("number", "name", "attribute"):
            return []
        if node.data == "choice_comparison":
            return [node.children[0]]
        if node.data == "call":
            return [c for c in node.children[1:] if c is not None]
        if node.data == "comparison":
            return [node.children[0], node.children[2]]
        if node.data == "index":
            return [node.children[1]]
        return [c for c in node.children if isinstance(c, lark.Tree)]

    def _leaf_token(self, token: lark.Token) -> ast.Expr:
        raise self.error(f"unexpected `{token}` in an expression", _span_of(token))

    def _number(self, token: lark.Token) -> ast.Num:
        """A literal's float64 value; one that overflows to infinity or underflows to zero
        (but is not written as zero) is refused alike: it would not mean what it says."""
        text = str(token)
        value = math.inf if text == "inf" else math.nan if text == "nan" else float(text)
        if math.isinf(value) and text != "inf":
            raise self.error(f"number `{text}` is too large for a float; write `inf`",
                             _span_of(token))
        if value == 0 and _NONZERO_DIGIT.search(text.lower().split("e")[0]):
            raise self.error(f"number `{text}` is too small for a float (it would be 0); "
                             f"write `0`", _span_of(token))
        return ast.Num(_span_of(token), value)

    def _build(self, node: lark.Tree, done: dict[int, ast.Expr]) -> ast.Expr:
        span = _span_of(node)
        kind = node.data
        if kind == "number":
            return self._number(node.children[0])
        if kind == "name":
            token = node.children[0]
            return ast.Name(_span_of(token), str(token))
        if kind == "call":
            func = node.children[0]
            args = tuple(done[id(c)] for c in node.children[1:] if c is not None)
            return ast.Call(span, str(func), args, _span_of(func))
        if kind in ("neg", "not_"):
            operand = [c for c in node.children if isinstance(c, lark.Tree)][0]
            return ast.Unary(span, "neg" if kind == "neg" else "not", done[id(operand)])
        if kind in _LOGIC:
            left, right = [c for c in node.children if isinstance(c, lark.Tree)]
            return ast.Binary(span, _LOGIC[kind], done[id(left)], done[id(right)],
                              _op_span(node, left))
        if kind == "attribute":
            obj, name = node.children
            return ast.Attribute(_span_of(name), str(obj), str(name))
        if kind == "choice_comparison":
            left, op, value = node.children
            if str(op) not in ("==", "!="):
                raise self.error(f"a choice is compared with `==` or `!=`, not `{op}`",
                                 _span_of(op))
            text = str(value)[1:-1]
            return ast.ChoiceCompare(span, _COMPARISONS[str(op)], done[id(left)], text,
                                     _span_of(value))
        if kind == "comparison" and str(node.children[1]) in ("==", "!=") and \
                isinstance(node.children[2], lark.Tree) and node.children[2].data == "name" \
                and str(node.children[2].children[0]) == "None":
            left, op, right = node.children  # `eps1 == None`: is an optional hyper given?
            return ast.ChoiceCompare(span, _COMPARISONS[str(op)], done[id(left)], None,
                                     _span_of(right))
        if kind == "comparison":
            left, op, right = node.children
            op_token_span = _span_of(op)
            return ast.Binary(span, _COMPARISONS[str(op)], done[id(left)], done[id(right)],
                              op_token_span)
        if kind == "index":
            name, index = node.children
            return ast.Index(span, str(name), _span_of(name), done[id(index)])
        if kind in _BINARY:
            left, right = [c for c in node.children if isinstance(c, lark.Tree)]
            return ast.Binary(span, kind, done[id(left)], done[id(right)], _op_span(node, left))
        raise self.error(f"unexpected `{kind}` in an expression", span)  # pragma: no cover

    # -- statements --------------------------------------------------------------------------
    def module(self, tree: lark.Tree) -> ast.Module:
        statements, count = [], 0
        for stmt in tree.children:
            if stmt is None:
                continue
            count += _names_declared(stmt)
            if count > MAX_STATEMENTS:
                raise self.error(f"the program has more than the limit of {MAX_STATEMENTS:,} "
                                 f"statements (a declaration counts once per name)",
                                 _span_of(stmt))
            statements.append(getattr(self, "_" + stmt.data)(stmt))
        return ast.Module(tuple(statements), self.filename, self.source)

    def _header(self, node: lark.Tree) -> ast.Header:
        name, description = node.children
        text = str(description)[1:-1] if description is not None else None
        return ast.Header(str(name), text, _span_of(node))

    def _assign(self, node: lark.Tree) -> ast.Assign:
        target, value = node.children
        return ast.Assign(str(target), _span_of(target), self.expr(value), _span_of(node))

    def _aug_assign(self, node: lark.Tree) -> ast.Assign:
        """``x += e`` is ``x = x + e`` (likewise -=, *=, /=)."""
        target, op, value = node.children
        read = ast.Name(_span_of(target), str(target))
        total = ast.Binary(_span_of(node), _AUGMENTED[str(op)], read, self.expr(value),
                           _span_of(op))
        return ast.Assign(str(target), _span_of(target), total, _span_of(node))

    def _hyper_decl(self, node: lark.Tree) -> ast.HyperDecl:
        return ast.HyperDecl(tuple(self._hyper_item(c) for c in node.children), _span_of(node))

    def _hyper_item(self, node: lark.Tree) -> ast.HyperItem:
        name, value, bounds = node.children
        default, parts = None, None
        if isinstance(value, lark.Tree) and value.data == "tuple_value":
            parts = tuple((str(p.children[0]), _span_of(p.children[0]),
                           self._default(p.children[1])) for p in value.children)
        elif value is not None:
            default = self._default(value)
        interval = choices = None
        if bounds is not None and bounds.data == "choice":
            choices = tuple(self._word(c) for c in bounds.children)
        elif bounds is not None:
            interval = self._interval(bounds)
        return ast.HyperItem(str(name), _span_of(name), default, parts, interval, choices)

    def _default(self, node) -> ast.Expr | ast.Word:
        if isinstance(node, lark.Tree) and node.data in ("none", "string"):
            return self._word(node)
        return self.expr(node)

    @staticmethod
    def _word(node: lark.Tree) -> ast.Word:
        token = node.children[0]
        return ast.Word(None if node.data == "none" else str(token)[1:-1], _span_of(token))

    def _interval(self, node: lark.Tree) -> ast.Interval:
        lo_kind, low, high, hi_kind = node.children
        return ast.Interval(self.expr(low), self.expr(high), lo_kind.data == "closed_lo",
                            hi_kind.data == "closed_hi", _span_of(node))

    def _require_decl(self, node: lark.Tree) -> ast.Require:
        *conditions, message = node.children
        text = str(message)[1:-1] if message is not None else None
        return ast.Require(tuple(self.expr(c) for c in conditions), text,
                           _span_of(message) if message is not None else None, _span_of(node))

    def _sparse_decl(self, node: lark.Tree) -> ast.Sparse:
        _, detail = node.children
        if detail is None:
            return ast.Sparse(False, (), None, None, _span_of(node))
        *conditions, message = detail.children
        text = str(message)[1:-1] if message is not None else None
        message_span = _span_of(message) if message is not None else None
        return ast.Sparse(detail.data == "sparse_only", tuple(self.expr(c) for c in conditions),
                          text, message_span, _span_of(node))

    # -- closure-driven programs (grammars/closure.lark) -----------------------------------------
    def _multi_assign(self, node: lark.Tree) -> ast.MultiAssign:
        *targets, value = node.children
        return ast.MultiAssign(tuple((str(t), _span_of(t)) for t in targets), self.expr(value),
                               _span_of(node))

    def _call_stmt(self, node: lark.Tree) -> ast.CallStatement:
        call = self.expr(lark.Tree("call", node.children, node.meta))
        return ast.CallStatement(call, _span_of(node))

    def _index_assign(self, node: lark.Tree) -> ast.IndexAssign:
        target, index, value = node.children
        return ast.IndexAssign(str(target), _span_of(target), self.expr(index),
                               self.expr(value), _span_of(node))

    def _index_aug_assign(self, node: lark.Tree) -> ast.IndexAssign:
        target, index, op, value = node.children
        index_expr = self.expr(index)
        read = ast.Index(_span_of(target), str(target), _span_of(target), index_expr)
        total = ast.Binary(_span_of(node), _AUGMENTED[str(op)], read, self.expr(value),
                           _span_of(op))
        return ast.IndexAssign(str(target), _span_of(target), index_expr, total,
                               _span_of(node))

    def _suite(self, node: lark.Tree) -> tuple:
        return tuple(getattr(self, "_" + c.data)(c) for c in node.children if c is not None)

    def _if_block(self, node: lark.Tree) -> ast.If:
        condition, suite, *rest = node.children
        branches = [(self.expr(condition), self._suite(suite))]
        orelse = None
        for part in rest:
            if part is None:
                continue
            if part.data == "elif_part":
                branches.append((self.expr(part.children[0]), self._suite(part.children[1])))
            else:
                orelse = self._suite(part.children[0])
        return ast.If(tuple(branches), orelse, _span_of(node))

    def _while_block(self, node: lark.Tree) -> ast.While:
        condition, suite = node.children
        return ast.While(self.expr(condition), self._suite(suite), _span_of(node))

    def _repeat_block(self, node: lark.Tree) -> ast.Repeat:
        count, suite = node.children
        return ast.Repeat(self.expr(count), self._suite(suite), _span_of(node))

    def _for_block(self, node: lark.Tree) -> ast.For:
        var, iterable, suite = node.children
        return ast.For(str(var), _span_of(var), self.expr(iterable), self._suite(suite),
                       _span_of(node))

    def _break_stmt(self, node: lark.Tree) -> ast.Break:
        return ast.Break(_span_of(node))

    def _return_stmt(self, node: lark.Tree) -> ast.Return:
        return ast.Return(_span_of(node))

    def _state_decl(self, node: lark.Tree) -> ast.StateDecl:
        items = []
        for item in node.children:
            name, init, per, key = item.children
            items.append(ast.StateItem(str(name), _span_of(name), self.expr(init),
                                       str(key) if key is not None else None,
                                       _span_of(key) if key is not None else None,
                                       str(per) if per is not None else None))
        return ast.StateDecl(tuple(items), _span_of(node))



def _names_declared(stmt: lark.Tree) -> int:
    """How much a statement counts towards MAX_STATEMENTS: 1, or one per declared name."""
    if stmt.data == "hyper_decl":
        return sum(max(1, len(item.children[1].children)) if isinstance(item.children[1],
                   lark.Tree) and item.children[1].data == "tuple_value" else 1
                   for item in stmt.children)
    if stmt.data == "state_decl":
        return len(stmt.children)
    return 1


def to_ast(tree: lark.Tree, filename: str, source: str) -> ast.Module:
    """Convert a parse tree of a whole program to an ast.Module."""
    return _Converter(filename, source).module(tree)
