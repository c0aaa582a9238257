"""State keys: every state of a program is saved in ``state_dict()`` under a key of its own.

A state's key is its ``as`` name, else its name (an inferred state's is its name). Two
states with one key would alias one tensor; a key that is another state's name confuses
every reader of a checkpoint; and some keys hold something else: ``step`` (the step number)
and ``master_param`` (optdsl.optim.precision.MASTER_KEY, the float32 master weight). Each
of these is a DslError at the later of the two places in the text, whatever the order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from optdsl.errors import DslError, Span
from optdsl.frontend import ast

# state_dict keys that hold something other than a program's state, and what they hold
RESERVED_KEYS = {"step": "the step number `t`",
                 "master_param": "the float32 master weight (master_weights=True)"}


@dataclass(frozen=True)
class _Keyed:
    """A state and its key; ``span``: where the key is written (the `as` name, else as
    ``name_span``: the declared name or an inferred state's first read)."""

    name: str
    key: str
    span: Span
    name_span: Span
    inferred: bool

    def __str__(self) -> str:
        return f"the inferred state `{self.name}`" if self.inferred else f"state `{self.name}`"


def _at(span: Span) -> tuple[int, int]:
    return span.line, span.column


def check_state_keys(declared: Mapping[str, ast.StateItem], inferred: Mapping[str, Span],
                     error: Callable[[str, Span], DslError]) -> None:
    """Raise ``error(message, span)`` for the first key rule broken, in text order."""
    keyed = sorted([_Keyed(item.name, item.key or item.name, item.key_span or item.span,
                           item.span, False) for item in declared.values()]
                   + [_Keyed(name, name, span, span, True) for name, span in inferred.items()],
                   key=lambda k: _at(k.span))
    by_key: dict[str, _Keyed] = {}
    for state in keyed:
        held = RESERVED_KEYS.get(state.key)
        if held is not None:
            hint = (f"; rename it, or declare it with another key: `state {state.name} = 0 "
                    f"as {state.name}_value`" if state.inferred else "; choose another key")
            raise error(f"{state} would be saved under the state_dict key `{state.key}`, "
                        f"which holds {held}{hint}", state.span)
        other = by_key.get(state.key)
        if other is not None:
            raise error(f"state key `{state.key}` is used twice: by {state} and by {other} "
                        f"(line {other.span.line}); they would share one tensor, so give one "
                        f"another key with `as`", state.span)
        by_key[state.key] = state
    names = {k.name: k for k in keyed}
    for state in keyed:
        other = names.get(state.key)
        if other is not None and other is not state:
            later = max(state.span, other.name_span, key=_at)
            raise error(f"{state} is saved under the state_dict key `{state.key}`, the name "
                        f"of {other}, which is saved under `{other.key}`; a state's key must "
                        f"not be another state's name", later)
