"""Statements of a closure-driven program to host IR (optdsl.ir.procedure) around phases.

Consecutive assignments form one *pending phase* when any of them works on vectors; host
statements (control, calls of the closure, pushes, dense algebra) end it. Expressions the
host evaluates (conditions, arguments, indices) may hold vector work or calls (a reduction
in an `if`, `len(h)` in an index): those parts are *hoisted* first, into compiler
temporaries (locals named ``__t<k>``: no program name starts with ``__``), computed by the
phase that precedes or by a host call. Which values a phase must hand back is decided later,
from liveness (optdsl.frontend.proc_phases).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optdsl.errors import Span
from optdsl.frontend import ast
from optdsl.frontend.proc_hoist import Rewriter, VectorHoister
from optdsl.frontend.proc_kinds import (
    CHOICE,
    DENSE_OPS,
    FUNCTIONS,
    MULTI,
    VMASK,
    WORDS,
    Kinds,
    dense_calls,
)
from optdsl.ir import procedure as ir
from optdsl.ir.procedure import ARRAY, HISTORY, MASK, MATRIX, SCALAR, VECTOR, Ref


@dataclass
class PendingPhase:
    """Assignments that will be one compiled phase: (target Ref, value, span) in order."""

    statements: list = field(default_factory=list)
    line: int = 0
    live_out: frozenset[str] = frozenset()  # set by the liveness pass


@dataclass(frozen=True)
class PendingRun:
    """Where a pending phase runs in the host IR (replaced by ir.RunPhase once lowered)."""

    phase: PendingPhase
    line: int


class Translator:
    """One pass over the statements of a program's body."""

    def __init__(self, kinds: Kinds, refs) -> None:
        self.kinds = kinds
        self.refs = refs  # name -> Ref (hypers, states, locals)
        self.out: list = []
        self.pending: PendingPhase | None = None
        self.temps = 0
        self.loops = 0  # how many loops the statement being translated is inside
        self.closure_uses: list[tuple[str, int, int]] = []
        self.second_order: list[tuple[str, int, int]] = []

    def error(self, message: str, span):
        return self.kinds.error(message, span)

    # -- plumbing ------------------------------------------------------------------------------
    def emit(self, stmt) -> None:
        self.flush()
        self.out.append(stmt)

    def flush(self) -> None:
        if self.pending is not None:
            self.out.append(PendingRun(self.pending, self.pending.line))
            self.pending = None

    def to_phase(self, target: Ref, value: ast.Expr, span: Span) -> None:
        if self.pending is None:
            self.pending = PendingPhase(line=span.line)
        self.pending.statements.append((target, value, span))

    def block(self, statements) -> tuple:
        """Translate a block body into its own statement list (what is pending before it
        runs before it)."""
        self.flush()
        saved, self.out = self.out, []
        for stmt in statements:
            self.statement(stmt)
        self.flush()
        body, self.out = tuple(self.out), saved
        return body

    def temp(self, kind: str, span: Span) -> ast.Name:
        self.temps += 1
        name = f"__t{self.temps}"
        self.kinds.locals[name] = kind
        self.refs[name] = Ref("local", name)
        return ast.Name(span, name)

    def ref(self, name: str) -> Ref:
        if name == "w":
            return Ref("w", "w")
        return self.refs[name]

    # -- statements ----------------------------------------------------------------------------
    def statement(self, stmt) -> None:
        handler = getattr(self, "_" + type(stmt).__name__.lower())
        handler(stmt)

    def _assign(self, stmt: ast.Assign) -> None:
        target = self.ref(stmt.target)
        value = stmt.value
        if isinstance(value, ast.Call) and value.func in FUNCTIONS \
                and not FUNCTIONS[value.func].dense:
            return self.call_into(value, (target,), (stmt.target_span,))
        if dense_calls(value) or MATRIX in self.kinds_in(value):
            return self.dense(target, value, stmt)
        self.assign_value(target, value, stmt.span)

    def kinds_in(self, node: ast.Expr) -> set[str]:
        return {self.kinds.of(n) for n in ast.iter_exprs(node)
                if isinstance(n, (ast.Name, ast.Index))}

    def assign_value(self, target: Ref, value: ast.Expr, span: Span) -> None:
        """An element-wise or scalar assignment: into the pending phase, or on the host."""
        value = self.hoist_calls(value)
        vector = (self.kind_of_ref(target) == VECTOR or self.kinds.of(value) in (VECTOR, VMASK)
                  or self.has_vector_work(value))
        if vector or self.pending is not None:
            self.to_phase(target, value, span)
        else:
            self.emit(ir.SetScalar(target, self.host(value), span.line))

    def kind_of_ref(self, ref: Ref) -> str:
        if ref.kind == "w":
            return VECTOR
        if ref.kind == "item":
            return self.kinds.entries.get(ref.name) or SCALAR
        if ref.kind == "hyper":
            return SCALAR
        return (self.kinds.states if ref.kind == "state" else self.kinds.locals)[ref.name]

    def has_vector_work(self, node: ast.Expr) -> bool:
        return any(self.kinds.of(n) in (VECTOR, VMASK) for n in ast.iter_exprs(node)
                   if isinstance(n, (ast.Name, ast.Index)))

    def _indexassign(self, stmt: ast.IndexAssign) -> None:
        kind = self.kinds.states.get(stmt.target)
        if kind not in (HISTORY, ARRAY):
            raise self.error(f"`{stmt.target}[...] = ` sets an entry of a history or an array; "
                             f"`{stmt.target}` is {WORDS.get(kind, 'not one')}", stmt.target_span)
        index = self.index_local(stmt.index)
        target = Ref("item", stmt.target, index)
        if kind == ARRAY:
            self.kinds.expect(stmt.value, (SCALAR,), "an entry of an array")
        self.assign_value(target, stmt.value, stmt.span)

    def _multiassign(self, stmt: ast.MultiAssign) -> None:
        value = stmt.value
        if not (isinstance(value, ast.Call) and value.func in FUNCTIONS
                and len(FUNCTIONS[value.func].results) > 1):
            raise self.error("only functions with several results are assigned to several "
                             "names (`loss, g = evaluate()`)", value.span)
        spec = FUNCTIONS[value.func]
        if len(stmt.targets) != len(spec.results):
            raise self.error(f"`{value.func}()` gives {len(spec.results)} results, assigned to "
                             f"{len(stmt.targets)} names", stmt.span)
        targets = tuple(self.ref(name) for name, _ in stmt.targets)
        self.call_into(value, targets, tuple(span for _, span in stmt.targets))

    def _callstatement(self, stmt: ast.CallStatement) -> None:
        call = stmt.call
        if call.func not in ("push", "clear"):
            what = ("a value: assign it" if call.func in FUNCTIONS else "not a statement")
            raise self.error(f"`{call.func}(...)` is {what}", call.func_span)
        wanted = 2 if call.func == "push" else 1
        if len(call.args) != wanted:
            what = "a history and a value" if wanted == 2 else "a history"
            raise self.error(f"`{call.func}` takes {what}", call.span)
        history = self.kinds.history_name(call.args[0], call.func)
        if call.func == "clear":
            return self.emit(ir.HistoryOp("clear", history, None, stmt.span.line))
        value = call.args[1]
        entry = self.kinds.entries.get(history)
        if entry == VECTOR:
            ref = self.vector_ref(value)
            return self.emit(ir.HistoryOp("push", history, ref, stmt.span.line))
        self.kinds.expect(value, (SCALAR,), "a pushed number")
        self.emit(ir.HistoryOp("push", history, self.host(self.hoist_calls(value)),
                               stmt.span.line))

    def _if(self, stmt: ast.If) -> None:
        """``if a: A elif b: B else: C`` is ``if a: A else: (if b: B else: C)``: a later
        condition is computed only when the earlier ones are false."""
        self.emit(self.branch(stmt.branches, stmt.orelse, stmt.span.line))

    def branch(self, branches, orelse, line: int) -> ir.If:
        (condition, body), rest = branches[0], branches[1:]
        test = self.condition(condition)
        then = self.block(body)
        if rest:
            self.flush()
            saved, self.out = self.out, []
            self.out.append(self.branch(rest, orelse, rest[0][0].span.line))
            otherwise, self.out = tuple(self.out), saved
        else:
            otherwise = self.block(orelse) if orelse is not None else ()
        self.flush()
        return ir.If(((test, then),), otherwise, line)

    def condition(self, node: ast.Expr) -> ir.HostExpr:
        self.kinds.expect(node, (MASK,), "a condition")
        return self.host(self.hoist_calls(node))

    def _while(self, stmt: ast.While) -> None:
        self.flush()
        saved, self.out = self.out, []
        test = self.condition(stmt.condition)
        self.flush()
        prelude, self.out = tuple(self.out), saved
        self.emit(ir.While(prelude, test, self.loop_body(stmt.body), stmt.span.line))

    def _repeat(self, stmt: ast.Repeat) -> None:
        self.kinds.expect(stmt.count, (SCALAR,), "the count of `repeat`")
        count = self.host(self.hoist_calls(stmt.count))
        self.emit(ir.Loop(None, None, False, count, self.loop_body(stmt.body),
                          stmt.span.line))

    def _for(self, stmt: ast.For) -> None:
        source = stmt.iterable
        reverse, over, count = False, None, None
        if isinstance(source, ast.Call) and source.func == "reversed" and len(source.args) == 1:
            reverse, source = True, source.args[0]
        if isinstance(source, ast.Call) and source.func == "range" and not reverse \
                and len(source.args) == 1:
            self.kinds.expect(source.args[0], (SCALAR,), "the count of `range`")
            count = self.host(self.hoist_calls(source.args[0]))
        elif isinstance(source, ast.Name) and self.kinds.states.get(source.id) == HISTORY:
            over = source.id
        else:
            raise self.error("a loop runs over a history (`for i in h:`, `for i in "
                             "reversed(h):`) or a count (`for i in range(n):`)", stmt.iterable.span)
        self.emit(ir.Loop(stmt.var, over, reverse, count, self.loop_body(stmt.body),
                          stmt.span.line))

    def loop_body(self, statements) -> tuple:
        self.loops += 1
        try:
            return self.block(statements)
        finally:
            self.loops -= 1

    def _break(self, stmt: ast.Break) -> None:
        if not self.loops:
            raise self.error("`break` outside a loop (to end the step, write `return`)",
                             stmt.span)
        self.emit(ir.Break(stmt.span.line))

    def _return(self, stmt: ast.Return) -> None:
        self.emit(ir.Return(stmt.span.line))

    # -- calls ---------------------------------------------------------------------------------
    def call_into(self, call: ast.Call, targets: tuple[Ref, ...], spans) -> None:
        """A host function whose results go to ``targets``."""
        spec = FUNCTIONS[call.func]
        kind = self.kinds.of(call)
        if kind != MULTI and len(targets) == 1:
            self.check_target(targets[0], kind, spans[0])
        elif kind == MULTI and len(targets) == 1:
            raise self.error(f"`{call.func}()` gives {len(spec.results)} results: "
                             + ("`loss, g = evaluate()`" if call.func == "evaluate" else
                                "assign them to as many names"), call.span)
        for target, result, span in zip(targets, spec.results, spans):
            self.check_target(target, result, span)
        args = []
        for arg, arg_kind in zip(call.args, spec.args):
            if arg_kind == VECTOR:
                args.append(self.vector_ref(arg))
            elif arg_kind == HISTORY:
                args.append(arg.id)
            else:
                args.append(self.host(self.hoist_calls(arg)))
        where = (call.func, call.span.line, call.span.column)
        if spec.closure:
            self.closure_uses.append(where)
        if spec.second_order:
            self.second_order.append(where)
        self.emit(ir.Call(call.func, tuple(args), targets, call.span.line, call.span.column))

    def check_target(self, target: Ref, kind: str, span: Span) -> None:
        if target.kind == "hyper":
            raise self.error(f"`{target.name}` is a hyperparameter and cannot be assigned",
                             span)
        have = self.kind_of_ref(target)
        if have != kind and not (have == VECTOR and kind == SCALAR):
            raise self.error(f"`{target.name}` is {WORDS.get(have, have)} and cannot be "
                             f"assigned {WORDS.get(kind, kind)}", span)

    def vector_ref(self, node: ast.Expr) -> Ref:
        """The vector an argument names; an expression is computed into a temporary first."""
        self.kinds.expect(node, (VECTOR,), "this argument")
        if isinstance(node, ast.Name):
            return self.ref(node.id)
        if isinstance(node, ast.Index):
            return Ref("item", node.name, self.index_local(node.index))
        temp = self.temp(VECTOR, node.span)
        self.assign_value(self.ref(temp.id), node, node.span)
        return self.ref(temp.id)

    def index_local(self, node: ast.Expr) -> str:
        """An index as a local's name (a constant or an expression is hoisted)."""
        self.kinds.expect(node, (SCALAR,), "an index")
        if isinstance(node, ast.Name) and self.ref(node.id).kind == "local":
            return node.id
        temp = self.temp(SCALAR, node.span)
        self.assign_value(self.ref(temp.id), node, node.span)
        return temp.id

    def hoist_calls(self, node: ast.Expr) -> ast.Expr:
        """The expression with its calls of host functions (len, numel, random_index, hvp,
        index) and its non-local indices replaced by temporaries computed first."""
        return Rewriter(self).expr(node)

    # -- dense ---------------------------------------------------------------------------------
    def dense(self, target: Ref, value: ast.Expr, stmt) -> None:
        kind = self.kinds.of(value)
        self.check_target(target, kind, stmt.target_span)
        if target.kind == "w" and kind != VECTOR:
            raise self.error("`w` is assigned a vector", stmt.value.span)
        tree = self.dense_tree(self.hoist_calls(value))
        for call in dense_calls(value):
            spec = FUNCTIONS[call.func]
            where = (call.func, call.span.line, call.span.column)
            if spec.closure:
                self.closure_uses.append(where)
            if spec.second_order:
                self.second_order.append(where)
        self.emit(ir.Dense(target, tree, stmt.span.line))

    def dense_tree(self, node: ast.Expr):
        if isinstance(node, ast.Num):
            return float(node.value)
        if isinstance(node, ast.Name):
            if self.kinds.of(node) == CHOICE:
                raise self.error("a choice is compared with a string", node.span)
            return self.ref(node.id)
        if isinstance(node, ast.Index):
            return Ref("item", node.name, self.index_local(node.index))
        if isinstance(node, ast.Unary) and node.op == "neg":
            return ("neg", self.dense_tree(node.operand))
        if isinstance(node, ast.Binary) and node.op in ("add", "sub", "mul", "div", "pow"):
            return (node.op, self.dense_tree(node.left), self.dense_tree(node.right))
        if isinstance(node, ast.Call) and (node.func in DENSE_OPS or (
                node.func in FUNCTIONS and FUNCTIONS[node.func].dense)):
            self.kinds.of(node)
            return (node.func,) + tuple(self.dense_tree(a) for a in node.args)
        raise self.error("an expression with a matrix is computed on the host with +, -, *, "
                         "/, ^ and solve, matvec, outer, eye, spectral_abs, hessian, abs, "
                         "sqrt, global_sum, global_norm, global_maxabs; compute this part in "
                         "its own statement", node.span)

    # -- host expressions ----------------------------------------------------------------------
    def host(self, node: ast.Expr) -> ir.HostExpr:
        """A scalar expression on the host; its vector work goes to the pending phase first
        (a temporary per reduction), so what remains reads only host values."""
        node = VectorHoister(self).expr(node)
        from optdsl.frontend.proc_phases import lower_host

        return lower_host(self, node)
