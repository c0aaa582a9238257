"""Runs one param group's step on CPU torch tensors through the generated NumPy code.

Each optimizer has its own runner, so its scratch buffers and kept views are its own: two
optimizers stepped from two threads never share memory (one optimizer stepped from two
threads at once is refused).

float32 and float64 tensors that are contiguous are updated in place through zero-copy
NumPy views. Other dtypes (float16, bfloat16) and non-contiguous tensors are staged: copied
to a contiguous float32 (or float64) array, updated, and copied back, rounded to nearest or,
with a rounding seed, bfloat16 ones rounded stochastically with the bits every back end
draws for that element (optdsl.runtime.rounding: the same buckets, tensor indices and
columns as the Triton and C steps). A parameter with an fp32 master weight is stepped on
the master, then the master is copied into it.

A parameter whose tensors are all viewed in place keeps its slot between steps (views of w
and its tensor states): building NumPy views costs a few microseconds a tensor, a tenth of a
step of a model of ~100 tensors. The slot is rebuilt when the parameter's storage, shape or
layout changes or a state tensor is replaced or moves; the gradient, a new tensor after
zero_grad, is viewed afresh every step and not kept.
"""

from __future__ import annotations

import numpy as np
import torch

from optdsl.codegen.contract import GeneratedModule, ParamSlot
from optdsl.runtime.library_stage import as_tensor, commit, machine_eps
from optdsl.runtime.rounding import bf16_stochastic_bits, seeded_places
from optdsl.runtime.step import Entry, OneStepAtATime, StepContext, StepOptions, whole_shape

_NATIVE = (torch.float32, torch.float64)
COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class NumpySlot(ParamSlot):
    """A parameter's arrays for the generated sweeps (optdsl.codegen.numpy)."""

    __slots__ = ("arrays", "buffers", "masks", "partials", "shape")

    def __init__(self, t: float, states: list, num_reductions: int, arrays: list,
                 shape: tuple | None = None, dtype=None) -> None:
        super().__init__(t, states, num_reductions)
        self.arrays = arrays  # w, g, then each tensor state (None: unused by this step)
        self.buffers: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.partials: list = []
        self.shape = (arrays[0].shape[0],) if shape is None else tuple(shape)  # the param's
        if dtype is not None:
            self.set_facts(self.shape, machine_eps(dtype))


class _Staged:
    """A tensor viewed as a flat NumPy array, copied back on ``flush`` if it was staged;
    ``entry`` and ``column`` say whose column it is (for its random bits)."""

    __slots__ = ("array", "column", "entry", "staged", "tensor")

    def __init__(self, tensor: torch.Tensor, compute: torch.dtype, entry: int = 0,
                 column: int = 0) -> None:
        self.tensor = tensor
        self.entry = entry
        self.column = column
        if tensor.dtype == compute and tensor.is_contiguous():
            self.array = tensor.view(-1).numpy()
            self.staged = False
        else:
            self.array = tensor.detach().to(compute).contiguous().view(-1).numpy()
            self.staged = True

    def flush(self, where: tuple[int, int] | None = None) -> None:
        if self.staged:
            write_rounded(self.tensor, self.array, where, self.column)


def write_rounded(tensor: torch.Tensor, array: np.ndarray, where: tuple[int, int] | None,
                  column: int) -> None:
    """Copy a flat compute-dtype ``array`` into ``tensor``. With ``where`` (the seed of the
    tensor's bucket and its index there), a bfloat16 tensor gets the values rounded
    stochastically with the bits of ``column`` (others round to nearest)."""
    if where is not None and tensor.dtype == torch.bfloat16:
        bits = bf16_stochastic_bits(array, where[0], where[1], column)
        tensor.copy_(torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
                     .view(tensor.shape))
        return
    tensor.copy_(torch.from_numpy(array).view(tensor.shape))


def bucket_key(entry: Entry, tensor_keys: list[str], copy: torch.Tensor | None):
    """What puts a parameter in a bucket of the step (the dtypes of its tensors and of its
    master weight's copy; None: a zero-size parameter), as every back end numbers them for
    stochastic rounding (optdsl.runtime.rounding.buckets)."""
    if entry.param.numel() == 0:
        return None
    states = tuple(None if entry.state.get(k) is None else entry.state[k].dtype
                   for k in tensor_keys)
    return (entry.param.dtype, entry.grad.dtype, *states,
            None if copy is None else copy.dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Views:
    """A parameter's slot of zero-copy views and what it was built from."""

    __slots__ = ("param", "ptr", "shape", "states", "ptrs", "slot", "token")

    def __init__(self, param: torch.Tensor, states: tuple, slot: NumpySlot) -> None:
        self.param = param
        self.ptr = param.data_ptr()
        self.shape = param.shape  # (the slot's facts, w.rows and w.cols, are the shape's)
        self.states = states
        self.ptrs = _pointers(states)
        self.slot = slot
        self.token = None  # the parameter's record token these views were last found for


def _pointers(tensors: tuple) -> tuple:
    return tuple(0 if x is None else x.data_ptr() for x in tensors)


def _in_place(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.dtype == dtype and t.is_contiguous()


def _scalar_states(state: dict, state_keys: list[tuple[str, bool]]) -> list:
    return [None if is_tensor else np.float64(state[key].item())
            for key, is_tensor in state_keys]


class NumpyRunner:
    """One optimizer's runner of a program's generated NumPy steps."""

    def __init__(self, program, backend: str = "numpy") -> None:
        self.program = program
        self.backend = backend  # whose generated modules it runs (a NumPy-style back end)
        self.state_keys = [(s.key, s.tensor) for s in program.states.values()]
        self.shaped_keys = frozenset(s.key for s in program.states.values() if s.per)
        self._scalar_keys = any(not is_tensor for _, is_tensor in self.state_keys)
        self._scratch: dict[np.dtype, list[np.ndarray]] = {}
        self._masks: list[np.ndarray] = []
        self._views: dict[int, _Views] = {}  # id(param) -> its kept slot
        self._busy = OneStepAtATime()

    def forget(self) -> None:
        """Drop the kept views (after a load_state_dict replaced the states)."""
        self._views.clear()

    def _buffers(self, dtype: np.dtype, count: int, chunk: int) -> list[np.ndarray]:
        found = self._scratch.setdefault(dtype, [])
        while len(found) < count:
            found.append(np.empty(chunk, dtype=dtype))
        return found

    def _kept_slot(self, entry: Entry, num_reductions: int,
                   token: int | None = None) -> NumpySlot | None:
        """The parameter's slot kept between steps, updated for this step; None when some
        tensor must be staged (then the general path runs). ``token``: the parameter's record
        token (StepOptions.tables_key), which stands for its tensors while it is the one the
        views were last found for."""
        param, grad, state, t = entry
        dtype = param.dtype
        if dtype not in _NATIVE or not _in_place(grad, dtype):
            return None
        views = self._views.get(id(param))
        if token is None or views is None or views.token != token:
            views = self._checked_views(param, state, t, num_reductions)
            if views is None:
                return None
            views.token = token
        slot = views.slot
        slot.t = t
        slot.red = [None] * num_reductions
        slot.arrays[1] = grad.detach().view(-1).numpy()
        slot.states = (_scalar_states(state, self.state_keys) if self._scalar_keys
                       else [None] * len(self.state_keys))
        return slot

    def _checked_views(self, param: torch.Tensor, state: dict, t: float,
                       num_reductions: int) -> _Views | None:
        """The parameter's kept views, checked against its tensors (made again where they
        changed); None when some tensor must be staged."""
        dtype = param.dtype
        tensors = tuple(state.get(key) for key, is_tensor in self.state_keys if is_tensor)
        if not (param.is_contiguous()
                and all(x is None or _in_place(x, dtype) for x in tensors)):
            return None  # (a state transposed in place keeps its storage: its layout tells)
        views = self._views.get(id(param))
        if (views is None or views.param is not param or views.ptr != param.data_ptr()
                or views.shape != param.shape
                or any(a is not b for a, b in zip(views.states, tensors))
                or views.ptrs != _pointers(tensors)):
            arrays = [param.detach().view(-1).numpy(), None] + [
                None if x is None else x.detach().view(-1).numpy() for x in tensors]
            views = _Views(param, tensors, NumpySlot(t, [], num_reductions, arrays,
                                                     tuple(param.shape), param.dtype))
            self._views[id(param)] = views
        return views

    def _staged_slot(self, entry: Entry, num_reductions: int, written: list,
                     index: int) -> NumpySlot:
        param, grad, state, t = entry
        compute = compute_dtype(param.dtype)
        w = _Staged(param.detach(), compute, index, 0)
        g = _Staged(grad.detach(), compute)
        arrays = [w.array, g.array]
        for key, is_tensor in self.state_keys:
            value = state.get(key)
            if not is_tensor:
                continue
            if value is None:  # a state this step neither reads nor writes
                arrays.append(None)
                continue
            staged = _Staged(value, compute, index, len(arrays))
            arrays.append(staged.array)
            written.append(staged)
        written.append(w)
        return NumpySlot(t, _scalar_states(state, self.state_keys), num_reductions, arrays,
                         tuple(param.shape), param.dtype)

    def run(self, variant, entries: list[Entry], options: StepOptions) -> None:
        """Step every entry in place. ``options.copies``: per entry, None or the tensor that
        receives a rounded copy of the updated parameter (the entry's parameter is then its
        fp32 master weight)."""
        with self._busy, np.errstate(all="ignore"):
            module = variant.generated(self.backend)
            slots, written = [], []
            keep = options.combine is None and not options.transient
            tokens = options.tables_key or (None,) * len(entries)
            kept: set[int] = set()  # the parameters whose kept slot this step uses
            for index, entry in enumerate(entries):
                variant.check_states(entry.state)
                slot = None
                # (a parameter twice in a group, which torch.optim steps twice, as
                # deprecated: its kept slot is its first entry's, and holds its step number)
                if keep and id(entry.param) not in kept:
                    slot = self._kept_slot(entry, module.num_reductions, tokens[index])
                    kept.add(id(entry.param))
                if slot is None:
                    slot = self._staged_slot(entry, module.num_reductions, written, index)
                if options.combine is not None:  # a shard's facts are its parameter's
                    slot.set_facts(whole_shape(options, index, entry.param),
                                   machine_eps(entry.param.dtype))
                slots.append(slot)
            states = [entry.state for entry in entries]
            self._execute(module, slots, options, states)
            self._write_back(entries, slots, written, options)
            if module.libraries:
                commit(slots, states, self.state_keys)

    def run_arrays(self, variant, slots: list[NumpySlot], options: StepOptions) -> None:
        """Step slots of plain NumPy arrays (float32/float64, flat, updated in place)."""
        with self._busy, np.errstate(all="ignore"):
            self._execute(variant.generated(self.backend), slots, options)

    def _execute(self, module: GeneratedModule, slots: list[NumpySlot],
                 options: StepOptions, states: list[dict] | None = None) -> None:
        chunk = module.module.CHUNK
        while len(self._masks) < module.module.NUM_MASKS:
            self._masks.append(np.empty(chunk, dtype=bool))
        width = len(module.columns)
        for slot in slots:
            dtype = slot.arrays[0].dtype
            if dtype not in COMPUTE_DTYPES:
                raise TypeError(f"the NumPy step computes in float32 or float64, got {dtype}")
            slot.buffers = self._buffers(dtype, module.module.NUM_BUFFERS, chunk)
            slot.masks = self._masks
            if len(slot.arrays) < width:  # scratch for values stored between sweeps
                n = slot.arrays[0].shape[0]
                slot.arrays += [np.empty(n, dtype) for _ in range(width - len(slot.arrays))]

        def run_sweep(k: int, params) -> list:
            sweep = module.sweeps[k]
            for p in params:
                p.partials = [None] * len(sweep.reductions)
            sweep.kernel(params)
            return [p.partials for p in params]

        def library_tensors(i: int, p: NumpySlot) -> list:
            return self._tensors(module, p, None if states is None else states[i])

        numel = [s.arrays[0].shape[0] for s in slots]
        ctx = StepContext(module, options.hyper, options.inv_grad_scale, run_sweep, numel,
                          options.combine, library_tensors)
        module.step(ctx, slots)

    def _tensors(self, module: GeneratedModule, slot: NumpySlot, state: dict | None) -> list:
        """A library stage's view of a parameter's columns (optdsl.runtime.library_stage)."""
        keys = [key for key, is_tensor in self.state_keys if is_tensor]
        n = slot.arrays[0].shape[0]
        out = []
        for c, array in enumerate(slot.arrays[:len(module.columns)]):
            key = keys[c - 2] if 2 <= c < 2 + len(keys) else None
            if key in self.shaped_keys and state is not None:  # a row or column state
                out.append(state[key].to(torch.from_numpy(slot.arrays[0][:0]).dtype))
            elif array is None or array.shape[0] != n:  # (a state this step does not use)
                out.append(None)
            else:
                out.append(as_tensor(array, slot.shape))
        return out

    def _write_back(self, entries: list[Entry], slots: list[NumpySlot], written: list,
                    options: StepOptions) -> None:
        copies = options.copies or [None] * len(entries)
        places: list = [None] * len(entries)
        if options.rounding_seed is not None:
            keys = [key for key, is_tensor in self.state_keys if is_tensor]
            places = seeded_places(options.rounding_seed,
                                   [bucket_key(e, keys, c) for e, c in zip(entries, copies)])
        for staged in written:
            staged.flush(places[staged.entry])
        # the copy's random stream follows the parameter's own columns (w, g, tensor states)
        copy_column = 2 + sum(1 for _, is_tensor in self.state_keys if is_tensor)
        for i, copy in enumerate(copies):
            if copy is not None:
                write_rounded(copy, slots[i].arrays[0], places[i], copy_column)
        for entry, slot in zip(entries, slots):
            slot.arrays[1] = None  # a kept slot must not keep the gradient alive
            for (key, is_tensor), value in zip(self.state_keys, slot.states):
                if not is_tensor:
                    # through a float64 tensor: a float32 state overflows to inf (fill_ of
                    # a Python float too large for the state's dtype raises)
                    entry.state[key].fill_(torch.tensor(float(value), dtype=torch.float64))
