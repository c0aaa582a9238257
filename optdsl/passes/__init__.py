"""IR rewrites: pure Graph -> Graph functions, run in the order of PIPELINE.

fold      constants computed with the op table's NumPy meaning (one meaning of each op)
simplify  algebra that is exact under IEEE 754, from the op table's traits (identities such
          as x*1 and x + -0.0, involutions such as --x; x^2 = square(x); where with a
          constant mask or equal branches); never x*0 -> 0 or x+0 -> x
cse_dce   rebuild through the interning Builder: equal values merged, dead values dropped

Per param group and per back end, later: specialize (switches compiled away; the AMP
unscaling variant) and legalize (what a back end cannot spell, expanded; reductions lowered
to their descriptors' maps).

(These are rewrites of the graph. The schedule's sweeps, optdsl.ir.schedule, are passes over
the parameters' elements: a different thing, and a different word.)

The scalar/tensor split (hoisting) needs no rewriting: every value's Kind carries its level
(const, group, param, tensor), computed by the op table from its arguments, and the schedule
computes group-level values once per group, param-level values once per parameter, and only
tensor-level values per element.
"""

from __future__ import annotations

from typing import Callable

from optdsl.ir.nodes import Graph
from optdsl.ir.verify import verify
from optdsl.passes.cse_dce import cse_dce
from optdsl.passes.fold import fold
from optdsl.passes.simplify import simplify

Rewrite = Callable[[Graph], Graph]

PIPELINE: list[Rewrite] = [fold, simplify, fold, cse_dce]


def optimize(graph: Graph, *, check: bool = False, pipeline: list[Rewrite] | None = None
             ) -> Graph:
    """Run the pipeline; with ``check`` the verifier runs before and after every rewrite."""
    if check:
        verify(graph)
    for run in pipeline if pipeline is not None else PIPELINE:
        graph = run(graph)
        if check:
            verify(graph)
    return graph
