"""Hoisting: the parts of a host expression that the host cannot evaluate itself, computed
first into compiler temporaries (locals named ``__t<k>``).

``Rewriter`` replaces calls of host functions inside an expression (``len(h)``, ``numel()``,
``random_index``, ``hvp``, ``index()``) and indices that are not locals by temporaries, each
computed by a host call or a host assignment emitted before the statement.
``VectorHoister`` replaces the vector reductions inside a host expression (``if
global_sum(g * d) > 0:``) by temporaries that the pending phase computes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optdsl.frontend import ast
from optdsl.frontend.proc_kinds import FUNCTIONS, MULTI, WORDS
from optdsl.ir.procedure import MASK, SCALAR

if TYPE_CHECKING:
    from optdsl.frontend.proc_translate import Translator


class Rewriter:
    """Replaces calls of host functions inside an expression by temporaries."""

    def __init__(self, translator: Translator) -> None:
        self.t = translator

    def expr(self, node: ast.Expr) -> ast.Expr:
        if isinstance(node, ast.Call):
            args = tuple(self.expr(a) for a in node.args)
            node = ast.Call(node.span, node.func, args, node.func_span)
            if node.func in FUNCTIONS and not FUNCTIONS[node.func].dense:
                kind = self.t.kinds.of(node)
                if kind == MULTI:
                    raise self.t.error(f"`{node.func}()` gives several results; assign them "
                                       f"in a statement of their own", node.span)
                temp = self.t.temp(kind, node.span)
                self.t.call_into(node, (self.t.ref(temp.id),), (node.span,))
                return temp
            return node
        if isinstance(node, ast.Unary):
            return ast.Unary(node.span, node.op, self.expr(node.operand))
        if isinstance(node, ast.Binary):
            return ast.Binary(node.span, node.op, self.expr(node.left), self.expr(node.right),
                              node.op_span)
        if isinstance(node, ast.Index):
            index = node.index
            if not (isinstance(index, ast.Name) and self.t.ref(index.id).kind == "local"):
                index = ast.Name(index.span, self.t.index_local(self.expr(index)))
            return ast.Index(node.span, node.name, node.name_span, index)
        if isinstance(node, ast.ChoiceCompare):
            return node
        return node


class VectorHoister:
    """Replaces the vector reductions inside a host expression by temporaries computed by
    the pending phase."""

    def __init__(self, translator: Translator) -> None:
        self.t = translator

    def expr(self, node: ast.Expr) -> ast.Expr:
        if not self.t.has_vector_work(node):
            return node
        kind = self.t.kinds.of(node)
        if kind in (SCALAR, MASK) and isinstance(node, ast.Call):
            temp = self.t.temp(kind, node.span)
            self.t.to_phase(self.t.ref(temp.id), node, node.span)
            return temp
        if isinstance(node, ast.Unary):
            return ast.Unary(node.span, node.op, self.expr(node.operand))
        if isinstance(node, ast.Binary):
            return ast.Binary(node.span, node.op, self.expr(node.left), self.expr(node.right),
                              node.op_span)
        if isinstance(node, ast.Call):
            return ast.Call(node.span, node.func, tuple(self.expr(a) for a in node.args),
                            node.func_span)
        if kind in (SCALAR, MASK):  # an entry of a history of numbers read by index
            return node
        raise self.t.error(f"this is {WORDS.get(kind, kind)}, where a number is needed",
                           node.span)
