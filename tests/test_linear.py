"""Checking grows linearly with the program (issue 15, item 6).

Doubling a program of each shape that used to be quadratic (hyper defaults whose spelling
was looked up by splitting the whole source, a chain of states widened one lowering at a
time, `optdsl check`'s notes that searched every declared name for every undeclared one)
or might become so (hyper lists, `as` keys, temporaries, required hypers) at most about
doubles the work, counted as Python and C function calls: deterministic, unlike timings.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import optdsl
from optdsl.frontend import parse
from optdsl.frontend.check import check
from optdsl.frontend.to_ast import to_ast


def _frontend(source: str):
    return check(to_ast(parse.parse(source), "<string>", source))


def _calls(fn) -> int:
    """Python and C function calls made by ``fn()``: a deterministic measure of work."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def _hyper_defaults(n):
    return "".join(f"hyper h{i} = 0.{i}\n" for i in range(n)) + "w = w - h0 * g\n"


def _hyper_lists(n):
    rows = [", ".join(f"h{i}_{j} = {j}.5" for j in range(50)) for i in range(n // 50)]
    return "".join(f"hyper {row}\n" for row in rows) + "w = w - g\n"


def _states_with_keys(n):
    decls = "".join(f"state s{i} = 0 as key{i}\n" for i in range(n))
    return decls + "".join(f"s{i} = s{i} + g\n" for i in range(n)) + "w = w - s0\n"


def _widened_chain(n):  # each state turns into a tensor only after the next one does
    return "".join(f"s{i} = s{i + 1}\n" for i in range(n)) + f"s{n} = g\nw = w - s0\n"


def _temporaries(n):
    return "hyper lr = 0.1\n" + "".join(f"x{i} = {'g' if i == 0 else f'x{i - 1}'} * 0.5\n"
                                         for i in range(n)) + f"w = w - lr * x{n - 1}\n"


def _required_hypers(n):
    return "".join(f"x{i} = u{i} * g\n" for i in range(n)) + "w = w - x0\n"


def _integer_defaults(n):  # each default's spelling is looked up in the source text
    return "".join(f"hyper h{i} = {i}\n" for i in range(n)) + "w = w - h0 * g\n"


SHAPES = [_hyper_defaults, _hyper_lists, _states_with_keys, _widened_chain, _temporaries,
          _required_hypers, _integer_defaults]


@pytest.mark.parametrize("shape", SHAPES, ids=[s.__name__[1:] for s in SHAPES])
def test_checking_is_linear(shape):
    small, large = shape(500), shape(1000)
    _frontend(shape(10))  # (the parser is built once per process: not counted)
    work = [_calls(lambda s=s: _frontend(s)) for s in (small, large)]
    assert work[1] <= 2.3 * work[0], work


def test_check_notes_are_linear(tmp_path):
    from optdsl.cli import undeclared_notes

    def program(n):
        text = "".join(f"hyper h{i} = 0.5\n" for i in range(n)) + _required_hypers(n)
        return optdsl.compile(text)

    small, large = program(300), program(600)
    work = [_calls(lambda p=p: undeclared_notes(p, "x.opt")) for p in (small, large)]
    assert work[1] <= 2.3 * work[0], work
    notes = undeclared_notes(large, "x.opt")
    assert len(notes) < 30 and "580 more names" in notes[-1]


def test_a_state_widened_after_a_reduction_reads_it():
    """`sum(m)` before `m = g`: m is a tensor state (the search that replaced the one-by-one
    widening also no longer lowers `sum(m)` with m scalar, which used to be an error)."""
    prog = optdsl.compile("x = sum(m)\nm = g\nw = w - x * m")
    assert prog.states["m"].tensor
    w = np.zeros(3)
    opt = prog.numpy_optimizer([w])
    opt.step([np.ones(3)])
    opt.step([np.full(3, 2.0)])
    np.testing.assert_array_equal(w, [-6.0] * 3)  # x = 3 (the sum of the first gradient)
