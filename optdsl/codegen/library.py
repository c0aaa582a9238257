"""Library stages: a compilation unit's matrix work as torch code, shared by every back end.

A library stage (optdsl.ir.schedule.Library) runs between two sweeps, one parameter at a
time, on torch tensors of the parameter's shape: its matrix products (torch.matmul, which is
BLAS on the CPU and cuBLAS on the GPU; ``s1 * C + s2 * (A @ B)`` becomes one ``addmm``, as
Inductor fuses a GEMM's epilogue), transposes, row and column statistics, bfloat16
arithmetic (torch's own: every result rounded), reductions of those, and the element-wise
values in between (computed into an argument's memory where nothing else reads it:
optdsl.codegen.library_in_place). It reads the parameter's tensors and the scratch tensors earlier sweeps
wrote (``p.tensors``, in the order of TENSORS), the values earlier library stages kept
(``p.kept``), and its row of host scalars (``p.scalars``); it writes the scratch tensors
later sweeps read, keeps what later library stages read, hands back scalars host code reads
(``p.lib``, one transfer each) and computes shaped states into new tensors that the runtime
commits at the end of the step (``p.commits``: state index -> tensor; ``'w'``: the
parameter, for a back end whose library stages compute everything, optdsl.codegen.torch_step).
A lowered reduction (``reduce(m)``, what other back ends' element sweeps compute) is reduced
here in float64 and finished as the runtime finishes it (optdsl.runtime.reduce).

With a schedule whose scalars are on the device (``Schedule.device_scalars``: the Triton
back end's) no host code computes a row: each stage computes the scalars it reads itself,
with this module's spelling, from what the kernels read (``p.hyper``: the group's hypers,
a number as given or a tensor hyper's 0-dim view of the device hyper table; ``p.step``,
the step count, so ``t`` is ``p.step + 1``; ``p.states``: the scalar states' tensors;
``p.fin`` and ``p.tot``: the tensor's row of finished reductions and the group's;
``p.grad_scale``: torch.amp's scale), all 0-dim device tensors, while the parameter's facts
(``p.rows`` ...) are Python numbers; nothing is read back to the host. The scalars it hands
to later kernels go into the finished table too, in the slots after the reductions
(``fin_slots``). torch functions take tensors, so a number-valued argument of one (a fact
or a hyper given as a number) is made a tensor first (``_tensor``); ``addmm``'s beta and
alpha must be numbers, so with tensor scalars ``_addmm`` computes the same sum in float32
(see its docstring).

A row or column statistic that the sweep before the stage accumulates
(``Schedule.fused``: the C and Triton back ends' sweeps, optdsl.ir.stages.fused_stats) is read from
``p.stats[slot]``, the finished statistic the sweep wrote in the compute dtype; where that is
None (the runtime did not have the sweep compute it for this parameter: a shard, a
zero-size or 0-dim parameter, a column statistic of a vector) the stage computes it as the
other back ends do.

The spelling here is torch's; every op the element code can spell has one.
"""

from __future__ import annotations

from optdsl.codegen.buffer import CodeBuffer
from optdsl.codegen.library_in_place import in_place
from optdsl.codegen.unit import Unit, hyper_name, state_name, temp_column, value_name
from optdsl.errors import located
from optdsl.ir.numbers import format_float
from optdsl.ir.ops import LEAF, OPS, PARAM_FACTS, Level
from optdsl.ir.reductions import REDUCTIONS
from optdsl.ir.schedule import Library

# How a library stage writes each op as torch ({0}, {1}...: tensors, or Python numbers for
# host scalars; the helpers _max etc. accept either). The helpers' names are not those of
# the Triton back end's kernel helpers (optdsl.codegen.triton_helpers): a Triton module
# holds both.
SPELLING: dict[str, str] = {
    "neg": "(-{0})", "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})",
    "div": "({0} / {1})", "pow": "_power({0}, {1})", "square": "({0} * {0})",
    "sqrt": "torch.sqrt({0})", "rsqrt": "torch.rsqrt({0})", "exp": "torch.exp({0})",
    "log": "torch.log({0})", "abs": "torch.abs({0})", "sign": "torch.sign({0})",
    "floor": "torch.floor({0})", "ceil": "torch.ceil({0})", "tanh": "torch.tanh({0})",
    "min": "_min({0}, {1})", "max": "_max({0}, {1})", "clamp": "_min(_max({0}, {1}), {2})",
    "atan2": "_arctan2({0}, {1})",
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})",
    "and": "torch.logical_and({0}, {1})", "or": "torch.logical_or({0}, {1})",
    "not": "torch.logical_not({0})", "where": "_where({0}, {1}, {2}, T[0])",
    "matmul": "torch.matmul({0}, {1})", "transpose": "{0}.transpose(-1, -2)",
    "wide": "_wide({0})", "unwide": "_unwide({0}, {1}, {2})",
    "bf16": "{0}.to(torch.bfloat16)", "precise": "{0}.to(T[0].dtype)",
    "rowsum": "torch.sum({0}, dim=-1, keepdim=True)",
    "rowmean": "torch.mean({0}, dim=-1, keepdim=True)",
    "rownorm": "torch.linalg.vector_norm({0}, dim=-1, keepdim=True)",
    "colsum": "torch.sum({0}, dim=-2, keepdim=True)",
    "colmean": "torch.mean({0}, dim=-2, keepdim=True)",
    "colnorm": "_colnorm({0})",
    # reductions of matrix values, as torch computes them
    "sum": "torch.sum({0})", "mean": "torch.mean({0})",
    "norm": "torch.linalg.vector_norm({0})", "rms": "torch.sqrt(torch.mean({0} * {0}))",
    "maxabs": "torch.amax(torch.abs({0}))", "dot": "torch.sum({0} * {1})",
}

HELPERS = '''

def _tensor(x, like):
    """x as a tensor (a host scalar becomes one of the other operand's dtype, filled on its
    device: no copy from host memory, which would wait for a GPU)."""
    if torch.is_tensor(x):
        return x
    ref = like if torch.is_tensor(like) else None
    return torch.full((), x, dtype=ref.dtype if ref is not None else torch.float64,
                      device=ref.device if ref is not None else None)


def _max(a, b):
    return torch.maximum(_tensor(a, b), _tensor(b, a))


def _min(a, b):
    return torch.minimum(_tensor(a, b), _tensor(b, a))


def _power(a, b):
    return torch.pow(a, b) if torch.is_tensor(a) or torch.is_tensor(b) else a ** b


def _arctan2(a, b):
    return torch.atan2(_tensor(a, b), _tensor(b, a))


def _where(mask, a, b, w):
    """where() with a tensor mask, or a host one (a switch: one branch for the tensor);
    host scalars on both sides become tensors of w's dtype (the compute dtype)."""
    if torch.is_tensor(mask):
        like = a if torch.is_tensor(a) else b if torch.is_tensor(b) else w
        return torch.where(mask, _tensor(a, like), _tensor(b, like))
    return a if mask else b


def _wide(x):
    """x transposed when it has more rows than columns."""
    return x.transpose(-1, -2) if x.shape[-2] > x.shape[-1] else x


def _unwide(x, rows, cols):
    """What _wide gave back in the parameter's orientation (rows x cols)."""
    return x.transpose(-1, -2) if rows > cols else x


def _colnorm(x):
    """The 2-norm of each column: summed squares (torch's vector_norm over dim -2 is a
    strided reduction, several times slower and less accurate in float32); a bfloat16 x
    through vector_norm (its squares are not rounded to bfloat16)."""
    if x.dtype in (torch.float32, torch.float64):
        return torch.sqrt(torch.sum(x * x, dim=-2, keepdim=True))
    return torch.linalg.vector_norm(x, dim=-2, keepdim=True)


def _reduce(x, combine, identity, finish):
    """A lowered reduction: the combine ("add" or "max") of the mapped values x in float64,
    from identity, finished ("none", "sqrt", "mean", "rms") over their count."""
    x = _tensor(x, None).to(torch.float64)
    n = x.numel()
    if combine == "add":
        total = torch.sum(x)
    else:
        start = torch.full((), identity, dtype=torch.float64, device=x.device)
        total = torch.maximum(torch.amax(x), start) if n else start
    if finish == "sqrt":
        return torch.sqrt(total)
    if finish == "mean":
        return total / n if n else total * float("nan")
    if finish == "rms":
        return torch.sqrt(total / n) if n else total * float("nan")
    return total


def _addmm(c, a, b, beta, alpha):
    """beta * c + alpha * (a @ b) in one GEMM, as torch.addmm (batched: baddbmm). addmm
    takes numbers only: with a scalar that is a tensor (on the device), the same sum from a
    float32 product of the operands (exact products of bfloat16 or float16 ones, summed in
    float32 as their GEMM sums them), rounded once to c's dtype as addmm's epilogue is."""
    if torch.is_tensor(beta) or torch.is_tensor(alpha):
        work = torch.float32 if c.dtype in (torch.bfloat16, torch.float16) else c.dtype
        product = torch.matmul(a.to(work), b.to(work))
        return (beta * c.to(work) + alpha * product).to(c.dtype)
    if a.dim() == 2 and b.dim() == 2 and c.dim() <= 2:
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    return torch.baddbmm(c.expand(a.shape[:-1] + b.shape[-1:]), a, b, beta=beta, alpha=alpha)
'''


def spells(name: str) -> bool:
    return name in SPELLING


# The comment above a generated LIBRARIES table (optdsl.codegen.contract.LibraryInfo).
TABLE_COMMENT = ("# Per library stage: (function, scalar-row width, columns read, "
                 "columns written).")


def emit_libraries(unit: Unit) -> tuple[str, list[str]]:
    """The source of a unit's library-stage functions (with their helpers) and the rows of
    its LIBRARIES table: each names the columns of TENSORS the stage reads and the scratch
    columns it writes (what a runner must gather for it when parameters are sharded)."""
    if not unit.schedule.libraries:
        return "", []
    out = CodeBuffer()
    rows = []
    for stage in unit.schedule.libraries:
        out.line()
        out.line()
        name = f"library{stage.index}"
        with out.block(f"def {name}(params):"):
            out.line(f'"""Library stage {stage.index} (matrix work, by torch), one parameter '
                     f'at a time."""')
            with out.block("for p in params:"):
                _emit_stage(out, unit, stage)
        read = tuple(sorted({c for _, c in _reads(unit, stage) if c is not None}))
        written = tuple(unit.columns.index(temp_column(v)) for v in stage.writes)
        width = 0 if unit.schedule.device_scalars else len(unit.library_row(stage))
        rows.append(f"({name}, {width}, {read!r}, {written!r}),")
    return HELPERS + out.text(), rows


class _Names:
    """How library code refers to values."""

    def __init__(self, unit: Unit, stage: Library, row: dict[int, str]) -> None:
        self.unit = unit
        self.eqs = unit.graph.eqs
        self.stage = stage
        self.here = set(stage.values)
        self.row = row  # the stage's scalars: value -> name

    def ref(self, v: int) -> str:
        eq = self.eqs[v]
        if v in self.here:
            return value_name(v)
        if eq.op == "const":
            return format_float(eq.attr)
        if v in self.row:
            return self.row[v]
        return value_name(v)  # read at the top of the stage (tensor, kept, scratch)


def _emit_stage(out: CodeBuffer, unit: Unit, stage: Library) -> None:
    eqs = unit.graph.eqs
    if unit.schedule.device_scalars:
        out.line("T = p.tensors")
        row = _emit_device_scalars(out, unit, stage)
    else:
        row = {v: f"f{v}" for v in unit.library_row(stage)}
        if row:
            out.line("s = p.scalars")
        for j, v in enumerate(row):
            out.line(f"f{v} = float(s[{j}])", unit.cite(v))
        out.line("T = p.tensors")
    names = _Names(unit, stage, row)
    for v, column in _reads(unit, stage):
        source = f"p.kept[{v}]" if column is None else f"T[{column}]"
        out.line(f"{value_name(v)} = {source}")
    fused = _addmm_fusions(unit, stage)
    skipped = {x for c, s1, mm, s2, inner in fused.values() for x in [mm, *inner]}
    into = in_place(unit, stage, fused, skipped)  # computed into an argument's memory
    stat_slot = {v: j for j, v in enumerate(unit.schedule.fused)}
    for v in stage.values:
        if v in skipped:
            continue
        eq = eqs[v]
        if v in stat_slot:
            out.line(f"{value_name(v)} = p.stats[{stat_slot[v]}]",
                     f"{_cite(unit, v, eq.op)}, accumulated by sweep "
                     f"{unit.schedule.stat_sweep(v)}")
            with out.block(f"if {value_name(v)} is None:", "(not for this parameter)"):
                with located(eq.span):
                    text = SPELLING[eq.op].format(*[names.ref(a) for a in eq.args])
                out.line(f"{value_name(v)} = {text}", unit.cite(v))
            continue
        with located(eq.span):
            if v in fused:
                c, s1, mm, s2, _ = fused[v]
                a, b = eqs[mm].args
                beta = names.ref(s1) if s1 is not None else "1.0"
                alpha = names.ref(s2) if s2 is not None else "1.0"
                text = (f"_addmm({names.ref(c)}, {names.ref(a)}, {names.ref(b)}, "
                        f"beta={beta}, alpha={alpha})")
            elif v in into:
                spelling, args = into[v]
                text = spelling.format(*[names.ref(a) for a in args])
            elif eq.op == "reduce":
                text = _lowered_reduction(eq.attr, names.ref(eq.args[0]))
            else:
                text = SPELLING[eq.op].format(*[names.ref(a) for a in eq.args])
        out.line(f"{value_name(v)} = {text}", unit.cite(v))
    for v in stage.writes:
        column = unit.columns.index(temp_column(v))
        out.line(f"T[{column}].copy_({value_name(v)})", "for later sweeps")
    for v in stage.keeps:
        out.line(f"p.kept[{v}] = {value_name(v)}")
    for name, v in stage.commits:
        key = "'w'" if name == "w" else unit.state_order.index(name)
        out.line(f"p.commits[{key}] = {value_name(v)}", f"{name} =, at the end of the step")
    slots = fin_slots(unit)
    for v in handed(unit, stage):
        if unit.schedule.device_scalars:
            out.line(f"p.fin[{slots[v]}].fill_({value_name(v)})", "read by later kernels")
        else:
            out.line(f"p.lib[{v}] = float({value_name(v)})", "read by host code (a transfer)")


def _emit_device_scalars(out: CodeBuffer, unit: Unit, stage: Library) -> dict[int, str]:
    """Lines computing the scalars a stage reads, from what the kernels read (see the module
    docstring); returns the names of the stage's row values."""
    eqs = unit.graph.eqs
    values = device_scalars(unit, stage)
    numbers = set()  # values that may be Python numbers (their leaves: facts, constants, and
    # hypers, which a group may give as numbers)
    names: dict[int, str] = {}

    def ref(a: int) -> str:
        return format_float(eqs[a].attr) if eqs[a].op == "const" else names[a]

    for v in values:
        eq = eqs[v]
        if eq.op in PARAM_FACTS:
            names[v] = f"p.{eq.op}"
            numbers.add(v)
            continue
        if eq.op == "const":
            numbers.add(v)
            continue
        name = _leaf_name(unit, v)
        names[v] = name
        if eq.op == "hyper":
            out.line(f"{name} = p.hyper[{eq.attr!r}]")
            numbers.add(v)
        elif eq.op == "t":
            out.line("t = p.step.to(torch.float64) + 1.0", "this update's step number")
        elif eq.op == "state":
            j = unit.state_order.index(eq.attr)
            out.line(f"{name} = p.states[{j}].to(torch.float64)")
        elif eq.op == "inv_grad_scale":
            out.line("inv_grad_scale = 1.0 / p.grad_scale.to(torch.float64)",
                     "1 / torch.amp's scale")
        elif eq.op == "reduce":
            out.line(f"{name} = p.fin[{unit.slot[v]}]", _cite(unit, v, eq.attr))
        elif eq.op == "reduce_group":
            out.line(f"{name} = p.tot[{unit.slot[v]}]", _cite(unit, v, eq.attr))
        else:
            template = SPELLING[eq.op]
            wrap = template.startswith("torch.")  # a torch function: tensors only
            args = [f"_tensor({ref(a)}, None)" if wrap and a in numbers else ref(a)
                    for a in eq.args]
            with located(eq.span):
                out.line(f"{name} = {template.format(*args)}", unit.cite(v))
            if not wrap and all(a in numbers for a in eq.args):
                numbers.add(v)
    return {v: names[v] if v in names else ref(v) for v in unit.library_row(stage)}


def _leaf_name(unit: Unit, v: int) -> str:
    eq = unit.graph.eqs[v]
    if eq.op == "hyper":
        return hyper_name(eq.attr)
    if eq.op == "state":
        return state_name(eq.attr)
    if eq.op in ("t", "inv_grad_scale"):
        return eq.op
    return value_name(v)


def _cite(unit: Unit, v: int, what: str) -> str:
    line = unit.graph.eqs[v].line
    return f"line {line}: {what}" if line else what


def device_scalars(unit: Unit, stage: Library) -> list[int]:
    """The scalar values a stage computes itself when scalars are on the device, in graph
    order: what its row needs, from the leaves, reductions (read from the finished tables)
    and values of earlier stages (kept) up."""
    eqs = unit.graph.eqs
    library = unit.schedule.library

    def stop(v: int) -> bool:
        return (eqs[v].kind.level == Level.TENSOR or v in library
                or eqs[v].op in ("reduce", "reduce_group"))

    reach = unit.graph.ancestors(list(unit.library_row(stage)), stop)
    return sorted(v for v in reach if eqs[v].kind.level != Level.TENSOR and v not in library)


def fin_slots(unit: Unit) -> dict[int, int]:
    """The scalars library stages hand to later code (kernels, when scalars are on the
    device), each with its slot in the finished table: after the step's reductions."""
    scalars = [v for stage in unit.schedule.libraries for v in handed(unit, stage)]
    first = len(unit.slot)
    return {v: first + j for j, v in enumerate(scalars)}


def _lowered_reduction(name: str, mapped: str) -> str:
    """A lowered reduction (``reduce(m)``, optdsl.ir.reductions) of a library stage: its
    descriptor's combine of the mapped values in float64, finished over their count."""
    desc = REDUCTIONS[name]
    return (f"_reduce({mapped}, {desc.combine!r}, {format_float(desc.identity)}, "
            f"{desc.finish!r})")


def _reads(unit: Unit, stage: Library) -> list[tuple[int, int | None]]:
    """The tensors a stage reads: the parameter's own, scratch (by their column of TENSORS),
    and kept values (column None)."""
    eqs = unit.graph.eqs
    here = set(stage.values)
    found: dict[int, int | None] = {}
    for v in stage.values:
        for a in eqs[v].args:
            if a in here or a in found:
                continue
            eq = eqs[a]
            if eq.op in ("w", "g"):
                found[a] = unit.columns.index(eq.op)
            elif eq.op == "state" and eq.kind.is_tensor:
                found[a] = unit.columns.index(eq.attr)
            elif a in unit.schedule.library:
                found[a] = None
            elif eq.kind.level == Level.TENSOR and OPS[eq.op].category != LEAF:
                found[a] = unit.columns.index(temp_column(a))
    return sorted(found.items())


def handed(unit: Unit, stage: Library) -> list[int]:
    """The stage's scalars that host code reads (sweep rows, scalar states)."""
    eqs = unit.graph.eqs
    schedule = unit.schedule
    out = []
    for v in stage.values:
        if eqs[v].kind.level == Level.TENSOR:
            continue
        readers = [u for u in range(len(eqs)) if v in eqs[u].args and u not in
                   schedule.library]
        if readers or any(v == o for _, o in schedule.scalar_outputs):
            out.append(v)
    return out


def _addmm_fusions(unit: Unit, stage: Library) -> dict[int, tuple]:
    """``s1 * C + s2 * (A @ B)`` (either order, either factor omitted), each part read only
    there: value -> (C, s1 or None, the product, s2 or None, the values it replaces)."""
    eqs = unit.graph.eqs
    uses: dict[int, int] = {}
    for eq in eqs:
        for a in eq.args:
            uses[a] = uses.get(a, 0) + 1
    for _, v in unit.graph.outputs:
        uses[v] = uses.get(v, 0) + 1
    here = set(stage.values)

    def scaled(v: int) -> tuple[int | None, int]:
        """(scale, operand) of a product by a scalar read only here, or (None, v)."""
        eq = eqs[v]
        if eq.op == "mul" and v in here and uses.get(v, 0) == 1:
            a, b = eq.args
            if not eqs[a].kind.is_tensor and eqs[b].kind.is_tensor:
                return a, b
            if not eqs[b].kind.is_tensor and eqs[a].kind.is_tensor:
                return b, a
        return None, v

    fused = {}
    for v in stage.values:
        if eqs[v].op != "add":
            continue
        for left, right in (eqs[v].args, eqs[v].args[::-1]):
            s2, mm = scaled(right)
            if eqs[mm].op != "matmul" or mm not in here or uses.get(mm, 0) != 1:
                continue
            s1, c = scaled(left)
            if not eqs[c].kind.is_tensor:
                continue
            inner = [x for x, s in ((left, s1), (right, s2)) if s is not None]
            fused[v] = (c, s1, mm, s2, inner)
            break
    return fused
