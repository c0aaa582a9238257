"""The registry of back ends: one record per back end, one line to register it.

A back end is a code generator (its spelling of the ops, and ``generate``: a compilation
unit to source text), a loader (source text to a generated module), a runner (made per
optimizer) and its rules for the tensors it can run. Everything that names back ends
iterates this registry: backend choice (``choose``), the command line (``show --<name>``,
``--backend``), ``Program.source``, the optimizer wrappers and ``optdsl compile``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

from optdsl.codegen import c as c_codegen
from optdsl.codegen import numpy as numpy_codegen
from optdsl.codegen import torch_step as torch_codegen
from optdsl.codegen import triton as triton_codegen
from optdsl.codegen.unit import Unit
from optdsl.runtime import select


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str  # one line, for --help
    spells: Callable[[str, bool], bool]  # (op, tensor value) -> can it write it
    generate: Callable[[Unit], str]  # the generated module's source
    load: Callable[[str, str], Any]  # (source, tag) -> the generated module
    make_runner: Callable[[Any], Any]  # (program) -> a runner (optdsl.runtime.step.Runner)
    # why it cannot run tensors on these device types ("cpu", "cuda"), or None; ``auto``:
    # the question is asked for backend="auto"
    unavailable: Callable[[frozenset[str], bool], str | None]
    auto: Callable[[frozenset[str]], bool]  # whether "auto" tries it for these devices
    load_mode: Callable[[], str] = lambda: ""  # what else a loaded module depends on
    suffix: str = ".py"  # of the files `optdsl compile` writes
    auto_rank: int = 0  # "auto" tries back ends in this order (lowest first), then by name
    # whether it runs library stages (matrix products, row and column statistics, bfloat16
    # work: optdsl.ir.stages); "auto" passes over one that does not for such a program
    library_stages: bool = True
    # its scalars are computed on the device (optdsl.ir.schedule.Schedule.placement)
    device_scalars: bool = False
    # it has no element sweeps: every tensor-level value runs in library stages
    # (optdsl.ir.stages, ``library_only``)
    library_only: bool = False
    # its sweeps accumulate the row and column statistics library stages read of their
    # element values (optdsl.ir.stages.fused_stats; the others compute them in the stage)
    fuse_stats: bool = False
    # (graph, program name) -> why it cannot run this step, or None
    refuses: Callable[[Any, str], str | None] = lambda graph, name: None


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add a back end (an extension point: a new one is a code generator, a runner and this
    call)."""
    if backend.name in BACKENDS or backend.name in ("auto", "ir"):
        raise ValueError(f"back end {backend.name!r} already exists")
    if not backend.name.isidentifier():
        raise ValueError(f"a back end's name must be an identifier, got {backend.name!r}")
    BACKENDS[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    """Remove a back end (for tests that register throwaway ones)."""
    BACKENDS.pop(name)


def get(name: str) -> Backend:
    found = BACKENDS.get(name)
    if found is None:
        raise ValueError(f"backend must be one of {', '.join(map(repr, names()))}, "
                         f"got {name!r}")
    return found


def names(with_auto: bool = True) -> tuple[str, ...]:
    return (("auto",) if with_auto else ()) + tuple(BACKENDS)


def choose(request: str, devices, library_work: str = "") -> str:
    """The concrete back end for parameters on ``devices`` (device types such as "cpu"),
    checked at construction, not at the first step. Parameters on the ``meta`` device have
    no data yet (built to be moved with ``to_empty()``): they do not decide.
    ``library_work``: the program's first library-stage operation ('' if none), which a
    back end without library stages cannot run."""
    if not isinstance(request, str):
        raise TypeError(f"backend must be a str, got {type(request).__name__}")
    devices = frozenset(devices) - {"meta"}
    if request != "auto":
        backend = get(request)
        reason = backend.unavailable(devices, False)
        if reason:
            raise ValueError(reason)
        if library_work and not backend.library_stages:
            raise ValueError(f"backend={backend.name!r} does not run matrix work (library "
                             f"stages) yet, and this program has {library_work}; use "
                             f"backend={_running_matrix_work()} or 'auto'")
        return backend.name
    tried = sorted((b for b in BACKENDS.values()
                    if b.auto(devices) and (b.library_stages or not library_work)),
                   key=lambda b: b.auto_rank)
    passed = []
    for backend in tried:
        reason = backend.unavailable(devices, True)
        if reason is None:
            for skipped, why in passed:
                _fall_back_warning(skipped, backend.name, why)
            return backend.name
        passed.append((backend.name, reason))
    if tried:
        raise ValueError(passed[0][1])
    where = ", ".join(sorted(devices))
    if library_work and any(b.auto(devices) for b in BACKENDS.values()):
        raise ValueError(f"this program has matrix work ({library_work}), which no back end "
                         f"runs on {where} tensors yet (back ends that run matrix work: "
                         f"{_running_matrix_work()})")
    raise ValueError(f"no back end runs parameters on {where}")


def _running_matrix_work() -> str:
    """The back ends that run library stages, as messages list them."""
    return ", ".join(repr(b.name) for b in BACKENDS.values() if b.library_stages)


_WARNED: set[tuple[str, str]] = set()


def _fall_back_warning(skipped: str, chosen: str, why: str) -> None:
    """One warning per process that backend="auto" passed over a preferred back end."""
    if (skipped, chosen) not in _WARNED:
        _WARNED.add((skipped, chosen))
        warnings.warn(f"backend='auto' uses {chosen!r}: the {skipped!r} back end is not "
                      f"available here ({why})", RuntimeWarning, stacklevel=4)


# -- the built-in back ends ---------------------------------------------------------------------

def _numpy_unavailable(devices: frozenset[str], auto: bool) -> str | None:
    gpus = devices - {"cpu"}
    if gpus:
        return (f"backend='numpy' runs on CPU tensors, but parameters are on "
                f"{', '.join(sorted(gpus))}; use backend='triton' or 'auto'")
    return None


def _triton_unavailable(devices: frozenset[str], auto: bool) -> str | None:
    if auto:
        if not select.triton_available():
            return ("parameters are on a GPU but Triton cannot be imported; install "
                    "triton, or move the parameters to the CPU for the NumPy backend")
        return None
    if not select.triton_available():
        return "backend='triton' needs the triton package, which cannot be imported"
    if "cpu" in devices and not select.interpreting():
        return ("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run kernels "
                "on CPU tensors through the Triton interpreter)")
    return None


def _numpy_runner(program):
    from optdsl.runtime.numpy_runner import NumpyRunner

    return NumpyRunner(program)


def _triton_runner(program):
    from optdsl.runtime.triton_runner import TritonRunner

    return TritonRunner(program)


def _triton_load(source: str, tag: str):
    from optdsl.codegen.contract import GeneratedModule
    from optdsl.runtime import cache

    return GeneratedModule.of(cache.load_module(source, "triton_" + tag,
                                                {"kind": "triton-step"},
                                                select.interpret_mode()))


def _numpy_load(source: str, tag: str):
    from optdsl.runtime.loader import load_source

    return load_source(source, f"numpy:{tag}")


register(Backend("numpy", "chunked NumPy on CPU tensors", numpy_codegen.spells,
                 numpy_codegen.generate, _numpy_load, _numpy_runner, _numpy_unavailable,
                 lambda devices: not (devices - {"cpu"})))
register(Backend("triton", "fused Triton kernels (CUDA, or TRITON_INTERPRET=1 on CPU)",
                 triton_codegen.spells, triton_codegen.generate, _triton_load, _triton_runner,
                 _triton_unavailable, lambda devices: bool(devices - {"cpu"}),
                 load_mode=lambda: select.interpret_mode(), device_scalars=True,
                 fuse_stats=True))


def _c_unavailable(devices: frozenset[str], auto: bool) -> str | None:
    gpus = devices - {"cpu"}
    if gpus:
        return (f"backend='c' runs on CPU tensors, but parameters are on "
                f"{', '.join(sorted(gpus))}; use backend='triton' or 'auto'")
    from optdsl.runtime import c_build

    why = c_build.unavailable()
    if why:
        return f"backend='c' needs a working C compiler: {why} (set CC, or use " \
               f"backend='numpy')" if not auto else why
    return None


def _c_runner(program):
    from optdsl.runtime.c_runner import CRunner

    return CRunner(program)


def _c_load(source: str, tag: str):
    from optdsl.runtime import c_module

    return c_module.load(source, tag)


# "auto" tries C first on CPU tensors, for matrix work (library stages) too: its library
# stages are the NumPy back end's torch code and its sweeps threaded C, and it measured
# faster than NumPy on GPT-2-small's matrices (bench/results/matrix-2026-12-02-c-lib.md,
# one run: Muon 0.96x torch.optim.Muon against NumPy's 1.09x, Adafactor 0.46x
# torch.optim.Adafactor(foreach=True) against 0.64x)
register(Backend("c", "compiled C on CPU tensors (the system compiler, at first use)",
                 c_codegen.spells, c_codegen.generate, _c_load, _c_runner, _c_unavailable,
                 lambda devices: not (devices - {"cpu"}), suffix=".c", auto_rank=-1,
                 fuse_stats=True))


def _torch_runner(program):
    from optdsl.runtime.torch_runner import TorchRunner

    return TorchRunner(program)


def _torch_load(source: str, tag: str):
    from optdsl.runtime.loader import load_source

    return load_source(source, f"torch:{tag}")


# every tensor op in torch, on the tensors' own device: "auto" takes it for GPU parameters
# when Triton cannot be imported
register(Backend("torch", "torch operations on the parameters' own tensors (CPU or CUDA)",
                 torch_codegen.spells, torch_codegen.generate, _torch_load, _torch_runner,
                 lambda devices, auto: None, lambda devices: bool(devices - {"cpu"}),
                 auto_rank=1, library_only=True, refuses=torch_codegen.refuses))
