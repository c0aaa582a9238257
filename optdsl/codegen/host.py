"""Host code, shared by every back end whose host step is Python: the spelling of scalar ops
over NumPy float64 scalars, and the one emitter of the host ``step`` (the contract of
optdsl.codegen.contract). Group-level values are computed once per group, param-level values
once per parameter, never per element; the element code of each sweep is the back end's.
Values the schedule places on the device (``Schedule.placement``) are left out: the back
end's kernels compute them, and a step whose scalars are all on the device is only its
sweeps, with no loop over the parameters.
"""

from __future__ import annotations

from optdsl.codegen.buffer import CodeBuffer
from optdsl.codegen.unit import Unit, hyper_name, state_name, value_name
from optdsl.errors import located
from optdsl.ir.nodes import Graph
from optdsl.ir.numbers import format_float
from optdsl.ir.ops import LEAF, OPS, PARAM_FACTS
from optdsl.ir.schedule import Library, Placement, param_scalars

# How host code writes each op over float64 scalars ({0}, {1}...: the arguments). Masks are
# Python bools.
SPELLING: dict[str, str] = {
    "neg": "(-{0})", "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})",
    "div": "({0} / {1})", "pow": "({0} ** {1})", "square": "({0} * {0})",
    "sqrt": "np.sqrt({0})", "rsqrt": "(1.0 / np.sqrt({0}))", "exp": "np.exp({0})",
    "log": "np.log({0})", "abs": "np.abs({0})", "sign": "np.sign({0})",
    "floor": "np.floor({0})", "ceil": "np.ceil({0})", "tanh": "np.tanh({0})",
    "min": "np.minimum({0}, {1})", "max": "np.maximum({0}, {1})",
    "clamp": "np.minimum(np.maximum({0}, {1}), {2})", "atan2": "np.arctan2({0}, {1})",
    "precise": "{0}",
    "lt": "bool({0} < {1})", "le": "bool({0} <= {1})", "gt": "bool({0} > {1})",
    "ge": "bool({0} >= {1})", "eq": "bool({0} == {1})", "ne": "bool({0} != {1})",
    "and": "({0} and {1})", "or": "({0} or {1})", "not": "(not {0})",
    "where": "np.float64({1} if {0} else {2})",
}


def spells(name: str) -> bool:
    return name in SPELLING


def scalar_ref(graph: Graph, v: int, library: frozenset[int] = frozenset()) -> str:
    """How host code refers to scalar value v (a library stage's scalar: what it handed
    back in ``p.lib``; a parameter's fact: ``p.rows`` ...)."""
    eq = graph.eqs[v]
    if v in library:
        return f"p.lib[{v}]"
    if eq.op in PARAM_FACTS:
        return f"p.{eq.op}"
    if eq.op == "const":  # every scalar op has a float64 argument besides, after folding
        text = format_float(eq.attr)
        return f"({text})" if text.startswith("-") else text  # (-1.0) ** t, not -(1.0 ** t)
    if eq.op == "hyper":
        return hyper_name(eq.attr)
    if eq.op == "state":
        return state_name(eq.attr)
    if eq.op in ("t", "inv_grad_scale"):
        return eq.op
    return value_name(v)


def emit_scalar(out: CodeBuffer, unit: Unit, v: int) -> None:
    """One line computing scalar value v from its (already computed) arguments."""
    eq = unit.graph.eqs[v]
    args = [scalar_ref(unit.graph, a, unit.schedule.library) for a in eq.args]
    with located(eq.span):
        out.line(f"{value_name(v)} = {SPELLING[eq.op].format(*args)}", unit.cite(v))


def emit_step(out: CodeBuffer, unit: Unit) -> None:
    """The host step: ``step(ctx, params)``, the same for every back end."""
    eqs = unit.graph.eqs
    schedule = unit.schedule
    with out.block("def step(ctx, params):"):
        out.line(f'"""One optimizer step of {unit.safe_title} for the parameters of one '
                 f'group."""')
        for name in sorted({eq.attr for v, eq in enumerate(eqs)
                            if eq.op == "hyper" and _on_host(unit, v)}):
            out.line(f"{hyper_name(name)} = np.float64(ctx.hyper[{name!r}])")
        if any(eq.op == "inv_grad_scale" and _on_host(unit, v) for v, eq in enumerate(eqs)):
            out.line("inv_grad_scale = np.float64(ctx.inv_grad_scale)")
        for stage, group_values in zip(schedule.stages, schedule.group_values):
            for v in group_values:
                if not _on_host(unit, v):
                    continue
                if eqs[v].op == "reduce_group":
                    out.line(f"{value_name(v)} = ctx.totals[{unit.slot[v]}]", unit.cite(v))
                else:
                    emit_scalar(out, unit, v)
            if isinstance(stage, Library):
                if not schedule.device_scalars:  # (else the stage computes its scalars)
                    _emit_library_loop(out, unit, stage)
                out.line(f"ctx.library({stage.index}, params)")
                continue
            _emit_param_loop(out, unit, stage)
            if unit.runs(stage):
                out.line(f"ctx.sweep({stage.index}, params)")


def _emit_library_loop(out: CodeBuffer, unit: Unit, stage: Library) -> None:
    """Per parameter: the host scalars a library stage reads, as its row."""
    eqs = unit.graph.eqs
    values = [v for v in param_scalars(unit.schedule, list(stage.scalars_in))
              if OPS[eqs[v].op].category != LEAF]
    with out.block("for p in params:", f"library stage {stage.index}: matrix work"):
        out.line("t = np.float64(p.t)")
        for j, name in enumerate(unit.state_order):
            if name not in unit.tensor_states:
                out.line(f"{state_name(name)} = p.states[{j}]")
        for v in values:
            if eqs[v].op == "reduce":
                out.line(f"{value_name(v)} = p.red[{unit.slot[v]}]", unit.cite(v))
            else:
                emit_scalar(out, unit, v)
        row = [scalar_ref(unit.graph, v, unit.schedule.library)
               for v in unit.library_row(stage)]
        out.line(f"p.scalars = ({', '.join(row)}{',' if len(row) == 1 else ''})",
                 "the stage's scalar row")


def _emit_param_loop(out: CodeBuffer, unit: Unit, sweep) -> None:
    """Per parameter: its scalars, the row its sweep reads, and (final sweep) its scalar
    states' new values. Nothing is emitted when there is nothing to do per parameter."""
    graph, eqs = unit.graph, unit.graph.eqs
    schedule = unit.schedule
    roots = list(sweep.scalars_in)
    if sweep.final:
        roots += [v for _, v in schedule.scalar_outputs]
    values = [v for v in param_scalars(schedule, roots)
              if OPS[eqs[v].op].category != LEAF and _on_host(unit, v)]
    # (a schedule with device scalars writes scalar states from its kernels)
    writes = schedule.scalar_outputs if sweep.final and not schedule.device_scalars else ()
    sends_row = unit.runs(sweep) and not schedule.device_scalars  # (else kernels compute it)
    if not (values or writes or sends_row):
        return
    label = "final sweep: updates" if sweep.final else f"sweep {sweep.index}: reductions"
    with out.block("for p in params:", label):
        out.line("t = np.float64(p.t)")
        for j, name in enumerate(unit.state_order):
            if name not in unit.tensor_states:
                out.line(f"{state_name(name)} = p.states[{j}]")
        for v in values:
            if eqs[v].op == "reduce":
                out.line(f"{value_name(v)} = p.red[{unit.slot[v]}]", unit.cite(v))
            else:
                emit_scalar(out, unit, v)
        if sends_row:
            row = [scalar_ref(graph, v, schedule.library) for v in unit.row(sweep)]
            out.line(f"p.scalars = ({', '.join(row)}{',' if len(row) == 1 else ''})",
                     "the sweep's scalar row")
        for name, v in writes:
            out.line(f"p.states[{unit.state_order.index(name)}] = "
                     f"{scalar_ref(graph, v, schedule.library)}")


def _on_host(unit: Unit, v: int) -> bool:
    return unit.schedule.placement(v) == Placement.HOST
