"""The layering of DESIGN.md holds in the imports (module-level and inside functions alike):

- the compiler core (frontend, ir, passes) imports no torch, no runtime, no optimizer layer;
- the frontend does not optimise (no rewrite), and code generators read only the IR;
- the runtime imports no rewrite and not the package face;
- the optimizer wrappers use a program's interface: no IR evaluator, no rewrite;
- nothing below the apps imports an app.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "optdsl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, as dotted names (``from optdsl import x`` gives
    ``optdsl.x`` when x is a module, else ``optdsl``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(
                    ".py").exists() or (PACKAGE.parent / Path(*candidate.split("."))).is_dir()
                found.add(candidate if is_module else node.module)
    return found


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


RULES = [
    # (modules the rule applies to, forbidden imports, why)
    (("optdsl.frontend", "optdsl.ir", "optdsl.passes"),
     ("torch", "triton", "optdsl.runtime", "optdsl.optim", "optdsl.apps", "optdsl.codegen"),
     "the compiler core imports no torch and no runtime"),
    (("optdsl.frontend",), ("optdsl.passes",), "the frontend does not optimise"),
    (("optdsl.codegen",), ("torch", "optdsl.runtime", "optdsl.optim", "optdsl.apps",
                           "optdsl.passes", "optdsl.frontend"),
     "back ends read only the IR"),
    (("optdsl.runtime",), ("optdsl.passes", "optdsl.optim", "optdsl.apps", "optdsl.program"),
     "the runtime imports no rewrite, no optimizer layer"),
    (("optdsl.optim",), ("optdsl.ir.evaluate", "optdsl.passes", "optdsl.apps", "optdsl.ir"),
     "the optimizer wrappers use the program's interface"),
    (("optdsl.frontend", "optdsl.ir", "optdsl.passes", "optdsl.codegen", "optdsl.runtime",
      "optdsl.optim", "optdsl.library", "optdsl.program", "optdsl.errors"),
     ("optdsl.apps",), "nothing below the apps imports an app"),
]


@pytest.mark.parametrize("owners,forbidden,why", RULES, ids=[r[2] for r in RULES])
def test_layering(owners, forbidden, why):
    broken = [(module, name) for module, imports in MODULES.items() if _within(module, *owners)
              for name in imports if _within(name, *forbidden)]
    assert not broken, f"{why}: {broken}"


def test_the_runtime_does_not_import_the_package_face():
    broken = [m for m, imports in MODULES.items() if _within(m, "optdsl.runtime")
              and "optdsl" in imports]
    assert not broken, broken


def test_the_rules_see_the_modules():
    assert "optdsl.frontend.check" in MODULES and "optdsl.runtime.cache" in MODULES
    assert "optdsl.ir.builder" in MODULES["optdsl.frontend.check"]
    assert "torch" in MODULES["optdsl.optim.torch_optimizer"]
