"""Hyperparameter values: constructor keywords checked against a program's HyperSpecs and
Requirements.

Shared by the torch wrapper and the NumPy optimizer. Unknown or missing keywords are
TypeErrors (as Python reports bad keywords); values outside a declared interval (checked for
the constructor's keywords and every param group, at every step) and constructor keywords for
which a program's ``require`` does not hold (checked where torch.optim checks such
conditions: in the constructor; a param group may override them, as in torch) are
ValueErrors that name the hyper, the value and the interval (or the condition). A message
starts with torch.optim's own words for the same mistake, so that code (and tests) written
against torch.optim's messages match:
"Invalid learning rate: -1", "Invalid epsilon value: ...", "Invalid <name> value: ...",
"Invalid beta parameter at index 0: 1.0" (a tuple keyword's singular: betas -> beta),
"Tensor lr must be 1-element", or the program's ``require`` message.
"""

from __future__ import annotations

import math
import numbers
import types
from collections.abc import Iterable, Mapping
from typing import Any

from optdsl.errors import suggest
from optdsl.frontend.signature import GIVEN, TORCH_FLAG_NAMES, HyperSpec, Requirement

# Keywords every torch.optim optimizer accepts that do not change the math here: the step
# is always one fused pass, so `foreach` and `capturable` are accepted and kept in the param
# groups (as torch does) but have no effect; `fused=True` makes the step unscale gradients
# itself under torch.amp.GradScaler (optdsl.optim.torch_optimizer).
TORCH_FLAGS = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}
assert tuple(TORCH_FLAGS) == TORCH_FLAG_NAMES

# torch.optim's words for an out-of-range value of these hypers (all its optimizers share
# them); any other hyper gets torch's general form, "Invalid <name> value: <value>".
_TORCH_WORDING = {"lr": "Invalid learning rate: {value}", "eps": "Invalid epsilon value: {value}"}
# torch's words for a value that is not one of a choice's (Muon's adjust_lr_fn)
_CHOICE_WORDING = {"adjust_lr_fn": "Adjust learning rate function {value} is not supported"}


def shown(value: Any) -> str:
    """A hyper's value as a message shows it: as given (torch prints ``-1`` for -1; a tensor
    by its number), a huge integer by its size."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, numbers.Number):
        try:
            value = item()
        except (ValueError, RuntimeError):  # more than one element: shown as it is
            pass
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    return str(value)


def to_number(name: str, value: Any, label: str | None = None) -> float:
    """A hyper's value as a float: numbers, bools and one-element tensors are accepted.
    ``name`` is what torch's messages call it (``betas[0]`` for a part), ``label`` how ours
    name it (default: the hyper ``name``)."""
    label = label or f"hyper `{name}`"
    try:
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, numbers.Real):
            return float(value)
        if hasattr(value, "numel") and hasattr(value, "item"):  # torch.Tensor, not imported
            if value.numel() != 1:
                raise ValueError(f"Tensor {name} must be 1-element: {label} must be a number or "
                                 f"a one-element tensor, got a tensor of shape "
                                 f"{tuple(value.shape)}")
            return float(value.item())
        if hasattr(value, "item") and getattr(value, "size", None) == 1:  # NumPy scalar/array
            return float(value.item())
    except OverflowError:
        raise ValueError(f"Invalid {name} value: {shown(value)} is too large for a float "
                         f"({label})") from None
    raise TypeError(f"{label} must be a number, got {type(value).__name__}")


def check_flags(flags: Mapping[str, Any]) -> None:
    if flags.get("differentiable"):
        raise ValueError("differentiable=True is not supported: optdsl steps run outside "
                         "autograd")
    if flags.get("fused") and flags.get("foreach"):
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def check_tensor_rules(names: Iterable[str], values: Mapping[str, Any]) -> None:
    """torch.optim.Adam's (and AdamW's) rules for Tensor-valued hypers, for the hypers in
    ``names``: none is a Tensor with foreach=True unless capturable=True, and a tuple
    keyword's parts are all Tensors or all numbers (the twins refuse what torch refuses)."""
    foreach_only = values.get("foreach") and not values.get("capturable")
    for name in names:
        value = values.get(name)
        if _is_tensor(value) and foreach_only:
            raise ValueError(f"{name} as a Tensor is not supported for capturable=False and "
                             f"foreach=True")
        if isinstance(value, (tuple, list)) and value:
            tensors = [_is_tensor(v) for v in value]
            if any(tensors) and not all(tensors):
                raise ValueError(f"{name} must be either both floats or both Tensors")
            if all(tensors) and foreach_only:
                raise ValueError(f"{name}[0] as a Tensor is not supported for capturable=False "
                                 f"and foreach=True")


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "numel") and hasattr(value, "item") and hasattr(value, "shape")


def resolve(specs: Mapping[str, HyperSpec], given: Mapping[str, Any],
            extra: Mapping[str, Any] = TORCH_FLAGS,
            requirements: Iterable[Requirement] = ()) -> dict[str, Any]:
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
    _derive(specs, values)
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
    given: dict[str, Any] = {}
    scalar_values = scalars(specs, values, given)  # validate now, at construction
    for requirement in requirements:
        if not requirement.per_parameter and not requirement.holds(scalar_values):
            raise ValueError(_unmet(requirement, given))
    return values


def check_parameter(requirements: Iterable[Requirement], specs: Mapping[str, HyperSpec],
                    group: Mapping[str, Any], facts: Mapping[str, float], size) -> None:
    """The per-parameter requirements (those reading `w.ndim` ...) for one parameter."""
    checks = [r for r in requirements if r.per_parameter]
    if not checks:
        return
    given: dict[str, Any] = {}
    values = {**scalars(specs, group, given), **facts}
    for requirement in checks:
        if not requirement.holds(values):
            raise ValueError(_unmet(requirement, given, size))


def _derive(specs: Mapping[str, HyperSpec], values: dict[str, Any]) -> None:
    """Fill each derived hyper left absent or None (torch.optim.LBFGS's max_eval =
    max_iter * 5 // 4): an int when every hyper it reads is an int."""
    for name, spec in specs.items():
        if spec.derived is None or values.get(name) is not None:
            continue
        sources = spec.derived_from()
        numbers = {n: to_number(n, values[n]) for n in sources}
        value = spec.derive(numbers)
        ints = all(isinstance(values[n], int) and not isinstance(values[n], bool)
                   for n in sources)
        values[name] = int(value) if ints and float(value).is_integer() else value


def scalars(specs: Mapping[str, HyperSpec], group: Mapping[str, Any],
            given: dict[str, Any] | None = None,
            tensors_on: str | None = None) -> dict[str, float]:
    """The scalar names the generated code reads (tuple parts unpacked), validated against
    the intervals. ``given`` receives each scalar's value as given (for messages). With
    ``tensors_on`` (a device type), a one-element tensor on that device is kept as it is,
    unread (a device step reads it there: reading it here would wait for the device; torch
    checks a tensor's range at construction only, and so does this)."""
    out: dict[str, float] = {}
    given = {} if given is None else given

    def number(name: str, item: Any, label: str | None = None):
        if tensors_on is not None and _is_tensor(item) and \
                getattr(item.device, "type", None) == tensors_on and item.numel() == 1:
            return item
        return to_number(name, item, label)

    for name, spec in specs.items():
        if name not in group:
            raise KeyError(f"param group has no value for hyper `{name}`")
        value = group[name]
        if spec.choices is not None:
            out[name] = _choice_index(spec, value)
            given[name] = value
            continue
        if spec.parts:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or \
                    len(value) != len(spec.parts):
                raise ValueError(f"hyper `{name}` must be a tuple of {len(spec.parts)} numbers "
                                 f"({', '.join(spec.parts)}), got {value!r}")
            for index, (part, item) in enumerate(zip(spec.parts, value)):
                label = f"hyper `{name}` ({part})"
                if _absent(spec, part, item, out, given):
                    continue
                out[part] = number(f"{name}[{index}]", item, label)
                given[part] = item
                if not torch_kept(out[part]) and not _inside(spec, out[part]):
                    raise ValueError(f"Invalid {_singular(name)} parameter at index {index}: "
                                     f"{shown(item)} ({label} must be in {spec.interval})")
        else:
            if _absent(spec, name, value, out, given):
                continue
            out[name] = number(name, value)
            given[name] = value
            if not torch_kept(out[name]) and not _inside(spec, out[name]):
                words = _TORCH_WORDING.get(name, f"Invalid {name} value: {{value}}")
                raise ValueError(words.format(value=shown(value))
                                 + f" (hyper `{name}` must be in {spec.interval})")
    return out


_PLAIN_TYPES = frozenset({float, int, bool, str, type(None)})


def plain_key(specs: Mapping[str, HyperSpec], group: Mapping[str, Any]) -> tuple | None:
    """The group's values of these hypers as a key, each by type and value, when every one is
    a plain Python number, string or None, or a tuple or list of them: groups with equal keys
    get equal ``scalars`` (which read nothing else), so a step can keep the last result.
    None when any value is something else (a tensor can change in place) or missing."""
    key = []
    for name in specs:
        value = group.get(name, specs)  # (specs: a missing value's marker)
        kind = type(value)
        if kind in _PLAIN_TYPES:
            key.append((kind, value))
        elif (kind is tuple or kind is list) and all(type(x) in _PLAIN_TYPES for x in value):
            key.append((kind, tuple(map(type, value)), tuple(value)))
        else:
            return None
    return tuple(key)


def _choice_index(spec: HyperSpec, value: Any) -> float:
    """A choice's value as the number the generated code compares (its index)."""
    if value in spec.choices and (value is None or isinstance(value, str)):
        return float(spec.choices.index(value))
    listed = ", ".join("None" if c is None else repr(c) for c in spec.choices)
    words = _CHOICE_WORDING.get(spec.name, f"Invalid {spec.name} value: {{value!r}}")
    raise ValueError(words.format(value=value) + f" (hyper `{spec.name}` must be one of "
                     f"{listed})")


def _absent(spec: HyperSpec, name: str, value: Any, out: dict, given: dict) -> bool:
    """An optional hyper (or part) given None: NaN, and its `__given_` flag 0; a given
    number sets the flag 1 (and is then read as usual)."""
    if name not in spec.optional:
        return False
    out[GIVEN + name] = 0.0 if value is None else 1.0
    if value is not None:
        return False
    out[name] = math.nan
    given[name] = None
    return True


def torch_kept(value: Any) -> bool:
    """Whether ``scalars`` kept this value as the tensor it was given (``tensors_on``)."""
    return _is_tensor(value)


def _inside(spec: HyperSpec, value: float) -> bool:
    return spec.interval is None or spec.interval.contains(value)


def _singular(name: str) -> str:
    """torch's word for one part of a tuple keyword: betas -> beta, etas -> eta."""
    return name[:-1] if len(name) > 1 and name.endswith("s") else name


def _unmet(requirement: Requirement, given: Mapping[str, Any], size=None) -> str:
    values = {name: shown(value) for name, value in given.items()}
    got = ", ".join(f"{name} = {values[name]}" for name in requirement.names)
    if size is not None:
        got = ", ".join(x for x in (got, f"a parameter of size {tuple(size)}") if x)
    condition = f"requires {requirement.text}; got {got}"
    if requirement.message is None:
        return f"Invalid hyper values: this optimizer {condition}"
    shape = types.SimpleNamespace(shape=size)
    return f"{requirement.message.format(**values, w=shape)} (this optimizer {condition})"
