"""An optimizer over plain NumPy arrays: ``prog.numpy_optimizer([w1, w2], lr=0.1)``.

The arrays (float32 or float64, C-contiguous, writeable) are updated in place by
``step([g1, g2])``; a gradient given as None skips that array (its ``t`` does not advance).
State lives in ``opt.state[i]`` (a dict keyed by the program's ``as`` keys, plus ``step``).
Programs with matrix work (Muon, Adafactor) are refused, with what to use instead.
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
        why = program.library_work or ("a switch on the parameter's shape"
                                        if program.param_flags else "")
        if why:
            raise ValueError(f"{program.name} has matrix work ({why}), which "
                             f"numpy_optimizer does not step (it steps element-wise programs "
                             f"over flat arrays); use prog.optimizer([torch.from_numpy(a) for "
                             f"a in arrays], backend='numpy'), which updates the arrays in "
                             f"place")
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
        self.hypers = hyper_values.resolve(program.hypers, hypers, extra={},
                                           requirements=program.requirements)
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
        """One step; every gradient is checked first, so a step that raises changes no
        array, no state and no step count."""
        grads = list(grads)
        if len(grads) != len(self.arrays):
            raise ValueError(f"step() needs one gradient per array: {len(self.arrays)} arrays, "
                             f"{len(grads)} gradients")
        hyper = hyper_values.scalars(self.program.hypers, self.hypers)
        checked = [(i, self._checked_gradient(i, g)) for i, g in enumerate(grads)
                   if g is not None]
        variant = self.program.variant(hyper)
        module = variant.generated("numpy")  # compiled before anything changes
        slots = []
        for i, g in checked:
            w = self.arrays[i]
            state = self._init_state(i, hyper)
            state["step"] += 1
            arrays = [w.reshape(-1), g] + [state[s.key].reshape(-1)
                                           for s in self.program.states.values() if s.tensor]
            scalars = [None if s.tensor else np.float64(state[s.key])
                       for s in self.program.states.values()]
            slots.append(NumpySlot(float(state["step"]), scalars, module.num_reductions,
                                   arrays))
        self._runner.run_arrays(variant, slots, StepOptions(hyper))
        for (i, _), slot in zip(checked, slots):
            for spec, value in zip(self.program.states.values(), slot.states):
                if not spec.tensor:
                    self.state[i][spec.key] = float(value)

    def _checked_gradient(self, index: int, grad: Any) -> np.ndarray:
        """Gradient ``index`` as a flat contiguous array of its array's dtype."""
        w = self.arrays[index]
        try:
            g = np.asarray(grad)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"gradient {index} is not an array ({exc})") from None
        if g.shape != w.shape:
            raise ValueError(f"gradient {index} has shape {g.shape}, array has {w.shape}")
        if g.dtype.kind not in "fiub":
            raise TypeError(f"gradient {index} has dtype {g.dtype}; gradients are real numbers")
        return np.ascontiguousarray(g, dtype=w.dtype).reshape(-1)
