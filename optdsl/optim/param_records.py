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
storage is the recorded one), or inside the C step (``counted_for``:
optdsl.runtime.c_runner.CRunner.run_counted), and the record's ``token`` (never reused) stands
for every one of those facts in the keys of a runner's cached tables (the C runner's,
``optdsl.runtime.c_runner``), which otherwise re-read every pointer each step. (A state
tensor transposed, resized or restrided in place keeps its identity and storage: torch
bumps its version counter, and then its shape and layout are read again; a fresh step
would stage it or refuse it. The one such change no counter records, ``v.data = `` a view
of ``v``'s own storage, is not noticed on a state tensor: the step still writes only that
storage, as the state's layout it was made with.)

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
_version = operator.attrgetter("_version")
_is_inference = torch.Tensor.is_inference
_is = operator.is_


class ParamRecord:
    """One parameter's state as the step last made or checked it (see the module docstring)."""

    # (the fields a steady step's check reads first, so that they share cache lines: on a
    # step after a model's backward every one it reads is a miss)
    __slots__ = ("fast", "state", "shape", "expect", "versions", "counted_for", "token",
                 "counter", "live", "values", "arrays", "shapes", "size", "step", "ptr",
                 "dtype", "grad_dtype")

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
        # the live states of a steady step, where this parameter's update is counted in its
        # step tensor's number (through ``counter``, or by the C step: CRunner.run_counted)
        self.counted_for = None if self.counter is None else live
        self.values = tuple(state.values())
        self.fast = (plain_param and grad is not None and param.is_contiguous()
                     and all(type(v) is torch.Tensor for v in self.values)
                     and all(map(_is_contiguous, self.values)))
        # the values with dimensions: changed in place (`t_()`, `resize_()`, `as_strided_()`)
        # one keeps its identity and storage, and its shape and layout tell
        self.arrays = tuple(v for v in self.values if v.dim()) if self.fast else ()
        self.shape = param.shape
        # the arrays' shapes where one differs from the parameter's (row and column states),
        # else None: each is then checked against the step's own gradient shape, which
        # reads no stored shape
        shapes = tuple(map(_shape, self.arrays))
        self.shapes = None if all(map(self.shape.__eq__, shapes)) else shapes
        # their version counters: torch bumps one for every in-place change, of the data
        # or of the shape and layout (`t_()`, `resize_()`, `as_strided_()`, `set_()`), so
        # while they are unchanged the shapes and layouts are not read again (None: some
        # array is an inference tensor, which keeps no counter: they are read every step)
        self.versions = (None if any(map(_is_inference, self.arrays))
                         else tuple(map(_version, self.arrays)))
        self.grad_dtype = None if grad is None else grad.dtype
        self.token = next(_tokens)
        self.expect = ()
        if self.fast:
            # what the check compares, in one tuple (one stored object to read): each
            # value (by identity), the parameter's storage, dtype and gradient dtype, each
            # value's storage, then the arrays' versions; checked by a class whose still()
            # is written out for this many values (see _checking_class)
            self.expect = (*self.values, param.data_ptr(), self.dtype, self.grad_dtype,
                           *map(_data_ptr, self.values), *(self.versions or ()))
            positions = tuple(i for i, v in enumerate(self.values) if v.dim())
            self.__class__ = _checking_class(len(self.values), positions)

    def still(self, param: torch.Tensor, grad: torch.Tensor, state: dict,
              shape: torch.Size | None = None) -> bool:
        """Whether this fast record still describes ``param``, its gradient and ``state``
        (``shape``: the gradient's, when the caller has read it; it must be the
        parameter's). Only a fast record's check can hold: its class writes it out
        (_checking_class)."""
        return False

    def _same_layouts(self, shape: torch.Size) -> bool:
        """Whether the arrays (changed in place since their versions were read) still have
        their shapes and contiguous layouts; if so, their new versions are kept."""
        arrays = self.arrays
        if not (all(map(_is_contiguous, arrays))
                and (all(map(shape.__eq__, map(_shape, arrays))) if self.shapes is None
                     else self.shapes == tuple(map(_shape, arrays)))):
            return False
        if self.versions is not None:
            self.versions = tuple(map(_version, arrays))
            self.expect = self.expect[:len(self.expect) - len(arrays)] + self.versions
        return True

    def made_for(self, param: torch.Tensor, state: dict, live: frozenset[str]) -> bool:
        """Whether ``state`` is known to be made for this step (the slow way's check)."""
        step = state.get("step")
        return (self.state is state and self.size == len(state) and self.step is step
                and self.ptr == step.data_ptr() and self.dtype is param.dtype
                and self.serves(live) and all(map(_is, self.values, state.values())))

    def serves(self, live: frozenset[str]) -> bool:
        """Whether the state was made for a step with these live states."""
        return self.live is live or self.live == live


_CHECKING_CLASSES: dict[tuple[int, tuple[int, ...]], type] = {}


def _checking_class(count: int, arrays: tuple[int, ...]) -> type:
    """The ParamRecord subclass whose still() checks a fast record of ``count`` state
    values, those at positions ``arrays`` with dimensions. The check runs for every
    parameter at every step, so it is written out for the layout (no loop, map or tuple
    built per value: those cost more than the reads themselves). Made once per layout."""
    found = _CHECKING_CLASSES.get((count, arrays))
    if found is not None:
        return found
    source = checking_source(count, arrays)
    namespace: dict = {}
    exec(compile(source, f"<optdsl record check: {count} values>", "exec"), namespace)
    cls = type(f"ParamRecord{count}", (ParamRecord,), {
        "__slots__": (), "still": namespace["still"], "__module__": __name__,
        "__doc__": f"A fast record of {count} state values (see _checking_class)."})
    return _CHECKING_CLASSES.setdefault((count, arrays), cls)


def checking_source(count: int, arrays: tuple[int, ...]) -> str:
    """The source of still() for a fast record's layout (see _checking_class). ``expect``
    holds the values, the parameter's storage, dtype, gradient dtype, the values' storage,
    then the arrays' versions."""
    names = [f"v{i}" for i in range(count)]
    ptr = count  # (positions in expect)
    checks = [f"{v} is e[{i}]" for i, v in enumerate(names)]
    checks += ["self.shape == shape", "param.shape == shape",
               f"param.data_ptr() == e[{ptr}]", f"param.dtype is e[{ptr + 1}]",
               f"grad.dtype is e[{ptr + 2}]"]
    checks += [f"{v}.data_ptr() == e[{ptr + 3 + i}]" for i, v in enumerate(names)]
    checks.append("param.is_contiguous()")
    first = ptr + 3 + count
    versions = " and ".join(["self.versions is not None"] + [
        f"v{a}._version == e[{first + j}]" for j, a in enumerate(arrays)])
    checks.append(f"({versions} or self._same_layouts(shape))")
    body = "\n            and ".join(checks)
    unpack = ", ".join(names) + ("," if count == 1 else "")
    return (f"def still(self, param, grad, state, shape=None):\n"
            f"    if self.state is not state or len(state) != {count}:\n"
            f"        return False\n"
            f"    {unpack} = state.values()\n"
            f"    e = self.expect\n"
            f"    if shape is None:\n"
            f"        shape = grad.shape\n"
            f"    return ({body})\n")
