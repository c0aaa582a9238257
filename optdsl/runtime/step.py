"""What the optimizer layer hands a runner for one param group's step, and the context the
generated host step runs in.

A runner (one per optimizer: its plans, tables and scratch buffers are that optimizer's) is
made by a back end of the registry (optdsl.runtime.backends) and called as
``runner.run(variant, entries, options)``: the variant chosen once for the group (its
switches and whether the step unscales gradients), the parameters that have gradients, and
the step's options. ``StepContext`` is the generated step's ``ctx`` (optdsl.codegen.contract):
the runner's ``sweep`` runs the element work, and the reductions it produced are finished
here, in one place (optdsl.runtime.reduce); library stages (matrix work) run here too, on
the tensors the runner hands them (optdsl.runtime.library_stage).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, Sequence

from optdsl.codegen.contract import GeneratedModule, ParamSlot
from optdsl.runtime import library_stage
from optdsl.runtime.reduce import finish


class Entry(NamedTuple):
    """One parameter of a step: its tensor (or fp32 master weight), gradient, state dict and
    the step number of this update."""

    param: Any
    grad: Any
    state: dict
    t: float


@dataclass
class StepOptions:
    """How a group's step runs beyond its hyper values."""

    hyper: dict[str, float]
    inv_grad_scale: float = 1.0  # read when the variant unscales gradients itself
    combine: Any = None  # optdsl.optim.distributed.ShardCombiner when some entries are shards
    copies: list | None = None  # per entry: the low-precision tensor of a master weight
    rounding_seed: int | None = None  # round bfloat16 writes stochastically from this seed
    transient: bool = False  # the entries are scratch of this step (e.g. a sparse gradient's
    #                          gathered rows, optdsl.runtime.sparse): keep no views of them
    # what the entries' tensors are, in one key (optdsl.optim.param_records: a token per
    # entry standing for its tensors' storage, shapes, dtypes and layouts), when known
    tables_key: tuple | None = None


class Runner(Protocol):
    def run(self, variant, entries: Sequence[Entry], options: StepOptions) -> None:
        """Step every entry in place (state dicts included)."""


@dataclass
class StepContext:
    """The ``ctx`` of a generated step: the group's scalars in, reductions back."""

    module: GeneratedModule
    hyper: dict[str, float]
    inv_grad_scale: float
    run_sweep: Callable[[int, Sequence[ParamSlot]], tuple[list, list]]
    numel: list[int]
    combine: Any = None
    # entry i's columns for a library stage, in the parameter's shape (the runner's)
    library_tensors: Callable[[int, ParamSlot], list] | None = None
    totals: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.totals = [None] * self.module.num_reductions

    def sweep(self, k: int, params: Sequence[ParamSlot]) -> None:
        """Run sweep k, then finish the reductions it produced (raw partials per entry)."""
        raw = self.run_sweep(k, params)
        reductions = self.module.sweeps[k].reductions
        if reductions:
            finish(reductions, params, raw, self.numel, self.totals, self.combine)

    def library(self, k: int, params: Sequence[ParamSlot]) -> None:
        """Run library stage k (matrix work, by torch) for every parameter."""
        if self.library_tensors is None:
            raise RuntimeError("this back end's runner has no library stages")
        library_stage.run(self.module, self.module.libraries[k], params,
                          self.library_tensors, self.combine)


def whole_shape(options: StepOptions, index: int, tensor) -> tuple[int, ...]:
    """The shape of entry ``index``'s parameter: the whole tensor's when the entry is a
    shard of it (its facts, ``w.rows`` ..., are the whole tensor's), else ``tensor``'s."""
    combine = options.combine
    if combine is not None:
        return combine.whole_shape(index, tensor)
    return tuple(tensor.shape)


class OneStepAtATime:
    """Refuses to run one optimizer's step from two threads at once (its tables and scratch
    buffers are its own, so separate optimizers never share them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("step() of this optimizer is already running in another "
                               "thread; step one optimizer from one thread at a time (give "
                               "each thread its own optimizer)")

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._lock = threading.Lock()
