"""The twins refuse what torch.optim refuses, with torch's words (PyTorch's own suite matches
them: torch/testing/_internal/common_optimizers.py's error inputs, copied here with torch's
regexes), and still name the hyper, the value and the interval or condition; they accept
what torch accepts; parameters built on the meta device (then ``to_empty``) work; a value
too large for a float names its hyper; ``prog.optimizer`` takes hypers by position."""

from __future__ import annotations

import re

import pytest
import torch

import optdsl
from optdsl import library
from optdsl.runtime import c_build

TWINS = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "NAdam", "RAdam",
         "Adadelta", "Rprop"]

# (optimizer, kwargs, error type, torch's regex), as torch's optim_db lists them for the CPU,
# plus the same words for the hypers its suite does not try (lr, eps).
ERRORS = [(name, {"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element")
          for name in TWINS] + [(name, {"lr": -1}, ValueError, "Invalid learning rate: -1")
                                for name in TWINS] + [
    ("Adadelta", {"lr": 1e-2, "rho": 1.1}, ValueError, "Invalid rho value: 1.1"),
    ("Adagrad", {"lr": 1e-2, "lr_decay": -0.5}, ValueError, "Invalid lr_decay value: -0.5"),
    ("Adagrad", {"eps": -1.0}, ValueError, "Invalid epsilon value: -1.0"),
    ("Adagrad", {"initial_accumulator_value": -1}, ValueError,
     "Invalid initial_accumulator_value value: -1"),
    ("Adam", {"lr": 1e-2, "betas": (1.0, 0.0)}, ValueError,
     "Invalid beta parameter at index 0: 1.0"),
    ("Adam", {"lr": 1e-2, "weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
    ("Adam", {"eps": -1e-8}, ValueError, "Invalid epsilon value: -1e-08"),
    ("Adam", {"lr": torch.tensor(0.001), "foreach": True}, ValueError,
     "lr as a Tensor is not supported for capturable=False and foreach=True"),
    ("Adam", {"lr": 1e-2, "betas": (0.9, torch.tensor(0.99))}, ValueError,
     "betas must be either both floats or both Tensors"),
    ("Adam", {"lr": 1e-2, "betas": (torch.tensor(0.9), 0.99)}, ValueError,
     "betas must be either both floats or both Tensors"),
    ("Adam", {"lr": 1e-2, "betas": (torch.tensor(0.9), torch.tensor(0.99)), "foreach": True},
     ValueError, (r"betas\[0\] as a Tensor is not supported for capturable=False and "
                  r"foreach=True")),
    ("AdamW", {"lr": 1e-2, "betas": (1.0, 0.0)}, ValueError,
     "Invalid beta parameter at index 0: 1.0"),
    ("AdamW", {"lr": 1e-2, "weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
    ("AdamW", {"lr": torch.tensor(0.001), "foreach": True}, ValueError,
     "lr as a Tensor is not supported for capturable=False and foreach=True"),
    ("AdamW", {"lr": 1e-2, "betas": (0.9, torch.tensor(0.99))}, ValueError,
     "betas must be either both floats or both Tensors"),
    ("AdamW", {"lr": 1e-2, "betas": (torch.tensor(0.9), torch.tensor(0.99)),
               "foreach": True}, ValueError,
     r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True"),
    ("Adamax", {"lr": 1e-2, "betas": (0.0, 1.0)}, ValueError,
     "Invalid beta parameter at index 1: 1.0"),
    ("NAdam", {"lr": 1e-2, "betas": (1.0, 0.0)}, ValueError,
     "Invalid beta parameter at index 0: 1.0"),
    ("NAdam", {"lr": 1e-2, "momentum_decay": -0.2}, ValueError,
     "Invalid momentum_decay value: -0.2"),
    ("RAdam", {"lr": 1e-2, "betas": (1.0, 0.0)}, ValueError,
     "Invalid beta parameter at index 0: 1.0"),
    ("RAdam", {"lr": 1e-2, "weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
    ("RMSprop", {"lr": 1e-2, "momentum": -1.0}, ValueError, "Invalid momentum value: -1.0"),
    ("RMSprop", {"alpha": -0.5}, ValueError, "Invalid alpha value: -0.5"),
    ("Rprop", {"lr": 1e-2, "etas": (1.0, 0.5)}, ValueError, "Invalid eta values: 1.0, 0.5"),
    ("Rprop", {"etas": (0.0, 1.2)}, ValueError, "Invalid eta values: 0.0, 1.2"),
    ("Rprop", {"etas": (0.5, 1.0)}, ValueError, "Invalid eta values: 0.5, 1.0"),
    ("SGD", {"lr": 1e-2, "momentum": -0.5}, ValueError, "Invalid momentum value: -0.5"),
    ("SGD", {"nesterov": True}, ValueError,
     "Nesterov momentum requires a momentum and zero dampening"),
    ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.5}, ValueError,
     "Nesterov momentum requires a momentum and zero dampening"),
]

# what torch accepts (and so must the twins)
ACCEPTED = [
    ("SGD", {"lr": torch.tensor(0.001), "foreach": True}),
    ("SGD", {"nesterov": True, "momentum": 0.9}),
    ("Adam", {"lr": torch.tensor(0.001)}),
    ("Adam", {"lr": torch.tensor(0.001), "foreach": True, "capturable": True}),
    ("Adam", {"betas": (torch.tensor(0.9), torch.tensor(0.99))}),
    ("Adagrad", {"lr": torch.tensor(0.01), "foreach": True}),
    ("Rprop", {"etas": (0.3, 1.5)}),
    ("Adadelta", {"rho": 1.0}),
    ("Adam", {"lr": 0.0}),
]


def params():
    return [torch.nn.Parameter(torch.randn(1, 1))]


@pytest.mark.parametrize("name, kwargs, error, regex", ERRORS,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_refused_with_torchs_words(name, kwargs, error, regex):
    with pytest.raises(error) as theirs:
        getattr(torch.optim, name)(params(), **kwargs)
    assert re.search(regex, str(theirs.value))  # the table says what torch says
    with pytest.raises(error) as ours:
        getattr(library, name)(params(), **kwargs)
    message = str(ours.value)
    assert re.search(regex, message), message
    if "Tensor" not in regex:  # ours also names the hyper and its interval or condition
        assert "hyper `" in message or "requires" in message, message


@pytest.mark.parametrize("name, kwargs", ACCEPTED, ids=[f"{a[0]}-{i}" for i, a in
                                                         enumerate(ACCEPTED)])
def test_accepted_where_torch_accepts(name, kwargs):
    getattr(torch.optim, name)(params(), **kwargs)
    ps = params()
    opt = getattr(library, name)(ps, **kwargs)
    ps[0].grad = torch.ones(1, 1)
    opt.step()
    assert torch.isfinite(ps[0]).all()


def test_fused_and_foreach_together_are_refused():
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
        library.Adam(params(), fused=True, foreach=True)


def test_a_number_too_large_for_a_float_names_its_hyper():
    with pytest.raises(ValueError) as info:
        library.Adam(params(), lr=10**400)
    message = str(info.value)
    assert "`lr`" in message and "401 digits" in message and "too large" in message
    with pytest.raises(ValueError, match=r"`betas` \(beta2\)"):
        library.Adam(params(), betas=(0.9, 10**400))


# -- parameters built on the meta device -------------------------------------------------

def meta_model():
    with torch.device("meta"):
        return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(),
                                   torch.nn.Linear(3, 1))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", ["Adam", "SGD", "AdamW", "Adagrad"])
def test_parameters_on_meta_then_to_empty(name, fused):
    """torch's suite (test_fused_error_on_params_on_meta): build on meta, construct, a step
    on meta gradients raises torch's RuntimeError, then to_empty(device="cpu") and the
    optimizer steps as torch's does."""
    model, ref_model = meta_model(), meta_model()
    opt = getattr(library, name)(model.parameters(), fused=fused)
    ref = getattr(torch.optim, name)(ref_model.parameters(), fused=fused)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    words = "`fused=True` requires all the params to be floating point Tensors" if fused \
        else "meta device"
    with pytest.raises(RuntimeError, match=re.escape(words)):
        opt.step()
    assert len(opt.state) == 0
    for m, o in ((model, opt), (ref_model, ref)):
        o.zero_grad(set_to_none=True)
        m.to_empty(device="cpu")
        torch.manual_seed(0)
        for p in m.parameters():
            torch.nn.init.normal_(p)
            p.grad = torch.rand_like(p)
        o.step()
    assert opt.backend == ("numpy" if c_build.unavailable() else "c")  # auto, on the CPU
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# -- prog.optimizer takes what the class takes ----------------------------------------------

def test_program_optimizer_takes_hypers_by_position():
    prog = optdsl.compile("v = a*v - lr*g; w = w + v", name="momentum_positional")
    opt = prog.optimizer(params(), 0.9, 1e-3)
    assert opt.defaults["a"] == 0.9 and opt.defaults["lr"] == 1e-3
    adam = library.program("Adam")
    opt = adam.optimizer(params(), 1e-2, (0.8, 0.9), backend="numpy")
    assert opt.defaults["lr"] == 1e-2 and opt.defaults["betas"] == (0.8, 0.9)
    with pytest.raises(TypeError, match="multiple values"):
        adam.optimizer(params(), 1e-2, lr=1e-3)
