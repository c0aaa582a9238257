"""An optimizer over plain NumPy arrays: ``prog.numpy_optimizer([w1, w2], lr=0.1)``.

The arrays (float32 or float64, C-contiguous, writeable) are updated in place by
``step([g1, g2])``; a gradient given as None skips that array (its ``t`` does not advance).
State lives in ``opt.state[i]`` (a dict keyed by the program's ``as`` keys, plus ``step``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from optdsl.optim import hypers as hyper_values
from optdsl.runtime.numpy_runner import COMPUTE_DTYPES, NumpyRunner, NumpySlot
from optdsl.runtime.step import StepOptions


class NumpyOptimizer:
    def __init__(self, program, arrays: Sequence[np.ndarray], /, **hypers: Any) -> None:
        self.program = program
        arrays = list(arrays)
        for i, a in enumerate(arrays):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"arrays[{i}] must be a numpy.ndarray, got {type(a).__name__}")
            if a.dtype not in COMPUTE_DTYPES:
                raise TypeError(f"arrays[{i}] has dtype {a.dtype}; use float32 or float64")
            if not a.flags.c_contiguous or not a.flags.writeable:
                raise ValueError(f"arrays[{i}] must be C-contiguous and writeable (it is "
                                 f"updated in place)")
        self.arrays = arrays
        self.hypers = hyper_values.resolve(program.hypers, hypers, extra={})
        self.state: list[dict[str, Any]] = [{} for _ in arrays]
        self._runner = NumpyRunner(program)  # this optimizer's scratch buffers

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.hypers.items())
        return f"<{self.program.name} NumPy optimizer over {len(self.arrays)} arrays: {settings}>"

    def _init_state(self, index: int, hyper: dict[str, float]) -> dict[str, Any]:
        state = self.state[index]
        if "step" not in state:
            state["step"] = 0
            w = self.arrays[index]
            for spec in self.program.states.values():
                value = spec.initial_value(hyper, w)
                if spec.tensor:
                    state[spec.key] = np.array(np.broadcast_to(value, w.shape), dtype=w.dtype)
                else:
                    state[spec.key] = float(value)
        return state

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        grads = list(grads)
        if len(grads) != len(self.arrays):
            raise ValueError(f"step() needs one gradient per array: {len(self.arrays)} arrays, "
                             f"{len(grads)} gradients")
        hyper = hyper_values.scalars(self.program.hypers, self.hypers)
        slots, used = [], []
        for i, (w, g) in enumerate(zip(self.arrays, grads)):
            if g is None:
                continue
            g = np.asarray(g)
            if g.shape != w.shape:
                raise ValueError(f"gradient {i} has shape {g.shape}, array has {w.shape}")
            g = np.ascontiguousarray(g, dtype=w.dtype).reshape(-1)
            state = self._init_state(i, hyper)
            state["step"] += 1
            arrays = [w.reshape(-1), g] + [state[s.key].reshape(-1)
                                           for s in self.program.states.values() if s.tensor]
            scalars = [None if s.tensor else np.float64(state[s.key])
                       for s in self.program.states.values()]
            slots.append(NumpySlot(float(state["step"]), scalars, 0, arrays))
            used.append(i)
        variant = self.program.variant(hyper)
        for slot in slots:
            slot.red = [None] * variant.generated("numpy").num_reductions
        self._runner.run_arrays(variant, slots, StepOptions(hyper))
        for i, slot in zip(used, slots):
            for spec, value in zip(self.program.states.values(), slot.states):
                if not spec.tensor:
                    self.state[i][spec.key] = float(value)
