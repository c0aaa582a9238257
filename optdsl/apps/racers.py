"""Optimizer specs: the racers of ``optdsl demo`` and ``optdsl landscape``, named by string.

A spec is a bundled name (``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``,
``adam``, ``torch-sgd``; case-insensitive) or a path to a ``.opt`` file, either followed by
``:name=value,name=value`` to set hyperparameters (``adam:lr=3e-3``,
``examples/mine.opt:lr=0.05,a=0.9``; values are Python literals, so ``betas=(0.9,0.99)``
works). This module parses specs, checks that each racer can be built (``check_racers``) and
builds the optimizers (``make_optimizer``); a user program's ``lr`` with no default comes
from the caller's learning-rate table, any other required hyper must be given.
"""

from __future__ import annotations

import ast
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a racer is built: `optdsl --help` stays quick
    import torch

#: Bundled racers: key -> (display name, optdsl.library class name or "torch.optim.SGD",
#: fixed hyperparameters other than lr).
BUILTIN_OPTIMIZERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sgd": ("SGD", "SGD", {}),
    "momentum": ("Momentum", "SGD", {"momentum": 0.9}),
    "nesterov": ("Nesterov", "SGD", {"momentum": 0.9, "nesterov": True}),
    "adagrad": ("AdaGrad", "Adagrad", {}),
    "rmsprop": ("RMSProp", "RMSprop", {}),
    "adam": ("Adam", "Adam", {}),
    "torch-sgd": ("torch.optim.SGD", "torch.optim.SGD", {}),
}


_OVERRIDE_SPLIT = re.compile(r",(?![^()\[\]]*[)\]])")  # commas outside (...) and [...]


@dataclass(frozen=True)
class OptimizerSpec:
    """One racer: a bundled optimizer key or a ``.opt`` path, plus hyperparameter overrides."""

    text: str
    key: str | None = None
    path: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def is_user_program(self) -> bool:
        return self.path is not None


def _parse_value(text: str) -> Any:
    """A hyperparameter value: a Python literal (number, bool, tuple), else an error."""
    value_text = text.strip()
    lowered = value_text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("inf", "+inf", "-inf"):
        return float(lowered)
    try:
        return ast.literal_eval(value_text)
    except (ValueError, SyntaxError):
        raise ValueError(f"cannot read hyperparameter value {text!r} (expected a number)") from None


def _parse_overrides(text: str) -> dict[str, Any]:
    """``"lr=0.1,betas=(0.9,0.99)"`` -> ``{"lr": 0.1, "betas": (0.9, 0.99)}``."""
    overrides: dict[str, Any] = {}
    for item in _OVERRIDE_SPLIT.split(text):
        if not item.strip():
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            raise ValueError(f"bad hyperparameter override {item.strip()!r} (expected name=value)")
        overrides[name] = _parse_value(value)
    return overrides


def _split_spec(text: str) -> tuple[str, str]:
    """Split ``"target:name=value,..."`` at the last ':' that is followed by an override."""
    head, sep, tail = text.rpartition(":")
    if sep and "=" in tail and head:
        return head, tail
    return text, ""


def parse_optimizer_spec(spec: str | os.PathLike[str] | OptimizerSpec) -> OptimizerSpec:
    """Read one racer spec: ``"adam"``, ``"adam:lr=3e-3"``, ``"my.opt"``, ``"my.opt:a=0.9"``."""
    if isinstance(spec, OptimizerSpec):
        return spec
    text = os.fspath(spec)
    target, override_text = _split_spec(text)
    overrides = _parse_overrides(override_text)
    key = target.strip().lower()
    if key in BUILTIN_OPTIMIZERS:
        return OptimizerSpec(text, key=key, overrides=overrides)
    path = Path(target)
    if path.suffix == ".opt" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"optimizer program not found: {target}")
        return OptimizerSpec(text, path=path, overrides=overrides)
    names = ", ".join(BUILTIN_OPTIMIZERS)
    raise ValueError(f"unknown optimizer {target!r}: expected one of {names}, or a .opt file")


def resolve_optimizer_specs(
    optimizers: Sequence[str | os.PathLike[str] | OptimizerSpec] | None,
    defaults: Sequence[str],
) -> list[OptimizerSpec]:
    """The racers to run.

    None gives ``defaults``.  A list made only of ``.opt`` programs races them *alongside*
    ``defaults`` (comparing a new rule with the classics is the point of the demo); a list
    naming any bundled optimizer is taken exactly as given.
    """
    if optimizers is None:
        return [parse_optimizer_spec(name) for name in defaults]
    if isinstance(optimizers, (str, os.PathLike)):
        optimizers = [optimizers]
    specs = [parse_optimizer_spec(item) for item in optimizers]
    if specs and all(spec.is_user_program for spec in specs):
        specs = [parse_optimizer_spec(name) for name in defaults] + specs
    return specs


def _display_name(base: str, overrides: Mapping[str, Any]) -> str:
    if not overrides:
        return base
    shown = ", ".join(f"{name}={value}" for name, value in overrides.items())
    return f"{base} ({shown})"


def _hyper_table(prog: Any) -> dict[str, Any]:
    """The program's hyperparameters as ``{name: default}``, None meaning "no default"."""
    return {name: None if spec.required else spec.default for name, spec in prog.hypers.items()}


def _user_program_hypers(
    prog: Any, path: Path, overrides: Mapping[str, Any], default_lr: float
) -> dict[str, Any]:
    """Hyperparameters for a user program: overrides, plus lr from the table if it has none."""
    table = _hyper_table(prog)
    hypers = dict(overrides)
    if "lr" in table and table["lr"] is None and "lr" not in hypers:
        hypers["lr"] = default_lr
    missing = [name for name, default in table.items() if default is None and name not in hypers]
    if missing:
        names = ", ".join(missing)
        example = ",".join(f"{name}=VALUE" for name in missing)
        raise ValueError(
            f"{path}: hyperparameter(s) with no default: {names}; "
            f"give them as overrides, e.g. '{path}:{example}'"
        )
    unknown = [name for name in hypers if name not in table]
    if unknown:
        raise ValueError(
            f"{path}: no hyperparameter named {', '.join(unknown)} "
            f"(it declares: {', '.join(table) or 'none'})"
        )
    return hypers


def check_racers(
    specs: Iterable[OptimizerSpec],
    lr_table: Mapping[str, float],
    backend: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> list[float]:
    """Build every racer once on a throwaway parameter (of the racers' ``dtype``, default
    float32) and take one step, before any real work starts.

    A bad program (``optdsl.DslError``), a missing, unknown or out-of-range hyperparameter
    (``ValueError``/``TypeError``) or an impossible backend is then reported at once, not
    after the racers before it have run.  The step builds what a back end builds at first
    use (the C back end compiles its shared object then), so no racer's training time holds
    a compilation.  Returns each racer's seconds (construction and that first step); torch's
    own one-time cost of constructing its first optimizer (it imports torch._dynamo) is paid
    before the first racer's clock starts.
    """
    import torch

    torch.optim.SGD([torch.zeros(1)], lr=0.0)
    seconds = []
    for spec in specs:
        dummy = torch.zeros(1, device=device, dtype=dtype or torch.float32, requires_grad=True)
        start = time.perf_counter()
        _, optimizer, _ = make_optimizer(spec, [dummy], lr_table, backend)
        dummy.grad = torch.zeros_like(dummy)
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def _library_class(class_name: str) -> type[torch.optim.Optimizer]:
    """A bundled optimizer class from optdsl.library (imported on first use)."""
    from optdsl import library

    return getattr(library, class_name)


def make_optimizer(
    spec: OptimizerSpec,
    params: Iterable[torch.Tensor],
    lr_table: Mapping[str, float],
    backend: str = "auto",
) -> tuple[str, torch.optim.Optimizer, dict[str, Any]]:
    """Build one racer over ``params``: returns (display name, optimizer, hypers used).

    ``lr_table`` maps bundled keys (and "user", for ``.opt`` programs whose ``lr`` has no
    default) to learning rates; overrides in the spec win over the table.
    """
    if spec.path is not None:
        import optdsl

        prog = optdsl.load(spec.path)
        hypers = _user_program_hypers(prog, spec.path, spec.overrides, lr_table["user"])
        name = getattr(prog, "name", None) or spec.path.stem
        optimizer = prog.optimizer(params, **hypers, backend=backend)
        return _display_name(name, spec.overrides), optimizer, hypers
    assert spec.key is not None
    label, class_name, fixed = BUILTIN_OPTIMIZERS[spec.key]
    hypers = {"lr": lr_table[spec.key], **fixed, **spec.overrides}
    if class_name == "torch.optim.SGD":
        import torch

        optimizer = torch.optim.SGD(params, **hypers)
    else:
        optimizer = _library_class(class_name)(params, **hypers, backend=backend)
    return _display_name(label, spec.overrides), optimizer, hypers


def learning_rate(optimizer: torch.optim.Optimizer) -> float | None:
    """The lr a racer runs with (its first param group's), whether it came from the caller's
    table, an override or the program's own default; None for a program without ``lr``."""
    import torch

    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    if isinstance(lr, torch.Tensor):
        return float(lr)
    return None if lr is None else float(lr)
