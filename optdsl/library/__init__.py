"""The bundled optimizers: one .opt program each, compiled on first use into a drop-in twin
of its torch.optim namesake (same keywords, same state_dict keys).

    from optdsl.library import Adam
    opt = Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
"""

from __future__ import annotations

import functools
from pathlib import Path

LIBRARY_DIR = Path(__file__).resolve().parent

# class name -> program file; the class name is also the `optimizer` header of the file.
PROGRAMS = {
    "SGD": "sgd.opt",
    "Adagrad": "adagrad.opt",
    "RMSprop": "rmsprop.opt",
    "Adam": "adam.opt",
    "AdamW": "adamw.opt",
    "Adamax": "adamax.opt",
    "NAdam": "nadam.opt",
    "RAdam": "radam.opt",
    "Adadelta": "adadelta.opt",
    "Rprop": "rprop.opt",
    "ASGD": "asgd.opt",
    "SparseAdam": "sparse_adam.opt",
    "Lion": "lion.opt",
    "PolyakSGD": "polyak_sgd.opt",
    "LAMB": "lamb.opt",
    "LARS": "lars.opt",
    "SGDClip": "sgd_clip.opt",
    "AdamWClip": "adamw_clip.opt",
    "SGDClipPerTensor": "sgd_clip_tensor.opt",
    "Muon": "muon.opt",
    "Adafactor": "adafactor.opt",
    # closure-driven (stepped as torch.optim.LBFGS is: opt.step(closure))
    "LBFGS": "lbfgs.opt",
    "Newton": "newton.opt",
    "SaddleFreeNewton": "saddle_free_newton.opt",
    "BFGS": "bfgs.opt",
    "NonlinearCG": "nonlinear_cg.opt",
    "CoordinateDescent": "coordinate_descent.opt",
}

# The closure-driven programs of PROGRAMS (optdsl.closure_program): their step runs host
# control around compiled phases and may call the closure; the others update once per
# step() from the gradients as they are.
CLOSURE_DRIVEN = frozenset({"LBFGS", "Newton", "SaddleFreeNewton", "BFGS", "NonlinearCG",
                            "CoordinateDescent"})
STEPWISE = tuple(name for name in PROGRAMS if name not in CLOSURE_DRIVEN)

# torch.optim.Adam (and AdamW) refuse Tensor-valued lr and betas in some combinations
# (torch/optim/adam.py, Adam.__init__): with foreach=True unless capturable=True, and betas
# mixing a Tensor and a float. Their twins refuse the same (optdsl.optim.hypers).
TENSOR_HYPER_RULES = {"Adam": ("lr", "betas"), "AdamW": ("lr", "betas")}

# The twins whose torch.optim namesake refuses complex parameters (torch's optim_db marks them
# supports_complex=False); every other twin steps them as torch does, on their real view.
REAL_ONLY = frozenset({"SparseAdam"})

__all__ = list(PROGRAMS) + ["program", "path"]


def path(name: str) -> Path:
    """The .opt file of a bundled optimizer."""
    if name not in PROGRAMS:
        raise KeyError(f"no bundled optimizer {name!r}; there are {', '.join(PROGRAMS)}")
    return LIBRARY_DIR / PROGRAMS[name]


@functools.lru_cache(maxsize=None)
def program(name: str):
    """The compiled Program of a bundled optimizer."""
    from optdsl.program import load_program

    return load_program(path(name))


def _torch_positional(name: str) -> tuple[str, ...] | None:
    """The keywords torch.optim's namesake takes by position (after params), if it has one."""
    import inspect

    import torch.optim

    twin = getattr(torch.optim, name, None)
    if twin is None:
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in inspect.signature(twin.__init__).parameters.values()
             if p.kind in kinds]
    return tuple(names[2:])  # after self and params


@functools.lru_cache(maxsize=None)
def _optimizer_class(name: str) -> type:
    from optdsl.optim.torch_optimizer import make_optimizer_class

    cls = make_optimizer_class(program(name), name=name, module=__name__,
                               positional=_torch_positional(name),
                               tensor_hyper_rules=TENSOR_HYPER_RULES.get(name, ()),
                               complex_params=name not in REAL_ONLY)
    cls.__qualname__ = name
    return cls


def __getattr__(name: str):
    if name in PROGRAMS:
        cls = _optimizer_class(name)
        globals()[name] = cls
        return cls
    raise AttributeError(f"module 'optdsl.library' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PROGRAMS))
