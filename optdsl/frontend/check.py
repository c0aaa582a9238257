"""AST to IR: resolve names, infer roles and kinds, report every mistake as a DslError.

Roles (LANGUAGE.md, "Names and their kinds"): `w g t` are built in; declared hypers and
states are what they say; an undeclared name that is assigned and read before its first
assignment is a state initialised to 0; an undeclared name that is never assigned is a
required hyper. Every other assigned name is a temporary. A state is kept as one number per
parameter when its initial value and every assignment are scalar; that is found by a small
fixed point (assume scalar, lower, widen the states that received a tensor, repeat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from optdsl.errors import DslError, Span, source_lines, suggest
from optdsl.frontend import ast
from optdsl.frontend.requirements import lower_requirement
from optdsl.frontend.signature import (
    CONSTRUCTOR_KEYWORDS,
    HyperSpec,
    Interval,
    Requirement,
    StateSpec,
)
from optdsl.frontend.sparse import SparseRule, lower_sparse
from optdsl.ir.builder import Builder, pruned
from optdsl.ir.nodes import Graph
from optdsl.ir.ops import (
    ARITH,
    COMPARE,
    GLOBAL,
    KEYWORDS,
    LOGIC,
    OPS,
    REDUCE,
    SELECT,
    Kind,
    Level,
    functions,
)

BUILTIN = ("w", "g", "t")
RESERVED_KEYS = frozenset({"step"})


@dataclass(frozen=True)
class Checked:
    """A checked program: its interface and its (unoptimized) step graph."""

    name: str | None
    description: str | None
    hypers: dict[str, HyperSpec]
    states: dict[str, StateSpec]
    graph: Graph
    requirements: tuple[Requirement, ...] = ()
    sparse: SparseRule = field(default_factory=SparseRule)


class _Checker:
    def __init__(self, module: ast.Module) -> None:
        self.module = module
        self.header: ast.Header | None = None
        self.hypers: dict[str, HyperSpec] = {}
        self.hyper_scalars: dict[str, Span] = {}  # names usable in arithmetic
        self.tuple_names: dict[str, HyperSpec] = {}
        self.state_items: dict[str, ast.StateItem] = {}
        self.inferred_states: dict[str, Span] = {}
        self.assigns: list[ast.Assign] = []
        self.requires: list[ast.Require] = []
        self.sparse: list[ast.Sparse] = []

    def error(self, message: str, span: Span | None) -> DslError:
        return DslError(message, span or Span(1, 1), filename=self.module.filename,
                        source=self.module.source)

    # -- declarations ------------------------------------------------------------------------
    def collect(self) -> None:
        for stmt in self.module.statements:
            if isinstance(stmt, ast.Header):
                if self.header is not None:
                    raise self.error("a program names its optimizer once", stmt.span)
                self.header = stmt
            elif isinstance(stmt, ast.HyperDecl):
                for item in stmt.items:
                    self.declare_hyper(item)
            elif isinstance(stmt, ast.StateDecl):
                for item in stmt.items:
                    self.declare_state(item)
            elif isinstance(stmt, ast.Require):
                self.requires.append(stmt)
            elif isinstance(stmt, ast.Sparse):
                self.sparse.append(stmt)
            else:
                self.assigns.append(stmt)

    def _new_name(self, name: str, span: Span, what: str) -> None:
        self.check_name(name, span)
        if name in BUILTIN:
            raise self.error(f"`{name}` is built in (the parameter, its gradient or the step "
                             f"number) and cannot be declared as a {what}", span)
        if name in functions():
            raise self.error(f"`{name}` is a built-in function and cannot be declared as a "
                             f"{what}", span)
        if name in self.hyper_scalars or name in self.state_items or name in self.tuple_names:
            raise self.error(f"`{name}` is declared twice", span)

    def declare_hyper(self, item: ast.HyperItem) -> None:
        self._new_name(item.name, item.span, "hyper")
        self.check_keyword(item.name, item.span)
        interval = self.interval(item.interval) if item.interval else None
        parts = None
        if item.parts is not None:
            names, defaults = [], []
            for part, span, expr in item.parts:
                self._new_name(part, span, "hyper")
                if part == item.name or part in names:
                    raise self.error(f"`{part}` is declared twice", span)
                value = self.constant(expr, "a hyper's default")
                self.check_default(part, value, interval, expr.span)
                names.append(part)
                defaults.append(value)
                self.hyper_scalars[part] = span
            parts = tuple(names)
            default: object = tuple(defaults)
        elif item.default is not None:
            default = self.constant(item.default, "a hyper's default")
            self.check_default(item.name, default, interval, item.default.span)
            self.hyper_scalars[item.name] = item.span
        else:
            default = None
            self.hyper_scalars[item.name] = item.span
        spec = HyperSpec(item.name, default, interval, parts, line=item.span.line)
        self.hypers[item.name] = spec
        if parts:
            self.tuple_names[item.name] = spec

    def check_keyword(self, name: str, span: Span) -> None:
        if name in CONSTRUCTOR_KEYWORDS:
            raise self.error(f"`{name}` is a keyword of the optimizer's constructor and cannot "
                             f"name a hyperparameter; choose another name", span)

    def check_default(self, name: str, value: float, interval: Interval | None,
                      span: Span) -> None:
        if interval is not None and not interval.contains(float(value)):
            raise self.error(f"the default of `{name}`, {value!r}, is outside its interval "
                             f"{interval}", span)

    def interval(self, node: ast.Interval) -> Interval:
        low = float(self.constant(node.low, "an interval bound"))
        high = float(self.constant(node.high, "an interval bound"))
        if math.isnan(low) or math.isnan(high) or low > high:
            raise self.error(f"empty interval: {low!r} is above {high!r}", node.span)
        return Interval(low, high, node.low_closed, node.high_closed)

    def declare_state(self, item: ast.StateItem) -> None:
        self._new_name(item.name, item.span, "state variable")
        key = item.key or item.name
        if key in RESERVED_KEYS:
            raise self.error(f"`{key}` is the state_dict key of the step number `t`; choose "
                             f"another key", item.key_span or item.span)
        for other in self.state_items.values():
            if (other.key or other.name) == key:
                raise self.error(f"state key `{key}` is used twice", item.key_span or item.span)
        self.state_items[item.name] = item

    def constant(self, expr: ast.Expr, what: str) -> int | float:
        """Evaluate a constant expression (numbers and arithmetic only)."""
        for node in ast.iter_exprs(expr):
            if isinstance(node, ast.Name):
                if node.id in ("w", "g"):
                    raise self.error(f"{what} must be a constant scalar, but `{node.id}` is a "
                                     f"tensor", node.span)
                raise self.error(f"{what} must be a number; `{node.id}` is a name", node.span)
            if isinstance(node, ast.Binary) and OPS[node.op].category in (COMPARE, LOGIC) or \
                    isinstance(node, ast.Unary) and node.op == "not":
                raise self.error(f"{what} must be a number, not a comparison", node.span)
            if isinstance(node, ast.Call):
                op = self.function(node)
                if op.category != ARITH:
                    raise self.error(f"{what} must be a constant scalar; `{node.func}` does not "
                                     f"give one", node.func_span)
        if isinstance(expr, ast.Num) and float(expr.value).is_integer() and \
                math.isfinite(expr.value) and "." not in self.text(expr.span) and \
                "e" not in self.text(expr.span).lower():
            return int(expr.value)
        builder = Builder()
        value = self.lower_expr(expr, {}, builder)
        with np.errstate(all="ignore"):
            return float(_evaluate_constant(builder, value))

    def text(self, span: Span) -> str:
        lines = source_lines(self.module.source)
        line = lines[span.line - 1] if 0 < span.line <= len(lines) else ""
        return line[span.column - 1: span.column - 1 + span.length]

    def function(self, node: ast.Call):
        op = functions().get(node.func)
        if op is None:
            raise self.error(f"unknown function `{node.func}`" + suggest(node.func, functions()),
                             node.func_span)
        if len(node.args) != op.arity:
            plural = "s" if op.arity != 1 else ""
            raise self.error(f"`{node.func}` takes {op.arity} argument{plural}, "
                             f"got {len(node.args)}", node.span)
        return op

    def check_name(self, name: str, span: Span) -> None:
        if name in KEYWORDS:
            raise self.error(f"`{name}` is a keyword and cannot be used as a name", span)
        if name.startswith("__"):
            raise self.error(f"names starting with `__` are reserved for the compiler: "
                             f"`{name}`", span)

    # -- roles -------------------------------------------------------------------------------
    def infer_roles(self) -> list[str]:
        """Find inferred states and required hypers; return the required hypers' names."""
        targets = {a.target for a in self.assigns}
        assigned: set[str] = set()
        inferred_hypers: dict[str, Span] = {}
        for stmt in self.assigns:
            for node in ast.iter_exprs(stmt.value):
                if isinstance(node, ast.Call):
                    self.function(node)
                    continue
                if not isinstance(node, ast.Name):
                    continue
                name = node.id
                self.check_name(name, node.span)
                if name in functions():
                    raise self.error(f"`{name}` is a function; call it as `{name}(...)`",
                                     node.span)
                if name in self.tuple_names:
                    parts = ", ".join(f"`{p}`" for p in self.tuple_names[name].parts)
                    raise self.error(f"`{name}` is a tuple of hypers; use its parts {parts}",
                                     node.span)
                if (name in BUILTIN or name in self.hyper_scalars or name in self.state_items
                        or name in assigned):
                    continue
                if name in targets:
                    self.inferred_states.setdefault(name, node.span)
                else:
                    inferred_hypers.setdefault(name, node.span)
            self.check_target(stmt)
            assigned.add(stmt.target)
        if "w" not in assigned:
            last = self.module.statements[-1].span if self.module.statements else Span(1, 1)
            raise self.error("the program never assigns `w`; an optimizer must update the "
                             "parameter, e.g. `w = w - lr * g`", last)
        for name, span in inferred_hypers.items():
            self.check_keyword(name, span)
            self.hypers[name] = HyperSpec(name, None, inferred=True, line=span.line)
            self.hyper_scalars[name] = span
        return list(inferred_hypers)

    def check_target(self, stmt: ast.Assign) -> None:
        name, span = stmt.target, stmt.target_span
        self.check_name(name, span)
        if name == "t":
            raise self.error("`t` is the step number and cannot be assigned", span)
        if name in functions():
            raise self.error(f"`{name}` is a built-in function and cannot be assigned", span)
        if name in self.tuple_names or name in self.hyper_scalars:
            raise self.error(f"`{name}` is a hyperparameter and cannot be assigned; "
                             f"use a new name for the computed value", span)

    # -- lowering ----------------------------------------------------------------------------
    def lower(self) -> tuple[Graph, dict[str, bool]]:
        """Lower all assignments; widen scalar states that receive tensors until stable."""
        names = list(self.state_items) + list(self.inferred_states)
        tensor_state = {name: self.state_init_is_tensor(name) for name in names}
        while True:
            builder = Builder()
            env = self.initial_env(builder, tensor_state)
            widened: list[str] = []
            for stmt in self.assigns:
                value = self.lower_expr(stmt.value, env, builder)
                env[stmt.target] = value
                if stmt.target in tensor_state and not tensor_state[stmt.target] and \
                        builder.kind(value).is_tensor and stmt.target not in widened:
                    widened.append(stmt.target)  # any tensor assignment makes a tensor state
                if stmt.target == "w" or stmt.target in tensor_state:
                    kind = builder.kind(value)
                    if kind.mask:
                        raise self.error(f"`{stmt.target}` is assigned a mask (a comparison); "
                                         f"use where(mask, a, b) to turn it into numbers",
                                         stmt.value.span)
            if not widened:
                break
            for name in widened:
                tensor_state[name] = True
        outputs = [("w", env["w"])] + [(name, env[name]) for name in names]
        return builder.graph(outputs), tensor_state

    def state_init_is_tensor(self, name: str) -> bool:
        item = self.state_items.get(name)
        if item is None:
            return False
        return any(isinstance(n, ast.Name) and n.id == "w" for n in ast.iter_exprs(item.init))

    def initial_env(self, builder: Builder, tensor_state: dict[str, bool]) -> dict[str, int]:
        env = {"w": builder.leaf("w"), "g": builder.leaf("g"), "t": builder.leaf("t")}
        for name in self.hyper_scalars:
            env[name] = builder.leaf("hyper", name)
        for name, is_tensor in tensor_state.items():
            kind = Kind(Level.TENSOR if is_tensor else Level.PARAM)
            env[name] = builder.leaf("state", name, kind)
        return env

    def lower_expr(self, root: ast.Expr, env: dict[str, int], builder: Builder) -> int:
        """Lower one expression (post-order, explicit stack), checking kinds on the way."""
        values: dict[int, int] = {}
        stack: list[tuple[ast.Expr, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if isinstance(node, ast.Num):
                values[id(node)] = builder.const(node.value, node.span)
                continue
            if isinstance(node, ast.Name):
                if node.id not in env:
                    raise self.unknown_name(node, env)
                values[id(node)] = env[node.id]
                continue
            children = self.children(node)
            if not expanded:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(children))
                continue
            args = [values[id(c)] for c in children]
            values[id(node)] = self.lower_op(node, children, args, builder)
        return values[id(root)]

    @staticmethod
    def children(node: ast.Expr) -> tuple[ast.Expr, ...]:
        if isinstance(node, ast.Call):
            return node.args
        if isinstance(node, ast.Unary):
            return (node.operand,)
        if isinstance(node, ast.Binary):
            return (node.left, node.right)
        return ()

    def unknown_name(self, node: ast.Name, env: dict[str, int]) -> DslError:
        return self.error(f"unknown name `{node.id}`" + suggest(node.id, set(env)), node.span)

    def lower_op(self, node: ast.Expr, children, args: list[int], builder: Builder) -> int:
        kinds = [builder.kind(a) for a in args]
        span = node.span
        if isinstance(node, (ast.Unary, ast.Binary)) and OPS[node.op].category == LOGIC:
            self.only_masks(node.op, children, kinds)
            return builder.op(node.op, args, span)
        if isinstance(node, ast.Unary):
            self.no_masks(children, kinds, "`-`")
            return builder.op("neg", args, span)
        if isinstance(node, ast.Binary):
            info = OPS[node.op]
            symbol = info.symbol or node.op
            self.no_masks(children, kinds, f"`{symbol}`")
            return builder.op(node.op, args, span)
        assert isinstance(node, ast.Call)
        op = self.function(node)
        if op.category == SELECT:
            if not kinds[0].mask:
                raise self.error("the first argument of where() must be a mask (a comparison "
                                 "such as `x > 0`)", children[0].span)
            self.no_masks(children[1:], kinds[1:], "where()'s branches")
        else:
            self.no_masks(children, kinds, f"`{node.func}()`")
        if op.category in (REDUCE, GLOBAL):
            for child, kind in zip(children, kinds):
                if not kind.is_tensor:
                    raise self.error(f"`{node.func}()` reduces a tensor, but its argument is a "
                                     f"scalar", child.span)
        return builder.op(op.name, args, span)

    def only_masks(self, op: str, children, kinds: list[Kind]) -> None:
        for child, kind in zip(children, kinds):
            if not kind.mask:
                raise self.error(f"`{op}` combines masks (comparisons such as `x > 0`), but "
                                 f"this is a number; compare it, e.g. `x != 0`", child.span)

    def no_masks(self, children, kinds: list[Kind], where: str) -> None:
        for child, kind in zip(children, kinds):
            if kind.mask:
                raise self.error(f"a mask (a comparison) cannot be used as a number in {where}; "
                                 f"use where(mask, a, b)", child.span)

    def state_specs(self, tensor_state: dict[str, bool]) -> dict[str, StateSpec]:
        specs = {}
        for name, is_tensor in tensor_state.items():
            item = self.state_items.get(name)
            builder = Builder()
            if item is None:
                init = builder.const(0.0)
                key, line = name, self.inferred_states[name].line
                if key in RESERVED_KEYS:
                    raise self.error(
                        f"state `{name}` would be saved under the state_dict key `{key}`, "
                        f"which holds the step number `t`; rename it, or declare it with "
                        f"another key: `state {name} = 0 as {name}_value`",
                        self.inferred_states[name])
            else:
                env = {"w": builder.leaf("w")}
                for hyper in self.hyper_scalars:
                    env[hyper] = builder.leaf("hyper", hyper)
                for node in ast.iter_exprs(item.init):
                    if isinstance(node, ast.Name) and node.id not in env:
                        if node.id in tensor_state or node.id in ("g", "t"):
                            raise self.error(
                                f"state variable read before it exists: `{node.id}` in the "
                                f"initial value of `{name}` (initial values use constants, "
                                f"hypers and `w`)", node.span)
                        raise self.unknown_name(node, env)
                init = self.lower_expr(item.init, env, builder)
                if builder.kind(init).mask:
                    raise self.error(f"the initial value of `{name}` is a mask",
                                     item.init.span)
                key, line = item.key or name, item.span.line
            graph = pruned(builder.graph([("init", init)]))  # only what the init reads
            specs[name] = StateSpec(name, key, is_tensor, graph, item is None, line)
        return specs


def _evaluate_constant(builder: Builder, value: int) -> float:
    results: list = []
    for eq in builder.eqs:
        if eq.op == "const":
            results.append(np.float64(eq.attr))
        else:
            results.append(OPS[eq.op].meaning(*[results[a] for a in eq.args]))
    return results[value]


def check(module: ast.Module) -> Checked:
    """Check a parsed program and lower it to its step graph."""
    checker = _Checker(module)
    checker.collect()
    checker.infer_roles()
    graph, tensor_state = checker.lower()
    states = checker.state_specs(tensor_state)
    requirements = tuple(lower_requirement(checker, stmt) for stmt in checker.requires)
    sparse = lower_sparse(checker, checker.sparse, graph)
    header = checker.header
    return Checked(header.name if header else None, header.description if header else None,
                   checker.hypers, states, graph, requirements, sparse)
