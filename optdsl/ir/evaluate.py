"""The reference evaluator: runs a Graph on whole NumPy arrays with the op table's meaning.

It is the semantics the code generators must reproduce, used to initialise state, by the
property tests (optimized graph == unoptimized graph) and as an oracle for the back ends.
Arithmetic is in the arrays' dtype (float32 at least) with float64 scalars.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optdsl.ir.nodes import Graph
from optdsl.ir.ops import GLOBAL, OPS, Level


def _leaf(eq, inputs: dict[str, Any]):
    if eq.op == "const":
        return np.float64(eq.attr)
    if eq.op == "hyper":
        return np.float64(inputs["hyper"][eq.attr])
    if eq.op == "state":
        return inputs["state"][eq.attr]
    if eq.op == "t":
        return np.float64(inputs["t"])
    return inputs[eq.op]  # w, g


def _cast(value, like):
    """Keep tensor values in the parameter's dtype (float32 stays float32)."""
    if isinstance(value, np.ndarray) and like is not None and value.dtype != like:
        if value.dtype != bool:
            return value.astype(like)
    return value


def evaluate_group(graph: Graph, hyper: dict[str, float], params: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """Evaluate one step for every parameter of a group; return each one's outputs.

    Each entry of ``params`` has ``w``, ``g`` (arrays), ``t`` and ``state`` (name -> value).
    """
    values: list[list] = [[] for _ in params]
    alive = graph.live()
    with np.errstate(all="ignore"):
        for index, eq in enumerate(graph.eqs):
            info = OPS[eq.op]
            if not alive[index]:
                for vals in values:
                    vals.append(None)
                continue
            if info.category == GLOBAL:
                partials = [_partial(eq.op, vals[eq.args[0]]) for vals in values]
                total = np.float64(0.0)
                for part in partials:
                    total += part
                result = np.sqrt(total) if eq.op == "global_norm" else total
                for vals in values:
                    vals.append(result)
                continue
            for inputs, vals in zip(params, values):
                if not eq.args:
                    vals.append(_leaf(eq, {**inputs, "hyper": hyper}))
                    continue
                args = [vals[a] for a in eq.args]
                result = info.evaluate(*args)
                like = inputs.get("w").dtype if isinstance(inputs.get("w"), np.ndarray) else None
                if eq.kind.level == Level.TENSOR:
                    result = _cast(np.asarray(result), like)
                    if "w" in inputs and result.shape != inputs["w"].shape:
                        result = np.broadcast_to(result, inputs["w"].shape).copy()
                elif not eq.kind.mask:
                    result = np.float64(result)
                vals.append(result)
    return [{name: vals[v] for name, v in graph.outputs} for vals in values]


def _partial(op: str, x) -> np.float64:
    if op == "global_norm":
        return np.sum(np.square(np.asarray(x, dtype=np.float64)))
    return np.sum(np.asarray(x), dtype=np.float64)


def evaluate(graph: Graph, inputs: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a graph for one parameter (a group of one)."""
    hyper = inputs.get("hyper", {})
    entry = {k: v for k, v in inputs.items() if k != "hyper"}
    entry.setdefault("state", {})
    return evaluate_group(graph, hyper, [entry])[0]
