"""The C back end: a compilation unit to the source of one C file (the contract of
optdsl.codegen.contract, as a shared object) holding the whole step: the host step compiled
in (optdsl.codegen.c_host) and, per sweep, a block function in float and one in double.

A block function runs the sweep's element code over ``m`` elements of one parameter from
``lo``: each column it reads or writes is the tensor's own memory when the tensor is stored
in the compute dtype, else a staging buffer on the stack converted on the way in and out
(float16, bfloat16, a float64 state of a float32 parameter...); bfloat16 stores round
stochastically under ``a->sr`` with optdsl.runtime.rounding's bits. The element loop holds
every value in a local, so each element is read once and written once, and the compiler
vectorizes it (no fast-math, no contraction into FMA: the same IEEE operations, in the same
order, as the NumPy step). Reduction maps go to a buffer whose float64 partial is taken in
a fixed order (optdsl_sum_*), and the block map runs in parallel with results that do not
depend on the number of threads.

A program with matrix work ends with an ``optdsl-library`` comment: the Python module of its
library stages (optdsl.codegen.library's torch code, its LIBRARIES table and SHAPED), which
the loader runs between sweeps through ``a->library_cb`` (optdsl.runtime.c_module): BLAS
GEMMs through torch.matmul, the same code as the NumPy back end's, except that a row or
column statistic of a sweep's element value or input (``Sweep.stats``) is accumulated by
that sweep's block functions (the prelude's optdsl_rows_* and optdsl_cols_*, finished in
``optdsl_sweep`` after the blocks, in float64 and a fixed order) into the tensor the runtime
hands it, which the stage reads instead of computing it (optdsl.runtime.c_runner says when
it does not).

The file starts with a ``optdsl-contract`` comment (JSON: TENSORS, the sweeps' widths and
reductions, the hypers' order...), which the loader reads from the verified source. Names
are the unit's (``v<n>``, ``h_<hyper>``, ``s_<state>``, ``f<n>`` for a scalar read from the
row, ``c_<column>`` for a column's block), each element line cites its DSL line.
"""

from __future__ import annotations

import json

from optdsl.codegen import c_host, library
from optdsl.codegen.buffer import CodeBuffer
from optdsl.codegen.c_prelude import ABI_VERSION, BLOCK, prelude
from optdsl.codegen.unit import Unit, column_var, temp_column, value_name
from optdsl.errors import located
from optdsl.ir.ops import LEAF, OPS, Level
from optdsl.ir.reductions import REDUCTIONS
from optdsl.ir.schedule import Sweep
from optdsl.ir.stages import STATS

_FINISH_CODES = {"none": 0, "mean": 1, "sqrt": 2}  # optdsl_put_stat's

# How element code writes each op in the compute type {T} ({S}: libm's suffix, "f" for
# float; {H}: the helpers' suffix, "f" or "d"); masks are ints.
SPELLING: dict[str, str] = {
    "neg": "(-{0})", "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})",
    "div": "({0} / {1})", "pow": "pow{S}({0}, {1})", "square": "({0} * {0})",
    "sqrt": "sqrt{S}({0})", "exp": "exp{S}({0})", "log": "log{S}({0})",
    "abs": "fabs{S}({0})", "sign": "optdsl_sign_{H}({0})", "floor": "floor{S}({0})",
    "ceil": "ceil{S}({0})", "tanh": "tanh{S}({0})", "min": "optdsl_min_{H}({0}, {1})",
    "max": "optdsl_max_{H}({0}, {1})", "atan2": "atan2{S}({0}, {1})",
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})",
    "and": "({0} & {1})", "or": "({0} | {1})", "not": "(!{0})",
    "where": "({0} ? {1} : {2})", "precise": "{0}",
    # NumPy's element code spells these two as the same IEEE operations: spelling them
    # keeps the legalized graph the NumPy back end's, so library stages run the same torch
    # code (torch.rsqrt, not 1 / torch.sqrt) and agree bit for bit
    "rsqrt": "(({T})1 / sqrt{S}({0}))",
    "clamp": "optdsl_min_{H}(optdsl_max_{H}({0}, {1}), {2})",
}
# How far (in ulps of the compute dtype) an element op of libm (exp, log, pow, tanh, atan2),
# which the C step calls, may be from NumPy's SIMD version of it, which the NumPy step calls:
# each is within an ulp or two of the exact value (tests/test_c_backend.py measures it).
TRANSCENDENTAL_ULPS = 4
_TYPES = {"F32": ("float", "f", "f"), "F64": ("double", "", "d")}


def spells(name: str, tensor: bool) -> bool:
    return name in SPELLING if tensor else c_host.spells(name)


def generate(unit: Unit) -> str:
    """The C source of a compilation unit."""
    return _Generator(unit).source()


def contract(unit: Unit) -> dict:
    """What the loader needs to know of the step (the ``optdsl-contract`` line)."""
    return {
        "abi": ABI_VERSION, "block": BLOCK, "tensors": list(unit.columns),
        "state_columns": unit.num_state_columns,
        "num_reductions": len(unit.slot), "row": c_host.row_width(unit),
        "hypers": list(c_host.hypers(unit)), "scalar_states": list(c_host.scalar_states(unit)),
        "sweeps": [[unit.runs(s), len(unit.row(s)), [list(r) for r in unit.reductions_of(s)]]
                   for s in unit.schedule.sweeps],
        "finishes_in_c": c_host.finishes_in_c(unit),
        # per library stage: the scalars it hands to host code (their a->lib columns follow
        # one another, stage after stage)
        "handed": [library.handed(unit, stage) for stage in unit.schedule.libraries],
        # per fused row or column statistic (its slot): the sweep and the axis reduced
        "stats": [[unit.schedule.stat_sweep(v), STATS[unit.graph.eqs[v].op][0]]
                  for v in unit.schedule.fused],
    }


# The first line of the comment that holds the library module (the module follows it, to
# the line "*/"; optdsl.runtime.c_module reads it back).
LIBRARY_HEADER = ("/* optdsl-library: the Python module of the library stages "
                  "(optdsl.codegen.library), to the end of this comment")


def library_module(unit: Unit) -> str:
    """The Python module of a unit's library stages ('' without matrix work): the torch
    code of each stage, ``SHAPED`` and the ``LIBRARIES`` table of the contract."""
    functions, rows = library.emit_libraries(unit)
    if not rows:
        return ""
    out = CodeBuffer()
    out.line("import torch")
    out.line()
    out.line(f"SHAPED = {tuple(sorted(unit.shaped_states))!r}  # states of library stages")
    table = CodeBuffer()
    table.line()
    table.line()
    table.line(library.TABLE_COMMENT)
    with table.block("LIBRARIES = ("):
        for row in rows:
            table.line(row)
    table.line(")")
    return out.text() + functions + table.text()


def _library_comment(unit: Unit) -> str:
    """The library module as the C file's last comment ('' without matrix work)."""
    module = library_module(unit)
    if not module:
        return ""
    if "*/" in module:  # (no spelling or citation writes one)
        raise AssertionError("a library module would end the C comment that holds it")
    return f"\n{LIBRARY_HEADER}\n{module.rstrip()}\n*/\n"


class _Generator:
    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.eqs = unit.graph.eqs
        self.columns = list(unit.columns)

    def source(self) -> str:
        unit = self.unit
        out = c_host.CCode()
        out.line(f"/* C step of {unit.safe_title}, generated by optdsl. Do not edit.")
        out.line(" *")
        out.line(" * Contract: optdsl.codegen.contract; element code and host step:")
        out.line(" * optdsl.codegen.c; the ABI: optdsl.runtime.c_abi. */")
        out.line(f"/* optdsl-contract: {json.dumps(contract(unit), sort_keys=True)} */")
        text = out.text() + prelude()
        body = c_host.CCode()
        for sweep in unit.schedule.sweeps:
            if unit.runs(sweep):
                for kind in _TYPES:
                    self._emit_block(body, sweep, kind)
        self._emit_dispatch(body)
        c_host.emit_step(body, unit)
        return text + body.text() + _library_comment(unit)

    # -- one sweep ------------------------------------------------------------------------
    def _columns_of(self, sweep: Sweep) -> tuple[dict[str, None], set[str], set[str]]:
        """The columns a sweep touches (in table order), those it reads, those it writes."""
        eqs, unit = self.eqs, self.unit
        read: set[str] = set()
        for v in sweep.tensor:
            if v in sweep.loads:
                read.add(temp_column(v))
            elif OPS[eqs[v].op].category == LEAF:
                read.add(eqs[v].attr if eqs[v].op == "state" else eqs[v].op)
        written = {n for n, _ in unit.stores(sweep)} | {n for n, _ in unit.saves(sweep)}
        touched = {c: None for c in self.columns if c in read or c in written}
        return touched, read, written

    def _emit_block(self, out: CodeBuffer, sweep: Sweep, kind: str) -> None:
        unit, eqs = self.unit, self.eqs
        ct, libm, helper = _TYPES[kind]
        touched, read, written = self._columns_of(sweep)
        what = ("updates " + ", ".join(n for n, _ in unit.stores(sweep))) if sweep.final \
            else "reductions"
        out.line()
        out.line(f"/* Sweep {sweep.index} ({what}) on elements [lo, lo + m) of parameter i, "
                 f"in {ct}. */")
        with out.block(f"static void sweep{sweep.index}_{kind}(const optdsl_args *a, "
                       f"int64_t i, int64_t lo, int64_t m, const double *row, double *acc) {{"):
            for column in touched:
                c = self.columns.index(column)
                name = f"c_{column_var(column)}"
                out.line(f"{ct} b_{column_var(column)}[OPTDSL_BLOCK];")
                how = (f"optdsl_read_{kind}(a, i, {c}, lo, m, b_{column_var(column)})"
                       if column in read else
                       f"optdsl_dest_{kind}(a, i, {c}, lo, b_{column_var(column)})")
                out.line(f"{ct} *restrict {name} = {how};", column)
            for r in sweep.reductions:
                out.line(f"{ct} r{r}[OPTDSL_BLOCK];", f"mapped values of {eqs[r].attr}")
            for v, share in self._stat_buffers(sweep).items():
                if share == v:
                    out.line(f"{ct} q{v}[OPTDSL_BLOCK];",
                             f"mapped values of {eqs[v].op} ({unit.cite(v)})")
            for j, v in enumerate(unit.row(sweep)):
                decl = "const int" if eqs[v].kind.mask else f"const {ct}"
                value = f"row[{j}] != 0.0" if eqs[v].kind.mask else f"({ct})row[{j}]"
                out.line(f"{decl} f{v} = {value};", self._comment(v))
            with out.block("for (int64_t j = 0; j < m; j++) {"):
                self._emit_elements(out, sweep, ct, libm, helper)
            out.line("}")
            for column in touched:
                if column in written:
                    c = self.columns.index(column)
                    out.line(f"optdsl_write_{kind}(a, i, {c}, {c}, lo, m, "
                             f"c_{column_var(column)});", f"{column} =")
            if sweep.final and "w" in written:
                copy = len(self.columns)
                with out.block(f"if (a->ptr[i * a->ncol + {copy}] != NULL) {{",
                               "the low-precision parameter of a master weight"):
                    out.line(f"optdsl_write_{kind}(a, i, {copy}, {unit.num_state_columns}, "
                             f"lo, m, c_w);")
                out.line("}")
            self._emit_stat_partials(out, sweep, kind)
            for j, r in enumerate(sweep.reductions):
                if REDUCTIONS[eqs[r].attr].combine == "max":
                    out.line(f"acc[{j}] = optdsl_max_{kind}(r{r}, m, acc[{j}]);",
                             eqs[r].attr)
                else:
                    out.line(f"acc[{j}] += optdsl_sum_{kind}(r{r}, m);", eqs[r].attr)
        out.line("}")

    def _stat_buffers(self, sweep: Sweep) -> dict[int, int]:
        """Each statistic of a sweep -> the one whose buffer of mapped values it reads (the
        first with the same argument and map: rownorm(g) and colnorm(g) share one)."""
        first: dict[tuple, int] = {}
        out = {}
        for v in sweep.stats:
            key = (self.eqs[v].args[0], STATS[self.eqs[v].op][1])
            out[v] = first.setdefault(key, v)
        return out

    def _emit_stat_partials(self, out: CodeBuffer, sweep: Sweep, kind: str) -> None:
        """A block's partials of the row and column statistics the sweep accumulates, for
        each parameter the runtime handed a statistic's tensor (else the stage computes
        it)."""
        nstats = len(self.unit.schedule.fused)
        for v, q in self._stat_buffers(sweep).items():
            slot = self.unit.schedule.fused.index(v)
            axis = STATS[self.eqs[v].op][0]
            with out.block(f"if (optdsl_stat(a, i, {slot}, {nstats}) != NULL) {{",
                           f"{self.eqs[v].op}, {self.unit.cite(v)}"):
                if axis == "row":
                    out.line(f"optdsl_rows_{kind}(q{q}, lo, m, optdsl_cols_of(a, i), "
                             f"a->statpart[i * {nstats} + {slot}]);")
                else:
                    out.line(f"optdsl_cols_{kind}(q{q}, lo, m, optdsl_rows_of(a, i), "
                             f"optdsl_cols_of(a, i), optdsl_col_part(a, i, {slot}, {nstats}, "
                             f"lo));")
            out.line("}")

    def _comment(self, v: int) -> str | None:
        ref = c_host.scalar_ref(self.unit, v)
        return ref if ref != value_name(v) else self.unit.cite(v)

    def _arg(self, a: int, ct: str) -> str:
        eq = self.eqs[a]
        if eq.kind.level == Level.TENSOR:
            return value_name(a)
        if eq.op == "const":
            return f"({ct}){c_host.c_float(eq.attr)}"
        return f"f{a}"

    def _emit_elements(self, out: CodeBuffer, sweep: Sweep, ct: str, libm: str,
                       helper: str) -> None:
        unit, eqs = self.unit, self.eqs
        for v in sweep.tensor:
            eq = eqs[v]
            decl = "const int" if eq.kind.mask else f"const {ct}"
            if v in sweep.loads:
                out.line(f"{decl} {value_name(v)} = c_{column_var(temp_column(v))}[j];",
                         "stored by an earlier sweep")
                continue
            if OPS[eq.op].category == LEAF:
                column = eq.attr if eq.op == "state" else eq.op
                out.line(f"{decl} {value_name(v)} = c_{column_var(column)}[j];", column)
                continue
            args = [self._arg(a, ct) for a in eq.args]
            with located(eq.span):
                text = SPELLING[eq.op].format(*args, T=ct, S=libm, H=helper)
            out.line(f"{decl} {value_name(v)} = {text};", unit.cite(v))
        for r in sweep.reductions:
            out.line(f"r{r}[j] = {self._arg(eqs[r].args[0], ct)};", f"reduce: {eqs[r].attr}")
        for v, share in self._stat_buffers(sweep).items():
            if share != v:
                continue
            x = self._arg(eqs[v].args[0], ct)
            mapped = f"({x} * {x})" if STATS[eqs[v].op][1] == "square" else x
            out.line(f"q{v}[j] = {mapped};", f"{eqs[v].op}: {unit.cite(v)}")
        for column, v in list(unit.stores(sweep)) + list(unit.saves(sweep)):
            out.line(f"c_{column_var(column)}[j] = {self._arg(v, ct)};", f"{column} =")

    # -- the table of sweeps ----------------------------------------------------------------
    def _emit_dispatch(self, out: CodeBuffer) -> None:
        """``optdsl_sweep(a, k)`` (the element work of sweep k, raw partials into a->raw)
        and ``optdsl_sweep_done`` (a sweep and its reductions finished, or the callback)."""
        unit, eqs = self.unit, self.eqs
        out.line()
        out.line("/* Runs sweep k's element code over every block; raw partials into a->raw. */")
        with out.block("int optdsl_sweep(const optdsl_args *a, int64_t k) {"):
            for sweep in unit.schedule.sweeps:
                if not unit.runs(sweep):
                    continue
                reds = sweep.reductions
                with out.block(f"if (k == {sweep.index}) {{"):
                    if reds:
                        maxes = ", ".join("1" if REDUCTIONS[eqs[r].attr].combine == "max"
                                          else "0" for r in reds)
                        ids = ", ".join(c_host.c_float(REDUCTIONS[eqs[r].attr].identity)
                                        for r in reds)
                        out.line(f"static const int max_combine[] = {{{maxes}}};")
                        out.line(f"static const double identity[] = {{{ids}}};")
                    nstats = len(unit.schedule.fused)
                    stats = [(unit.schedule.fused.index(v), v) for v in sweep.stats]
                    cols = [(slot, v) for slot, v in stats if STATS[eqs[v].op][0] == "col"]
                    for slot, v in cols:
                        out.line(f"optdsl_start_cols(a, {slot}, {nstats});",
                                 f"{eqs[v].op}, {unit.cite(v)}")
                    out.line(f"optdsl_run_blocks(a, sweep{sweep.index}_F32, "
                             f"sweep{sweep.index}_F64, {c_host.row_width(unit)}, {len(reds)}, "
                             f"{'max_combine' if reds else 'NULL'}, "
                             f"{'identity' if reds else 'NULL'}, {1 if cols else 0});")
                    for slot, v in stats:
                        axis, _, finish = STATS[eqs[v].op]
                        out.line(f"optdsl_finish_{axis}s(a, {slot}, {nstats}, "
                                 f"{_FINISH_CODES[finish]});",
                                 f"{eqs[v].op}, {unit.cite(v)}: finish {finish}")
                    out.line("return 0;")
                out.line("}")
            out.line("return -1;")
        out.line("}")
        out.line()
        out.line("/* Sweep k, then its reductions finished (or the runtime's callback). */")
        with out.block("static int optdsl_sweep_done(optdsl_args *a, int64_t k) {"):
            out.line("if (a->sweep_cb != NULL) return a->sweep_cb(k);")
            out.line("optdsl_sweep(a, k);")
            for sweep in unit.schedule.sweeps:
                if sweep.reductions:
                    with out.block(f"if (k == {sweep.index}) {{"):
                        if c_host.finishes_in_c(unit):
                            c_host.emit_finish(out, unit, sweep)
                        else:
                            out.line("return -2;", "finished by the runtime only")
                    out.line("}")
            out.line("return 0;")
        out.line("}")
        out.line()
