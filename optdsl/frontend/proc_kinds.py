"""What each name and expression of a closure-driven program is: a number, a mask, a vector
(the group's elements), a dense matrix, a history or an array (optdsl.ir.procedure's
kinds), and the functions only closure-driven programs call.

Locals get their kind from what they are assigned, by a small fixed point (a local assigned
a number and a vector is a vector; numbers broadcast), as plain programs infer scalar and
tensor states; every mistake (a matrix times a vector, a history used as a number, a
per-parameter reduction) is a positioned DslError.
"""

from __future__ import annotations

from dataclasses import dataclass

from optdsl.frontend import ast
from optdsl.ir.ops import ARITH, COMPARE, GLOBAL, LOGIC, OPS, REDUCE, SELECT, functions
from optdsl.ir.procedure import ARRAY, HISTORY, MASK, MATRIX, SCALAR, VECTOR

VMASK = "vmask"  # a mask of the vector's elements (only within one phase)
CHOICE = "choice"  # a choice hyper (compared with a string only)
MULTI = "multi"  # several results (evaluate, strong_wolfe)

# What a kind is called in messages.
WORDS = {SCALAR: "a number", MASK: "a mask (a comparison)", VECTOR: "a vector",
         MATRIX: "a matrix", HISTORY: "a history", ARRAY: "an array",
         VMASK: "a mask of the vector's elements", CHOICE: "a choice"}


@dataclass(frozen=True)
class Function:
    """A function of closure-driven programs: its arguments' kinds and its results'."""

    args: tuple[str, ...]
    results: tuple[str, ...]
    dense: bool = False  # computed with torch over the flattened vector
    closure: bool = False  # calls the closure
    second_order: bool = False  # differentiates the gradient again (create_graph=True)
    statement: bool = False  # called for what it does (push, clear)


FUNCTIONS: dict[str, Function] = {
    "evaluate": Function((), (SCALAR, VECTOR), closure=True),
    "strong_wolfe": Function((VECTOR, SCALAR, SCALAR, VECTOR, SCALAR, SCALAR),
                             (SCALAR, VECTOR, SCALAR, SCALAR), closure=True),
    "hvp": Function((VECTOR,), (VECTOR,), closure=True, second_order=True),
    "hessian": Function((), (MATRIX,), dense=True, closure=True, second_order=True),
    "solve": Function((MATRIX, VECTOR), (VECTOR,), dense=True),
    "matvec": Function((MATRIX, VECTOR), (VECTOR,), dense=True),
    "outer": Function((VECTOR, VECTOR), (MATRIX,), dense=True),
    "eye": Function((), (MATRIX,), dense=True),
    "spectral_abs": Function((MATRIX,), (MATRIX,), dense=True),
    "index": Function((), (VECTOR,)),
    "numel": Function((), (SCALAR,)),
    "len": Function((HISTORY,), (SCALAR,)),
    "random_index": Function((SCALAR, SCALAR, SCALAR), (SCALAR,)),
    "push": Function((HISTORY, None), (), statement=True),
    "clear": Function((HISTORY,), (), statement=True),
}
# state initial values and loop iterables (not expressions)
SPECIAL = ("history", "array", "reversed", "range")
# functions of the op table a dense expression may use (torch has the same IEEE meaning)
DENSE_OPS = ("global_sum", "global_norm", "global_maxabs", "abs", "sqrt")


class Kinds:
    """The kinds of a program's names, and of expressions over them."""

    def __init__(self, checker, hypers: dict[str, str], states: dict[str, str],
                 entries: dict[str, str | None]) -> None:
        self.checker = checker  # an optdsl.frontend.check._Checker, for errors
        self.hypers = hypers  # scalar name -> SCALAR or CHOICE
        self.states = states  # name -> kind
        self.entries = entries  # history/array -> the kind of its entries (None: unknown)
        self.locals: dict[str, str] = {"g": VECTOR}

    def error(self, message: str, span):
        return self.checker.error(message, span)

    def of_name(self, node: ast.Name) -> str:
        name = node.id
        if name == "w":
            return VECTOR
        if name == "t" and name not in self.states and name not in self.locals:
            raise self.error("`t` counts updates of one parameter; a closure-driven step has "
                             "no per-parameter step count: keep your own, e.g. `state n_iter "
                             "= 0` and `n_iter += 1`", node.span)
        if name in self.hypers:
            return self.hypers[name]
        if name in self.states:
            return self.states[name]
        if name in self.locals:
            return self.locals[name]
        raise self.checker.unknown_name(node, {**self.hypers, **self.states, **self.locals})

    def of(self, node: ast.Expr) -> str:
        """The kind of an expression (raises at the first mistake)."""
        if isinstance(node, ast.Num):
            return SCALAR
        if isinstance(node, ast.Name):
            return self.of_name(node)
        if isinstance(node, ast.Index):
            return self.of_index(node)
        if isinstance(node, ast.ChoiceCompare):
            return self.of_choice(node)
        if isinstance(node, ast.Unary):
            return self.of_unary(node)
        if isinstance(node, ast.Binary):
            return self.of_binary(node)
        assert isinstance(node, ast.Call)
        return self.of_call(node)

    def of_index(self, node: ast.Index) -> str:
        kind = self.states.get(node.name) or self.locals.get(node.name)
        if kind not in (HISTORY, ARRAY):
            what = WORDS.get(kind, "not a history") if kind else "unknown"
            raise self.error(f"`{node.name}[...]` indexes a history or an array (a state "
                             f"declared `history(n)` or `array(n)`); `{node.name}` is {what}",
                             node.name_span)
        self.expect(node.index, (SCALAR,), "an index")
        entry = self.entries.get(node.name)
        return entry or SCALAR

    def of_choice(self, node: ast.ChoiceCompare) -> str:
        left = node.left
        if not (isinstance(left, ast.Name) and self.hypers.get(left.id) == CHOICE):
            raise self.error("a string is compared with a choice hyper (declared `hyper name "
                             "in {...}`)", left.span)
        return MASK

    def of_unary(self, node: ast.Unary) -> str:
        kind = self.of(node.operand)
        if node.op == "not":
            if kind not in (MASK, VMASK):
                raise self.error("`not` combines masks (comparisons such as `x > 0`), but "
                                 "this is " + WORDS.get(kind, kind), node.operand.span)
            return kind
        self.arith(kind, node.operand, "`-`")
        return kind

    def arith(self, kind: str, node: ast.Expr, where: str) -> None:
        if kind in (MASK, VMASK):
            raise self.error(f"a mask (a comparison) cannot be used as a number in {where}; "
                             f"use where(mask, a, b)", node.span)
        if kind in (HISTORY, ARRAY, CHOICE):
            raise self.error(f"{WORDS[kind]} is not a number; "
                             + ("index it: `h[i]`" if kind != CHOICE else
                                "compare it with one of its choices"), node.span)

    def of_binary(self, node: ast.Binary) -> str:
        left, right = self.of(node.left), self.of(node.right)
        category = _category(node.op)
        if category == LOGIC:
            for child, kind in ((node.left, left), (node.right, right)):
                if kind not in (MASK, VMASK):
                    raise self.error(f"`{node.op}` combines masks (comparisons such as `x > "
                                     f"0`), but this is {WORDS.get(kind, kind)}", child.span)
            return VMASK if VMASK in (left, right) else MASK
        self.arith(left, node.left, f"`{node.op}`")
        self.arith(right, node.right, f"`{node.op}`")
        if MATRIX in (left, right):
            return self.matrix_binary(node, left, right)
        vector = VECTOR in (left, right)
        if category == COMPARE:
            return VMASK if vector else MASK
        return VECTOR if vector else SCALAR

    def matrix_binary(self, node: ast.Binary, left: str, right: str) -> str:
        if node.op in ("add", "sub") and left == right == MATRIX:
            return MATRIX
        if node.op == "mul" and SCALAR in (left, right) or node.op == "div" and right == SCALAR:
            return MATRIX
        other = right if left == MATRIX else left
        hint = ("; a matrix times a vector is matvec(A, v)" if other == VECTOR else
                "; matrices add to matrices and scale by numbers")
        symbol = OPS[node.op].symbol or node.op
        raise self.error(f"`{symbol}` of a matrix and {WORDS.get(other, other)}{hint}",
                         node.op_span or node.span)

    def of_call(self, node: ast.Call) -> str:
        if node.func in FUNCTIONS:
            return self.of_procedure_call(node)
        if node.func in SPECIAL:
            raise self.error(f"`{node.func}(...)` is not an expression: "
                             + ("it is the initial value of a state (`state h = "
                                f"{node.func}(10)`)" if node.func in ("history", "array") else
                                f"it is what a loop runs over (`for i in {node.func}(...):`)"),
                             node.func_span)
        op = self.checker.function(node)
        kinds = [self.of(a) for a in node.args]
        if op.category == REDUCE:
            raise self.error(f"`{node.func}()` reduces one parameter; a closure-driven step "
                             f"works on the group's vector: use the group-wide reductions "
                             f"(global_sum, global_norm, global_maxabs)", node.func_span)
        if op.category == GLOBAL:
            self.expect(node.args[0], (VECTOR,), f"`{node.func}()`'s argument")
            return SCALAR
        if op.category == SELECT:
            if kinds[0] not in (MASK, VMASK):
                raise self.error("the first argument of where() must be a mask (a "
                                 "comparison such as `x > 0`)", node.args[0].span)
            rest = kinds[1:]
        else:
            rest = kinds
            assert op.category == ARITH
        for child, kind in zip(node.args[len(kinds) - len(rest):], rest):
            self.arith(kind, child, f"`{node.func}()`")
            if kind == MATRIX:
                raise self.error(f"`{node.func}()` works element by element on numbers and "
                                 f"vectors, not on a matrix", child.span)
        return VECTOR if VECTOR in kinds or VMASK in kinds else SCALAR

    def of_procedure_call(self, node: ast.Call) -> str:
        spec = FUNCTIONS[node.func]
        if spec.statement:
            raise self.error(f"`{node.func}(...)` is a statement of its own, not a value",
                             node.func_span)
        if len(node.args) != len(spec.args):
            plural = "s" if len(spec.args) != 1 else ""
            raise self.error(f"`{node.func}` takes {len(spec.args)} argument{plural}, got "
                             f"{len(node.args)}", node.span)
        for arg, kind in zip(node.args, spec.args):
            if kind == HISTORY:
                self.history_name(arg, node.func)
            else:
                self.expect(arg, (kind,), f"argument of `{node.func}()`")
        return spec.results[0] if len(spec.results) == 1 else MULTI

    def history_name(self, arg: ast.Expr, func: str) -> str:
        if not (isinstance(arg, ast.Name) and self.states.get(arg.id) == HISTORY):
            raise self.error(f"`{func}()` takes a history (a state declared `history(n)`)",
                             arg.span)
        return arg.id

    def expect(self, node: ast.Expr, kinds: tuple[str, ...], what: str) -> str:
        kind = self.of(node)
        if kind not in kinds:
            wanted = " or ".join(WORDS[k] for k in kinds)
            raise self.error(f"{what} must be {wanted}, but this is {WORDS.get(kind, kind)}",
                             node.span)
        return kind


def _category(op: str) -> str:
    return OPS[op].category


def dense_calls(node: ast.Expr) -> list[ast.Call]:
    """The calls of dense functions in an expression."""
    return [n for n in ast.iter_exprs(node) if isinstance(n, ast.Call)
            and n.func in FUNCTIONS and FUNCTIONS[n.func].dense]


def uses_functions(node: ast.Expr) -> bool:
    """Whether an expression calls a function of closure-driven programs."""
    return any(isinstance(n, ast.Call) and (n.func in FUNCTIONS or n.func in SPECIAL)
               for n in ast.iter_exprs(node))


def is_elementwise_function(name: str) -> bool:
    op = functions().get(name)
    return op is not None and op.category in (ARITH, SELECT, GLOBAL)
