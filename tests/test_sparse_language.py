"""The `sparse` statement: its forms, what a program says with it (Program.sparse), and every
misuse as one positioned DslError (docs/language.md, "Sparse gradients")."""

from __future__ import annotations

import pytest

import optdsl
from optdsl import DslError

STEP = "hyper lr = 0.1, weight_decay = 0\nw = w - lr * g\n"


def test_plain_sparse_allows_sparse_gradients():
    rule = optdsl.compile("sparse\n" + STEP).sparse
    assert rule.allowed and not rule.only and not rule.requirements
    assert rule.blocker is None


def test_a_program_without_sparse_does_not_take_them():
    rule = optdsl.compile(STEP).sparse
    assert not rule.allowed and not rule.only and rule.blocker is None


def test_sparse_only_with_and_without_a_message():
    rule = optdsl.compile("sparse only\n" + STEP).sparse
    assert rule.allowed and rule.only and rule.dense_message is None
    rule = optdsl.compile('sparse only, "use Adam for dense gradients"\n' + STEP).sparse
    assert rule.only and rule.dense_message == "use Adam for dense gradients"


def test_sparse_require_gives_conditions_on_hypers():
    source = ('sparse require weight_decay == 0, "no decay with sparse gradients {lr}"\n'
              'sparse require lr < 1, lr >= 0\n' + STEP)
    rule = optdsl.compile(source).sparse
    assert rule.allowed and not rule.only
    first, second = rule.requirements
    assert first.text == "weight_decay == 0" and first.message.endswith("{lr}")
    assert first.holds({"lr": 0.1, "weight_decay": 0.0})
    assert not first.holds({"lr": 0.1, "weight_decay": 0.5})
    assert second.text == "lr < 1, lr >= 0" and second.message is None
    assert not second.holds({"lr": 2.0, "weight_decay": 0.0})


def test_statements_may_come_in_any_order():
    late = optdsl.compile(STEP + "sparse only\n")
    assert late.sparse.only


def test_sparse_is_still_a_name_outside_the_statement():
    """Programs written before `sparse` existed keep compiling: it is a keyword only at the
    start of a statement that is not an assignment."""
    prog = optdsl.compile("hyper lr = 0.1\nsparse = 2 * g\nsparse += g\nw = w - lr * sparse\n")
    assert not prog.sparse.allowed
    prog = optdsl.compile("hyper sparse = 0.5\nw = w - sparse * g\n")
    assert list(prog.hypers) == ["sparse"]
    prog = optdsl.compile("hyper lr = 0.1\nonly = g\nw = w - lr * only\n")
    assert list(prog.hypers) == ["lr"]


def test_a_sparse_program_compiles_on_every_back_end():
    prog = optdsl.compile("sparse\nstate m = 0\nm = 0.9 * m + g\nw = w - 0.1 * m / (1 - 0.9^t)\n")
    assert prog.source("numpy") and prog.source("triton")


def test_the_blocker_of_a_program_with_a_reduction():
    rule = optdsl.compile("hyper lr = 0.1\nw = w - lr * g / norm(g)\n").sparse
    assert rule.blocker == "`norm()` at line 2"
    rule = optdsl.compile("hyper lr = 0.1\nx = norm(g)\nw = w - lr * g\n").sparse
    assert rule.blocker is None  # a dead reduction does not count


ERRORS = [
    ("reduction", "sparse\nhyper lr = 0.1\nw = w - lr * g / (norm(g) + 1)", 3, 19,
     ("`norm()` reduces over the whole tensor, but this program takes sparse gradients "
      "(`sparse` at line 1)")),
    ("group-reduction", "hyper lr = 0.1\nsparse only\nw = w - lr * g * global_norm(w)", 3, 18,
     "reduces over every parameter of the group"),
    ("reduction-in-a-temporary", "sparse\nd = dot(g, w)\nw = w - d * g", 2, 5, "`dot()`"),
    ("only-twice", "sparse only\nsparse only, \"x\"\nw = w - g", 2, 1,
     "says `sparse only` once"),
    ("require-reads-w", "sparse require w > 0\nw = w - g", 1, 16, "not `w`"),
    ("require-reads-g", "sparse require g > 0\nw = w - g", 1, 16, "not `g`"),
    ("require-reads-t", "hyper a = 1\nsparse require t > a\nw = w - a * g", 2, 16, "not `t`"),
    ("require-reads-a-state", "hyper a = 1\nstate m = 0\nsparse require m > 0\nm = g\nw = m",
     3, 16, "not `m`"),
    ("require-not-a-comparison", "hyper a = 1\nsparse require a + 1\nw = w - a * g", 2, 16,
     "must be a comparison"),
    ("require-reduces", "hyper a = 1\nsparse require sum(a) > 0\nw = w - a * g", 2, 16,
     "reduces a tensor"),
    ("require-bad-brace", "hyper a = 1\nsparse require a > 0, \"bad {b}\"\nw = w - a * g", 2, 23,
     "must name a hyper"),
    ("require-unknown-name", "hyper alpha = 1\nsparse require alpah > 0\nw = w - alpha * g", 2, 16,
     "did you mean `alpha`"),
    ("only-and-require-together", "sparse only require\nw = w - g", 1, 13, "unexpected"),
    ("sparse-with-a-value", "sparse 1\nw = w - g", 1, 8, "unexpected `1`"),
]


@pytest.mark.parametrize("source, line, column, fragment",
                         [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_misuse_is_a_positioned_error(source, line, column, fragment):
    with pytest.raises(DslError) as info:
        optdsl.compile(source, name="P")
    error = info.value
    assert (error.line, error.column) == (line, column), str(error)
    assert fragment in error.message, str(error)
    assert "^" in str(error) and "Traceback" not in str(error)


def test_the_expected_words_name_the_sparse_forms():
    with pytest.raises(DslError) as info:
        optdsl.compile("sparse 1\nw = w - g")
    assert "`only`" in info.value.message and "`require`" in info.value.message
