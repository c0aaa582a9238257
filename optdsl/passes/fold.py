"""Constant folding: an op whose arguments are all constants becomes a constant.

Before: any verified graph. After: no element-wise op has only constant arguments; values
are computed with the op table's NumPy meaning in float64, so folding never changes a result
beyond what float64 host arithmetic would give. (Masks are not folded: a constant mask stays
a comparison, which simplify resolves inside where().)
"""

from __future__ import annotations

import numpy as np

from optdsl.ir.builder import Builder, rebuild
from optdsl.ir.nodes import Eq, Graph
from optdsl.ir.ops import ARITH, OPS, SELECT


def fold(graph: Graph) -> Graph:
    def rewrite(builder: Builder, eq: Eq, args: tuple[int, ...]) -> int | None:
        info = OPS[eq.op]
        if info.category not in (ARITH, SELECT) or not args:
            return None
        if not all(builder.eqs[a].op == "const" for a in args):
            return None
        with np.errstate(all="ignore"):
            value = info.meaning(*[np.float64(builder.eqs[a].attr) for a in args])
        return builder.const(float(value), eq.span)

    return rebuild(graph, rewrite)
