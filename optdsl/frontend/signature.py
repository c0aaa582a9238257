"""What a program exposes to its users: hyperparameters and state variables.

These are the objects behind ``prog.hypers``, ``prog.states`` and ``prog.requirements``: plain
data that the torch wrapper and the NumPy optimizer read (constructor keywords, intervals,
conditions on hypers, state_dict keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from optdsl.ir.nodes import Graph

Number = int | float

# Keywords every torch.optim optimizer accepts; the optimizer layer (optdsl.optim.hypers)
# gives them their defaults and meaning.
TORCH_FLAG_NAMES = ("foreach", "fused", "capturable", "differentiable")
# Keywords of the optimizer a program becomes (params, backend, skip_nonfinite, the
# mixed-precision options and torch's flags): a hyper is a constructor keyword and a
# param-group key, so it cannot take one of these names.
CONSTRUCTOR_KEYWORDS = frozenset({
    "self", "params", "backend", "skip_nonfinite", "state_dtype", "master_weights",
    "stochastic_rounding"}) | frozenset(TORCH_FLAG_NAMES)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    low_closed: bool
    high_closed: bool

    def contains(self, value: float) -> bool:
        if math.isnan(value):
            return False
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        def fmt(x: float) -> str:
            return "inf" if x == math.inf else "-inf" if x == -math.inf else repr(x)

        return (("[" if self.low_closed else "(") + f"{fmt(self.low)}, {fmt(self.high)}"
                + ("]" if self.high_closed else ")"))


@dataclass(frozen=True)
class HyperSpec:
    """A constructor keyword. ``parts`` is set for a tuple keyword such as betas=(b1, b2)."""

    name: str
    default: Number | tuple[Number, ...] | None  # None: required
    interval: Interval | None = None
    parts: tuple[str, ...] | None = None
    inferred: bool = False
    line: int = 0
    # closure-driven programs: a choice among strings (None included; the program reads the
    # chosen one's index), or a default derived from other hypers when the keyword is
    # absent or None (outputs ("value", v) of a graph of `hyper` leaves)
    choices: tuple[str | None, ...] | None = None
    derived: Graph | None = None

    @property
    def required(self) -> bool:
        return self.default is None and self.choices is None and self.derived is None

    def choice_index(self, value) -> int:
        """The index of ``value`` among the choices (what the program computes with)."""
        for i, choice in enumerate(self.choices or ()):
            if value == choice and (value is None) == (choice is None):
                return i
        shown = ", ".join("None" if c is None else repr(c) for c in self.choices or ())
        raise ValueError(f"Invalid {self.name} value: {value!r} (hyper `{self.name}` must be "
                         f"one of {shown})")

    def derive(self, values: Mapping[str, float]) -> float:
        """The derived default from the other hypers' values."""
        from optdsl.ir.ops import OPS

        results: list = []
        with np.errstate(all="ignore"):
            for eq in self.derived.eqs:
                if eq.op == "const":
                    results.append(np.float64(eq.attr))
                elif eq.op == "hyper":
                    results.append(np.float64(values[eq.attr]))
                else:
                    results.append(OPS[eq.op].meaning(*[results[a] for a in eq.args]))
        (_, out), = self.derived.outputs
        return float(results[out])

    def derived_from(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(eq.attr for eq in self.derived.eqs if eq.op == "hyper"))

    def scalar_names(self) -> tuple[str, ...]:
        """The names the program's arithmetic uses: the parts, or the keyword itself."""
        return self.parts if self.parts else (self.name,)


@dataclass(frozen=True)
class StateSpec:
    """Per-parameter state: created on a parameter's first update from ``init``."""

    name: str
    key: str  # the state_dict key
    tensor: bool  # False: one number per parameter
    init: Graph  # outputs ("init", value): an expression of constants, hypers and w
    inferred: bool = False
    line: int = 0

    @property
    def reads_w(self) -> bool:
        """Whether the initial value depends on the parameter."""
        return any(eq.op == "w" for eq in self.init.eqs)

    @property
    def constant(self) -> bool:
        """Whether the initial value is a constant (no `w`, no hyper)."""
        return not any(eq.op in ("w", "hyper") for eq in self.init.eqs)

    @property
    def copies_w(self) -> bool:
        """Whether the initial value is the parameter itself (``state s = w``)."""
        (_, out), = self.init.outputs
        return self.init.eqs[out].op == "w"

    def initial_value(self, hyper: Mapping[str, float], w=None):
        """The initial value for these hypers (and parameter ``w``, a NumPy array, when the
        value reads it): a float64 scalar or an array."""
        from optdsl.ir.evaluate import evaluate

        inputs: dict = {"hyper": dict(hyper)}
        if w is not None:
            inputs["w"] = w
        return evaluate(self.init, inputs)["init"]

@dataclass(frozen=True)
class Requirement:
    """``require c1, c2, "message"``: conditions on hyper values that an interval cannot say
    (Rprop's 0 < etaminus < 1 < etaplus, SGD's nesterov needing momentum). The optimizer
    layer checks them with the intervals, at construction and on every step; ``message``
    may name hypers in braces (``{etaminus}``), replaced by their values."""

    graph: Graph  # outputs ("c0", mask), ("c1", mask), ...: of hypers and constants only
    text: str  # the conditions as written
    message: str | None
    names: tuple[str, ...]  # the hypers the conditions read, in order of first use
    line: int = 0

    def holds(self, values: dict[str, float]) -> bool:
        """Whether every condition holds for these hyper values (NaN makes it fail)."""
        from optdsl.ir.ops import OPS

        results: list = []
        with np.errstate(all="ignore"):
            for eq in self.graph.eqs:
                if eq.op == "const":
                    results.append(np.float64(eq.attr))
                elif eq.op == "hyper":
                    results.append(np.float64(values[eq.attr]))
                else:
                    results.append(OPS[eq.op].meaning(*[results[a] for a in eq.args]))
        return all(bool(results[v]) for _, v in self.graph.outputs)
