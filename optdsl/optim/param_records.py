"""What each parameter's state was last made or checked for: one record per parameter, the
short way of a steady-state step.

A step visits every parameter several times (the checks before anything is written, the
step count, the runner's tables), and on a model of many small tensors that host work costs
more than the update itself. A record says what a parameter's state was when the step last
made or checked it: the state dict and each of its values (by identity), their storage (data
pointers), shapes and layouts, the parameter's shape, dtype, storage and layout, the
gradient's dtype, and the live states the state was made for. While all of that is
unchanged, the checks before the step pass without looking further
(``step_checks.prepare_groups``), the state is known to be made (``_ready_state``), the step
is counted through a ctypes view of the step tensor's number (valid while the step tensor's
storage is the recorded one), and the record's ``token`` (never reused) stands for every one
of those facts in the keys of a runner's cached tables (the C runner's,
``optdsl.runtime.c_runner``), which otherwise re-read every pointer each step. (A state
tensor transposed, resized or restrided in place keeps its identity and storage: its shape
and layout tell; a fresh step would stage it or refuse it.)

A record is *fast* for a plain parameter: real, not a DTensor, on the CPU or a GPU, every
state value a contiguous tensor, no master weight; only fast records are checked this way
(the others keep the slow checks, as before). Records are keyed by ``id(param)``; a record
of a parameter that died cannot pass for a new one (its state dict is another object).
``load_state_dict`` clears them.
"""

from __future__ import annotations

import ctypes
import itertools
import operator

import torch

_tokens = itertools.count(1)

# the step tensor dtypes whose number a ctypes view reads and writes in place
_COUNTERS = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_shape = operator.attrgetter("shape")
_is = operator.is_


class ParamRecord:
    """One parameter's state as the step last made or checked it (see the module docstring)."""

    __slots__ = ("state", "size", "step", "ptr", "dtype", "live", "counter", "fast", "values",
                 "ptrs", "arrays", "shapes", "shape", "param_ptr", "grad_dtype", "token")

    def __init__(self, param: torch.Tensor, grad: torch.Tensor | None, state: dict,
                 live: frozenset[str], plain_param: bool) -> None:
        step = state["step"]
        self.state = state
        self.size = len(state)
        self.step = step
        self.ptr = step.data_ptr()
        self.dtype = param.dtype
        self.live = live
        plain = (step.device.type == "cpu" and step.dim() == 0 and not step.requires_grad
                 and type(step) is torch.Tensor)
        number = _COUNTERS.get(step.dtype) if plain else None
        self.counter = None if number is None else number.from_address(self.ptr)
        self.values = tuple(state.values())
        self.fast = (plain_param and grad is not None and param.is_contiguous()
                     and all(type(v) is torch.Tensor for v in self.values)
                     and all(map(_is_contiguous, self.values)))
        self.ptrs = tuple(map(_data_ptr, self.values)) if self.fast else ()
        # the values with dimensions: changed in place (`t_()`, `resize_()`, `as_strided_()`)
        # one keeps its identity and storage, and its shape and layout tell
        self.arrays = tuple(v for v in self.values if v.dim()) if self.fast else ()
        self.shapes = tuple(map(_shape, self.arrays))
        self.shape = param.shape
        self.param_ptr = param.data_ptr() if self.fast else 0
        self.grad_dtype = None if grad is None else grad.dtype
        self.token = next(_tokens)

    def still(self, param: torch.Tensor, grad: torch.Tensor, state: dict) -> bool:
        """Whether this fast record still describes ``param``, its gradient and ``state``."""
        values = self.values
        return (self.state is state and len(values) == len(state)
                and self.shape == param.shape and self.dtype is param.dtype
                and self.grad_dtype is grad.dtype and self.param_ptr == param.data_ptr()
                and param.is_contiguous() and all(map(_is, values, state.values()))
                and self.ptrs == tuple(map(_data_ptr, values))
                and self.shapes == tuple(map(_shape, self.arrays))
                and all(map(_is_contiguous, self.arrays)))

    def made_for(self, param: torch.Tensor, state: dict, live: frozenset[str]) -> bool:
        """Whether ``state`` is known to be made for this step (the slow way's check)."""
        step = state.get("step")
        return (self.state is state and self.size == len(state) and self.step is step
                and self.ptr == step.data_ptr() and self.dtype is param.dtype
                and self.serves(live) and all(map(_is, self.values, state.values())))

    def serves(self, live: frozenset[str]) -> bool:
        """Whether the state was made for a step with these live states."""
        return self.live is live or self.live == live
