"""IR passes: pure Graph -> Graph functions, run in the order of PIPELINE.

fold      constants computed with the op table's NumPy meaning (one meaning of each op)
simplify  algebra that is exact under IEEE 754 (x*1, x/1, x-0, --x, x^1, x^2 = x*x,
          where with a constant mask or equal branches); never x*0 -> 0 or x+0 -> x
cse_dce   rebuild through the interning Builder: equal values merged, dead values dropped

The scalar/tensor split (hoisting) needs no rewriting: every value's Kind carries its level
(const, group, param, tensor), computed by the op table from its arguments, and the schedule
(optdsl.ir.schedule) computes group-level values once per group, param-level values once per
parameter, and only tensor-level values per element.
"""

from __future__ import annotations

from typing import Callable

from optdsl.ir.nodes import Graph
from optdsl.ir.verify import verify
from optdsl.passes.cse_dce import cse_dce
from optdsl.passes.fold import fold
from optdsl.passes.simplify import simplify

Pass = Callable[[Graph], Graph]

PIPELINE: list[Pass] = [fold, simplify, fold, cse_dce]


def optimize(graph: Graph, *, check: bool = False, pipeline: list[Pass] | None = None) -> Graph:
    """Run the pipeline; with ``check`` the verifier runs before and after every pass."""
    if check:
        verify(graph)
    for run in pipeline if pipeline is not None else PIPELINE:
        graph = run(graph)
        if check:
            verify(graph)
    return graph
