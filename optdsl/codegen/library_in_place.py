"""Which element-wise values of a library stage are computed into their argument's memory.

A library stage (optdsl.codegen.library) writes each value as a torch expression, and every
torch operator allocates its result: for a parameter-shaped chain such as Adafactor's
``rsqrt(max(R @ C / m, eps)) * g`` that is one fresh matrix per operation, each first
touched page by page (a large allocation is new memory from the system). Torch's own
optimizers write such chains with in-place methods (``div_``, ``clamp_``, ``rsqrt_``,
``mul_``). So does a stage, where it cannot change a result: ``v = a0 op a1`` becomes
``a0.op_(a1)`` when ``a0``

- is computed by this stage into memory of its own (an arithmetic result, a matrix
  product: ``FRESH``; never a view, a host-switched ``where`` or a ``.to()``, which may be
  an input's memory),
- is read by ``v`` alone (it is no output, no kept, written or committed value, and no
  view of it exists: a view is a reader),
- has ``v``'s shape and dtype (the same shape relative to the parameter, both bfloat16 or
  neither, no mask), so the in-place operation computes the same elements in the same
  dtype, bit for bit.

``a1 + a0`` and ``a1 * a0`` use ``a0`` the same way (IEEE addition and multiplication
commute); other operations only on their first argument.
"""

from __future__ import annotations

from optdsl.codegen.unit import Unit
from optdsl.ir.ops import Level
from optdsl.ir.schedule import Library

# How an element op is written into its first argument ({0}) in place.
IN_PLACE: dict[str, str] = {
    "add": "{0}.add_({1})", "sub": "{0}.sub_({1})", "mul": "{0}.mul_({1})",
    "div": "{0}.div_({1})", "square": "{0}.mul_({0})", "neg": "{0}.neg_()",
    "sqrt": "{0}.sqrt_()", "rsqrt": "{0}.rsqrt_()", "exp": "{0}.exp_()",
    "log": "{0}.log_()", "abs": "{0}.abs_()",
    "max": "torch.maximum({0}, _tensor({1}, {0}), out={0})",
    "min": "torch.minimum({0}, _tensor({1}, {0}), out={0})",
}
COMMUTE = ("add", "mul")
# ops whose tensor result is memory of its own
FRESH = frozenset(IN_PLACE) | {"matmul", "pow", "tanh", "floor", "ceil", "sign", "atan2",
                               "rowsum", "rowmean", "rownorm", "colsum", "colmean",
                               "colnorm"}


def in_place(unit: Unit, stage: Library, fused: dict[int, tuple],
             skipped: set[int]) -> dict[int, tuple[str, tuple[int, ...]]]:
    """value -> (its in-place spelling, the arguments to format it with), for the values
    of ``stage`` computed into an argument's memory (see the module docstring); ``fused``:
    the stage's addmm fusions (their results are fresh), ``skipped``: the values they
    replace."""
    eqs = unit.graph.eqs
    here = set(stage.values)
    users = unit.graph.users()
    held = {v for _, v in unit.graph.outputs} | set(stage.writes) | set(stage.keeps)

    def reusable(a: int, v: int) -> bool:
        arg, eq = eqs[a].kind, eqs[v].kind
        return (a in here and a not in skipped and a not in held
                and (eqs[a].op in FRESH or a in fused) and users[a] == [v]
                and arg.level == Level.TENSOR and not arg.mask and not eq.mask
                and arg.dims == eq.dims and arg.bf16 == eq.bf16)

    out = {}
    for v in stage.values:
        eq = eqs[v]
        if v in skipped or v in fused or eq.op not in IN_PLACE or \
                eq.kind.level != Level.TENSOR or len(set(eq.args)) != len(eq.args):
            continue
        if reusable(eq.args[0], v):
            out[v] = (IN_PLACE[eq.op], eq.args)
        elif eq.op in COMMUTE and reusable(eq.args[1], v):
            out[v] = (IN_PLACE[eq.op], eq.args[::-1])
    return out
