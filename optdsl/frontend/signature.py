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


GIVEN = "__given_"  # the hidden hyper telling whether an optional one was given a number


@dataclass(frozen=True)
class HyperSpec:
    """A constructor keyword. ``parts`` is set for a tuple keyword such as betas=(b1, b2).

    A choice (``choices``) takes one of a few named values (strings, or None), compiled like
    a switch; an optional hyper or part (named in ``optional``) may be None, meaning "not
    given" (Adafactor's ``eps=(None, 1e-3)``): the program tells with ``x == None``."""

    name: str
    default: object  # a number, a tuple of them, a choice's value; None: required
    interval: Interval | None = None
    parts: tuple[str, ...] | None = None
    inferred: bool = False
    line: int = 0
    choices: tuple[str | None, ...] | None = None  # a choice among strings (None included)
    optional: tuple[str, ...] = ()  # the scalar names that may be None
    repeat: bool = False  # a repetition count, known when the step is compiled
    # closure-driven programs: a default derived from other hypers when the keyword is
    # absent or None (outputs ("value", v) of a graph of `hyper` leaves)
    derived: Graph | None = None

    @property
    def required(self) -> bool:
        return self.default is None and self.choices is None and not self.optional \
            and self.derived is None

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
    per: str | None = None  # "row"/"col": one value per row (column) of the matrix view

    def shape_of(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The state's shape for a parameter of ``param_shape`` (a tensor state's)."""
        shape = tuple(param_shape)
        if self.per == "row":
            return shape[:-1] + (1,)
        if self.per == "col":
            return shape[:-2] + (1,) + shape[-1:]
        return shape

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

    @property
    def per_parameter(self) -> bool:
        """Whether the conditions read a parameter's facts (`w.ndim == 2`): then they are
        checked for each parameter, when it is added to the optimizer."""
        from optdsl.ir.ops import PARAM_FACTS

        return any(eq.op in PARAM_FACTS for eq in self.graph.eqs)

    def holds(self, values: dict[str, float]) -> bool:
        """Whether every condition holds for these hyper values (and a parameter's facts,
        for a per-parameter requirement; NaN makes it fail)."""
        from optdsl.ir.ops import OPS, PARAM_FACTS

        results: list = []
        with np.errstate(all="ignore"):
            for eq in self.graph.eqs:
                if eq.op == "const":
                    results.append(np.float64(eq.attr))
                elif eq.op == "hyper":
                    results.append(np.float64(values[eq.attr]))
                elif eq.op in PARAM_FACTS:
                    results.append(np.float64(values[eq.op]))
                else:
                    results.append(OPS[eq.op].meaning(*[results[a] for a in eq.args]))
        return all(bool(results[v]) for _, v in self.graph.outputs)
