"""Exact, deterministic spelling of float constants in generated source and IR dumps."""

from __future__ import annotations

import math


def format_float(value: float) -> str:
    """A Python expression that evaluates to exactly ``value`` (inf, nan and -0.0 included)."""
    value = float(value)
    if math.isnan(value):
        return "float('nan')"
    if math.isinf(value):
        return "float('inf')" if value > 0 else "float('-inf')"
    text = repr(value)  # shortest round-tripping repr, subnormals and -0.0 included
    assert float(text) == value and math.copysign(1, float(text)) == math.copysign(1, value)
    return text
