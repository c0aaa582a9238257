"""The host step of the C back end, compiled in: the C spelling of scalar ops over float64
and the emitter of ``optdsl_step``, which does what the shared Python host step
(optdsl.codegen.host) does, in the same order and with the same float64 operations, so a
step is one foreign call.

``optdsl_step(a)`` computes group scalars once, each parameter's scalars and its row (into
``a->rows``), runs each sweep, reads the finished reductions (``a->red``, ``a->totals``),
writes the scalar states' new values into ``a->sval`` and commits them after the last
sweep. With ``a->sweep_cb`` set, the runtime runs each sweep and finishes its reductions
(the distributed combiner lives there); else the C code does, combining partials in the
descriptor's fixed order and finishing them as ``Reduction.finished`` does (``FINISH``; a
descriptor whose finish has no C spelling makes the runtime take the callback path).

A library stage (matrix work: optdsl.codegen.library's torch code) runs between sweeps
through ``a->library_cb(k)``, the runtime's: the C code first writes each parameter's row
of the stage's host scalars into ``a->rows``; the scalars the stage hands back to host code
(``handed``) are read from ``a->lib``, one row of them per parameter.
"""

from __future__ import annotations

from optdsl.codegen.buffer import CodeBuffer
from optdsl.codegen.library import handed as handed_by
from optdsl.codegen.unit import Unit, hyper_name, state_name, value_name
from optdsl.errors import located
from optdsl.ir.numbers import format_float
from optdsl.ir.ops import LEAF, OPS, PARAM_FACTS
from optdsl.ir.reductions import GROUP_SCOPE, REDUCTIONS
from optdsl.ir.schedule import Library, param_scalars

# How host code writes each op over float64 scalars ({0}, {1}...); masks are ints. The same
# operations as optdsl.codegen.host's NumPy-scalar spelling: `**` is C's pow there too.
SPELLING: dict[str, str] = {
    "neg": "(-{0})", "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})",
    "div": "({0} / {1})", "pow": "pow({0}, {1})", "square": "({0} * {0})",
    "sqrt": "sqrt({0})", "rsqrt": "(1.0 / sqrt({0}))", "exp": "exp({0})", "log": "log({0})",
    "abs": "fabs({0})", "sign": "optdsl_sign_d({0})", "floor": "floor({0})",
    "ceil": "ceil({0})", "tanh": "tanh({0})", "min": "optdsl_min_d({0}, {1})",
    "max": "optdsl_max_d({0}, {1})", "clamp": "optdsl_min_d(optdsl_max_d({0}, {1}), {2})",
    "atan2": "atan2({0}, {1})", "lt": "({0} < {1})", "le": "({0} <= {1})",
    "gt": "({0} > {1})", "ge": "({0} >= {1})", "eq": "({0} == {1})", "ne": "({0} != {1})",
    "and": "({0} && {1})", "or": "({0} || {1})", "not": "(!{0})",
    "where": "({0} ? {1} : {2})", "precise": "{0}",
}

# How a reduction's combined float64 total x over n elements is finished (the C spelling of
# optdsl.ir.reductions' finishes; n is an int64_t).
FINISH: dict[str, str] = {
    "none": "{x}",
    "sqrt": "sqrt({x})",
    "mean": "({n} ? {x} / (double){n} : NAN)",
    "rms": "({n} ? sqrt({x} / (double){n}) : NAN)",
}


class CCode(CodeBuffer):
    """A CodeBuffer whose comments are C's."""

    def line(self, text: str = "", comment: str | None = None) -> None:
        if comment:
            assert "*/" not in comment
            text = f"{text}  /* {comment} */"
        super().line(text)


def spells(name: str) -> bool:
    return name in SPELLING


def finishes_in_c(unit: Unit) -> bool:
    """Whether every reduction of the step has a C spelling of its finish."""
    eqs = unit.graph.eqs
    return all(REDUCTIONS[eqs[r].attr].finish in FINISH for r in unit.schedule.reductions)


def c_float(value: float) -> str:
    """A C double literal of exactly ``value`` (inf, nan and -0.0 included)."""
    text = format_float(value)
    if text.startswith("float("):
        text = {"float('nan')": "NAN", "float('inf')": "INFINITY",
                "float('-inf')": "(-INFINITY)"}[text]
    return f"({text})" if text.startswith("-") else text


def scalar_ref(unit: Unit, v: int) -> str:
    """How host code refers to scalar value v (a library stage's: what it handed back)."""
    eq = unit.graph.eqs[v]
    if v in unit.schedule.library:  # (read inside the loop over the parameters)
        found = handed(unit)
        return f"a->lib[i * {len(found)} + {found.index(v)}]"
    if eq.op in PARAM_FACTS:  # (read inside the loop over the parameters: i is one)
        return f"a->facts[i * {len(PARAM_FACTS)} + {PARAM_FACTS.index(eq.op)}]"
    if eq.op == "const":
        return c_float(eq.attr)
    if eq.op == "hyper":
        return hyper_name(eq.attr)
    if eq.op == "state":
        return state_name(eq.attr)
    if eq.op in ("t", "inv_grad_scale"):
        return eq.op
    return value_name(v)


def hypers(unit: Unit) -> tuple[str, ...]:
    """The hyper names the step reads, in the order of ``a->hyper``."""
    return tuple(sorted({eq.attr for eq in unit.graph.eqs if eq.op == "hyper"}))


def scalar_states(unit: Unit) -> tuple[str, ...]:
    """The scalar states, in program order (the columns of ``a->sptr`` and ``a->sval``)."""
    return tuple(n for n in unit.state_order if n not in unit.tensor_states)


def row_width(unit: Unit) -> int:
    """The width of ``a->rows``: the longest row of a sweep or a library stage."""
    widths = [len(unit.row(s)) for s in unit.schedule.sweeps]
    widths += [len(unit.library_row(s)) for s in unit.schedule.libraries]
    return max(widths, default=0) or 1


def handed(unit: Unit) -> tuple[int, ...]:
    """The scalars library stages hand to host code, in the order of a row of ``a->lib``."""
    return tuple(v for stage in unit.schedule.libraries for v in handed_by(unit, stage))


def _declare(unit: Unit, v: int) -> str:
    return "const int" if unit.graph.eqs[v].kind.mask else "const double"


def _emit_scalar(out: CodeBuffer, unit: Unit, v: int) -> None:
    eq = unit.graph.eqs[v]
    args = [scalar_ref(unit, a) for a in eq.args]
    with located(eq.span):
        out.line(f"{_declare(unit, v)} {value_name(v)} = {SPELLING[eq.op].format(*args)};",
                 unit.cite(v))


def emit_step(out: CodeBuffer, unit: Unit) -> None:
    """``int optdsl_step(optdsl_args *a)``: the host step (0, or the callback's error)."""
    eqs = unit.graph.eqs
    schedule = unit.schedule
    with out.block("int optdsl_step(optdsl_args *a) {"):
        for j, name in enumerate(hypers(unit)):
            out.line(f"const double {hyper_name(name)} = a->hyper[{j}];")
        if any(eq.op == "inv_grad_scale" for eq in eqs):
            out.line("const double inv_grad_scale = a->inv_grad_scale;")
        out.line("int rc = 0;")
        out.line("if (a->count_steps) optdsl_count_steps(a);", "the steps' counts (t)")
        for stage, group_values in zip(schedule.stages, schedule.group_values):
            for v in group_values:
                if eqs[v].op == "reduce_group":
                    out.line(f"const double {value_name(v)} = a->totals[{unit.slot[v]}];",
                             unit.cite(v))
                else:
                    _emit_scalar(out, unit, v)
            if isinstance(stage, Library):
                _emit_library_loop(out, unit, stage)
                out.line(f"rc = a->library_cb != NULL ? a->library_cb({stage.index}) : -3;",
                         f"library stage {stage.index}: matrix work, by the runtime")
                out.line("if (rc) return rc;")
                continue
            sweep = stage
            _emit_param_loop(out, unit, sweep)
            if unit.runs(sweep):
                out.line(f"rc = optdsl_sweep_done(a, {sweep.index});")
                out.line("if (rc) return rc;")
        out.line(f"optdsl_commit_scalar_states(a, {len(scalar_states(unit))});")
        out.line("return rc;")
    out.line("}")


def _emit_library_loop(out: CodeBuffer, unit: Unit, stage: Library) -> None:
    """Per parameter: the host scalars a library stage reads, as its row in ``a->rows``
    (as optdsl.codegen.host._emit_library_loop)."""
    eqs = unit.graph.eqs
    values = [v for v in param_scalars(unit.schedule, list(stage.scalars_in))
              if OPS[eqs[v].op].category != LEAF]
    row = unit.library_row(stage)
    if not (values or row):
        return
    scalars = scalar_states(unit)
    with out.block("for (int64_t i = 0; i < a->n; i++) {",
                   f"library stage {stage.index}: its scalar row"):
        out.line("const double t = a->t[i];")
        for j, name in enumerate(scalars):
            out.line(f"const double {state_name(name)} = optdsl_scalar_state(a, i, {j}, "
                     f"{len(scalars)});")
        for v in values:
            if eqs[v].op == "reduce":
                out.line(f"const double {value_name(v)} = "
                         f"a->red[i * {len(unit.slot)} + {unit.slot[v]}];", unit.cite(v))
            else:
                _emit_scalar(out, unit, v)
        out.line(f"double *row = a->rows + i * {row_width(unit)};", "the stage's row")
        for j, v in enumerate(row):
            out.line(f"row[{j}] = {scalar_ref(unit, v)};")
    out.line("}")


def _emit_param_loop(out: CodeBuffer, unit: Unit, sweep) -> None:
    """Per parameter: its scalars, its row, and (final sweep) its scalar states' new values
    (as optdsl.codegen.host._emit_param_loop)."""
    eqs = unit.graph.eqs
    schedule = unit.schedule
    roots = list(sweep.scalars_in)
    if sweep.final:
        roots += [v for _, v in schedule.scalar_outputs]
    values = [v for v in param_scalars(schedule, roots) if OPS[eqs[v].op].category != LEAF]
    writes = schedule.scalar_outputs if sweep.final else ()
    if not (values or writes or unit.runs(sweep)):
        return
    label = "final sweep: updates" if sweep.final else f"sweep {sweep.index}: reductions"
    scalars = scalar_states(unit)
    with out.block("for (int64_t i = 0; i < a->n; i++) {", label):
        out.line("const double t = a->t[i];")
        for j, name in enumerate(scalars):
            out.line(f"const double {state_name(name)} = optdsl_scalar_state(a, i, {j}, "
                     f"{len(scalars)});")
        for v in values:
            if eqs[v].op == "reduce":
                out.line(f"const double {value_name(v)} = "
                         f"a->red[i * {len(unit.slot)} + {unit.slot[v]}];", unit.cite(v))
            else:
                _emit_scalar(out, unit, v)
        if unit.runs(sweep):
            out.line(f"double *row = a->rows + i * {row_width(unit)};", "the sweep's row")
            for j, v in enumerate(unit.row(sweep)):
                out.line(f"row[{j}] = {scalar_ref(unit, v)};")
        for name, v in writes:
            out.line(f"a->sval[i * {len(scalars)} + {scalars.index(name)}] = "
                     f"{scalar_ref(unit, v)};", f"{name} =")
    out.line("}")


def emit_finish(out: CodeBuffer, unit: Unit, sweep) -> None:
    """The finishing of one sweep's reductions from the raw partials in ``a->raw``."""
    eqs = unit.graph.eqs
    count = len(sweep.reductions)
    for j, r in enumerate(sweep.reductions):
        desc = REDUCTIONS[eqs[r].attr]
        slot = unit.slot[r]
        combine = "optdsl_max_d(x, {p})" if desc.combine == "max" else "x + {p}"
        raw = f"a->raw[i * {count} + {j}]"
        if desc.scope == GROUP_SCOPE:
            with out.block("{", f"{eqs[r].attr}: over every parameter, in order"):
                out.line(f"double x = {c_float(desc.identity)};")
                out.line("int64_t n = 0;")
                with out.block("for (int64_t i = 0; i < a->n; i++) {"):
                    out.line(f"x = {combine.format(p=raw)};")
                    out.line("n += a->numel[i];")
                out.line("}")
                out.line(f"a->totals[{slot}] = {FINISH[desc.finish].format(x='x', n='n')};")
            out.line("}")
        else:
            with out.block("for (int64_t i = 0; i < a->n; i++) {", eqs[r].attr):
                out.line(f"a->red[i * {len(unit.slot)} + {slot}] = "
                         f"{FINISH[desc.finish].format(x=raw, n='a->numel[i]')};")
            out.line("}")
