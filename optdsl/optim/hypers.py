"""Hyperparameter values: constructor keywords checked against a program's HyperSpecs.

Shared by the torch wrapper and the NumPy optimizer. Unknown or missing keywords are
TypeErrors (as Python reports bad keywords), values outside a declared interval are
ValueErrors naming the hyper, the value and the interval.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

from optdsl.errors import suggest
from optdsl.frontend.signature import TORCH_FLAG_NAMES, HyperSpec

# Keywords every torch.optim optimizer accepts that do not change the math here: the step
# is always one fused pass, so `foreach`, `fused` and `capturable` are accepted and kept in
# the param groups (as torch does) but have no effect.
TORCH_FLAGS = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}
assert tuple(TORCH_FLAGS) == TORCH_FLAG_NAMES


def to_number(name: str, value: Any) -> float:
    """A hyper's value as a float: numbers, bools and one-element tensors are accepted."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "numel") and hasattr(value, "item"):  # torch.Tensor, without importing
        if value.numel() != 1:
            raise ValueError(f"hyper `{name}` must be a number or a one-element tensor, got a "
                             f"tensor of shape {tuple(value.shape)}")
        return float(value.item())
    if hasattr(value, "item") and getattr(value, "size", None) == 1:  # NumPy scalar/array
        return float(value.item())
    raise TypeError(f"hyper `{name}` must be a number, got {type(value).__name__}")


def check_flags(flags: Mapping[str, Any]) -> None:
    if flags.get("differentiable"):
        raise ValueError("differentiable=True is not supported: optdsl steps run outside "
                         "autograd")


def resolve(specs: Mapping[str, HyperSpec], given: Mapping[str, Any],
            extra: Mapping[str, Any] = TORCH_FLAGS) -> dict[str, Any]:
    """The defaults dict of an optimizer: every keyword's value (given or default)."""
    unknown = [k for k in given if k not in specs and k not in extra]
    if unknown:
        name = unknown[0]
        raise TypeError(f"unexpected keyword argument `{name}`"
                        + suggest(name, list(specs) + list(extra))
                        + f"; this optimizer takes {', '.join(specs) or 'no hypers'}")
    values: dict[str, Any] = {}
    missing = []
    for name, spec in specs.items():
        if name in given:
            values[name] = given[name]
        elif spec.required:
            missing.append(name)
        else:
            values[name] = spec.default
    if missing:
        name = missing[0]
        hint = ""
        close = suggest(name, [k for k in given if k not in specs])
        if close:
            hint = f"; you passed {close[len(' (did you mean '):-2]}"
        raise TypeError(f"missing required hyperparameter `{name}` (it has no default)"
                        + hint)
    for name, default in extra.items():
        values[name] = given.get(name, default)
    check_flags(values)
    scalars(specs, values)  # validate now, at construction
    return values


def scalars(specs: Mapping[str, HyperSpec], group: Mapping[str, Any]) -> dict[str, float]:
    """The scalar names the generated code reads (tuple parts unpacked), validated."""
    out: dict[str, float] = {}
    for name, spec in specs.items():
        if name not in group:
            raise KeyError(f"param group has no value for hyper `{name}`")
        value = group[name]
        if spec.parts:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or \
                    len(value) != len(spec.parts):
                raise ValueError(f"hyper `{name}` must be a tuple of {len(spec.parts)} numbers "
                                 f"({', '.join(spec.parts)}), got {value!r}")
            for part, item in zip(spec.parts, value):
                out[part] = _checked(spec, part, to_number(part, item), f"{name} ({part})")
        else:
            out[name] = _checked(spec, name, to_number(name, value), name)
    return out


def _checked(spec: HyperSpec, name: str, value: float, label: str) -> float:
    if spec.interval is not None and not spec.interval.contains(value):
        raise ValueError(f"Invalid {label}: {value!r} is outside {spec.interval}")
    return value
