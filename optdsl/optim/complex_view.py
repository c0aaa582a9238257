"""Complex parameters, stepped as torch.optim steps them: on their real view.

torch.optim's optimizers that take complex parameters run their step on torch.view_as_real
of the parameter, its gradient and each tensor state: a complex number is two real numbers,
each updated by the real rule (Adam's second moment holds re^2 and im^2, not |z|^2). The
twins do the same: the runner gets the real views (float32 for complex64, float64 for
complex128), so every back end runs its ordinary compiled step and writes the complex tensors
in place. States stay complex tensors of the parameter's shape, so state_dicts hold what
torch's hold and checkpoints move both ways. A state's initial value is taken on the real
view: a number c gives complex(c, c), as torch.optim.Adagrad's initial_accumulator_value and
Rprop's step sizes start.

This module owns which parameters a twin takes (``check_params``: complex ones unless its
torch namesake refuses them, never sparse ones), the dtype of a complex parameter's states
(``state_dtype``) and the real views of one optimizer's complex parameters (``RealViews``,
kept between steps so that runners keep their views of them too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optdsl.runtime.step import Entry

COMPLEX_DTYPES = (torch.complex64, torch.complex128)
_OF_REAL = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def check_params(name: str, params: Sequence[torch.Tensor], number: int, complex_ok: bool,
                 state_dtype: Any) -> None:
    """Refuse what a twin cannot step, in torch.optim's words where it has them: sparse
    parameters, complex ones where its namesake refuses them (both ValueErrors, as
    torch.optim.SparseAdam raises), other dtypes (a TypeError)."""
    sparse = [[number, i] for i, p in enumerate(params) if p.layout is not torch.strided]
    if sparse:
        raise ValueError(f"Sparse params at indices {sparse}: {name} requires dense parameter "
                         f"tensors")
    complex_ = [[number, i] for i, p in enumerate(params) if p.is_complex()]
    if complex_ and not complex_ok:
        raise ValueError(f"Complex params at indices {complex_}: {name} does not support "
                         f"complex parameters")
    for p in params:
        if p.is_complex():
            if p.dtype not in COMPLEX_DTYPES:
                raise TypeError(f"{name} optimizes complex64 and complex128 parameters, got "
                                f"{p.dtype}")
            state_dtype_of(state_dtype, p.dtype)  # a policy these states cannot follow fails
        elif not p.is_floating_point():
            raise TypeError(f"{name} optimizes floating-point tensors, got {p.dtype}")


def state_dtype_of(policy: Any, dtype: torch.dtype) -> torch.dtype:
    """The dtype of a complex parameter's tensor states under a ``state_dtype`` policy
    (optdsl.optim.precision): its own dtype by default and for "param", complex64 or
    complex128 for float32 or float64 (the dtype of their real parts)."""
    if policy is None or policy == "param":
        return dtype
    found = _OF_REAL.get(policy)
    if found is None:
        raise ValueError(f"state_dtype={policy} cannot hold the states of a complex parameter "
                         f"({dtype}); use None, 'param', torch.float32 or torch.float64")
    return found


def initial_value(make, param: torch.Tensor) -> torch.Tensor:
    """A complex parameter's tensor state from ``make(real view)``, a real tensor of the real
    view's shape (the state's initial value on the real view)."""
    real = make(torch.view_as_real(param.detach()))
    return torch.view_as_complex(real.contiguous())


class _Views:
    """The real views of one complex parameter and of its tensor states."""

    __slots__ = ("param", "layout", "real", "states", "views")

    def __init__(self, param: torch.Tensor, states: tuple, keys: tuple[str, ...]) -> None:
        self.param = param
        self.layout = _layouts(param, states)
        self.real = torch.view_as_real(param.detach())
        self.states = states
        self.views = {key: torch.view_as_real(value) for key, value in zip(keys, states)
                      if value is not None}


def _layouts(param: torch.Tensor, states: tuple) -> tuple:
    """What a real view depends on besides the tensor's identity: its storage, shape and
    strides (`.data =` gives a tensor another storage, `t_()` another layout, and a view made
    before is of the old ones)."""
    return tuple(None if x is None else (x.data_ptr(), x.shape, x.stride())
                 for x in (param, *states))


class RealViews:
    """One optimizer's real views of its complex parameters, kept while the parameter and its
    state tensors are the ones they were made of, with the same storage and layout."""

    def __init__(self, tensor_keys: Sequence[str]) -> None:
        self.keys = tuple(tensor_keys)
        self._views: dict[int, _Views] = {}

    def forget(self) -> None:
        """Drop every view (after a load_state_dict replaced the states)."""
        self._views.clear()

    def entry(self, param: torch.Tensor, grad: torch.Tensor, state: dict, t: float) -> Entry:
        """The step's entry of a complex parameter: real views of it, its gradient and its
        tensor states (scalar states are the parameter's own)."""
        states = tuple(state.get(key) for key in self.keys)
        found = self._views.get(id(param))
        if (found is None or found.param is not param
                or any(a is not b for a, b in zip(found.states, states))
                or found.layout != _layouts(param, states)):
            found = _Views(param, states, self.keys)
            self._views[id(param)] = found
        real_state = dict(state)
        real_state.update(found.views)
        return Entry(found.real, torch.view_as_real(grad.resolve_conj()), real_state, t)
