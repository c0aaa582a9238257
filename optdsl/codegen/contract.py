"""The contract between generated code and the runtime: what a generated module holds, what
its ``step`` receives, and what it hands to the runtime and gets back. Every back end's
generated module follows it; the runtime reads modules only through ``GeneratedModule``.

A generated module defines:

- ``TENSORS``: the columns of a parameter's tensors ('w', 'g', each tensor state in program
  order, then scratch columns, named ``__t<value>``, for values a sweep stores for later
  ones: the runtime provides them, in the compute dtype), the order of pointer tables and
  array lists;
- ``NUM_REDUCTIONS``: the number of reduction slots of the step;
- ``SWEEPS``: one row per sweep over the elements, ``(kernel, width, reductions)``: the
  generated callable that runs it (None when the sweep neither writes nor reduces: the host
  step still runs), the length of the scalar row each parameter hands it, and the reductions
  it produces as ``(slot, descriptor name)`` pairs (optdsl.ir.reductions);
- ``LIBRARIES`` (when the program has matrix work): one row per library stage,
  ``(function, width, reads, writes)``: the generated torch code of the stage
  (optdsl.codegen.library), the length of the scalar row each parameter hands it, the
  columns of TENSORS it reads and the scratch columns it writes; the host step calls
  ``ctx.library(k, params)`` between sweeps;
- ``step(ctx, params)``: the host step, one call per param group. It computes group scalars
  once and each parameter's scalars, sets each ``p.scalars`` to the row a sweep reads, calls
  ``ctx.sweep(k, params)``, and reads the reductions the sweep produced, finished by the
  runtime: per parameter in ``p.red[slot]``, per group in ``ctx.totals[slot]``. It writes
  the new values of scalar states into ``p.states``.

What ``ctx.sweep`` does with the kernel (launch it per bucket of tensors, or call it over
NumPy arrays) is the back end's runner's business; how raw partials are combined and
finished is the runtime's, in one place (optdsl.runtime.reduce).

A back end whose schedule places scalars on the device (``Schedule.placement``: Triton's)
computes them in its kernels instead: its ``step`` computes nothing, writes no ``p.scalars``
(``width`` is 0) and reads no reductions; it only calls ``ctx.sweep(k, params)``, and its
``params`` is whatever the runner passes (the Triton runner passes None: no per-parameter
object). Such a module also holds, for its runner: ``HYPERS`` (the hyper table's order),
``SCALAR_STATES`` (the pointer-table columns after the step count), ``REDUCE`` (per sweep,
the kernels that finish its reductions on the device) and ``FINISH_STEP`` (the kernel that
advances step counts and writes scalar states); optdsl.codegen.triton says what they read.
Its library stages (``width`` 0) compute their scalars themselves from what the kernels
read (optdsl.codegen.library): the ``p`` they get is the runner's
(optdsl.runtime.device_library.DeviceSlot), and ``FIN_WIDTH`` (when present) is the width
of the finished table's rows, whose slots after the reductions hold the scalars the stages
hand to later kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from optdsl.ir.ops import facts_of


class ParamSlot:
    """One parameter in one step, as the generated host step sees it (its ``p``)."""

    __slots__ = ("t", "states", "scalars", "red", "rows", "cols", "ndim", "numel",
                 "dtype_eps", "tensors", "kept", "commits", "lib", "stats")

    def __init__(self, t: float, states: list, num_reductions: int) -> None:
        self.t = t  # the step number of this update
        self.states = states  # scalar states in program order (tensor states: None)
        self.scalars: tuple = ()  # the scalar row of the stage about to run
        self.red: list = [None] * num_reductions  # finished per-parameter reductions
        # the parameter's facts (its matrix view, size and dtype's machine epsilon)
        self.rows = self.cols = self.ndim = self.numel = 1.0
        self.dtype_eps = 0.0
        # library stages (optdsl.codegen.library): the parameter's tensors in its shape,
        # values kept between stages, shaped states to commit, scalars handed to host code
        self.tensors: list = []
        self.kept: dict = {}
        self.commits: dict = {}
        self.lib: dict = {}
        # per fused row or column statistic (the C back end's sweeps accumulate them; the
        # Triton back end's slot is optdsl.runtime.device_library.DeviceSlot): its
        # finished tensor, or None where the stage computes it (optdsl.codegen.library)
        self.stats: list = []

    def set_facts(self, shape, eps: float) -> None:
        """Record a parameter's shape and its dtype's machine epsilon."""
        for name, value in facts_of(shape, eps).items():
            setattr(self, name, value)


class StepContext(Protocol):
    """What the host step receives besides its parameters."""

    hyper: Mapping[str, float]  # the group's hyper values, by scalar name
    inv_grad_scale: float  # 1 / GradScaler's scale, for a step that unscales (else 1.0)
    totals: list  # finished group-wide reductions, by slot

    def sweep(self, k: int, params: Sequence[ParamSlot]) -> None:
        """Run sweep ``k`` over every parameter, then finish the reductions it produces."""

    def library(self, k: int, params: Sequence[ParamSlot]) -> None:
        """Run library stage ``k`` for every parameter."""


@dataclass(frozen=True)
class SweepInfo:
    """One sweep of a generated module (a row of its SWEEPS)."""

    index: int
    kernel: Any  # the generated callable, or None: nothing to run over the elements
    width: int  # the length of each parameter's scalar row
    reductions: tuple[tuple[int, str], ...]  # (slot, reduction descriptor name)


@dataclass(frozen=True)
class LibraryInfo:
    """One library stage of a generated module (a row of its LIBRARIES)."""

    index: int
    function: Any  # function(params): torch code over each parameter's tensors
    width: int
    reads: tuple[int, ...] = ()  # the columns of TENSORS it reads (p.tensors[c])
    writes: tuple[int, ...] = ()  # the scratch columns it writes, for later sweeps


@dataclass(frozen=True)
class GeneratedModule:
    """A generated module, read once through the contract."""

    module: Any
    columns: tuple[str, ...]
    num_reductions: int
    sweeps: tuple[SweepInfo, ...]
    step: Callable[[StepContext, Sequence[ParamSlot]], None]
    libraries: tuple[LibraryInfo, ...] = ()
    shaped: frozenset[str] = frozenset()  # row/column states: read by library stages only

    @classmethod
    def of(cls, module: Any) -> GeneratedModule:
        sweeps = tuple(SweepInfo(k, kernel, int(width), tuple(reductions))
                       for k, (kernel, width, reductions) in enumerate(module.SWEEPS))
        libraries = tuple(LibraryInfo(k, function, int(width), tuple(reads), tuple(writes))
                          for k, (function, width, reads, writes)
                          in enumerate(getattr(module, "LIBRARIES", ())))
        return cls(module, tuple(module.TENSORS), int(module.NUM_REDUCTIONS), sweeps,
                   module.step, libraries, frozenset(getattr(module, "SHAPED", ())))

    @property
    def tensor_states(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns[2:] if not c.startswith("__"))

    @property
    def scratch(self) -> tuple[str, ...]:
        """The scratch columns (values stored between sweeps), after the states."""
        return tuple(c for c in self.columns if c.startswith("__"))
