"""Reductions finished in one place for every back end.

A back end's sweep leaves, for each parameter and each reduction of the sweep, a raw float64
partial over the parameter's (local) elements: the descriptor's combine of the mapped
values, from its identity (optdsl.ir.reductions). ``finish`` then combines sharded
parameters' partials across ranks (optdsl.optim.distributed, when some parameters are
DTensor shards), finishes each per-tensor reduction with its parameter's element count, and
combines the group-wide ones over the parameters in order before finishing them. Orders are
fixed, so results do not depend on launch configurations or thread counts.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from optdsl.ir.reductions import GROUP_SCOPE, REDUCTIONS


def finish(reductions: Sequence[tuple[int, str]], params: Sequence[Any], raw: list[list],
           numel: list[int], totals: list, combine: Any = None) -> None:
    """``raw[i][j]``: entry i's partial of reduction j (``reductions[j] = (slot, name)``).
    Writes ``params[i].red[slot]`` (per-tensor ones) and ``totals[slot]`` (group ones);
    ``combine(raw, combines)`` all-reduces the partials of sharded parameters in place (each
    reduction's partials by its descriptor's combine, "add" or "max") and has ``numel``,
    the full tensors' element counts."""
    if combine is not None:
        combine(raw, tuple(REDUCTIONS[name].combine for _, name in reductions))
        numel = combine.numel
    for j, (slot, name) in enumerate(reductions):
        desc = REDUCTIONS[name]
        if desc.scope == GROUP_SCOPE:
            total = np.float64(desc.identity)
            ufunc = desc.combine_ufunc()
            for partials in raw:
                total = ufunc(total, np.float64(partials[j]))
            totals[slot] = desc.finished(total, sum(numel))
        else:
            for i, p in enumerate(params):
                p.red[slot] = desc.finished(raw[i][j], numel[i])
