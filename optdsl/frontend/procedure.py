"""Closure-driven programs: AST to a Procedure (optdsl.ir.procedure), every mistake a DslError.

A program is closure-driven when it uses what only such programs have: blocks, `break` and
`return`, calls as statements (`push`, `clear`), several targets (`loss, g = evaluate()`),
indexing, choice hypers, or a function of closure-driven programs (`evaluate`, `hvp`,
`strong_wolfe`, `hessian`, `solve`, ...). Its declarations read as a plain program's (the
checks of optdsl.frontend.check are reused), and add: choice hypers (`hyper f in {None,
"strong_wolfe"}`: the first is the default), hyper defaults derived from other hypers
(`hyper max_eval = floor(max_iter * 5 / 4)`: when the keyword is absent or None), and state
kinds (`history(n)`, `array(n)`, `eye()`, a number, a vector). Its body is the step: the
steps below are kinds (proc_kinds), translation into host statements and pending phases
(proc_translate), then dataflow and lowering of the phases (proc_phases).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from optdsl.errors import Span
from optdsl.frontend import ast
from optdsl.frontend.check import _Checker
from optdsl.frontend.keys import RESERVED_KEYS
from optdsl.frontend.proc_infer import assigned_names, exprs_of, infer_kinds, walk
from optdsl.frontend.proc_kinds import CHOICE, FUNCTIONS, SPECIAL, Kinds
from optdsl.frontend.proc_phases import Assigned, Liveness, lower_phase
from optdsl.frontend.proc_translate import PendingRun, Translator
from optdsl.frontend.requirements import lower_requirement
from optdsl.frontend.signature import HyperSpec, Requirement
from optdsl.ir import procedure as ir
from optdsl.ir.builder import Builder
from optdsl.ir.procedure import ARRAY, HISTORY, MATRIX, SCALAR, VECTOR, Ref

_INTEGER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class ProcedureChecked:
    name: str | None
    description: str | None
    hypers: dict[str, HyperSpec]
    states: dict[str, ir.StateInfo]
    requirements: tuple[Requirement, ...]
    procedure: ir.Procedure


def _plain_repeat(stmt) -> bool:
    """``repeat n:`` of assignments (and such blocks): a plain program's, unrolled when the
    step is compiled (optdsl.frontend.check)."""
    return isinstance(stmt, ast.Repeat) and all(
        isinstance(s, ast.Assign) or _plain_repeat(s) for s in stmt.body)


def _plain_statements(statements):
    for stmt in statements:
        if _plain_repeat(stmt):
            yield from _plain_statements(stmt.body)
        else:
            yield stmt


def is_procedure(module: ast.Module) -> bool:
    """Whether a parsed program is closure-driven: it has blocks other than repeats of
    assignments, or it indexes, or it calls a closure-driven program's functions."""
    for stmt in _plain_statements(module.statements):
        if isinstance(stmt, ast.BLOCK_STATEMENTS):
            return True
        exprs = [stmt.value] if isinstance(stmt, ast.Assign) else []
        if isinstance(stmt, ast.StateDecl):
            exprs = [item.init for item in stmt.items]
        for expr in exprs:
            for node in ast.iter_exprs(expr):
                if isinstance(node, ast.Index) or isinstance(
                        node, ast.Call) and (node.func in FUNCTIONS or node.func in SPECIAL):
                    return True
    return False


class _Declarations:
    """Hypers, states, requirements and the header, checked with a plain program's rules."""

    def __init__(self, module: ast.Module) -> None:
        self.checker = _Checker(module)
        self.module = module
        self.header: ast.Header | None = None
        self.choices: dict[str, tuple] = {}
        self.state_items: list[ast.StateItem] = []
        self.body: list = []

    def error(self, message: str, span: Span):
        return self.checker.error(message, span)

    def collect(self) -> None:
        for stmt in self.module.statements:
            if isinstance(stmt, ast.Header):
                if self.header is not None:
                    raise self.error("a program names its optimizer once", stmt.span)
                self.header = stmt
            elif isinstance(stmt, ast.HyperDecl):
                for item in stmt.items:
                    self.hyper(item)
            elif isinstance(stmt, ast.StateDecl):
                for item in stmt.items:
                    self.state(item)
            elif isinstance(stmt, ast.Require):
                self.checker.requires.append(stmt)
            else:
                self.body.append(stmt)

    def state(self, item: ast.StateItem) -> None:
        """As in plain programs, except that `t` may be a state: a closure-driven step has
        no per-parameter step count (torch.optim.LBFGS keeps its step length as `t`)."""
        checker = self.checker
        if item.name != "t":
            checker.declare_state(item)
        else:
            if "t" in checker.state_items:
                raise self.error("`t` is declared twice", item.span)
            key = item.key or item.name
            if any((o.key or o.name) == key for o in checker.state_items.values()):
                raise self.error(f"state key `{key}` is used twice", item.key_span or item.span)
            checker.state_items["t"] = item
        self.state_items.append(item)

    def hyper(self, item: ast.HyperItem) -> None:
        checker = self.checker
        if item.choices is not None:  # (a plain program's rules: optdsl.frontend.check)
            checker.declare_hyper(item)
            self.choices[item.name] = checker.hypers[item.name].choices
            return
        names = [n for n in ast.iter_exprs(item.default)
                 if isinstance(n, ast.Name) and n.id != "None"] \
            if isinstance(item.default, ast.Expr) and item.parts is None else []
        if not names:
            return checker.declare_hyper(item)
        checker._new_name(item.name, item.span, "hyper")
        checker.check_keyword(item.name, item.span)
        for node in names:
            if node.id not in checker.hyper_scalars or node.id in checker.tuple_names:
                raise self.error(f"a derived default reads hypers declared before it; "
                                 f"`{node.id}` is not one", node.span)
        builder = Builder()
        env = {name: builder.leaf("hyper", name) for name in checker.hyper_scalars
               if name not in self.choices}
        value = checker.lower_expr(item.default, env, builder)
        if builder.kind(value).mask:
            raise self.error("a hyper's default is a number, not a comparison",
                             item.default.span)
        interval = checker.interval(item.interval) if item.interval else None
        checker.hyper_scalars[item.name] = item.span
        checker.hypers[item.name] = HyperSpec(item.name, None, interval,
                                              derived=builder.graph([("value", value)]),
                                              line=item.span.line)


def check_procedure(module: ast.Module) -> ProcedureChecked:
    """Check a closure-driven program and lower it to a Procedure."""
    decls = _Declarations(module)
    decls.collect()
    checker = decls.checker
    _infer_hypers(decls)
    states, kinds = _state_kinds(decls)
    infer_kinds(decls.body, kinds)
    refs = {name: Ref("hyper", name) for name in (*checker.hyper_scalars, *decls.choices)}
    refs.update({name: Ref("state", name) for name in states})
    refs.update({name: Ref("local", name) for name in kinds.locals})
    translator = Translator(kinds, refs)
    translator.choice_specs = decls.choices
    translator.first_read = lambda name, line: _first_read(module.source, name, line)
    for stmt in decls.body:
        translator.statement(stmt)
    translator.flush()
    body = tuple(translator.out)
    Assigned(translator).block(body, {"g"})
    liveness = Liveness(translator)
    for _ in range(2):  # a phase inside a loop sees its own later reads on the second pass
        liveness.block(body, set(), set())
    phases: list[ir.PhaseSpec] = []
    body = _finish(translator, body, phases, liveness)
    infos = {name: _state_info(decls, item, kinds) for name, item in states.items()}
    requirements = tuple(lower_requirement(checker, stmt) for stmt in checker.requires)
    procedure = ir.Procedure(body, tuple(phases), tuple(infos.values()),
                             dict(kinds.locals), tuple(translator.closure_uses),
                             tuple(translator.second_order))
    header = decls.header
    return ProcedureChecked(header.name if header else None,
                            header.description if header else None, checker.hypers, infos,
                            requirements, procedure)


def _infer_hypers(decls: _Declarations) -> None:
    """Names read and never assigned (nor declared) are required hypers, as in plain
    programs."""
    checker = decls.checker
    assigned = assigned_names(decls.body)
    declared = set(checker.hyper_scalars) | set(checker.state_items) | set(decls.choices)
    for stmt in walk(decls.body):
        for expr in exprs_of(stmt):
            for node in ast.iter_exprs(expr):
                if not isinstance(node, ast.Name):
                    continue
                name = node.id
                checker.check_name(name, node.span)
                if name in checker.tuple_names:
                    parts = ", ".join(f"`{p}`" for p in checker.tuple_names[name].parts)
                    raise checker.error(f"`{name}` is a tuple of hypers; use its parts {parts}",
                                        node.span)
                if name in ("w", "g", "t", "None") or name in declared or name in assigned:
                    continue
                checker.check_keyword(name, node.span)
                checker.hypers[name] = HyperSpec(name, None, inferred=True, line=node.span.line)
                checker.hyper_scalars[name] = node.span
                declared.add(name)
    for name, span in assigned.items():
        if name in checker.hyper_scalars or name in decls.choices or name in checker.tuple_names:
            raise checker.error(f"`{name}` is a hyperparameter and cannot be assigned; use a "
                                f"new name for the computed value", span)
        if name in FUNCTIONS or name in SPECIAL:
            raise checker.error(f"`{name}` is a function of closure-driven programs and cannot "
                                f"be assigned", span)
        if name == "t":  # (not built in here: no per-parameter step count)
            continue
        checker.check_target(ast.Assign(name, span, None, span))


def _state_kinds(decls: _Declarations) -> tuple[dict[str, ast.StateItem], Kinds]:
    """Each state's kind from its initial value; the Kinds of the program's names."""
    checker = decls.checker
    hypers = {name: SCALAR for name in checker.hyper_scalars}
    hypers.update({name: CHOICE for name in decls.choices})
    states, kinds, entries = {}, {}, {}
    for item in decls.state_items:
        init = item.init
        if isinstance(init, ast.Call) and init.func in ("history", "array"):
            if len(init.args) != 1:
                raise checker.error(f"`{init.func}(n)` takes its capacity", init.span)
            kinds[item.name] = HISTORY if init.func == "history" else ARRAY
            entries[item.name] = None if init.func == "history" else SCALAR
        elif isinstance(init, ast.Call) and init.func == "eye" and not init.args:
            kinds[item.name] = MATRIX
        elif isinstance(init, ast.Name) and init.id == "w":
            kinds[item.name] = VECTOR
        else:
            kinds[item.name] = SCALAR
        states[item.name] = item
    return states, Kinds(checker, hypers, kinds, entries)


def _state_info(decls: _Declarations, item: ast.StateItem, kinds: Kinds) -> ir.StateInfo:
    checker = decls.checker
    kind = kinds.states[item.name]
    key = item.key or item.name
    if key in RESERVED_KEYS:
        raise checker.error(f"`{key}` is a state_dict key optdsl uses ({RESERVED_KEYS[key]}); "
                            f"choose another key", item.key_span or item.span)
    init, copies_w = None, False
    node = item.init
    if isinstance(node, ast.Call) and node.func in ("history", "array"):
        init = _constant_host(decls, node.args[0], f"the capacity of `{item.name}`")
    elif isinstance(node, ast.Name) and node.id == "w":
        copies_w = True
    elif not (isinstance(node, ast.Call) and node.func == "eye"):
        init = _constant_host(decls, node, f"the initial value of `{item.name}`")
    integer = isinstance(node, ast.Num) and bool(_INTEGER.fullmatch(checker.text(node.span)))
    return ir.StateInfo(item.name, key, kind, kinds.entries.get(item.name), init, copies_w,
                        integer, item.span.line)


def _constant_host(decls: _Declarations, node: ast.Expr, what: str) -> ir.HostExpr:
    """An expression of numbers and hypers, as a HostExpr."""
    checker = decls.checker
    builder = Builder()
    env = {name: builder.leaf("hyper", Ref("hyper", name).key) for name in checker.hyper_scalars}
    for sub in ast.iter_exprs(node):
        if isinstance(sub, ast.Name) and sub.id not in checker.hyper_scalars:
            raise checker.error(f"{what} is made of numbers and hypers; `{sub.id}` is not one",
                                sub.span)
        if isinstance(sub, (ast.Index, ast.ChoiceCompare)) or isinstance(sub, ast.Call) and (
                sub.func in FUNCTIONS or sub.func in SPECIAL):
            raise checker.error(f"{what} is made of numbers and hypers", sub.span)
    value = checker.lower_expr(node, env, builder)
    if builder.kind(value).is_tensor or builder.kind(value).mask:
        raise checker.error(f"{what} must be a number", node.span)
    refs = tuple(Ref("hyper", n) for n in checker.hyper_scalars
                 if any(eq.op == "hyper" and eq.attr == Ref("hyper", n).key
                        for eq in builder.eqs))
    return ir.HostExpr(builder.graph([("value", value)]), refs, False)


def _finish(translator: Translator, body: tuple, phases: list, liveness: Liveness) -> tuple:
    """The body with each pending phase lowered (numbered in order) and each closure call
    given the vectors it must copy first."""
    out = []
    for stmt in body:
        if isinstance(stmt, PendingRun):
            spec = lower_phase(translator, stmt.phase, len(phases))
            phases.append(spec)
            out.append(ir.RunPhase(spec.index, stmt.line))
        elif isinstance(stmt, ir.Call):
            names = sorted(liveness.snapshots.get(id(stmt), ()))
            snapshot = tuple(Ref("local", n) for n in names)
            out.append(ir.Call(stmt.function, stmt.args, stmt.targets, stmt.line, stmt.column,
                               snapshot))
        elif isinstance(stmt, ir.If):
            (test, then), = stmt.branches
            out.append(ir.If(((test, _finish(translator, then, phases, liveness)),),
                             _finish(translator, stmt.orelse, phases, liveness), stmt.line))
        elif isinstance(stmt, ir.While):
            out.append(ir.While(_finish(translator, stmt.prelude, phases, liveness),
                                stmt.condition, _finish(translator, stmt.body, phases, liveness),
                                stmt.line))
        elif isinstance(stmt, ir.Loop):
            out.append(ir.Loop(stmt.var, stmt.over, stmt.reverse, stmt.count,
                               _finish(translator, stmt.body, phases, liveness), stmt.line))
        else:
            out.append(stmt)
    return tuple(out)


def _first_read(source: str, name: str, line: int) -> Span:
    lines = source.splitlines()
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    match = re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text)
    return Span(line, match.start() + 1 if match else 1, len(name) if match else 1)

