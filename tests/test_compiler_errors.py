"""A failure inside the compiler (a bug) reaches users as one DslError positioned at the
expression being compiled, also when the compilation happens lazily at the first step()
of a param group, and OPTDSL_DEBUG re-raises the raw error."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import optdsl
from optdsl import program as program_module
from optdsl.codegen import numpy as numpy_codegen
from optdsl.codegen.numpy_buffers import Spelling
from optdsl.ir import ops

SOURCE = "hyper lr = 0.1\nx = g * 2\ny = exp(3) + lr\nw = w - y * x\n"


def _broken_exp(*args):
    raise ZeroDivisionError("a bug in the folder")


def test_a_failing_rewrite_points_at_its_expression(monkeypatch):
    monkeypatch.setitem(ops.OPS, "exp", dataclasses.replace(ops.OPS["exp"], evaluate=_broken_exp))
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(SOURCE)
    err = info.value
    assert "internal compiler error" in err.message and "ZeroDivisionError" in err.message
    assert (err.line, err.column) == (3, 5), str(err)  # exp(3), not 1:1
    assert "^^^^^^" in str(err)


def test_a_failing_code_generator_at_the_first_step_is_a_positioned_dsl_error(monkeypatch):
    prog = optdsl.compile("hyper lr = 0.1, flip = 0\nu = where(flip != 0, -g, g)\n"
                          "w = w - lr * tanh(u)\n")
    monkeypatch.setitem(numpy_codegen.SPELLING, "tanh", Spelling("np.tanh({0}, out={out}, {9})"))
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = prog.optimizer([p], lr=0.1, flip=1, backend="numpy")  # a variant made at step()
    with pytest.raises(optdsl.DslError) as info:
        opt.step()
    err = info.value
    assert "internal compiler error" in err.message
    assert err.line == 3, str(err)
    assert torch.equal(p.detach(), torch.ones(3))  # nothing was written


def test_debug_reraises_the_raw_error(monkeypatch):
    monkeypatch.setitem(ops.OPS, "exp", dataclasses.replace(ops.OPS["exp"], evaluate=_broken_exp))
    monkeypatch.setattr(program_module, "DEBUG", True)
    with pytest.raises(ZeroDivisionError):
        optdsl.compile(SOURCE)
