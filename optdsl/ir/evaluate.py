"""The reference evaluator: runs a Graph on whole NumPy arrays with the op table's meaning.

It is the semantics the code generators must reproduce, used to initialise state, by the
property tests (optimized graph == unoptimized graph) and as an oracle for the back ends.
Arithmetic is in the arrays' dtype (float32 at least) with float64 scalars; reductions follow
their descriptors (optdsl.ir.reductions): the per-element map in the arrays' dtype, combined
in float64, finished by the descriptor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optdsl.ir.nodes import Eq, Graph
from optdsl.ir.ops import GLOBAL, OPS, PARAM_FACTS, Level, _round_bf16, facts_of
from optdsl.ir.reductions import REDUCTIONS


def param_facts(w: np.ndarray, dtype_eps: float | None = None) -> dict[str, float]:
    """The facts of a parameter the IR reads (``rows``, ``cols``, ``ndim``, ``numel``,
    ``dtype_eps``): its matrix view's rows and columns (1 and n for a vector)."""
    return facts_of(np.shape(w), np.finfo(w.dtype).eps if dtype_eps is None else dtype_eps)


def _leaf(eq: Eq, inputs: dict[str, Any]):
    if eq.op in PARAM_FACTS:
        return np.float64(param_facts(inputs["w"], inputs.get("dtype_eps"))[eq.op])
    if eq.op == "const":
        return np.float64(eq.attr)
    if eq.op == "hyper":
        return np.float64(inputs["hyper"][eq.attr])
    if eq.op == "state":
        return inputs["state"][eq.attr]
    if eq.op == "t":
        return np.float64(inputs["t"])
    if eq.op == "inv_grad_scale":
        return np.float64(inputs.get("inv_grad_scale", 1.0))
    return inputs[eq.op]  # w, g


def _cast(value, like):
    """Keep tensor values in the parameter's dtype (float32 stays float32)."""
    if isinstance(value, np.ndarray) and like is not None and value.dtype != like:
        if value.dtype != bool:
            return value.astype(like)
    return value


def _mapped(eq: Eq, args: list, like) -> tuple:
    """A reduction's descriptor and its per-element values, in the parameter's dtype."""
    if eq.op in ("reduce", "reduce_group"):
        return REDUCTIONS[eq.attr], _cast(np.asarray(args[0]), like)
    desc = REDUCTIONS[OPS[eq.op].reduction]
    return desc, _cast(np.asarray(desc.mapped(tuple(args))), like)


def _raw(desc, values: np.ndarray, chunk: int | None = None) -> np.float64:
    """The float64 combination of the mapped values, from the identity; with ``chunk``,
    chunk by chunk in order (the NumPy back end's order of summation)."""
    total = np.float64(desc.identity)
    step = chunk or max(values.size, 1)
    for lo in range(0, values.size, step):
        part = values[lo:lo + step]
        if desc.combine == "add":
            total = total + np.sum(part, dtype=np.float64)
        else:
            total = np.maximum(total, np.float64(np.max(part)))
    return total


def evaluate_group(graph: Graph, hyper: dict[str, float], params: list[dict[str, Any]],
                   inv_grad_scale: float = 1.0, chunk: int | None = None
                   ) -> list[dict[str, Any]]:
    """Evaluate one step for every parameter of a group; return each one's outputs.

    Each entry of ``params`` has ``w``, ``g`` (arrays), ``t`` and ``state`` (name -> value).
    ``chunk``: accumulate reductions chunk by chunk (the NumPy back end's order).
    """
    values: list[list] = [[] for _ in params]
    alive = graph.live()
    likes = [p["w"].dtype if isinstance(p.get("w"), np.ndarray) else None for p in params]
    with np.errstate(all="ignore"):
        for index, eq in enumerate(graph.eqs):
            info = OPS[eq.op]
            if not alive[index]:
                for vals in values:
                    vals.append(None)
                continue
            if info.category == GLOBAL:
                total, count, desc = None, 0, None
                for vals, like in zip(values, likes):
                    desc, mapped = _mapped(eq, [vals[a] for a in eq.args], like)
                    raw = _raw(desc, mapped.reshape(-1), chunk)
                    total = raw if total is None else desc.combine_ufunc()(total, raw)
                    count += mapped.size
                if desc is None:  # (a group of no parameters)
                    desc = REDUCTIONS[eq.attr if eq.attr else info.reduction]
                    total = np.float64(desc.identity)
                result = desc.finished(total, count)
                for vals in values:
                    vals.append(result)
                continue
            for inputs, vals, like in zip(params, values, likes):
                if not eq.args:
                    vals.append(_leaf(eq, {**inputs, "hyper": hyper,
                                           "inv_grad_scale": inv_grad_scale}))
                    continue
                args = [vals[a] for a in eq.args]
                if info.is_reduction:
                    desc, mapped = _mapped(eq, args, like)
                    result = desc.finished(_raw(desc, mapped.reshape(-1), chunk), mapped.size)
                    vals.append(np.float64(_round_bf16(result)) if eq.kind.bf16 else result)
                    continue
                result = info.meaning(*args)
                if eq.kind.level == Level.TENSOR:
                    result = _cast(np.asarray(result), like)
                    if not eq.kind.shaped and "w" in inputs and \
                            result.shape != inputs["w"].shape:
                        result = np.broadcast_to(result, inputs["w"].shape).copy()
                elif not eq.kind.mask:
                    result = np.float64(result)
                if eq.kind.bf16 and not eq.kind.mask:  # torch's bfloat16: every result rounded
                    result = _round_bf16(result)
                    if eq.kind.level != Level.TENSOR:
                        result = np.float64(result)
                vals.append(result)
    return [{name: vals[v] for name, v in graph.outputs} for vals in values]


def evaluate(graph: Graph, inputs: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a graph for one parameter (a group of one)."""
    hyper = inputs.get("hyper", {})
    entry = {k: v for k, v in inputs.items() if k not in ("hyper", "inv_grad_scale")}
    entry.setdefault("state", {})
    return evaluate_group(graph, hyper, [entry], inputs.get("inv_grad_scale", 1.0))[0]
