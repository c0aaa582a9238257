"""The bundled optimizer programs compile and declare torch.optim's keywords and state keys."""

from __future__ import annotations

from pathlib import Path

import pytest

import optdsl
import optdsl.library as library

LIBRARY_DIR = Path(library.__file__).resolve().parent

# file -> (optimizer header name, constructor keywords in order, {state variable: state key})
EXPECTED = {
    "sgd.opt": ("SGD", ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"],
                {"buf": "momentum_buffer"}),
    "adagrad.opt": ("Adagrad", ["lr", "lr_decay", "weight_decay", "initial_accumulator_value",
                                "eps", "maximize"],
                    {"acc": "sum"}),
    "rmsprop.opt": ("RMSprop", ["lr", "alpha", "eps", "weight_decay", "momentum", "centered",
                                "maximize"],
                    {"v": "square_avg", "buf": "momentum_buffer", "gavg": "grad_avg"}),
    "adam.opt": ("Adam", ["lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                          "decoupled_weight_decay"],
                 {"m": "exp_avg", "v": "exp_avg_sq", "vmax": "max_exp_avg_sq"}),
    "adamw.opt": ("AdamW", ["lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"],
                  {"m": "exp_avg", "v": "exp_avg_sq", "vmax": "max_exp_avg_sq"}),
    "adamax.opt": ("Adamax", ["lr", "betas", "eps", "weight_decay", "maximize"],
                   {"m": "exp_avg", "u": "exp_inf"}),
    "nadam.opt": ("NAdam", ["lr", "betas", "eps", "weight_decay", "momentum_decay",
                            "decoupled_weight_decay", "maximize"],
                  {"m": "exp_avg", "v": "exp_avg_sq", "mu_product": "mu_product"}),
    "radam.opt": ("RAdam", ["lr", "betas", "eps", "weight_decay", "decoupled_weight_decay",
                            "maximize"],
                  {"m": "exp_avg", "v": "exp_avg_sq"}),
    "adadelta.opt": ("Adadelta", ["lr", "rho", "eps", "weight_decay", "maximize"],
                     {"v": "square_avg", "u": "acc_delta"}),
    "rprop.opt": ("Rprop", ["lr", "etas", "step_sizes", "maximize"],
                  {"prev": "prev", "step_size": "step_size"}),
    "asgd.opt": ("ASGD", ["lr", "lambd", "alpha", "t0", "weight_decay", "maximize"],
                 {"eta": "eta", "mu": "mu", "ax": "ax"}),
    "sparse_adam.opt": ("SparseAdam", ["lr", "betas", "eps", "maximize"],
                        {"m": "exp_avg", "v": "exp_avg_sq"}),
    "lion.opt": ("Lion", ["lr", "betas", "weight_decay", "maximize"], {"m": "exp_avg"}),
    "polyak_sgd.opt": ("PolyakSGD", ["lr", "momentum", "weight_decay", "maximize"],
                       {"buf": "momentum_buffer", "avg": "ax"}),
}

# tuple keywords and the names their parts go by in the programs
TUPLE_PARTS = {
    "betas": ("beta1", "beta2"),
    "etas": ("etaminus", "etaplus"),
    "step_sizes": ("step_size_min", "step_size_max"),
}

# states kept as one number per parameter rather than a tensor
SCALAR_STATES = {("nadam.opt", "mu_product"), ("asgd.opt", "eta"), ("asgd.opt", "mu")}

NEVER_KEYWORDS = {"foreach", "fused", "capturable", "differentiable"}


def _names(collection) -> list[str]:
    """prog.hypers / prog.states as a list of names (a dict's keys or objects' .name)."""
    if isinstance(collection, dict):
        return list(collection)
    return [getattr(item, "name", item) for item in collection]


def _items(collection) -> list:
    return list(collection.values()) if isinstance(collection, dict) else list(collection)


def test_every_bundled_twin_is_there():
    on_disk = {p.name for p in LIBRARY_DIR.glob("*.opt")}
    assert set(EXPECTED) <= on_disk


@pytest.mark.parametrize("path", sorted(LIBRARY_DIR.glob("*.opt")), ids=lambda p: p.name)
def test_every_library_file_compiles(path):
    """Every program in the library directory, including ones not listed above."""
    prog = optdsl.load(path)
    assert prog.name
    for spec in _items(prog.hypers):
        assert not spec.required, f"{path.name}: {spec.name} has no default"


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_compiles_with_expected_interface(filename):
    name, hypers, states = EXPECTED[filename]
    prog = optdsl.load(LIBRARY_DIR / filename)
    assert prog.name == name
    assert _names(prog.hypers) == hypers  # declaration order = torch's positional order
    assert not NEVER_KEYWORDS & set(_names(prog.hypers))
    specs = {s.name: s for s in _items(prog.states)}
    assert {n: s.key for n, s in specs.items()} == states
    for n, spec in specs.items():
        assert spec.tensor == ((filename, n) not in SCALAR_STATES), n
    for spec in _items(prog.hypers):
        assert not spec.required, f"{spec.name} has no default"
        assert not getattr(spec, "inferred", False), f"{spec.name} is not declared"
        if spec.name in TUPLE_PARTS:
            assert tuple(spec.parts) == TUPLE_PARTS[spec.name]
            assert len(spec.default) == len(spec.parts)
    for spec in specs.values():
        assert not getattr(spec, "inferred", False), f"state {spec.name} is not declared"


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_also_compiles_from_a_string(filename):
    source = (LIBRARY_DIR / filename).read_text()
    prog = optdsl.compile(source, name=EXPECTED[filename][0])
    assert _names(prog.hypers) == EXPECTED[filename][1]


def test_all_lists_every_class():
    classes = sorted(name for name, _, _ in EXPECTED.values())
    assert set(classes) <= set(library.__all__)
    for cls_name in library.__all__:
        obj = getattr(library, cls_name)
        if isinstance(obj, type):
            assert cls_name == obj.__name__
    for cls_name in classes:
        cls = getattr(library, cls_name)
        assert isinstance(cls, type)
        assert cls.__name__ == cls_name
    # every program file in the library is reachable as a class listed in __all__
    headers = {optdsl.load(p).name for p in LIBRARY_DIR.glob("*.opt")}
    assert headers <= set(library.__all__)


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_header_has_a_description_and_formula_comment(filename):
    lines = (LIBRARY_DIR / filename).read_text().splitlines()
    assert lines[0].startswith(f'optimizer {EXPECTED[filename][0]} "')
    assert lines[0].rstrip().endswith('"') and len(lines[0]) > 30
    assert any(line.startswith("#") and "<-" in line for line in lines), "no formula comment"
