"""optdsl: write an optimizer's update rule as math, get a fused torch.optim.Optimizer.

The public surface (see API.md): ``load``, ``compile``, ``DslError``, ``Program``; the
bundled optimizers live in ``optdsl.library``.
"""

from __future__ import annotations

from optdsl.errors import DslError
from optdsl.program import Program, compile_program, load_program
from optdsl.version import VERSION

__all__ = ["DslError", "Program", "compile", "load", "__version__"]
__version__ = VERSION


def compile(source: str, name: str | None = None) -> Program:  # noqa: A001 - API name
    """Compile program text, e.g. ``optdsl.compile("v = a*v - lr*g; w = w + v")``."""
    return compile_program(source, name=name)


def load(path) -> Program:
    """Compile a program file, e.g. ``optdsl.load("examples/adam.opt")``."""
    return load_program(path)
