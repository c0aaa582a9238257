"""The host functions of closure-driven steps: the closure, second derivatives, the line
search, and dense algebra over the flattened vector.

The closure contract (docs/language.md, "The closure"): ``closure()`` zeroes the gradients,
computes the loss from the parameters, calls ``loss.backward()`` and returns the loss, as
for torch.optim.LBFGS; the step calls it with gradients enabled. A program that uses
``hvp()`` or ``hessian()`` differentiates the gradients again, so its closure calls
``loss.backward(create_graph=True)``; when the step ends the gradients are detached (the
graph is freed, and the reference cycle torch warns about is broken). ``step(closure)``
returns what the closure returned at its first call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from optdsl.ir import procedure as ir
from optdsl.ir.procedure import Ref
from optdsl.runtime import line_search
from optdsl.runtime.vectors import Vector

_MASK64 = (1 << 64) - 1


def random_index(n: float, seed: float, k: float) -> np.float64:
    """A uniform integer in [0, n) from (seed, k) alone (SplitMix64), so a run is the same on
    every machine and a checkpoint resumes it."""
    size = int(n)
    if size < 1:
        raise ValueError(f"random_index needs n >= 1, got {float(n)!r}")
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(k) + 1) & _MASK64
    for _ in range(2):
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        x = z ^ (z >> 31)
    return np.float64(x % size)


class Calls:
    """The host functions of one step (``frame``: its values and phases)."""

    def __init__(self, frame, closure) -> None:
        self.frame = frame
        self.closure = closure
        self.first_loss = None
        self.called = False
        self.second_order = bool(frame.machine.procedure.second_order)

    def finish(self) -> None:
        """Free the graph of second derivatives (the gradients keep their values)."""
        if self.second_order:
            for param in self.frame.layout.params:
                if param.grad is not None and param.grad.requires_grad:
                    param.grad = param.grad.detach()

    # -- dispatch -------------------------------------------------------------------------------
    def call(self, stmt: ir.Call) -> None:
        frame = self.frame
        handler = getattr(self, "_" + stmt.function)
        results = handler(stmt)
        if not isinstance(results, tuple):
            results = (results,)
        for target, value in zip(stmt.targets, results):
            frame.write(target, value)

    def args(self, stmt: ir.Call) -> list:
        frame = self.frame
        out = []
        for arg in stmt.args:
            if isinstance(arg, Ref):
                out.append(frame.read(arg))
            elif isinstance(arg, ir.HostExpr):
                out.append(frame.host(arg))
            else:
                out.append(arg)
        return out

    # -- the closure ----------------------------------------------------------------------------
    def evaluate_closure(self, stmt: ir.Call) -> tuple[np.float64, Vector]:
        frame = self.frame
        if self.closure is None:
            from optdsl.runtime.procedure import ClosureRequired

            name = frame.machine.program.name
            raise frame.error(ClosureRequired, f"{stmt.function}() calls the closure to "
                              f"evaluate the loss and its gradient, but step() was given "
                              f"none: step {name} with a closure, opt.step(closure), as "
                              f"torch.optim.LBFGS (see the closure contract in "
                              f"docs/language.md)", stmt.line, stmt.column)
        for ref in stmt.snapshot:  # gradients read after this call: copied before it
            held = frame.locals.get(ref.name)
            if isinstance(held, Vector) and held.gradient:
                frame.locals[ref.name] = frame.layout.owned_copy(held)
        with torch.enable_grad():
            loss = self.closure()
        if not self.called:
            self.first_loss, self.called = loss, True
        return np.float64(float(loss)), frame.layout.gradients()

    def entry_gradient(self) -> Vector:
        """`g` read before any evaluate(): the gradients as the step finds them; with a
        closure, evaluated first (as torch.optim's first-order optimizers do)."""
        if self.closure is not None and not self.called:
            with torch.enable_grad():
                self.first_loss, self.called = self.closure(), True
        return self.frame.layout.gradients()

    def _evaluate(self, stmt: ir.Call):
        return self.evaluate_closure(stmt)

    def _hvp(self, stmt: ir.Call) -> Vector:
        (vector,) = self.args(stmt)
        return self.hvp(vector, stmt)

    def hvp(self, vector: Vector, stmt: ir.Call) -> Vector:
        """H v by differentiating the gradients again (the closure's create_graph=True)."""
        frame = self.frame
        if self.closure is None:
            from optdsl.runtime.procedure import ClosureRequired

            raise frame.error(ClosureRequired, f"{stmt.function}() differentiates the "
                              f"gradient again, which needs the closure's graph, but step() "
                              f"was given no closure: step {frame.machine.program.name} with "
                              f"a closure that calls loss.backward(create_graph=True)",
                              stmt.line, stmt.column)
        params = frame.layout.params
        grads = [p.grad for p in params]
        pairs = [(g, part) for g, part in zip(grads, vector.parts)
                 if g is not None and g.requires_grad]
        if not pairs:
            from optdsl.runtime.procedure import StepFailed

            raise frame.error(StepFailed, f"{stmt.function}() differentiates the gradient "
                              f"again, but the gradients carry no graph: the closure must "
                              f"call loss.backward(create_graph=True)", stmt.line, stmt.column)
        with torch.enable_grad():
            found = torch.autograd.grad([g for g, _ in pairs], params,
                                        grad_outputs=[part.reshape(g.shape) for g, part in pairs],
                                        retain_graph=True, allow_unused=True)
        zeros = frame.layout.zeros()
        parts = [(h if h is not None else zeros[j]).detach().reshape(-1)
                 for j, h in enumerate(found)]
        return Vector(parts, None, True)

    def hessian(self, stmt: ir.Call) -> torch.Tensor:
        """The dense Hessian, one Hessian-vector product per coordinate (small problems)."""
        layout = self.frame.layout
        rows = []
        eye = torch.eye(layout.total, dtype=layout.dtype, device=layout.device)
        for k in range(layout.total):
            rows.append(layout.flat(self.hvp(Vector(layout.views(eye[k]), eye[k], False),
                                             stmt)))
        hessian = torch.stack(rows)
        return (hessian + hessian.T) / 2

    # -- the line search ------------------------------------------------------------------------
    def _strong_wolfe(self, stmt: ir.Call):
        frame = self.frame
        d, t, f, g, gtd, max_ls = self.args(stmt)
        prims = frame.machine.program.primitives
        layout = frame.layout
        x = layout.new()
        frame.run_phase(prims["copy"], {}, {"src": layout.parameters(), "dst": x})
        d_norm = self.reduce("maxabs", d)

        def objective(step: float):
            frame.run_phase(prims["trial"], {"t": float(step)}, {"x": x, "d": d})
            loss, grad = self.evaluate_closure(stmt)
            return float(loss), grad, self.reduce("dot", grad, d)

        kept: list[Vector] = []

        def keep(grad: Vector) -> Vector:
            if grad.owned:
                return grad
            copy = layout.new()
            frame.run_phase(prims["copy"], {}, {"src": grad, "dst": copy})
            kept.append(copy)
            return copy

        if not math.isfinite(float(max_ls)):
            max_ls = 25
        f_new, g_new, t_new, evals = line_search.strong_wolfe(
            objective, keep, float(t), float(f), g, float(gtd), float(d_norm),
            max_ls=int(max_ls))
        frame.run_phase(prims["copy"], {}, {"src": x, "dst": layout.parameters()})
        for buffer in [x] + kept:  # the search's own copies, but the one it returns
            if buffer is not g_new:
                layout.recycle(buffer)
        return (np.float64(f_new), g_new, np.float64(t_new), np.float64(evals))

    def reduce(self, name: str, a: Vector, b: Vector | None = None) -> float:
        frame = self.frame
        spec = frame.machine.program.primitives[name]
        handles = {"a": a} if b is None else {"a": a, "b": b}
        saved = frame.locals.pop("__result", None)
        frame.run_phase(spec, {}, handles)
        value = float(frame.locals.pop("__result"))
        if saved is not None:
            frame.locals["__result"] = saved
        return value

    # -- small functions ------------------------------------------------------------------------
    def _index(self, stmt: ir.Call) -> Vector:
        return self.frame.layout.index()

    def _numel(self, stmt: ir.Call) -> np.float64:
        return np.float64(self.frame.layout.total)

    def _len(self, stmt: ir.Call) -> np.float64:
        (name,) = stmt.args
        return np.float64(len(self.frame.states.get(name)))

    def _random_index(self, stmt: ir.Call) -> np.float64:
        n, seed, k = self.args(stmt)
        try:
            return random_index(n, seed, k)
        except ValueError as exc:
            from optdsl.runtime.procedure import StepFailed

            raise self.frame.error(StepFailed, str(exc), stmt.line, stmt.column) from None

    # -- dense algebra --------------------------------------------------------------------------
    def dense(self, stmt: ir.Dense):
        value = _Dense(self, stmt).eval(stmt.expr)
        layout = self.frame.layout
        if torch.is_tensor(value) and value.dim() == 1:
            return layout.from_flat(value)
        if torch.is_tensor(value) and value.dim() == 2:
            return value
        return np.float64(float(value))


class _Dense:
    """Evaluates a dense expression tree with torch over flattened vectors."""

    def __init__(self, calls: Calls, stmt: ir.Dense) -> None:
        self.calls = calls
        self.stmt = stmt
        self.layout = calls.frame.layout

    def eval(self, tree) -> Any:
        if isinstance(tree, float):
            return tree
        if isinstance(tree, Ref):
            value = self.calls.frame.read(tree)
            if isinstance(value, Vector):
                return self.layout.flat(value)
            if torch.is_tensor(value):
                return value
            return float(value)
        op, *parts = tree
        args = [self.eval(p) for p in parts]
        return getattr(self, "_" + op)(*args)

    def _neg(self, a):
        return -a

    def _add(self, a, b):
        return a + b

    def _sub(self, a, b):
        return a - b

    def _mul(self, a, b):
        return a * b

    def _div(self, a, b):
        return a / b

    def _pow(self, a, b):
        return a ** b

    def _abs(self, a):
        return abs(a)

    def _sqrt(self, a):
        return torch.sqrt(a) if torch.is_tensor(a) else math.sqrt(a)

    def _global_sum(self, a):
        return float(a.sum())

    def _global_norm(self, a):
        return float(torch.linalg.vector_norm(a))

    def _global_maxabs(self, a):
        return float(a.abs().max()) if a.numel() else 0.0

    def _eye(self):
        layout = self.layout
        return torch.eye(layout.total, dtype=layout.dtype, device=layout.device)

    def _outer(self, a, b):
        return torch.outer(a, b)

    def _matvec(self, a, v):
        return a @ v

    def _solve(self, a, v):
        return torch.linalg.solve(a, v)

    def _spectral_abs(self, a):
        values, vectors = torch.linalg.eigh((a + a.T) / 2)
        return (vectors * values.abs()) @ vectors.T

    def _hessian(self):
        return self.calls.hessian(self.stmt)
