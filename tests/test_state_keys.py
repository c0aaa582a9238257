"""Every state has a state_dict key of its own (issue 15, item 3).

`state m = 0 as v` beside an inferred state `v` once gave both the key `v`: they aliased one
tensor (after 3 steps `w = -36` instead of `-18`). Now any collision is a positioned DslError:
two keys alike (declared names, `as` keys, inferred states), a reserved key (`step`, the step
number; `master_param`, the master weight), or a key that is another state's name; in every
order of declaration. The class is covered by enumerating every pair and triple of states
over a small pool of names and keys, in every order, against a prediction of the rule.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import optdsl
from optdsl.frontend.keys import RESERVED_KEYS
from optdsl.optim.precision import MASTER_KEY


def test_reserved_keys_are_the_runtime_keys():
    assert {"step", MASTER_KEY} <= set(RESERVED_KEYS)


def test_the_reported_alias_is_refused():
    source = "state m = 0 as v\nv = v + g\nm = m + v\nw = w - m"
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(source)
    err = info.value
    assert (err.line, err.column) == (2, 5) and "`v` is used twice" in err.message


# A state: (name, key, inferred). Declared states may have an `as` key; inferred ones are
# read before they are assigned and are saved under their name.
NAMES = ["a", "b", "step", "master_param"]
KEYS = [None, "a", "b", "step", "master_param", "c"]


def _states(count: int):
    for names in itertools.permutations(NAMES, count):
        options = [[(n, k, False) for k in KEYS] + [(n, None, True)] for n in names]
        yield from itertools.product(*options)


def _program(states) -> tuple[str, set[tuple[int, int]]]:
    """The program and where its states' names and keys are written (line, column)."""
    lines, where = [], set()
    for name, key, inferred in states:
        line = len(lines) + 1
        if inferred:
            where.add((line, len(name) + 4))  # the read in `n = n + g`
            lines.append(f"{name} = {name} + g")
        else:
            where.add((line, 7))
            if key:
                where.add((line, len(f"state {name} = 0 as ") + 1))
            lines.append(f"state {name} = 0" + (f" as {key}" if key else ""))
    for name, _, inferred in states:
        if not inferred:
            lines.append(f"{name} = 0.5 * {name} + g")
    lines.append("w = w - 0.1 * (" + " + ".join(n for n, _, _ in states) + ")")
    return "\n".join(lines), where


def _predicted_fault(states) -> bool:
    keys = [key or name for name, key, _ in states]
    names = {name for name, _, _ in states}
    crossing = any(key != name and key in names for (name, _, _), key in zip(states, keys))
    return len(set(keys)) < len(keys) or bool(set(keys) & set(RESERVED_KEYS)) or crossing


CASES = list(_states(1)) + list(_states(2)) + list(_states(3))[::7]  # (every 7th triple)


@pytest.mark.parametrize("chunk", range(8))
def test_every_key_collision_is_a_positioned_error(chunk):
    checked = faults = 0
    for states in CASES[chunk::8]:
        source, where = _program(states)
        if _predicted_fault(states):
            with pytest.raises(optdsl.DslError) as info:
                optdsl.compile(source)
            err = info.value
            assert "key" in err.message, (source, err.message)
            assert (err.line, err.column) in where, (source, str(err))
            faults += 1
        else:
            prog = optdsl.compile(source)
            keys = [spec.key for spec in prog.states.values()]
            assert len(set(keys)) == len(keys) == len(states), source
        checked += 1
    assert checked > 100 and faults > 50


def test_states_with_distinct_keys_are_distinct_tensors():
    """The alias's symptom, for a program whose keys are fine: each state its own tensor."""
    prog = optdsl.compile("state m = 0 as v2\nv = v + g\nm = m + v\nw = w - m")
    for backend in ("numpy",):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = prog.optimizer([p], backend=backend)
        for _ in range(3):
            p.grad = torch.ones(3)
            opt.step()
        state = opt.state[p]
        assert state["v"].data_ptr() != state["v2"].data_ptr()
        np.testing.assert_array_equal(p.detach().numpy(), [-10.0] * 3)  # m: 1, 3, 6
