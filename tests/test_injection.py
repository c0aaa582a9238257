"""Injection and identifiers: only validated identifiers (renamed) and exact numbers reach
generated source, and no name a program chooses can shadow or collide with a generated one.

How it is checked:

- *Twin programs.* Each program is compiled twice: with hostile names (``np``, ``lambda``,
  ``B``, ``v0``, ``_stored``, ...) and with neutral ones (``zq0``, ``zq1``, ...) in the same
  places. In the neutral twin's NumPy and Triton sources every identifier containing a
  neutral name must be that name behind one of the compiler's prefixes (``h_``, ``s_``,
  ``a_s_``, ``c_s_``, ``p_s_``, ``DT_s_``), never the bare name; string constants may be the
  bare name (the keys ``hyper['lr']`` and ``TENSORS``) and nothing longer. The hostile twin's
  source must then be the neutral twin's with each neutral name replaced by its hostile one,
  logical line for logical line (parsed with Python's ``tokenize``; line order and wrapping
  may differ), so user names reach code only in those prefixed or quoted places.
- *No shadowing at run time.* The hostile program runs (NumPy step, through both the NumPy
  optimizer and the torch wrapper with its hypers passed by their hostile names, and the
  Triton kernels in the interpreter) and must equal the reference evaluator / the NumPy step.
- *Numbers.* Every float constant in generated source (parsed with ``ast``) is a number of
  the program, exactly, or a structural constant of the generator (0, 1, -1, the helpers'
  series coefficients); every int is a small index or a known structural constant; each
  distinctive literal of the program appears bit-exactly.
- *Descriptions.* The text of ``optimizer Name "description"`` never reaches generated source.
- *Refusals.* Unicode look-alikes, invisible and control characters are DslErrors at their
  line:col; dunder names, built-ins and the keywords of the optimizer's constructor
  (``params``, ``backend``, ``self``...) used as hypers are DslErrors at the name.
"""

from __future__ import annotations

import ast
import collections
import io
import itertools
import math
import re
import tokenize
import warnings

import numpy as np
import pytest
import strategies as S
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optdsl
import optdsl.ir.evaluate as ev
from optdsl.optim import hypers as hyper_values
from optdsl.codegen.numpy import CHUNK

SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}

PREFIXES = ("h_", "s_", "a_s_", "c_s_", "p_s_", "DT_s_")
NEUTRAL = re.compile(r"zq\d+")

# Valid DSL identifiers that mean something to Python, NumPy, Triton or the generated code.
# Each must compile in every role (hyper, tuple part, state, state key, temporary, inferred
# state, required hyper, optimizer name) and behave exactly like a neutral name.
HOSTILE = [
    # Python and its builtins
    "lambda", "def", "class", "None", "True", "False", "import", "from", "return", "yield",
    "is", "if", "else", "elif", "for", "while", "pass", "del", "global",
    "nonlocal", "try", "except", "finally", "raise", "with", "async", "await", "assert",
    "break", "continue", "exec", "eval", "print", "float", "int", "len", "range", "object",
    "type", "globals", "locals", "vars", "open", "compile", "getattr", "cls", "_", "_x",
    # modules the generated code uses or could
    "np", "tl", "triton", "torch", "math", "os", "sys", "libdevice", "numpy",
    # names the generated code defines (NumPy and Triton backends)
    "hyper_", "launch", "p", "t_", "v0", "v1", "v12", "f3", "f0", "b0", "b1", "m0",
    "c_w", "a_w", "c_g", "a_g", "h_lr", "s_m", "h_", "s_", "p_w", "p_g", "DT_w", "DT_g",
    "B", "M", "CHUNK", "NUM_BUFFERS", "NUM_MASKS", "NUM_REDUCTIONS", "PASSES", "TENSORS",
    "n", "lo", "hi", "k", "acc", "acc3", "x", "offs", "mask", "pid", "ti", "start", "sp",
    "rp", "ptrs", "sizes", "blocks", "scal", "red", "CT", "BLOCK", "MASKED", "ALIGNED",
    "_div", "_sqrt", "_pow", "_exp", "_stored", "_add", "_maxnan", "_INTERPRET", "_probe",
    "pass0_kernel", "pass1_block", "pass0_block", "states", "buffers", "masks", "scalars",
    "ctx", "SWEEPS", "sweep0", "sweep1", "sweep0_kernel", "sweep1_block", "partials", "s",
    "totals", "inv_grad_scale",
    # runtime and wrapper words
    "state_dict", "grad", "lr", "INV_GRAD_SCALE", "program", "arrays", "defaults",
    "param_groups", "maximize", "positional", "kwargs", "args", "closure", "zero_grad",
]
# Names that may be refused (with a DslError at the name) or accepted, by role.
# (`and`, `or`, `not` and `nan` became keywords of the language in December 2026.)
MAY_REFUSE = ["in", "as", "hyper", "state", "optimizer", "info", "inf", "and", "or", "not",
              "nan"]
CONSTRUCTOR_KEYWORDS = ["self", "params", "backend", "skip_nonfinite", "foreach", "fused",
                        "capturable", "differentiable"]

# One program with a name in every role; roles are the format fields.
ROLES = ("opt", "h", "tup", "p1", "p2", "s", "key", "sw", "tmp", "inf_state", "req")
TEMPLATE = """\
optimizer {opt} "a description"
hyper {h} = 0.25 in [0, 1]
hyper {tup} = ({p1} = 0.5, {p2} = 0.125)
state {s} = 0 as {key}
state {sw} = w
{tmp} = {s} * {p1} + g * {h}
{s} = {tmp}
{sw} = {sw} * {p2} + {tmp} * sum(g) * 0.01
{inf_state} = {inf_state} * 0.5 + 1
w = w - {req} * {tmp} - {h} * {sw} + {inf_state} * 0.001 + where({tmp} > {h}, 0.5, -0.5) * {p1}
"""


def render(names: dict[str, str]) -> str:
    return TEMPLATE.format(**names)


def neutral_names() -> dict[str, str]:
    return {role: f"zq{i}" for i, role in enumerate(ROLES)}


# -- reading generated source ---------------------------------------------------------------------

def identifiers(tree: ast.AST) -> list[str]:
    """Every identifier a Python tree names: variables, attributes, functions, arguments,
    keywords, imports."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.append(node.id)
        elif isinstance(node, ast.Attribute):
            out.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(node.name)
        elif isinstance(node, ast.arg) or isinstance(node, ast.keyword) and node.arg:
            out.append(node.arg)
        elif isinstance(node, ast.alias):
            out.extend(part for part in (node.name.split(".") + [node.asname or ""]) if part)
    return out


def docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.add(id(body[0].value))
    return found


def strings(tree: ast.AST) -> tuple[list[str], list[str]]:
    """(string constants, docstrings)."""
    docs = docstring_nodes(tree)
    plain, doc = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            (doc if id(node) in docs else plain).append(node.value)
    return plain, doc


def numbers(tree: ast.AST) -> tuple[list[float], list[int]]:
    """(float constants, int constants); ``float('inf')`` and ``float('nan')`` are floats."""
    floats, ints = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "float" and len(node.args) == 1 \
                and isinstance(node.args[0], ast.Constant):
            floats.append(float(node.args[0].value))
        elif isinstance(node, ast.Constant) and not isinstance(node.value, (str, bool)) \
                and node.value is not None and node.value is not Ellipsis:
            (ints if isinstance(node.value, int) else floats).append(node.value)
    return floats, ints


def comments(source: str) -> list[str]:
    return [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT]


def logical_lines(source: str) -> collections.Counter:
    """The multiset of (indent depth, tokens) of a module's logical lines, comments and line
    wrapping left out."""
    lines: collections.Counter = collections.Counter()
    depth, current = 0, []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type in (tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER):
            continue
        elif tok.type == tokenize.NEWLINE:
            lines[(depth, " ".join(current))] += 1
            current = []
        else:
            current.append(tok.string)
    return lines


def substitute(source: str, mapping: dict[str, str]) -> str:
    """Replace each neutral name (a whole word, also behind a prefix) by its hostile twin."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(PREFIXES, key=len,
                                                                         reverse=True))
                         + r")?(zq\d+)\b")
    return pattern.sub(lambda m: (m.group(1) or "") + mapping[m.group(2)], source)


def check_neutral_source(source: str, user: set[str], title: str) -> None:
    """Neutral names appear only behind a prefix, or as whole words: a bare string constant
    (a key), in a comment or a docstring (the optimizer's name, the states a pass updates)."""
    tree = ast.parse(source)
    for name in identifiers(tree):
        found = NEUTRAL.search(name)
        if found:
            assert name != found.group(0), f"bare user name `{name}` is an identifier"
            prefix = name[:found.start()]
            assert prefix in PREFIXES and found.end() == len(name), \
                f"identifier `{name}` is not a prefixed user name"
            assert found.group(0) in user
    plain, docs = strings(tree)
    for text in plain:
        if NEUTRAL.search(text):
            assert text in user, f"string constant {text!r} holds user text"
    for text in docs:  # the optimizer's name, the state names a pass updates
        for found in NEUTRAL.findall(text):
            assert found in user, f"docstring names `{found}`: {text!r}"
    for text in comments(source):
        for word in NEUTRAL.findall(text):
            assert word in user, text


def compile_twins(hostile: dict[str, str]):
    neutral = neutral_names()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = optdsl.compile(render(hostile))
        twin = optdsl.compile(render(neutral))
    return prog, twin, {neutral[r]: hostile[r] for r in ROLES}


def check_twins(prog, twin, back: dict[str, str]) -> None:
    user = set(back)
    for backend in ("numpy", "triton"):
        theirs = twin.source(backend)
        check_neutral_source(theirs, user, title=next(z for z, h in back.items()
                                                      if h == prog.name))
        ours = prog.source(backend)
        ast.parse(ours)
        want = logical_lines(substitute(theirs, back))
        have = logical_lines(ours)
        assert have == want, (
            f"{backend} source differs from its neutral twin beyond renaming:\n"
            f"only hostile: {list((have - want).elements())[:5]}\n"
            f"only twin: {list((want - have).elements())[:5]}")
        assert sorted(comments(ours)) == sorted(comments(substitute(theirs, back)))


# -- running hostile programs --------------------------------------------------------------------

def keyword_values(prog) -> dict:
    out = {}
    for name, spec in prog.hypers.items():
        if spec.parts:
            out[name] = (0.375, 0.625)
        elif spec.required or spec.interval is not None:
            out[name] = 0.75
    return out


def evaluator_steps(prog, keywords, ws, grads_per_step):
    scalars = hyper_values.scalars(prog.hypers,
                                   hyper_values.resolve(prog.hypers, keywords, extra={}))
    params = []
    for w in ws:
        state = {}
        for name, spec in prog.states.items():
            value = ev.evaluate(spec.init, {"hyper": scalars, "w": w})["init"]
            state[name] = (np.array(np.broadcast_to(value, w.shape), dtype=w.dtype)
                           if spec.tensor else np.float64(value))
        params.append({"w": w.copy(), "state": state})
    for step, grads in enumerate(grads_per_step, start=1):
        outs = ev.evaluate_group(prog.graph, scalars, [
            {"w": p["w"], "g": g, "t": step, "state": p["state"]} for p, g in zip(params, grads)])
        for p, out in zip(params, outs):
            p["w"] = np.array(np.broadcast_to(out["w"], p["w"].shape), dtype=np.float64)
            p["state"] = {n: out[n] for n in prog.states}
    return params


def check_runs_like_evaluator(prog, triton: bool = False) -> None:
    rng = np.random.default_rng(7)
    sizes = (5, 300)
    ws = [rng.standard_normal(n) for n in sizes]
    grads = [[rng.standard_normal(n) for n in sizes] for _ in range(3)]
    keywords = keyword_values(prog)
    want = evaluator_steps(prog, keywords, ws, grads)

    arrays = [w.copy() for w in ws]
    opt = prog.numpy_optimizer(arrays, **keywords)
    for step_grads in grads:
        opt.step([g.copy() for g in step_grads])
    for ref, got, state in zip(want, arrays, opt.state):
        np.testing.assert_allclose(got, ref["w"], rtol=1e-12, atol=0)
        for name, spec in prog.states.items():
            np.testing.assert_allclose(np.asarray(state[spec.key], dtype=np.float64),
                                       np.asarray(ref["state"][name], dtype=np.float64),
                                       rtol=1e-12, atol=0)

    torch = pytest.importorskip("torch")
    backends = ["numpy"] + (["triton"] if triton else [])
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # scalar state in float64, as the evaluator
    try:
        for backend in backends:
            params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in ws]
            topt = prog.optimizer(params, backend=backend, **keywords)
            for step_grads in grads:
                for p, g in zip(params, step_grads):
                    p.grad = torch.from_numpy(g.copy())
                topt.step()
            for ref, p in zip(want, params):
                np.testing.assert_allclose(p.detach().numpy(), ref["w"], rtol=1e-9,
                                           atol=1e-300, err_msg=f"backend {backend}")
                for name, spec in prog.states.items():
                    np.testing.assert_allclose(
                        topt.state[p][spec.key].double().numpy(),
                        np.asarray(ref["state"][name], dtype=np.float64), rtol=1e-9,
                        atol=1e-300, err_msg=f"backend {backend}, state {name}")
    finally:
        torch.set_default_dtype(saved)


# -- hostile names in every role ---------------------------------------------------------------

def rotations(names: list[str]) -> list[dict[str, str]]:
    """Programs that together put every name in every role (each program uses distinct
    names; the leftover slots of the last group take neutral fillers)."""
    out = []
    for shift in range(len(ROLES)):
        rotated = names[shift:] + names[:shift]
        for start in range(0, len(rotated), len(ROLES)):
            chunk = rotated[start:start + len(ROLES)]
            chunk += [f"filler{i}" for i in range(len(ROLES) - len(chunk))]
            out.append(dict(zip(ROLES, chunk)))
    return out


def test_hostile_names_are_distinct_valid_identifiers():
    assert len(set(HOSTILE)) == len(HOSTILE)
    for name in HOSTILE:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)
        assert not NEUTRAL.fullmatch(name)


@pytest.mark.parametrize("names", rotations(HOSTILE),
                         ids=lambda names: "-".join(names.values())[:60])
def test_hostile_names_are_mangled(names):
    prog, twin, back = compile_twins(names)
    assert prog.name == names["opt"]
    assert set(prog.hypers) == {names["h"], names["tup"], names["req"]}
    assert set(prog.states) == {names["s"], names["sw"], names["inf_state"]}
    assert prog.states[names["s"]].key == names["key"]
    check_twins(prog, twin, back)


@pytest.mark.parametrize("names", rotations(HOSTILE)[::len(rotations(HOSTILE)) // 6],
                         ids=lambda names: "-".join(names.values())[:60])
def test_hostile_names_run_like_the_evaluator(names):
    """The generated code runs: user names shadow nothing (NumPy optimizer, torch wrapper
    with the hypers passed by their hostile names)."""
    prog, _, _ = compile_twins(names)
    check_runs_like_evaluator(prog)


@pytest.fixture
def interpreter(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("index", [0, 3])
def test_hostile_names_run_in_the_triton_interpreter(index, interpreter):
    prog, _, _ = compile_twins(rotations(HOSTILE)[index])
    check_runs_like_evaluator(prog, triton=True)


@pytest.mark.parametrize("name", MAY_REFUSE + ["step"])
@pytest.mark.parametrize("role", ROLES)
def test_keyword_like_names_are_mangled_or_refused(name, role):
    if name in ("inf", "nan") and role == "req":
        pytest.skip(f"`{name}` read in an expression is the number: there is no name to mangle")
    names = {r: f"n_{r}" for r in ROLES}
    names[role] = name
    source = render(names)
    try:
        prog, twin, back = compile_twins(names)
    except optdsl.DslError as err:
        line = source.split("\n")[err.line - 1]
        assert line[err.column - 1:].startswith(name) or "unexpected" in err.message, str(err)
        return
    check_twins(prog, twin, back)
    check_runs_like_evaluator(prog)


@pytest.mark.parametrize("name", CONSTRUCTOR_KEYWORDS)
@pytest.mark.parametrize("role", ["h", "tup", "req"])
def test_constructor_keywords_cannot_name_hypers(name, role):
    """A hyper is a constructor keyword and a param-group key: `params` would replace the
    group's parameter list, `backend`/`skip_nonfinite` would be taken by the constructor,
    torch's flags (`foreach`...) would override the default, `self` clashes. Refused at the
    name. (Found by this test: all of them compiled and then failed or were ignored.)"""
    names = {r: f"n_{r}" for r in ROLES}
    names[role] = name
    source = render(names)
    with pytest.raises(optdsl.DslError, match="keyword") as info:
        optdsl.compile(source)
    err = info.value
    assert source.split("\n")[err.line - 1][err.column - 1:].startswith(name)


@pytest.mark.parametrize("name", CONSTRUCTOR_KEYWORDS)
@pytest.mark.parametrize("role", ["p1", "s", "key", "tmp", "inf_state", "opt"])
def test_constructor_keywords_are_fine_elsewhere(name, role):
    names = {r: f"n_{r}" for r in ROLES}
    names[role] = name
    prog, twin, back = compile_twins(names)
    check_twins(prog, twin, back)
    check_runs_like_evaluator(prog)


@settings(max_examples=40, **SETTINGS)
@given(st.data())
def test_random_programs_with_hostile_names(data):
    """Random valid programs (tests/strategies.py) with their names replaced by hostile ones:
    twins differ only by renaming, and the program runs like the evaluator."""
    base = data.draw(S.programs(max_depth=3))
    used = [n for n in S.USER_NAMES if re.search(rf"\b{n}\b", base)]
    hostile = data.draw(st.lists(st.sampled_from(HOSTILE), min_size=len(used),
                                 max_size=len(used), unique=True))
    to_hostile = dict(zip(used, hostile))
    to_neutral = {n: f"zq{i}" for i, n in enumerate(used)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = optdsl.compile(S.rename(base, to_hostile))
        twin = optdsl.compile(S.rename(base, to_neutral))
    back = {to_neutral[n]: to_hostile[n] for n in used}
    title = to_neutral.get("Random", "program")
    for backend in ("numpy", "triton"):
        theirs = twin.source(backend)
        check_neutral_source(theirs, set(back), title)
        assert logical_lines(prog.source(backend)) == logical_lines(substitute(theirs, back))
    with np.errstate(all="ignore"):
        keywords = {name: 0.5 for name, spec in prog.hypers.items() if spec.required}
        rng = np.random.default_rng(0)
        ws = [rng.standard_normal(4), rng.standard_normal(1)]
        grads = [[rng.standard_normal(4), rng.standard_normal(1)] for _ in range(2)]
        want = evaluator_steps(prog, keywords, ws, grads)
        arrays = [w.copy() for w in ws]
        opt = prog.numpy_optimizer(arrays, **keywords)
        for g in grads:
            opt.step([x.copy() for x in g])
        for ref, got in zip(want, arrays):  # (an ulp apart at most: see test_fuzz's pow)
            np.testing.assert_allclose(got, ref["w"], rtol=1e-12, atol=0, equal_nan=True)


# -- numbers ---------------------------------------------------------------------------------

def structural_floats() -> set[float]:
    """Float constants the Triton helpers are made of (used only when a helper is)."""
    from optdsl.codegen.triton_helpers import HELPERS

    found = {0.0, 1.0, -1.0}
    for text in HELPERS.values():
        floats, _ = numbers(ast.parse(text))
        found.update(floats)
    return found


DISTINCT = ["0.1", "1.2345678901234567e-05", "5e-324", "1.7976931348623157e308",
            "3.0000000000000004", "12345", "2.2250738585072014e-308", "0.30000000000000004",
            "1e-300", "7e22"]
NUMBERS_PROGRAM = """\
hyper lr = 0.8765432109876543
state m = 0
m = 0.9999999999999999 * m + g * {0}
w = w - lr * m * {1} + g * {2} - w * {3} * {4} + {5} * g / ({6} + g * g) - {7} * w + {8} * g \
- where(g > {9}, g, -0.0) + exp(g) * atan2(g, w) + tanh(w) + w ^ g
"""


# The integers of the generated code itself: the NumPy chunk, bfloat16 rounding masks (and the
# quiet-NaN bit), and the constants of the stochastic-rounding hash (murmur3's finalizer, the
# golden ratio).
STRUCTURAL_INTS = (CHUNK, 0x7FFF, 0xFFFF, 0xFFFF0000, 0xFFFFFFFF, 0x85EBCA6B, 0xC2B2AE35,
                   0x9E3779B9, 0x400000)


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_numbers_reach_source_exactly(backend):
    source = NUMBERS_PROGRAM.format(*DISTINCT)
    prog = optdsl.compile(source)
    tree = ast.parse(prog.source(backend))
    floats, ints = numbers(tree)
    literals = {float(x) for x in DISTINCT} | {0.9999999999999999, 0.0}
    allowed = literals | {-x for x in literals} | structural_floats()
    for value in floats:
        assert value in allowed or math.isnan(value) or math.isinf(value), \
            f"float {value!r} in the {backend} source is not a number of the program"
    for text in DISTINCT:  # each literal reaches the source bit-exactly
        assert any(f == float(text) and math.copysign(1, f) == math.copysign(1, float(text))
                   for f in floats), f"{text} is missing from the {backend} source"
    assert 0.8765432109876543 not in floats  # hyper defaults are values, not code
    for value in ints:
        assert 0 <= value <= 64 or value in STRUCTURAL_INTS, value


def test_numbers_behave_exactly():
    """The exact numbers also compute exactly: subnormals, the largest float, 0.1."""
    prog = optdsl.compile("w = w * 5e-324 + g * 1.7976931348623157e308 - 0.1 + "
                          "2.2250738585072014e-308")
    w, g = np.array([1.0, 2.0, -3.0]), np.array([1.0, -0.5, 0.0])
    arrays = [w.copy()]
    with np.errstate(all="ignore"):
        prog.numpy_optimizer(arrays).step([g])
        want = w * 5e-324 + g * 1.7976931348623157e308 - 0.1 + 2.2250738585072014e-308
    np.testing.assert_array_equal(arrays[0], want)


# -- descriptions and optimizer names --------------------------------------------------------------

DESCRIPTIONS = [  # each holds the marker ZZMARK, which must not reach any source
    "plain ZZMARK words",
    "''' + __import__('os').system('ZZMARK') + '''",
    "ZZMARK\\",
    "ZZMARK\\\\n\\x00\\u2028 end\\",
    "{0} {x!r} %s %(a)s ${HOME} ZZMARK",
    "# ZZMARK not a comment",
    "\\nZZMARK\\n",
    "\u00e9\u2028\u0430\u202e\ufeff\u200d\x0c\x1c\x85\r ZZMARK",
    "\t ZZMARK \t",
    "ZZMARK" * 1000,
]


@pytest.mark.parametrize("description", DESCRIPTIONS, ids=range(len(DESCRIPTIONS)))
def test_description_never_reaches_generated_source(description):
    source = f'optimizer Opt "{description}"\nhyper lr = 0.1\nw = w - lr*g\n'
    prog = optdsl.compile(source)
    assert prog.description == description
    assert prog.name == "Opt"
    for backend in ("numpy", "triton", "ir"):
        text = prog.source(backend)
        if backend != "ir":
            ast.parse(text)
        assert "ZZMARK" not in text, f"the description reached the {backend} source"
    # it is documentation of the class only
    assert description in prog.optimizer_class.__doc__


@pytest.mark.parametrize("name", ["lambda", "np", "_", "None", "step", "x" * 200])
def test_name_argument_reaches_docstrings_only(name):
    """``optdsl.compile(text, name=...)`` names the optimizer like ``optimizer Name``."""
    text = "hyper lr = 0.1\nstate m = 0\nm = m + g\nw = w - lr*m\n"
    prog = optdsl.compile(text, name=name)
    twin = optdsl.compile(text, name="zq0")
    assert prog.name == name
    for backend in ("numpy", "triton"):
        theirs = twin.source(backend)
        check_neutral_source(theirs, {"zq0"}, title="zq0")
        assert logical_lines(prog.source(backend)) == \
            logical_lines(substitute(theirs, {"zq0": name}))


@pytest.mark.parametrize("bad", ["a b", "x\n", "1x", "lr;import os", "\u0430", "", "a-b",
                                 "os.system"])
def test_compile_name_argument_is_validated(bad):
    with pytest.raises(ValueError):
        optdsl.compile("w = w - g", name=bad)


# -- refusals at line:col -----------------------------------------------------------------------

LOOKALIKES = {  # character -> what it looks like
    "\u0430": "Cyrillic a", "\u0435": "Cyrillic e", "\u043e": "Cyrillic o",
    "\u0440": "Cyrillic er (p)", "\u0441": "Cyrillic es (c)", "\u03bf": "Greek omicron",
    "\u0391": "Greek Alpha", "\uff57": "fullwidth w", "\uff47": "fullwidth g",
    "\uff11": "fullwidth 1", "\u0661": "Arabic-Indic 1", "\U0001d7cf": "math bold 1",
    "\U0001d430": "math bold w", "\u0131": "dotless i", "\u212a": "Kelvin sign",
    "\u200d": "zero-width joiner", "\u200b": "zero-width space", "\u200c": "zero-width non-joiner",
    "\u2060": "word joiner", "\ufeff": "BOM", "\u00ad": "soft hyphen", "\u00a0": "no-break space",
    "\u202e": "right-to-left override", "\u2028": "line separator", "\u0301": "combining acute",
    "\u2212": "minus sign", "\uff1d": "fullwidth =", "\u037e": "Greek question mark (;)",
    "\x0b": "vertical tab", "\x1c": "file separator", "\x85": "next line", "\r": "lone CR",
    "\x7f": "DEL", "\x1b": "escape",
}
PLACES = [  # (program with {} where the character goes, line, column of the {})
    ("w = w - {}*g", 1, 9),
    ("hyper lr = 0.1\nw = w - l{}r*g", 2, 10),
    ("hyper l{}r = 0.1\nw = w - g", 1, 8),
    ("state m = 0\nm = m + g{}\nw = w - m", 2, 10),
    ("w = w - 1{}*g", 1, 10),
    ("w = w - 0.{}5 * g", 1, 11),
    ("x = 1; {}w = w - x*g", 1, 8),
    ("optimizer A{}\nw = w - g", 1, 12),
    ("hyper b = (b1 = 0.9{}, b2 = 0.99)\nw = w - b1*b2*g", 1, 20),
    ("# comment\n\n  w = w -\tg *{} 2", 3, 14),
]


@pytest.mark.parametrize("char", list(LOOKALIKES), ids=list(LOOKALIKES.values()))
def test_lookalikes_are_refused_at_their_position(char):
    for template, line, column in PLACES:
        if char == "\r" and "{}\n" in template:
            continue  # \r\n is a line end
        source = template.format(char)
        with pytest.raises(optdsl.DslError) as info:
            optdsl.compile(source)
        err = info.value
        assert (err.line, err.column) == (line, column), (source, str(err))
        text = str(err)
        assert all(c.isprintable() for c in text.replace("\n", "")), repr(text)
        assert f"U+{ord(char):04X}" in text or char.isascii(), text


@pytest.mark.parametrize("char", [c for c in LOOKALIKES if c not in "\r"],
                         ids=[v for c, v in LOOKALIKES.items() if c not in "\r"])
def test_lookalikes_in_comments_and_descriptions_are_inert(char):
    """Comments and descriptions may hold any character (except a line end); they never
    reach generated code, and errors on later lines keep their line numbers."""
    prog = optdsl.compile(f'optimizer A "d{char}d"  # c{char}c\nhyper lr = 0.1 # {char}\n'
                          f'w = w - lr*g')
    for backend in ("numpy", "triton"):
        assert char not in prog.source(backend)
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(f"# {char}\nw = w - lr*g\nw = w - foo(g)")
    assert (info.value.line, info.value.column) == (3, 9)
    assert str(info.value).split("\n")[1].endswith("w = w - foo(g)")


@pytest.mark.parametrize("name", ["__import__", "__class__", "__builtins__", "__dict__",
                                  "__init__", "__", "___x"])
@pytest.mark.parametrize("role", ["h", "tup", "p1", "s", "sw", "tmp", "inf_state", "req"])
def test_dunder_names_are_refused(name, role):
    names = {r: f"n_{r}" for r in ROLES}
    names[role] = name
    source = render(names)
    with pytest.raises(optdsl.DslError, match="reserved") as info:
        optdsl.compile(source)
    err = info.value
    assert source.split("\n")[err.line - 1][err.column - 1:].startswith(name)


@pytest.mark.parametrize("name,role", itertools.product(
    ["w", "g", "t", "sqrt", "where", "global_norm", "sum"], ["h", "tup", "p1", "s", "sw", "tmp"]))
def test_builtin_names_are_refused(name, role):
    names = {r: f"n_{r}" for r in ROLES}
    names[role] = name
    if name in ("w", "g") and role == "tmp":
        pytest.skip("assigning w or g is the language")
    with pytest.raises(optdsl.DslError):
        optdsl.compile(render(names))


@pytest.mark.parametrize("stem,name", [("\u0430dam", "_dam"), ("\uff41dam", "_dam"),
                                        ("my-opt", "my_opt"), ("1cycle", "program_1cycle"),
                                        ("a\u200db", "a_b"), ("adam", "adam")])
def test_file_names_give_ascii_optimizer_names(tmp_path, stem, name):
    """A program without `optimizer Name` is named after its file. (Bug: the name kept
    Unicode letters, \\W being Unicode-aware, so `аdam.opt` with a Cyrillic а made an
    optimizer named `аdam` in the generated docstrings and the class name.)"""
    path = tmp_path / f"{stem}.opt"
    path.write_text("w = w - 0.1*g\n", encoding="utf-8")
    prog = optdsl.load(path)
    assert prog.name == name
    for backend in ("numpy", "triton"):
        assert prog.source(backend).isascii()
