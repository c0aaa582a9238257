"""Common-subexpression and dead-code elimination.

Before: any verified graph. After: no two equations are equal (same op, arguments and
attribute), and every value is used by some output. Both fall out of rebuilding the graph
through the interning Builder, which skips dead values (optdsl.ir.builder.pruned).
"""

from __future__ import annotations

from optdsl.ir.builder import pruned
from optdsl.ir.nodes import Graph


def cse_dce(graph: Graph) -> Graph:
    return pruned(graph)
