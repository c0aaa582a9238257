"""The IR verifier: SSA order, arities, kinds recomputed from the op table, outputs sane.

Run after every rewrite in tests (and in debug mode); a failure is a compiler bug, so it
raises IRError, never DslError.
"""

from __future__ import annotations

from optdsl.ir.nodes import Graph
from optdsl.ir.ops import GLOBAL, LEAF, LOGIC, OPS, SELECT, Level, result_kind
from optdsl.ir.reductions import GROUP_SCOPE, REDUCTIONS, TENSOR_SCOPE


class IRError(Exception):
    """The IR broke an invariant (a compiler bug)."""


def verify(graph: Graph) -> Graph:
    for i, eq in enumerate(graph.eqs):
        info = OPS.get(eq.op)
        if info is None:
            raise IRError(f"%{i}: unknown op {eq.op!r}")
        if len(eq.args) != info.arity:
            raise IRError(f"%{i}: {eq.op} takes {info.arity} args, has {len(eq.args)}")
        for a in eq.args:
            if not 0 <= a < i:
                raise IRError(f"%{i}: argument %{a} is not defined before use")
        if info.category == LEAF:
            if eq.op == "const" and not isinstance(eq.attr, float):
                raise IRError(f"%{i}: const without a float value")
            continue
        kinds = [graph.eqs[a].kind for a in eq.args]
        expected = result_kind(info, kinds)
        if eq.kind != expected:
            raise IRError(f"%{i}: kind {eq.kind} but the op table gives {expected}")
        if info.category == SELECT:
            if not kinds[0].mask or kinds[1].mask or kinds[2].mask:
                raise IRError(f"%{i}: where() needs (mask, number, number)")
        elif info.category == LOGIC:
            if not all(k.mask for k in kinds):
                raise IRError(f"%{i}: {eq.op} combines masks")
        elif any(k.mask for k in kinds):
            raise IRError(f"%{i}: {eq.op} reads a mask")
        if info.is_reduction:
            if not all(k.level == Level.TENSOR for k in kinds):
                raise IRError(f"%{i}: {eq.op} reduces a scalar")
            if eq.op in ("reduce", "reduce_group"):
                desc = REDUCTIONS.get(eq.attr)
                scope = GROUP_SCOPE if info.category == GLOBAL else TENSOR_SCOPE
                if desc is None or desc.scope != scope:
                    raise IRError(f"%{i}: {eq.op} of {eq.attr!r}, not a {scope} reduction")
    names = [name for name, _ in graph.outputs]
    if not names or names[0] != "w" or len(set(names)) != len(names):
        raise IRError(f"outputs must start with w and be unique: {names}")
    for name, v in graph.outputs:
        if not 0 <= v < len(graph.eqs):
            raise IRError(f"output {name} refers to missing %{v}")
        if graph.eqs[v].kind.mask:
            raise IRError(f"output {name} is a mask")
    return graph
