"""Phases and host expressions of a closure-driven program, lowered to graphs; and the
dataflow that decides what a phase hands back.

A pending phase (optdsl.frontend.proc_translate) becomes a PhaseSpec: an ordinary step graph
whose ``hyper`` leaves are the host values it reads, whose tensor ``state`` leaves are the
vectors it reads (its columns, named by their Refs' keys), whose tensor outputs are the
vectors it writes and whose scalar states are the numbers it hands back. Only what is read
afterwards leaves a phase: a local's value is an output when the local is *live* after the
phase (liveness, below); states, entries of histories and arrays, and `w` always are. A mask
handed back is encoded as 1.0 / 0.0. Host expressions are graphs of the same ops whose
``hyper`` leaves are Refs' keys.

``check_assigned`` refuses a local read where it may not have been assigned (Python's rule),
and ``liveness`` runs backwards over the structured statements (loops to a fixed point).
"""

from __future__ import annotations

from optdsl.frontend import ast
from optdsl.frontend.proc_kinds import VMASK
from optdsl.frontend.proc_translate import PendingPhase, PendingRun
from optdsl.ir import procedure as ir
from optdsl.ir.builder import Builder
from optdsl.ir.ops import Kind, Level
from optdsl.ir.procedure import MASK, SCALAR, VECTOR, Ref

_TENSOR = Kind(Level.TENSOR)


# -- host expressions --------------------------------------------------------------------------

def lower_host(translator, node: ast.Expr) -> ir.HostExpr:
    """A scalar expression over host values (hypers, locals, states, entries)."""
    lowering = _Lowering(translator, Builder(), host=True)
    value = lowering.expr(node)
    mask = translator.kinds.of(node) == MASK
    graph = lowering.builder.graph([("value", value)])
    return ir.HostExpr(graph, tuple(lowering.inputs.values()), mask)


class _Lowering:
    """Lowers expressions into a Builder; names outside ``env`` become leaves."""

    def __init__(self, translator, builder: Builder, host: bool) -> None:
        self.t = translator
        self.builder = builder
        self.host = host
        self.env: dict[str, int] = {}  # names assigned earlier in this phase
        self.inputs: dict[str, Ref] = {}  # hyper leaf name -> Ref
        self.columns: dict[str, Ref] = {}  # tensor state -> Ref
        self.read_columns: set[str] = set()

    def leaf(self, ref: Ref, kind: str) -> int:
        if kind == VECTOR:
            if self.host:
                raise AssertionError("vector work left in a host expression")
            if ref.kind == "w":
                return self.builder.leaf("w")
            self.columns[ref.key] = ref
            self.read_columns.add(ref.key)
            return self.builder.leaf("state", ref.key, _TENSOR)
        self.inputs[ref.key] = ref
        value = self.builder.leaf("hyper", ref.key)
        if kind == MASK:  # a host mask arrives as 1.0 / 0.0
            return self.builder.op("ne", (value, self.builder.const(0.0)))
        return value

    def name(self, node: ast.Name) -> int:
        ref = self.t.ref(node.id)
        if ref.key in self.env:
            return self.env[ref.key]
        return self.leaf(ref, self.t.kinds.of(node))

    def expr(self, root: ast.Expr) -> int:
        checker = self.t.kinds.checker
        values: dict[int, int] = {}
        stack: list[tuple[ast.Expr, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if isinstance(node, ast.Num):
                values[id(node)] = self.builder.const(node.value, node.span)
            elif isinstance(node, ast.Name):
                values[id(node)] = self.name(node)
            elif isinstance(node, ast.Index):
                values[id(node)] = self.index(node)
            elif isinstance(node, ast.ChoiceCompare):
                values[id(node)] = self.choice(node)
            elif not expanded:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(checker.children(node)))
            else:
                children = checker.children(node)
                args = [values[id(c)] for c in children]
                values[id(node)] = checker.lower_op(node, children, args, self.builder)
        return values[id(root)]

    def index(self, node: ast.Index) -> int:
        ref = Ref("item", node.name, node.index.id)
        if ref.key in self.env:
            return self.env[ref.key]
        return self.leaf(ref, self.t.kinds.entries.get(node.name) or SCALAR)

    def choice(self, node: ast.ChoiceCompare) -> int:
        name = node.left.id
        spec = self.t.choice_specs[name]
        if node.value not in spec:
            shown = ", ".join("None" if c is None else repr(c) for c in spec)
            raise self.t.error(f"{node.value!r} is not a choice of `{name}` ({shown})",
                               node.value_span)
        value = self.leaf(self.t.ref(name), SCALAR)
        op = node.op
        return self.builder.op(op, (value, self.builder.const(float(spec.index(node.value)))),
                               node.span)


# -- phases --------------------------------------------------------------------------------------

def lower_phase(translator, pending: PendingPhase, index: int) -> ir.PhaseSpec:
    """A pending phase as a PhaseSpec, handing back what is live after it."""
    lowering = _Lowering(translator, Builder(), host=False)
    builder = lowering.builder
    final: dict[str, tuple[Ref, int]] = {}  # target key -> (Ref, value)
    for target, value, span in pending.statements:
        result = lowering.expr(value)
        _check_assignment(translator, target, builder.kind(result), value, span)
        lowering.env[target.key] = result
        final[target.key] = (target, result)
    outputs, writes, results = [], [], []
    w_value = final.pop(Ref("w", "w").key, None)
    for key, (target, value) in final.items():
        if target.kind == "local" and target.name not in pending.live_out:
            continue
        if translator.kind_of_ref(target) == VMASK:
            raise translator.error(f"`{target.name}` is a mask of the vector's elements, which "
                                   f"is not kept beyond the statements around it; use it "
                                   f"where it is computed", pending_span(pending, target))
        if translator.kind_of_ref(target) == VECTOR:
            lowering.columns[key] = target
            writes.append((key, target))
            outputs.append((key, value))
        else:
            is_mask = builder.kind(value).mask
            if is_mask:
                value = builder.op("where", (value, builder.const(1.0), builder.const(0.0)))
            results.append(("r_" + key, target, is_mask))
            outputs.append(("r_" + key, value))
    written = {k for k, _ in writes}
    for key in lowering.columns:
        if key not in written:
            outputs.append((key, builder.leaf("state", key, _TENSOR)))
    order = list(lowering.columns) + [r[0] for r in results]
    by_name = dict(outputs)
    graph_outputs = [("w", w_value[1] if w_value else builder.leaf("w"))]
    graph_outputs += [(name, by_name[name]) for name in order]
    graph = builder.graph(graph_outputs)
    return ir.PhaseSpec(index, graph, tuple(lowering.inputs.items()),
                        tuple(lowering.columns.items()), frozenset(lowering.read_columns),
                        tuple(writes), tuple(results), w_value is not None, pending.line)


def _check_assignment(translator, target: Ref, kind: Kind, value: ast.Expr, span) -> None:
    have = translator.kind_of_ref(target)
    if kind.mask and have == VECTOR:
        raise translator.error("a vector is assigned a mask; use where(mask, a, b)", value.span)
    if kind.is_tensor and have not in (VECTOR, VMASK):
        raise translator.error(f"`{target.name}` is a number but is assigned a vector", span)


def pending_span(pending: PendingPhase, target: Ref):
    for stmt_target, _, span in pending.statements:
        if stmt_target == target:
            return span
    return None


# -- dataflow ------------------------------------------------------------------------------------

def uses_and_defs(translator, pending: PendingPhase) -> tuple[set[str], set[str]]:
    """The locals a pending phase reads before it assigns them, and those it assigns."""
    uses, defs = set(), set()
    for target, value, _ in pending.statements:
        for node in ast.iter_exprs(value):
            for name in _names_read(node):
                if name not in defs and translator.refs.get(name, Ref("x", name)).kind == "local":
                    uses.add(name)
        if target.kind == "local":
            defs.add(target.name)
        elif target.kind == "item" and target.index not in defs:
            uses.add(target.index)
    return uses, defs


def _names_read(node) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Index) and isinstance(node.index, ast.Name):
        return [node.index.id]
    return []


def _expr_uses(expr) -> set[str]:
    """The locals a HostExpr, a Ref or a dense tree reads."""
    if isinstance(expr, ir.HostExpr):
        return {n for r in expr.refs for n in _ref_uses(r)}
    if isinstance(expr, Ref):
        return _ref_uses(expr)
    if isinstance(expr, tuple):
        return {n for part in expr[1:] for n in _expr_uses(part)}
    return set()


def _ref_uses(ref: Ref) -> set[str]:
    if ref.kind == "local":
        return {ref.name}
    if ref.kind == "item":
        return {ref.index}
    return set()


def _target_defs(ref: Ref) -> set[str]:
    return {ref.name} if ref.kind == "local" else set()


def _target_uses(ref: Ref) -> set[str]:
    return {ref.index} if ref.kind == "item" else set()


class Liveness:
    """Backward liveness of locals over the statements; sets each pending phase's
    ``live_out`` and each closure call's ``snapshot``."""

    def __init__(self, translator) -> None:
        self.t = translator
        self.snapshots: dict[int, frozenset[str]] = {}  # id(Call) -> vectors live after it

    def block(self, body, live: set[str], exits: set[str]) -> set[str]:
        for stmt in reversed(body):
            live = self.statement(stmt, live, exits)
        return live

    def statement(self, stmt, live: set[str], exits: set[str]) -> set[str]:
        if isinstance(stmt, PendingRun):
            phase = stmt.phase
            phase.live_out = frozenset(live | phase.live_out)
            uses, defs = uses_and_defs(self.t, phase)
            return (live - defs) | uses
        if isinstance(stmt, ir.SetScalar):
            return (live - _target_defs(stmt.target)) | _expr_uses(stmt.value) \
                | _target_uses(stmt.target)
        if isinstance(stmt, ir.Call):
            defs = set().union(*(_target_defs(r) for r in stmt.targets))
            after = frozenset(n for n in live - defs if self.t.kinds.locals.get(n) == VECTOR)
            self.snapshots[id(stmt)] = self.snapshots.get(id(stmt), frozenset()) | after
            uses = set().union(*(_expr_uses(a) for a in stmt.args if not isinstance(a, str)))
            return (live - defs) | uses | set().union(*(_target_uses(r) for r in stmt.targets))
        if isinstance(stmt, ir.Dense):
            return (live - _target_defs(stmt.target)) | _expr_uses(stmt.expr) \
                | _target_uses(stmt.target)
        if isinstance(stmt, ir.HistoryOp):
            return live | _expr_uses(stmt.value)
        if isinstance(stmt, ir.If):
            (test, then), = stmt.branches
            return (self.block(then, set(live), exits) | self.block(stmt.orelse, set(live), exits)
                    | _expr_uses(test))
        if isinstance(stmt, (ir.While, ir.Loop)):
            return self.loop(stmt, live)
        if isinstance(stmt, ir.Break):
            return set(exits)
        if isinstance(stmt, ir.Return):
            return set()
        raise AssertionError(stmt)

    def loop(self, stmt, live: set[str]) -> set[str]:
        head: set[str] = set()
        while True:
            if isinstance(stmt, ir.While):
                body_in = self.block(stmt.body, set(head), live)
                new = self.block(stmt.prelude, live | body_in | _expr_uses(stmt.condition),
                                 live)
            else:
                body_in = self.block(stmt.body, head | live, live)
                if stmt.var is not None:
                    body_in = body_in - {stmt.var}
                new = body_in | live | (_expr_uses(stmt.count) if stmt.count else set())
            if new <= head:
                return head
            head |= new


class Assigned:
    """Forward check that every local is assigned before it is read, on every path."""

    def __init__(self, translator) -> None:
        self.t = translator

    def block(self, body, have: set[str]) -> set[str] | None:
        """The locals assigned after ``body`` (None: it never falls through)."""
        for stmt in body:
            have = self.statement(stmt, have)
            if have is None:
                return None
        return have

    def need(self, names: set[str], have: set[str], line: int) -> None:
        missing = sorted(n for n in names if n not in have and not n.startswith("__"))
        if missing:
            name = missing[0]
            raise self.t.error(f"`{name}` may be read before it is assigned (locals start "
                               f"afresh at every step; keep a value between steps in a "
                               f"state: `state {name} = 0`)", self.t.first_read(name, line))

    def statement(self, stmt, have: set[str]) -> set[str] | None:
        if isinstance(stmt, PendingRun):
            uses, defs = uses_and_defs(self.t, stmt.phase)
            self.need(uses, have, stmt.line)
            return have | defs
        if isinstance(stmt, (ir.SetScalar, ir.Dense)):
            expr = stmt.value if isinstance(stmt, ir.SetScalar) else stmt.expr
            self.need(_expr_uses(expr) | _target_uses(stmt.target), have, stmt.line)
            return have | _target_defs(stmt.target)
        if isinstance(stmt, ir.Call):
            uses = set().union(*(_expr_uses(a) for a in stmt.args if not isinstance(a, str)))
            self.need(uses, have, stmt.line)
            return have | set().union(*(_target_defs(r) for r in stmt.targets))
        if isinstance(stmt, ir.HistoryOp):
            self.need(_expr_uses(stmt.value), have, stmt.line)
            return have
        if isinstance(stmt, ir.If):
            (test, then), = stmt.branches
            self.need(_expr_uses(test), have, stmt.line)
            outs = [self.block(then, set(have)), self.block(stmt.orelse, set(have))]
            outs = [o for o in outs if o is not None]
            return set.intersection(*outs) if outs else None
        if isinstance(stmt, ir.While):
            have = self.block(stmt.prelude, set(have)) or have
            self.need(_expr_uses(stmt.condition), have, stmt.line)
            self.block(stmt.body, set(have))
            return have
        if isinstance(stmt, ir.Loop):
            if stmt.count is not None:
                self.need(_expr_uses(stmt.count), have, stmt.line)
            inner = have | ({stmt.var} if stmt.var else set())
            self.block(stmt.body, inner)
            return have
        return None  # break, return
