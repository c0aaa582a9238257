"""Mixed precision: the dtype a state is stored in, fp32 master weights, stochastic rounding.

The policy, shared by every back end (optdsl.optim.torch_optimizer applies it, the runners
carry it out):

- ``state_dtype``: tensor states are stored in float32 by default (float64 for float64
  parameters), whatever the parameter's dtype; ``"param"`` stores them in the parameter's
  dtype (torch.optim's choice); a torch floating dtype stores every tensor state in it (for
  example ``torch.bfloat16`` halves the optimizer's memory). Arithmetic is float32 (float64
  for float64 parameters) in every case.
- ``master_weights``: a float16/bfloat16 parameter gets a float32 copy, ``state[MASTER_KEY]``;
  the step reads and updates the copy and writes it, rounded, into the parameter. Updates
  smaller than half a bfloat16 ulp then accumulate instead of being lost.
- ``stochastic_rounding``: every bfloat16 write of the step (parameters, states, the rounded
  copy of a master weight) rounds up or down at random, with the probability that makes the
  rounding unbiased; float16 writes round to nearest. The random bits come from a seed per
  (param group, step), derived from ``torch.initial_seed()`` at construction and the group's
  total update count (from ``state["step"]``), so runs are reproducible under
  ``torch.manual_seed``, a run resumed from a checkpoint (with the same ``manual_seed``
  before construction) rounds as the uninterrupted one would, and torch's generator is
  never drawn from.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from optdsl.optim import complex_view
from optdsl.runtime.rounding import derive_seed, round_bf16_stochastic  # noqa: F401

MASTER_KEY = "master_param"
LOW_PRECISION = (torch.float16, torch.bfloat16)
STATE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

StateDtype = Union[torch.dtype, str, None]


def check_state_dtype(value: StateDtype) -> StateDtype:
    """``value`` if it is a valid ``state_dtype``; a TypeError or ValueError naming it if not."""
    if value is None or value == "param":
        return value
    if isinstance(value, str):
        raise ValueError(f"state_dtype must be None, 'param' or a torch floating dtype, "
                         f"got {value!r}")
    if not isinstance(value, torch.dtype):
        raise TypeError(f"state_dtype must be None, 'param' or a torch.dtype, got "
                        f"{type(value).__name__}")
    if value not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of "
                         f"{', '.join(str(d) for d in STATE_DTYPES)}, got {value}")
    return value


def check_flag(name: str, value: object) -> bool:
    """A bool keyword: True, False (or 1, 0); anything else is a TypeError naming it."""
    if isinstance(value, (bool, np.bool_)) or (type(value) is int and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def state_dtype_for(policy: StateDtype, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype tensor states of a ``param_dtype`` parameter are stored in."""
    if param_dtype.is_complex:  # complex states (optdsl.optim.complex_view)
        return complex_view.state_dtype_of(policy, param_dtype)
    if policy is None:
        return torch.float64 if param_dtype == torch.float64 else torch.float32
    if policy == "param":
        return param_dtype
    return policy


def needs_master(master_weights: bool, param_dtype: torch.dtype) -> bool:
    return master_weights and param_dtype in LOW_PRECISION


class RoundingSeeds:
    """The seeds of stochastic rounding: one per (param group, step), from a base seed."""

    def __init__(self, base: int) -> None:
        self.base = int(base) & (2**64 - 1)

    def seed(self, group: int, count: int, *more: int) -> int:
        """The seed of a group's step (``count``: the group's total update count)."""
        return derive_seed(self.base, count, group, *more)
