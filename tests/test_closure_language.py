"""The constructs of closure-driven programs (docs/language.md, "Closure-driven steps"):
blocks and their indentation, host control around compiled phases, histories, arrays, choice
and derived hypers, the closure's functions; every mistake a positioned DslError; and each
phase checked as tests/test_ir.py checks a plain step (verified after every rewrite, scalar
work at group level)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optdsl
from optdsl import library
from optdsl.ir.ops import Level
from optdsl.ir.verify import verify
from optdsl.passes import PIPELINE, optimize


def steps(source: str, values, grads, n: int = 1, closure_grads=None, **hypers):
    """Run a program on one float64 parameter; with ``closure_grads`` (a function of the
    parameter) each closure call sets the gradient and returns sum(p^2)."""
    prog = optdsl.compile(source)
    p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))
    opt = prog.optimizer([p], **hypers)
    closure = None
    if closure_grads is not None:
        def closure():
            p.grad = closure_grads(p.detach()).clone()
            return (p.detach() ** 2).sum()
    for _ in range(n):
        if grads is not None:
            p.grad = torch.tensor(grads, dtype=torch.float64)
        opt.step(closure)
    return p.detach().tolist(), opt.state[p], opt


def error_of(source: str) -> optdsl.DslError:
    with pytest.raises(optdsl.DslError) as info:
        optdsl.compile(source)
    return info.value


# -- blocks ---------------------------------------------------------------------------------------

def test_loops_and_branches_run_on_the_host():
    source = """
state n = 0
k = 0
total = 0
while k < 10:
    k += 1
    if k == 3:
        continue_ = 1
    elif k > 6:
        break
    else:
        total += k
n += total
repeat 2:
    n += 100
w = w - n * g
"""
    w, state, _ = steps(source, [1.0], [0.001])
    assert state["n"] == 1 + 2 + 4 + 5 + 6 + 200
    assert w == pytest.approx([1.0 - 218 * 0.001])


def test_return_ends_the_step_and_break_leaves_one_loop():
    source = """
state n = 0
n += 1
repeat 3:
    repeat 3:
        n += 1
        break
if n > 2:
    return
w = w - g
"""
    w, state, _ = steps(source, [1.0], [1.0])
    assert state["n"] == 4 and w == [1.0]


def test_block_words_stay_names_elsewhere():
    prog = optdsl.compile("hyper if = 0.5\nwhile = 2\nw = w - if * while * g")
    assert not getattr(prog, "closure_driven", False)
    source = "state for = 0\nbreak_ = 1\nfor += 1\nif for > 0:\n    w = w - g\n"
    w, state, _ = steps(source, [1.0], [0.5])
    assert w == [0.5] and state["for"] == 1


def test_blank_and_comment_lines_and_semicolons_in_blocks():
    source = "state n = 0\nif n == 0:\n\n    # a comment\n    n += 1; n += 1\n\n\nw = w - g\n"
    assert steps(source, [1.0], [1.0])[1]["n"] == 2


@pytest.mark.parametrize("source,line,column,words", [
    ("state n = 0\nwhile n < 1:\nn += 1\nw = w - g", 2, 12, "expected an indented block"),
    ("state n = 0\nif n == 0:\n    n += 1\n  n += 2\nw = w - g", 4, 3, "indented less"),
    ("state n = 0\nif n == 0:\n    n += 1\n      n += 2\nw = w - g", 4, 7,
     "unexpected indentation"),
    ("state n = 0\nif n == 0:", 2, 10, "expected an indented block"),
    ("break\nw = w - g", 1, 1, "`break` outside a loop"),
])
def test_indentation_mistakes_are_positioned(source, line, column, words):
    err = error_of(source)
    assert (err.line, err.column) == (line, column), str(err)
    assert words in err.message


def test_a_later_condition_is_computed_only_when_the_earlier_fail():
    source = """
state h = history(3)
state n = 0
if len(h) == 0:
    n += 1
elif h[len(h) - 1] > 0:
    n += 10
push(h, 1)
w = w - g
"""
    _, state, _ = steps(source, [1.0], [0.0], n=2)
    assert state["n"] == 11 and state["h"] == [1.0, 1.0]


# -- histories and arrays ------------------------------------------------------------------------

def test_histories_keep_the_last_entries_oldest_first():
    source = """
hyper cap
state h = history(cap)
state v = history(cap)
state order = array(cap)
state k = 0
k += 1
push(h, k)
push(v, g * k)
for i in reversed(h):
    order[i] = h[i] * 10 + len(h)
d = 0 * w
for i in v:
    d = d + v[i]
w = w - d
"""
    w, state, _ = steps(source, [0.0, 0.0], [1.0, 2.0], n=4, cap=3)
    assert state["h"] == [2.0, 3.0, 4.0]  # 1 dropped out
    assert state["order"] == [23.0, 33.0, 43.0]
    assert [t.tolist() for t in state["v"]] == [[2, 4], [3, 6], [4, 8]]
    assert w == pytest.approx([-(1 + 3 + 6 + 9), -2 * (1 + 3 + 6 + 9)])


def test_clear_and_unset_entries():
    source = "state h = history(2)\nstate a = array(2)\npush(h, 1)\nclear(h)\nw = w - g\n"
    _, state, _ = steps(source, [1.0], [0.0])
    assert state["h"] == [] and "a" not in state  # a state exists once used
    source = "state a = array(2)\nx = a[1]\nw = w - x * g\n"
    prog = optdsl.compile(source)
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    p.grad = torch.ones(1, dtype=torch.float64)
    with pytest.raises(IndexError) as info:
        prog.optimizer([p]).step()
    assert isinstance(info.value, optdsl.DslError) and "read before it is set" in str(info.value)


# -- hypers ----------------------------------------------------------------------------------------

def test_choices_and_derived_defaults():
    source = """
hyper rule in {"plain", "double", None}
hyper count = 3
hyper m = floor(count * 5 / 4)
state s = 0
if rule == "double":
    s = m * 2
elif rule != "plain":
    s = -1
else:
    s = m
w = w - s * g
"""
    prog = optdsl.compile(source)
    assert prog.hypers["rule"].default == "plain" and not prog.hypers["rule"].required
    assert steps(source, [0.0], [0.0])[1]["s"] == 3
    assert steps(source, [0.0], [0.0], rule="double", count=8)[1]["s"] == 20
    assert steps(source, [0.0], [0.0], rule=None)[1]["s"] == -1
    opt = steps(source, [0.0], [0.0], count=8)[2]
    assert opt.defaults["m"] == 10 and isinstance(opt.defaults["m"], int)
    assert steps(source, [0.0], [0.0], m=2.5)[2].defaults["m"] == 2.5
    with pytest.raises(ValueError, match=r"Invalid rule value: 'triple' \(hyper `rule` must "
                                         r"be one of 'plain', 'double', None\)"):
        prog.optimizer([torch.nn.Parameter(torch.zeros(1))], rule="triple")


# -- the closure -----------------------------------------------------------------------------------

def test_evaluate_and_the_steps_result():
    source = "state seen = 0\nloss, g = evaluate()\nseen = loss\nf, g = evaluate()\n" \
             "w = w - 0.25 * g\n"
    calls = []

    def grads(p):
        calls.append(p.clone())
        return 2 * p

    w, state, opt = steps(source, [2.0], None, closure_grads=grads)
    assert len(calls) == 2 and state["seen"] == 4.0 and w == [1.0]
    result = opt.step(lambda: torch.tensor(7.0))
    assert float(result) == 7.0  # what the closure returned at its first call


def test_g_read_before_any_evaluate_calls_the_closure_first():
    calls = []
    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = optdsl.compile("k = len(h)\nstate h = history(1)\nw = w - 0.5 * g\n").optimizer([p])

    def closure():
        calls.append(1)
        p.grad = torch.tensor([1.0], dtype=torch.float64)
        return torch.tensor(3.0)

    assert float(opt.step(closure)) == 3.0 and calls == [1] and p.item() == 1.5


def test_hvp_needs_create_graph_and_a_closure():
    source = "loss, g = evaluate()\nh = hvp(g)\nw = w - h\n"
    prog = optdsl.compile(source)
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = prog.optimizer([p])
    with pytest.raises(TypeError) as info:
        opt.step()
    err = info.value
    assert isinstance(err, optdsl.DslError) and (err.line, err.column) == (1, 11)
    assert "evaluate() calls the closure" in err.message

    def plain():
        opt.zero_grad()
        loss = (p ** 3).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match=r"create_graph=True") as info:
        opt.step(plain)
    assert info.value.line == 2 and "hvp()" in info.value.message

    def second():
        opt.zero_grad()
        loss = (p ** 3).sum()
        loss.backward(create_graph=True)
        return loss

    opt.step(second)  # w - H g = w - 6 w * 3 w^2
    assert p.tolist() == pytest.approx([1 - 6 * 3, 2 - 12 * 12])
    assert not p.grad.requires_grad  # the graph was freed


def test_hvp_without_a_closure_names_it():
    prog = optdsl.compile("h = hvp(g)\nw = w - h\n")
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    p.grad = torch.ones(2, dtype=torch.float64)
    with pytest.raises(TypeError) as info:
        prog.optimizer([p]).step()
    assert isinstance(info.value, optdsl.DslError)
    assert (info.value.line, info.value.column) == (1, 5)
    assert "hvp() differentiates the gradient again" in info.value.message
    assert p.tolist() == [1.0, 1.0]


def test_numpy_optimizer_is_refused():
    prog = optdsl.compile("loss, g = evaluate()\nw = w - g\n")
    with pytest.raises(TypeError, match="closure-driven"):
        prog.numpy_optimizer([np.zeros(3)])


# -- mistakes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("source,line,column,words", [
    ("loss, g = evaluate()\nwhile loss > 0:\n    y = x\n    x = 1\nw = w - g", 3, 9,
     "may be read before it is assigned"),
    ("if 1 > 0:\n    x = 1\nw = w - x * g", 3, 9, "may be read before it is assigned"),
    ("loss, g = evaluate()\nw = w - t * g", 2, 9, "no per-parameter step count"),
    ("loss, g = evaluate()\nn = norm(g)\nw = w - n * g", 2, 5, "global_norm"),
    ("state H = eye()\nloss, g = evaluate()\nw = w - H * g", 3, 10,
     "`*` of a matrix and a vector; a matrix times a vector is matvec(A, v)"),
    ("state h = history(2)\nloss, g = evaluate()\nw = w - h * g", 3, 9, "index it"),
    ("loss, g = evaluate()\nw = w[0] - g", 2, 5, "indexes a history or an array"),
    ('hyper f in {"a", "b"}\nloss, g = evaluate()\nif f == "c":\n    w = w - g', 3, 9,
     "not a choice of `f`"),
    ('hyper f in {"a", "b"}\nloss, g = evaluate()\nw = w - f * g', 3, 9, "a choice"),
    ('hyper f in {"a", "a"}\nw = w - g\nloss, g = evaluate()', 1, 18, "is listed twice"),
    ("loss = evaluate()\nw = w - g", 1, 8, "gives 2 results: `loss, g = evaluate()`"),
    ("a, b, c = evaluate()\nw = w - g", 1, 1, "gives 2 results, assigned to 3"),
    ("state h = history(2)\npush(h)\nloss, g = evaluate()\nw = w - g", 2, 1,
     "takes a history and a value"),
    ("push(g, 1)\nloss, g = evaluate()\nw = w - g", 1, 6, "takes a history"),
    ("loss, g = evaluate()\nevaluate = 1\nw = w - g", 2, 1, "function of closure-driven"),
    ("hyper lr = 1\nloss, g = evaluate()\nlr = 2\nw = w - lr * g", 3, 1, "hyperparameter"),
    ("hyper a = b + 1\nhyper b = 1\nloss, g = evaluate()\nw = w - a * g", 1, 11,
     "declared before it"),
    ("hyper lr = 1\nstate s = lr * q\nloss, g = evaluate()\nw = w - s * g", 2, 16,
     "made of numbers and hypers"),
    ("loss, g = evaluate()\nfor i in 3:\n    w = w - g", 2, 10, "a loop runs over"),
    ("loss, g = evaluate()\nif g:\n    w = w - g", 2, 4, "a condition must be a mask"),
    ("loss, g = evaluate()\nm = g > 0\nh = hvp(g)\nw = where(m, w - h, w)", 2, 1,
     "not kept beyond"),
    ("loss, g = evaluate()\nx = history(3)\nw = w - g", 2, 5, "initial value of a state"),
])
def test_mistakes_are_positioned_dsl_errors(source, line, column, words):
    err = error_of(source)
    assert (err.line, err.column) == (line, column), str(err)
    assert words in err.message, str(err)
    assert "^" in str(err)


# -- phases ----------------------------------------------------------------------------------------

PHASED = {  # closure-driven programs whose phases are checked (and every bundled one)
    "line search": "hyper lr = 1\nloss, g = evaluate()\nd = -g\n"
                   "loss, g, t, n = strong_wolfe(d, lr, loss, g, global_sum(g * d), 25)\n"
                   "w = w + t * d\n",
    "history": "state h = history(3)\npush(h, g * 2)\nd = 0\nfor i in h:\n"
               "    d = d + h[i] / global_norm(h[i])\nw = w - d\n",
    "switch": 'hyper rule in {"a", "b"}\nd = where(rule == "a", g, -g)\n'
              'if rule == "b":\n    d = d * global_maxabs(g)\nw = w - d\n',
}


def phased(name: str):
    return optdsl.compile(PHASED[name]) if name in PHASED else library.program(name)


@pytest.mark.parametrize("name", sorted(PHASED) + sorted(library.CLOSURE_DRIVEN))
def test_every_phase_verifies_and_keeps_scalars_at_group_level(name):
    prog = phased(name)
    assert prog.phases
    for phase in prog.phases:
        graph = verify(phase.graph)
        for run in PIPELINE:
            graph = verify(run(graph))
        assert optimize(phase.graph, check=True) == graph
        for eq in phase.optimized.eqs:  # a host value is one number per group
            assert eq.kind.level != Level.PARAM, (name, eq)
        for backend in ("numpy", "triton"):
            assert phase.source(backend)
    text = prog.source("numpy")
    assert "phase 0" in text and f"# ---- phase {len(prog.phases) - 1}" in text


def test_only_what_is_read_later_leaves_a_phase():
    prog = optdsl.compile("""
loss, g = evaluate()
u = g * 2
v = u + 1
x = global_sum(v * v)
keep = v * x
loss, g = evaluate()
w = w - keep
""")
    (first, second) = prog.procedure.phases
    assert [ref.name for _, ref in first.writes] == ["keep"]  # u, v stay in the phase
    assert first.results == () and not first.writes_w
    assert second.writes_w and not second.writes


def test_a_gradient_kept_across_an_evaluation_is_copied_first():
    source = "loss, g0 = evaluate()\nloss, g1 = evaluate()\nw = w - (g1 - g0)\n"
    prog = optdsl.compile(source)
    calls = [0]
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    p.grad = torch.zeros(1, dtype=torch.float64)

    def closure():
        calls[0] += 1
        p.grad.fill_(calls[0])  # in place, as zero_grad(set_to_none=False) and backward do
        return torch.tensor(0.0)

    prog.optimizer([p]).step(closure)
    assert p.item() == 0.0  # w - (2 - 1)


def test_index_and_random_index():
    source = """
hyper seed = 5
state k = 0
i = random_index(numel(), seed, k)
k += 1
w = w + where(index() == i, 1, 0)
"""
    w, _, _ = steps(source, [0.0] * 4, None, n=50)
    assert sum(w) == 50 and all(x > 0 for x in w)
    again, _, _ = steps(source, [0.0] * 4, None, n=50)
    assert again == w  # the same draws: from (seed, k) alone
