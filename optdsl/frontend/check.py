"""AST to IR: resolve names, infer roles and kinds, report every mistake as a DslError.

Roles (LANGUAGE.md, "Names and their kinds"): `w g t` are built in; declared hypers and
states are what they say; an undeclared name that is assigned and read before its first
assignment is a state initialised to 0; an undeclared name that is never assigned is a
required hyper. Every other assigned name is a temporary. A state is kept as one number per
parameter when its initial value and every assignment are scalar; that is found by a small
fixed point (assume scalar, lower, widen the states that received a tensor, repeat).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from optdsl.errors import DslError, Span, source_lines, suggest
from optdsl.frontend import ast
from optdsl.frontend.keys import check_state_keys
from optdsl.frontend.requirements import lower_requirement
from optdsl.frontend.signature import (
    CONSTRUCTOR_KEYWORDS,
    GIVEN,
    HyperSpec,
    Interval,
    Requirement,
    StateSpec,
)
from optdsl.frontend.sparse import SparseRule, lower_sparse
from optdsl.ir.builder import Builder, pruned
from optdsl.ir.nodes import Graph
from optdsl.ir.shapes import ShapeError, show
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
    result_kind,
)

BUILTIN = ("w", "g", "t")
# w.rows and the other facts of the parameter, by the names programs use
_FACTS = {"rows": "rows", "cols": "cols", "ndim": "ndim", "numel": "numel", "eps": "dtype_eps"}
# functions whose op reads facts of the parameter besides their arguments
_IMPLICIT = {"unwide": ("rows", "cols")}


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


MAX_REPEAT = 1000  # repetitions of one `repeat` block (the body is unrolled when compiled)


class _Checker:
    def __init__(self, module: ast.Module, counts: dict[str, int] | None = None) -> None:
        self.module = module
        self.counts = dict(counts or {})  # repetition hypers' values to compile for
        self.header: ast.Header | None = None
        self.hypers: dict[str, HyperSpec] = {}
        self.hyper_scalars: dict[str, Span] = {}  # names usable in arithmetic
        self.tuple_names: dict[str, HyperSpec] = {}
        self.choice_names: dict[str, tuple[str | None, ...]] = {}
        self.optional_names: set[str] = set()
        self.state_items: dict[str, ast.StateItem] = {}
        self.inferred_states: dict[str, Span] = {}
        self.assigns: list[ast.Assign] = []
        self.requires: list[ast.Require] = []
        self._lines: list[str] | None = None  # the source's lines, split once (see text())
        self._probing = False  # lowering to find the tensor states (see tensor_states())
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
            elif isinstance(stmt, ast.Repeat):
                self.assigns.extend(self.unrolled(stmt))
            elif isinstance(stmt, ast.Sparse):
                self.sparse.append(stmt)
            else:
                self.assigns.append(stmt)

    def check_optional_tested(self) -> None:
        """An optional hyper (default None) is NaN where it is not given: a program that
        reads it must say what to use then (`where(eps1 == None, w.eps, eps1)`), so one that
        never compares it with None is refused at its first use."""
        if not self.optional_names:
            return
        tested: set[str] = set()
        first_use: dict[str, Span] = {}
        roots = [a.value for a in self.assigns] + [c for r in self.requires
                                                     for c in r.conditions]
        stack = list(reversed(roots))
        while stack:
            node = stack.pop()
            if isinstance(node, ast.ChoiceCompare):
                if node.value is None and isinstance(node.left, ast.Name):
                    tested.add(node.left.id)
                else:
                    stack.append(node.left)
            elif isinstance(node, ast.Name):
                first_use.setdefault(node.id, node.span)
            else:
                stack.extend(reversed(self.children(node)))
        untested = [n for n in self.optional_names if n in first_use and n not in tested]
        for name in sorted(untested, key=lambda n: (first_use[n].line, first_use[n].column)):
            raise self.error(f"`{name}` is optional (its default is None, and then it is "
                             f"NaN): say what to use when it is not given, e.g. "
                             f"`where({name} == None, 1e-8, {name})`", first_use[name])

    def unrolled(self, stmt: ast.Repeat) -> list[ast.Assign]:
        """A repeat block's assignments, as many times as it runs (nested blocks too)."""
        body: list[ast.Assign] = []
        for inner in stmt.body:
            body.extend(self.unrolled(inner) if isinstance(inner, ast.Repeat) else [inner])
        return body * self.repeat_count(stmt)

    def repeat_count(self, stmt: ast.Repeat) -> int:
        """How many times a repeat block runs: a whole number, or a hyper's value (its
        default, or the value this variant is compiled for)."""
        count = stmt.count
        if isinstance(count, ast.Num):
            value = count.value
            where = "the count of `repeat`"
        elif isinstance(count, ast.Name) and count.id in self.hypers and \
                not self.hypers[count.id].parts and self.hypers[count.id].choices is None:
            spec = self.hypers[count.id]
            if spec.default is None:
                raise self.error(f"`{count.id}` counts repetitions, so it needs a default",
                                 count.span)
            self.hypers[count.id] = dataclasses.replace(spec, repeat=True)
            value = self.counts.get(count.id, spec.default)
            where = f"`{count.id}`, which counts repetitions,"
        else:
            raise self.error("`repeat` takes a whole number or a hyper declared before it (the "
                             "count is known when the step is compiled)", count.span)
        if not float(value).is_integer() or not 0 <= value <= MAX_REPEAT:
            raise self.error(f"{where} must be a whole number from 0 to {MAX_REPEAT}, not "
                             f"{value!r}", count.span)
        return int(value)

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
        parts, optional, choices = None, [], None
        if item.choices is not None:
            choices = self.choices(item)
            default: object = item.default.value if isinstance(item.default, ast.Word) \
                else None if item.default is not None else choices[0]
            self.choice_names[item.name] = choices
            self.hyper_scalars[item.name] = item.span
        elif item.parts is not None:
            names, defaults = [], []
            for part, span, expr in item.parts:
                self._new_name(part, span, "hyper")
                if part == item.name or part in names:
                    raise self.error(f"`{part}` is declared twice", span)
                value = self.hyper_default(part, expr, interval, optional)
                names.append(part)
                defaults.append(value)
                self.hyper_scalars[part] = span
            parts = tuple(names)
            default = tuple(defaults)
        elif item.default is not None:
            default = self.hyper_default(item.name, item.default, interval, optional)
            self.hyper_scalars[item.name] = item.span
        else:
            default = None
            self.hyper_scalars[item.name] = item.span
        self.optional_names.update(optional)
        spec = HyperSpec(item.name, default, interval, parts, line=item.span.line,
                         choices=choices, optional=tuple(optional))
        self.hypers[item.name] = spec
        if parts:
            self.tuple_names[item.name] = spec

    def hyper_default(self, name: str, expr, interval: Interval | None,
                      optional: list[str]) -> object:
        """A hyper's (or part's) default: a number in its interval, or None (optional)."""
        if isinstance(expr, ast.Word):
            raise self.error(f"`{name}` takes a number; a string is a value of a choice "
                             f"(`in {{\"a\", \"b\"}}`)", expr.span)
        if isinstance(expr, ast.Name) and expr.id == "None":
            optional.append(name)
            return None
        value = self.constant(expr, "a hyper's default")
        self.check_default(name, value, interval, expr.span)
        return value

    def choices(self, item: ast.HyperItem) -> tuple[str | None, ...]:
        """The values of a choice hyper; its default must be one of them."""
        values: list[str | None] = []
        for word in item.choices:
            if word.value in values:
                raise self.error(f"{word.value!r} is listed twice", word.span)
            values.append(word.value)
        default = item.default
        if default is None:  # `hyper x in {"a", "b"}`: the first is the default
            return tuple(values)
        if isinstance(default, ast.Name) and default.id == "None" and None in values:
            return tuple(values)
        if not isinstance(default, ast.Word) or default.value not in values:
            span = default.span
            raise self.error(f"the default of `{item.name}` must be one of "
                             f"{', '.join(map(_word, values))}", span)
        return tuple(values)

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
        self.state_items[item.name] = item

    def check_state_keys(self) -> None:
        """One state_dict key per state (optdsl.frontend.keys), once all states are known."""
        check_state_keys(self.state_items, self.inferred_states, self.error)

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
        if self._lines is None:
            self._lines = source_lines(self.module.source)
        lines = self._lines
        line = lines[span.line - 1] if 0 < span.line <= len(lines) else ""
        return line[span.column - 1: span.column - 1 + span.length]

    def function(self, node: ast.Call):
        op = functions().get(node.func)
        if op is None:
            raise self.error(f"unknown function `{node.func}`" + suggest(node.func, functions()),
                             node.func_span)
        arity = op.arity - len(_IMPLICIT.get(op.name, ()))
        if len(node.args) != arity:
            plural = "s" if arity != 1 else ""
            raise self.error(f"`{node.func}` takes {arity} argument{plural}, "
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
        """Lower all assignments, with the states that receive a tensor (or start as one)
        kept as tensors: found in linear time by tensor_states(), checked here (a widening
        left, never expected, lowers again)."""
        names = list(self.state_items) + list(self.inferred_states)
        tensor_state = self.tensor_states(names)
        while True:
            builder, env, assigned = self.lower_assigns(tensor_state)
            widened = [name for name, value in assigned
                       if not tensor_state[name] and builder.kind(value).is_tensor]
            if not widened:
                break
            for name in widened:  # any tensor assignment makes a tensor state
                tensor_state[name] = True
        outputs = [("w", env["w"])] + [(name, env[name]) for name in names]
        return builder.graph(outputs), tensor_state

    def lower_assigns(self, tensor_state: dict[str, bool]
                      ) -> tuple[Builder, dict[str, int], list[tuple[str, int]]]:
        """Lower every assignment once; also return (state, value) for each assignment of a
        state."""
        builder = Builder()
        env = self.initial_env(builder, tensor_state)
        assigned: list[tuple[str, int]] = []
        for stmt in self.assigns:
            value = self.lower_expr(stmt.value, env, builder)
            env[stmt.target] = value
            if stmt.target in tensor_state:
                assigned.append((stmt.target, value))
            if (stmt.target == "w" or stmt.target in tensor_state) and builder.kind(value).mask:
                raise self.error(f"`{stmt.target}` is assigned a mask (a comparison); "
                                 f"use where(mask, a, b) to turn it into numbers",
                                 stmt.value.span)
            if not self._probing:
                self.check_shape_of(stmt, builder.kind(value), tensor_state)
        return builder, env, assigned

    def check_shape_of(self, stmt: ast.Assign, kind: Kind, tensor_state: dict[str, bool]):
        """The parameter and its states keep their shapes."""
        name = stmt.target
        if name != "w" and name not in tensor_state:
            return
        if name != "w" and not tensor_state[name] and not kind.is_tensor:
            return
        want = self.state_shape(name) if name != "w" else None
        if kind.is_tensor and (kind.shape or None) != want:
            declare = {("R", "1"): "per row", ("1", "C"): "per col"}.get(kind.shape)
            hint = (f"; declare `state {name} = 0 {declare}` to keep one"
                    if declare and name != "w" else "")
            raise self.error(f"`{name}` is {show(want)}, but this value is {show(kind.shape)}"
                             + hint, stmt.value.span)

    def tensor_states(self, names: list[str]) -> dict[str, bool]:
        """Which states are tensors: those whose initial value reads `w`, and those that
        receive a value that is a tensor when they are. One lowering with every other state
        scalar gives a graph; a state is a tensor when its leaf is reachable from a tensor
        value along the edges that carry tensor-ness (an argument to a result that would be
        a tensor with that argument a tensor; a value to the state it is assigned to): a
        linear search instead of one lowering per widened state."""
        tensor_state = {name: self.state_init_is_tensor(name) for name in names}
        self._probing = True  # (kinds may be too low here: no kind errors while probing)
        try:
            builder, _, assigned = self.lower_assigns(tensor_state)
        finally:
            self._probing = False
        leaf_of = {name: builder.leaf("state", name, Kind(Level.PARAM))  # (as initial_env)
                   for name, is_tensor in tensor_state.items() if not is_tensor}
        carries: dict[int, list[int]] = {}
        for name, value in assigned:
            if name in leaf_of:
                carries.setdefault(value, []).append(leaf_of[name])
        tensor = Kind(Level.TENSOR)
        for i, eq in enumerate(builder.eqs):
            kinds = [builder.kind(a) for a in eq.args]
            for j, arg in enumerate(eq.args):
                lifted = kinds[:j] + [tensor] + kinds[j + 1:]
                try:
                    carried = result_kind(OPS[eq.op], lifted).is_tensor
                except ShapeError:  # (shapes are checked by the real lowering)
                    carried = True
                if carried:
                    carries.setdefault(arg, []).append(i)
        reached = [i for i, eq in enumerate(builder.eqs) if eq.kind.is_tensor]
        seen = set(reached)
        while reached:
            for nxt in carries.get(reached.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    reached.append(nxt)
        for name, leaf in leaf_of.items():
            tensor_state[name] = leaf in seen
        return tensor_state

    def state_init_is_tensor(self, name: str) -> bool:
        item = self.state_items.get(name)
        if item is None:
            return False
        return item.per is not None or any(isinstance(n, ast.Name) and n.id == "w"
                                           for n in ast.iter_exprs(item.init))

    def state_shape(self, name: str):
        """A `per row` / `per col` state's shape (None: the parameter's, or a scalar)."""
        item = self.state_items.get(name)
        per = item.per if item is not None else None
        return {"row": ("R", "1"), "col": ("1", "C")}.get(per)

    def initial_env(self, builder: Builder, tensor_state: dict[str, bool]) -> dict[str, int]:
        env = {"w": builder.leaf("w"), "g": builder.leaf("g"), "t": builder.leaf("t")}
        for name in self.hyper_scalars:
            env[name] = builder.leaf("hyper", name)
        for name, is_tensor in tensor_state.items():
            kind = Kind(Level.TENSOR, shape=self.state_shape(name)) if is_tensor \
                else Kind(Level.PARAM)
            env[name] = builder.leaf("state", name, kind)
        return env

    def lower_expr(self, root: ast.Expr, env: dict[str, int], builder: Builder) -> int:
        """Lower one expression (post-order, explicit stack), checking kinds on the way."""
        self._env = env
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
                if node.id in self.choice_names:
                    raise self.error(f"`{node.id}` is a choice among "
                                     f"{', '.join(map(_word, self.choice_names[node.id]))}; "
                                     f"compare it, e.g. `{node.id} == "
                                     f"{_word(self.choice_names[node.id][-1])}`", node.span)
                values[id(node)] = env[node.id]
                continue
            if isinstance(node, ast.Attribute):
                values[id(node)] = self.fact(node, builder)
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
        return ()  # (a ChoiceCompare reads its hyper by name: choice_compare)

    def fact(self, node: ast.Attribute, builder: Builder) -> int:
        """``w.rows`` and the parameter's other facts."""
        if node.obj not in ("w", "g"):
            raise self.error(f"only the parameter has facts (`w.rows`, `w.cols`, `w.ndim`, "
                             f"`w.numel`, `w.eps`), not `{node.obj}`", node.span)
        name = _FACTS.get(node.name)
        if name is None:
            raise self.error(f"`{node.obj}.{node.name}`: the parameter's facts are "
                             f"{', '.join(f'`w.{f}`' for f in _FACTS)}"
                             + suggest(node.name, set(_FACTS)), node.span)
        return builder.leaf(name, span=node.span)

    def choice_compare(self, node: ast.ChoiceCompare, builder: Builder) -> int:
        """``mode == "original"`` / ``eps1 == None``: a switch on a choice's value."""
        left = node.left
        name = left.id if isinstance(left, ast.Name) else None
        if name in self.choice_names:
            values = self.choice_names[name]
            if node.value not in values:
                raise self.error(f"`{name}` is one of {', '.join(map(_word, values))}, never "
                                 f"{_word(node.value)}", node.value_span)
            hyper = builder.leaf("hyper", name)
            index = builder.const(float(values.index(node.value)), node.span)
            return builder.op(node.op, (hyper, index), node.span)
        if node.value is None and name in self.optional_names:  # `eps1 == None`: not given?
            given = builder.leaf("hyper", GIVEN + name)
            return builder.op(node.op, (given, builder.const(0.0)), node.span)
        if node.value is None:  # a comparison with a name that happens to be `None`
            other = ast.Binary(node.span, node.op, left, ast.Name(node.value_span, "None"))
            return self.lower_expr(other, self._env, builder)
        raise self.error("only a choice hyper (declared `in {...}`) is compared with a string",
                         left.span)

    def unknown_name(self, node: ast.Name, env: dict[str, int]) -> DslError:
        return self.error(f"unknown name `{node.id}`" + suggest(node.id, set(env)), node.span)

    def lower_op(self, node: ast.Expr, children, args: list[int], builder: Builder) -> int:
        try:
            return self._lower_op(node, children, args, builder)
        except ShapeError as exc:
            raise self.error(str(exc), node.span) from None

    def _lower_op(self, node: ast.Expr, children, args: list[int], builder: Builder) -> int:
        kinds = [builder.kind(a) for a in args]
        span = node.span
        if isinstance(node, ast.ChoiceCompare):
            return self.choice_compare(node, builder)
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
        if (op.category in (REDUCE, GLOBAL) or op.shape_rule is not None) and \
                not self._probing:
            for child, kind in zip(children, kinds):
                if not kind.is_tensor:
                    what = "reduces" if op.is_reduction else "takes"
                    raise self.error(f"`{node.func}()` {what} a tensor, but its argument is a "
                                     f"scalar", child.span)
        if op.category == GLOBAL and not self._probing:
            self.no_matrix_work(node, args, builder)
        if self._probing and op.shape_rule is not None and not any(k.is_tensor for k in kinds):
            return args[0]  # (a scalar's shape cannot be asked while probing)
        extra = [builder.leaf(fact) for fact in _IMPLICIT.get(op.name, ())]
        return builder.op(op.name, list(args) + extra, span)

    def no_matrix_work(self, node: ast.Call, args: list[int], builder: Builder) -> None:
        """A group-wide reduction runs in the element sweeps: not of matrix work's values
        (library stages run one parameter at a time)."""
        stack, seen = list(args), set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            eq = builder.eqs[v]
            if OPS[eq.op].matrix or eq.kind.bf16 or eq.kind.shaped:
                raise self.error(f"`{node.func}()` reduces over every parameter of the group, "
                                 f"so it cannot reduce the result of matrix work "
                                 f"(`{OPS[eq.op].dsl or eq.op}`), which runs one parameter at a "
                                 f"time", node.span)
            stack.extend(eq.args)

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
            specs[name] = StateSpec(name, key, is_tensor, graph, item is None, line,
                                    item.per if item is not None else None)
        return specs


def _word(value: str | None) -> str:
    return "None" if value is None else f'"{value}"'


def _evaluate_constant(builder: Builder, value: int) -> float:
    results: list = []
    for eq in builder.eqs:
        if eq.op == "const":
            results.append(np.float64(eq.attr))
        else:
            results.append(OPS[eq.op].meaning(*[results[a] for a in eq.args]))
    return results[value]


def check(module: ast.Module, counts: dict[str, int] | None = None) -> Checked:
    """Check a parsed program and lower it to its step graph (with ``counts``: for these
    values of the hypers that count repetitions, instead of their defaults)."""
    checker = _Checker(module, counts)
    checker.collect()
    checker.check_optional_tested()
    checker.infer_roles()
    checker.check_state_keys()
    graph, tensor_state = checker.lower()
    states = checker.state_specs(tensor_state)
    requirements = tuple(lower_requirement(checker, stmt) for stmt in checker.requires)
    sparse = lower_sparse(checker, checker.sparse, graph)
    header = checker.header
    return Checked(header.name if header else None, header.description if header else None,
                   checker.hypers, states, graph, requirements, sparse)
