"""Reductions finished on the device, after a reduction sweep of a Triton step.

The generated kernels (optdsl.codegen.triton_reduce) do the arithmetic: ``combine`` per bucket
(each tensor's block partials, in block order, into its raw total; per-tensor reductions
finished at once when nothing else must happen first), then, when the sweep has group-wide
reductions or the raw totals were combined across ranks first, ``finish`` once for the group
(totals over the tensors in order, and the deferred per-tensor finishes). What this module
adds is the order of launches and the data movement between them, all on the device:

- DTensor shards (FSDP2): the raw totals of sharded tensors are all-reduced over their
  process groups, SUM or MAX as the descriptor combines (optdsl.optim.distributed's
  ShardCombiner groups them), on device tensors, before anything is finished with the full
  tensors' element counts;
- a group whose tensors are on several devices: raw totals are copied to the group's home
  device, finished there, and the results copied back.

Nothing is read on the host: a steady-state step never waits for the device here. How a
reduction finishes is its descriptor's (optdsl.runtime.reduce is the host's side of it).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from optdsl.ir.reductions import GROUP_SCOPE, REDUCTIONS

CHUNK = 256  # partials combined at a time: fixed, so results do not depend on the launch


def finish_sweep(plan: Any, module: Any, k: int, launch: Callable, block: int,
                 combine: Any = None, chunk: int = CHUNK, tiled: bool = False) -> None:
    """Finish sweep ``k``'s reductions of ``plan`` (optdsl.runtime.device_tables), combining
    ``chunk`` partials at a time; ``tiled``: the sweep ran over tiles, one partial each
    (optdsl.runtime.device_stats)."""
    combine_kernel, finish_kernel = module.module.REDUCE[k]
    reductions = module.sweeps[k].reductions
    group_wide = any(REDUCTIONS[name].scope == GROUP_SCOPE for _, name in reductions)
    deferred = combine is not None and any(s is not None and s.groups
                                           for s in combine.shardings)
    for bucket in plan.buckets:
        tables = plan.tables[bucket.device]
        raw, fin, cnt = tables.at(bucket.offset)
        programs = bucket.stats if tiled else bucket
        launch(combine_kernel, (len(bucket.members),), programs.sizes, programs.firsts, cnt,
               plan.red[id(bucket)], raw, fin, BLOCK=block, CHUNK=chunk, FINISH=not deferred)
    if not (group_wide or deferred):
        return
    home = plan.tables[plan.home]
    others = [d for d in plan.tables if d != plan.home]
    for bucket in plan.buckets:  # (several devices: the raw totals go home)
        if bucket.device != plan.home:
            rows = slice(bucket.offset, bucket.offset + len(bucket.members))
            home.raw[rows].copy_(plan.tables[bucket.device].raw[rows], non_blocking=True)
    if deferred:
        all_reduce_rows(plan, k, combine, home.raw, reductions)
    rows = sum(len(b.members) for b in plan.buckets)
    launch(finish_kernel, (1,), home.raw, home.fin, home.tot, home.cnt, rows, CHUNK=chunk,
           TENSORS=deferred)
    for device in others:
        tables = plan.tables[device]
        tables.tot.copy_(home.tot, non_blocking=True)
        if deferred:
            tables.fin.copy_(home.fin, non_blocking=True)


def all_reduce_rows(plan: Any, k: int, combine: Any, raw: torch.Tensor, reductions) -> None:
    """All-reduce the raw totals of sharded tensors in place, one collective per sharding,
    operator and process group; the index tensors are made once per plan and sweep."""
    import torch.distributed as dist

    found = plan.collectives.get(k)
    if found is None:
        found = plan.collectives[k] = _collectives(plan, combine, raw.device, reductions)
    for groups, op, rows, cols in found:
        values = raw.index_select(0, rows).index_select(1, cols)
        reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
        for group in groups:
            dist.all_reduce(values, op=reduce_op, group=group)
        raw[rows.unsqueeze(1), cols.unsqueeze(0)] = values


def _collectives(plan: Any, combine: Any, device: torch.device, reductions) -> list:
    batches: dict = {}
    for index, sharding in enumerate(combine.shardings):
        if sharding is None or not sharding.groups:
            continue
        for op in ("add", "max"):
            slots = [slot for slot, name in reductions if REDUCTIONS[name].combine == op]
            if slots:
                groups, rows, cols = batches.setdefault((sharding.key, op),
                                                        (sharding.groups, [], slots))
                rows.append(plan.row_of[index])
    return [(groups, op, torch.tensor(rows, dtype=torch.int64, device=device),
             torch.tensor(cols, dtype=torch.int64, device=device))
            for (_, op), (groups, rows, cols) in batches.items()]
