"""The `require` statement: conditions on hypers that an interval cannot say (docs/language.md,
"Requirements"). Positioned errors for every misuse; at construction, a failed requirement is
a ValueError with its message, the conditions and the values; param groups may override."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import optdsl

ETAS = """
hyper lr = 0.1
hyper etas = (etaminus = 0.5, etaplus = 1.2)
require 0 < etaminus, etaminus < 1, 1 < etaplus, "Invalid eta values: {etaminus}, {etaplus}"
w = w - lr * where(g > 0, etaplus, etaminus) * g
"""


def params():
    return [torch.nn.Parameter(torch.ones(3))]


def test_requirement_is_part_of_the_program():
    prog = optdsl.compile(ETAS, name="etas")
    (req,) = prog.requirements
    assert req.names == ("etaminus", "etaplus")
    assert req.text == "0 < etaminus, etaminus < 1, 1 < etaplus"
    assert req.holds({"lr": 0.1, "etaminus": 0.5, "etaplus": 1.2})
    assert not req.holds({"lr": 0.1, "etaminus": 1.0, "etaplus": 0.5})
    assert not req.holds({"lr": 0.1, "etaminus": math.nan, "etaplus": 1.2})


@pytest.mark.parametrize("etas", [(1.0, 0.5), (0.0, 1.2), (0.5, 1.0), (math.nan, 2.0)])
def test_failed_requirement_names_message_condition_and_values(etas):
    prog = optdsl.compile(ETAS, name="etas")
    with pytest.raises(ValueError) as info:
        prog.optimizer(params(), etas=etas)
    message = str(info.value)
    assert message.startswith(f"Invalid eta values: {etas[0]}, {etas[1]}")
    assert "0 < etaminus, etaminus < 1, 1 < etaplus" in message
    assert f"etaminus = {etas[0]}" in message and f"etaplus = {etas[1]}" in message


def test_values_that_meet_the_requirement_step():
    prog = optdsl.compile(ETAS, name="etas")
    ps = params()
    opt = prog.optimizer(ps, etas=(0.25, 2.0))
    ps[0].grad = torch.tensor([1.0, -1.0, 0.0])
    opt.step()
    assert torch.allclose(ps[0].detach(), torch.tensor([0.8, 1.025, 1.0]))


def test_requirement_without_a_message():
    prog = optdsl.compile("hyper a = 1, b = 2\nrequire a < b\nw = w - a*b*g", name="ab")
    with pytest.raises(ValueError, match=r"requires a < b; got a = 3, b = 2"):
        prog.optimizer(params(), a=3)


def test_message_braces():
    prog = optdsl.compile('hyper a = 1\nrequire a < 2, "a {{literal}} {a}"\nw = w - a*g',
                          name="braces")
    with pytest.raises(ValueError, match=r"^a \{literal\} 5 "):
        prog.optimizer(params(), a=5)


def test_where_of_a_switch_in_a_requirement():
    """SGD's form: a condition that applies only when a switch is on."""
    prog = optdsl.compile("hyper lr = 0.1, nesterov = 0, momentum = 0\n"
                          "require where(nesterov != 0, momentum, 1) > 0, \"needs momentum\"\n"
                          "w = w - lr*g", name="switch")
    prog.optimizer(params(), nesterov=0)
    prog.optimizer(params(), nesterov=1, momentum=0.9)
    with pytest.raises(ValueError, match="needs momentum"):
        prog.optimizer(params(), nesterov=1)


def test_requirement_applies_to_the_constructor_not_to_param_groups():
    """As torch.optim's constructor checks: a group may override (and checkpoints written
    with such groups keep loading); intervals still apply to every group."""
    prog = optdsl.compile(ETAS, name="etas")
    opt = prog.optimizer([{"params": params()}, {"params": params(), "etas": (1.0, 0.5)}])
    assert opt.param_groups[1]["etas"] == (1.0, 0.5)


def test_numpy_optimizer_checks_requirements():
    prog = optdsl.compile(ETAS, name="etas")
    with pytest.raises(ValueError, match="Invalid eta values: 2, 3"):
        prog.numpy_optimizer([np.ones(3)], etas=(2, 3))


@pytest.mark.parametrize("source, line, column, words", [
    ("require w < 1\nw = w - g", 1, 9, "not `w`"),
    ("require t > 1\nw = w - g", 1, 9, "not `t`"),
    ("hyper a = 1\nrequire m < 1\nm = m + g\nw = w - a*m", 2, 9, "not `m`"),
    ("hyper a = 1\nrequire x < 1\nx = a * 2\nw = w - x*g", 2, 9, "not `x`"),
    ("hyper a = 1\nrequire a\nw = w - a*g", 2, 9, "must be a comparison"),
    ("hyper a = 1\nrequire a + 1\nw = w - a*g", 2, 9, "must be a comparison"),
    ("hyper b = (b1 = 1, b2 = 2)\nrequire b < 1\nw = w - b1*g", 2, 9, "tuple of hypers"),
    ("hyper a = 1\nrequire sum(a) < 1\nw = w - a*g", 2, 9, "reduces a tensor"),
    ("hyper a = 1\nrequire zz < 1\nw = w - a*g", 2, 9, "unknown name `zz`"),
    ("hyper a = 1\nrequire a < 1, \"x {c}\"\nw = w - a*g", 2, 16, "must name a hyper"),
    ("hyper a = 1\nrequire a < 1, \"x {a:.2f}\"\nw = w - a*g", 2, 16, "must name a hyper"),
    ("hyper a = 1\nrequire a < 1, \"x {a\"\nw = w - a*g", 2, 16, "unbalanced braces"),
    ("hyper a = 1\nrequire a < 1,\nw = w - a*g", 2, 15, "unexpected end of line"),
    ("require = 1\nw = w - g", 1, 9, "unexpected `=`"),
    ("hyper require = 1\nw = w - g", 1, 7, "`require` is a keyword"),
])
def test_misuse_is_a_positioned_error(source, line, column, words):
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(source)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert words in str(err)


def test_library_twins_declare_torch_checks():
    from optdsl import library

    assert library.program("Rprop").requirements
    assert library.program("SGD").requirements
    with pytest.raises(ValueError, match="Invalid eta values: 1.0, 0.5"):
        library.Rprop(params(), etas=(1.0, 0.5))
    for bad in ({"nesterov": True}, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}):
        with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero "
                                             "dampening"):
            library.SGD(params(), **bad)
    library.SGD(params(), nesterov=True, momentum=0.9)
