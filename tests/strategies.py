"""Program generators shared by the property tests, the fuzz tests and bench/fuzz.py.

- ``programs()``: text of a random *valid* program over the whole language (declared,
  tuple and inferred hypers, declared and inferred states, temporaries, ``g`` rebinding,
  every function of optdsl.ir.ops.FUNCTIONS, special constants, ``\\n``/``;`` separators).
- ``loose_programs()``: programs that are often wrong (masks as numbers, reductions of
  scalars, bad arity, unknown functions, keywords and built-ins in odd places).
- ``token_soup()``: random sequences of the grammar's terminals (and a few strangers).
- ``lark_programs()``: hypothesis.extra.lark.from_lark over grammars/optdsl.lark, raw
  (terminals drawn from their regexes, ignored whitespace and comments inserted anywhere);
  ``lark_programs(spaced=True)`` draws names, numbers and descriptions from small
  vocabularies and pads them with spaces, so that most draws parse and many compile.
- ``mutated_programs()``: a valid program with a few character- or token-level edits.
- ``renamed()``: a program strategy whose user-chosen names are replaced (e.g. by hostile
  ones such as ``np``, ``lambda`` or ``B``).
"""

from __future__ import annotations

import functools
import re

from hypothesis import strategies as st

from optdsl.ir.ops import FUNCTIONS, GLOBAL, REDUCE, SELECT

# (matrix functions, which need matrix-shaped parameters, have their own tests: test_matrix)
ELEMENT_FUNCTIONS = {n: op for n, op in FUNCTIONS.items()
                     if not op.matrix and op.shape_rule is None}
ELEMENTWISE_1 = sorted(n for n, op in ELEMENT_FUNCTIONS.items() if op.arity == 1
                       and op.category not in (REDUCE, GLOBAL))
ELEMENTWISE_2 = sorted(n for n, op in ELEMENT_FUNCTIONS.items() if op.arity == 2
                       and op.category not in (REDUCE, GLOBAL))
REDUCTIONS_1 = sorted(n for n, op in ELEMENT_FUNCTIONS.items() if op.arity == 1
                      and op.category in (REDUCE, GLOBAL))
REDUCTIONS_2 = sorted(n for n, op in ELEMENT_FUNCTIONS.items() if op.arity == 2
                      and op.category in (REDUCE, GLOBAL))
ELEMENTWISE_3 = sorted(n for n, op in ELEMENT_FUNCTIONS.items() if op.arity == 3
                       and op.category not in (REDUCE, GLOBAL, SELECT))
BINOPS = ["+", "-", "*", "/", "^", "**"]
COMPARISONS = ["<", "<=", ">", ">=", "==", "!="]
CONSTANTS = ["0", "0.0", "-0.0", "1", "-1", "2", "-2.5", "0.5", "3", "1e-8", "inf", "-inf",
             "1e300", ".25", "7", "nan"]


# -- valid programs --------------------------------------------------------------------------

@st.composite
def expressions(draw, names, tensor_names, depth, need_tensor=False):
    """Expression text over ``names``; surely tensor-valued when ``need_tensor``
    (``tensor_names`` are names that always hold tensors)."""
    if depth <= 0 or draw(st.integers(0, 3)) == 0:
        if need_tensor:
            return draw(st.sampled_from(tensor_names))
        if draw(st.booleans()):
            return draw(st.sampled_from(CONSTANTS))
        return draw(st.sampled_from(names))

    def sub(tensor=False):
        return draw(expressions(names, tensor_names, depth - 1, tensor))

    kind = draw(st.sampled_from(["unary", "binop", "func2", "clamp", "where", "reduce",
                                 "reduce2"]))
    if kind in ("reduce", "reduce2") and need_tensor:
        kind = "binop"
    if kind == "unary":
        func = draw(st.sampled_from(ELEMENTWISE_1 + ["-"]))
        return f"-({sub(need_tensor)})" if func == "-" else f"{func}({sub(need_tensor)})"
    if kind in ("binop", "func2"):
        first = draw(st.booleans())
        a, b = sub(need_tensor and first), sub(need_tensor and not first)
        if kind == "binop":
            return f"({a}) {draw(st.sampled_from(BINOPS))} ({b})"
        return f"{draw(st.sampled_from(ELEMENTWISE_2))}({a}, {b})"
    if kind == "clamp":
        which = draw(st.integers(0, 2))
        func = draw(st.sampled_from(ELEMENTWISE_3))
        return f"{func}(" + ", ".join(sub(need_tensor and which == j) for j in range(3)) + ")"
    if kind == "where":
        which = draw(st.integers(0, 2))
        cond = f"({sub(need_tensor and which == 0)}) {draw(st.sampled_from(COMPARISONS))} ({sub()})"
        combine = draw(st.sampled_from(["", "and", "or", "not"]))
        if combine == "not":
            cond = f"not {cond}"
        elif combine:
            cond = f"{cond} {combine} ({sub()}) {draw(st.sampled_from(COMPARISONS))} ({sub()})"
        a, b = sub(need_tensor and which == 1), sub(need_tensor and which == 2)
        return f"where({cond}, {a}, {b})"
    if kind == "reduce":
        return f"{draw(st.sampled_from(REDUCTIONS_1))}({sub(True)})"
    return f"{draw(st.sampled_from(REDUCTIONS_2))}({sub(True)}, {sub(True)})"


@st.composite
def programs(draw, max_depth=4):
    """Text of a random valid program."""
    lines = []
    if draw(st.booleans()):
        lines.append('optimizer Random "a random program"')
    hypers = [f"h{i}" for i in range(draw(st.integers(0, 2)))]
    for h in hypers:
        default = draw(st.sampled_from(["0", "1", "0.5", "-2", "1e-3", "inf", "-0.0"]))
        lines.append(f"hyper {h} = {default}")
    if draw(st.booleans()):
        lines.append("hyper bb = (b1 = 0.9, b2 = 0.999) in [0, 1)")
        hypers += ["b1", "b2"]
    inferred_hypers = [f"k{i}" for i in range(draw(st.integers(0, 2)))]
    states = [f"s{i}" for i in range(draw(st.integers(0, 2)))]
    tensor_names = ["w", "g"]
    for i, s in enumerate(states):
        init = draw(st.sampled_from(["0", "1", "-0.0", "w", "0.5*w + 1", "inf", "-w"]))
        if "w" in init:
            tensor_names.append(s)
        key = f" as key{i}" if draw(st.booleans()) else ""
        lines.append(f"state {s} = {init}{key}")
    inferred_states = [f"u{i}" for i in range(draw(st.integers(0, 1)))]
    temps = [f"x{i}" for i in range(draw(st.integers(0, 2)))]
    names = ["w", "g", "t"] + hypers + inferred_hypers + states + inferred_states + temps
    targets = states + inferred_states + temps + ["g", "w"]
    body = []
    for _ in range(draw(st.integers(1, 5))):
        target = draw(st.sampled_from(targets))
        # names that must stay tensors (w, g, states initialised from w) get tensors
        value = draw(expressions(names, tensor_names, max_depth, target in tensor_names))
        assign = draw(st.sampled_from(["=", "=", "=", "+=", "-=", "*=", "/="]))
        body.append(f"{target} {assign} {value}")
    for u in inferred_states:  # read before its first assignment: an inferred state
        body.insert(0, f"x_{u} = {u} + 1")
        body.append(f"{u} = {draw(expressions(names, tensor_names, 2))}")
    body.append(f"w = {draw(expressions(names, tensor_names, max_depth, draw(st.booleans())))}")
    sep = draw(st.sampled_from(["\n", "; ", "\n\n# comment\n"]))
    return "\n".join(lines + [sep.join(body)]) + "\n"


# The names programs() chooses (besides w, g, t and the functions): renamed() maps them.
USER_NAMES = ("Random", "h0", "h1", "bb", "b1", "b2", "k0", "k1", "s0", "s1", "key0", "key1",
              "u0", "x_u0", "x0", "x1")


def rename(source: str, mapping: dict[str, str]) -> str:
    """Replace whole-word names of ``source`` (outside the description string)."""
    if not mapping:
        return source
    pattern = re.compile(r'"[^"\n]*"|\b(' + "|".join(map(re.escape, mapping)) + r")\b")
    return pattern.sub(lambda m: mapping[m.group(1)] if m.group(1) else m.group(0), source)


@st.composite
def renamed(draw, base, pool):
    """``base`` (a program strategy using USER_NAMES) with its names replaced by distinct
    names drawn from ``pool``. Returns (source, mapping)."""
    source = draw(base)
    used = [n for n in USER_NAMES if re.search(rf"\b{n}\b", source)]
    choices = draw(st.lists(st.sampled_from(list(pool)), min_size=len(used),
                            max_size=len(used), unique=True)) if len(pool) >= len(used) else []
    mapping = dict(zip(used, choices))
    return rename(source, mapping), mapping


# -- programs that are often wrong --------------------------------------------------------------

TOKENS = ["w", "g", "t", "lr", "m", "x", "=", "+", "-", "*", "/", "^", "**", "(", ")", ",", ";",
          "\n", " ", "<", "<=", "==", "!=", ">", ">=", "hyper", "state", "optimizer", "in", "as",
          "inf", "[", "]", "0", "1", "0.5", "1e-8", ".5", "1e999", '"desc"', "# c", "sqrt",
          "where", "clamp", "sum", "global_norm", "dot", "min", "maxabs", "1e", "e5", "_", "\t",
          "\r\n", "$", "\x00", "\u0430", "\u00e9", "\\", "'", "@", "..", "1.2.3", "info"]


@st.composite
def loose_expressions(draw, depth=3):
    """Expressions that are often wrong: masks as numbers, reductions of scalars, bad arity,
    unknown functions, functions used as names."""
    atoms = ["w", "g", "t", "lr", "m", "x", "sqrt", "0", "-0.0", "inf", "1e-8", "2"]
    funcs = sorted(FUNCTIONS) + ["foo", "sqr"]
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(atoms))
    kind = draw(st.integers(0, 2))
    if kind == 0:
        op = draw(st.sampled_from(BINOPS + COMPARISONS))
        return f"({draw(loose_expressions(depth - 1))}) {op} ({draw(loose_expressions(depth - 1))})"
    if kind == 1:
        return f"-({draw(loose_expressions(depth - 1))})"
    args = [draw(loose_expressions(depth - 1)) for _ in range(draw(st.integers(0, 4)))]
    return f"{draw(st.sampled_from(funcs))}({', '.join(args)})"


@st.composite
def loose_programs(draw):
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            interval = draw(st.sampled_from(["", " in [0, 1)", " in (1, 0)", " in [-inf, inf]"]))
            name = draw(st.sampled_from(["lr", "x", "w", "sqrt", "m", "t"]))
            lines.append(f"hyper {name} = {draw(loose_expressions(1))}{interval}")
        elif kind == 1:
            key = draw(st.sampled_from(["", " as k", " as step", " as m"]))
            name = draw(st.sampled_from(["m", "x", "lr", "t"]))
            lines.append(f"state {name} = {draw(loose_expressions(1))}{key}")
        else:
            target = draw(st.sampled_from(["w", "g", "t", "m", "x", "lr", "sqrt"]))
            lines.append(f"{target} = {draw(loose_expressions())}")
    return "\n".join(lines)


# -- the grammar: its alphabet, from_lark ------------------------------------------------------

@functools.lru_cache(maxsize=1)
def grammar():
    """The Lark object of grammars/optdsl.lark, exactly as the compiler builds it."""
    from optdsl.frontend.parse import _parser

    return _parser()


@functools.lru_cache(maxsize=1)
def grammar_alphabet() -> tuple[list[str], dict[str, str]]:
    """The grammar's literal terminals (keywords and punctuation) and its regex terminals
    (name -> pattern), read from the grammar itself."""
    terminals, _, _ = grammar().grammar.compile(["start"], ())
    literals = sorted(t.pattern.value for t in terminals if t.pattern.type == "str")
    regexes = {t.name: t.pattern.to_regexp() for t in terminals if t.pattern.type == "re"}
    return literals, regexes


# Names and numbers that give programs a chance to mean something, plus hostile ones.
VOCABULARY = ["w", "g", "t", "lr", "m", "v", "x", "beta1", "eps", "b", "sqrt", "where", "sum",
              "global_norm", "dot", "clamp", "min", "max", "abs", "exp", "log", "norm", "mean",
              "atan2", "maxabs", "np", "tl", "self", "lambda", "step", "B", "n", "_", "__x",
              "hyper", "state", "optimizer", "in", "as", "inf", "info", "Adam", "p", "k"]
NUMBERS = ["0", "1", "2", "0.5", ".5", "1e-8", "1e300", "1e999", "0.0", "3.", "1E+2", "007",
           "4.9e-324", "1e-400", "9" * 30]
DESCRIPTIONS = ['"desc"', '""', '"\\"', '"\'\'\'"', '"{0} {x!r} %s"', '"a # b"',
                '"import os; os.system(1)"', '"\\n\\x00"', '"\u00e9\u2028\u0430"']


@functools.lru_cache(maxsize=2)
def _lark_strategy(spaced: bool):
    from hypothesis.extra.lark import from_lark

    if not spaced:
        return from_lark(grammar())

    def pad(values):
        return st.sampled_from(values).map(lambda s: f" {s} ")

    explicit = {"NAME": pad(VOCABULARY), "NUMBER": pad(NUMBERS), "STRING": pad(DESCRIPTIONS),
                "COMMENT": st.sampled_from(["# c", "#", "# \u00e9 \u2028 x"]),
                "__IGNORE_0": st.sampled_from([" ", "\t", "  "])}
    return from_lark(grammar(), explicit=explicit)


def lark_programs(spaced: bool = False):
    """Programs drawn from the grammar by hypothesis.extra.lark.from_lark."""
    return st.deferred(lambda: _lark_strategy(spaced))


@functools.lru_cache(maxsize=1)
def _rule_table():
    """The grammar's rules as {nonterminal: [expansion, ...]} (each a tuple of (name,
    is_terminal)), and each nonterminal's smallest derivation height."""
    _, rules, _ = grammar().grammar.compile(["start"], ())
    table: dict[str, list[tuple[tuple[str, bool], ...]]] = {}
    for rule in rules:
        table.setdefault(rule.origin.name, []).append(
            tuple((s.name, s.is_term) for s in rule.expansion))
    height: dict[str, int] = {}
    changed = True
    while changed:  # fixed point: height(A) = 1 + min over expansions of max child height
        changed = False
        for name, expansions in table.items():
            best = min((1 + max((0 if term else height.get(sym, 10**9)
                                 for sym, term in e), default=0)) for e in expansions)
            if best < height.get(name, 10**9):
                height[name], changed = best, True
    return table, height


@functools.lru_cache(maxsize=1)
def _literal_terminals() -> dict[str, str]:
    terminals, _, _ = grammar().grammar.compile(["start"], ())
    return {t.name: t.pattern.value for t in terminals if t.pattern.type == "str"}


def _terminal(draw, name: str, spaced: bool) -> str:
    literal = _literal_terminals().get(name)
    if literal is not None:
        return literal
    regexes = grammar_alphabet()[1]
    small = {"NAME": VOCABULARY, "NUMBER": NUMBERS, "STRING": DESCRIPTIONS,
             "COMPOP": COMPARISONS, "_NL": ["\n", "\n", "\r\n"]}.get(name)
    if small is not None and (spaced or draw(st.integers(0, 3)) > 0):
        return draw(st.sampled_from(small))
    return draw(st.from_regex(regexes[name], fullmatch=True))


@st.composite
def grammar_programs(draw, start: str = "start", budget: int = 60, spaced: bool = True):
    """A random derivation of the grammar from ``start``: a grammar-directed generator with
    a size budget (after ``budget`` expansions every nonterminal takes its shortest
    derivation), so it is fast and always terminates. With ``spaced`` the tokens are
    separated by whitespace and names, numbers and descriptions come from the small
    vocabularies; otherwise tokens may touch and terminals are drawn from their regexes."""
    table, height = _rule_table()
    left = [budget]
    out: list[str] = []

    def derive(symbol: str, is_term: bool) -> None:
        if is_term:
            out.append(_terminal(draw, symbol, spaced))
            out.append(" " if spaced else draw(st.sampled_from(["", " ", "\t", " \x0c"])))
            return
        options = table[symbol]
        left[0] -= 1
        if left[0] <= 0:
            low = min(1 + max((0 if t else height[s] for s, t in e), default=0)
                      for e in options)
            options = [e for e in options
                       if 1 + max((0 if t else height[s] for s, t in e), default=0) == low]
        for sym, term in draw(st.sampled_from(options)):
            derive(sym, term)

    derive(start, False)
    return "".join(out)


@st.composite
def grammar_optimizers(draw, spaced: bool = True):
    """A grammar derivation followed by an assignment of ``w``: parses more often than a
    bare derivation and often gets through the checker."""
    head = draw(grammar_programs("start", budget=draw(st.integers(1, 80)), spaced=spaced))
    value = draw(grammar_programs("expr", budget=draw(st.integers(1, 30)), spaced=spaced))
    return f"{head}\nw = {value}\n"


@st.composite
def token_soup(draw, max_size=40):
    """A random sequence of the grammar's terminals (literal ones, samples of the regex
    ones) and a few characters the grammar does not know, joined by random whitespace."""
    literals, regexes = grammar_alphabet()
    strangers = ["$", "\x00", "\u0430", "\uff11", "\u200d", "\\", "'", "@", "\r", "\x0c\n",
                 "\u2028", "\x85", "1e", ".", "e5"]
    pieces = []
    for _ in range(draw(st.integers(0, max_size))):
        kind = draw(st.integers(0, 9))
        if kind < 5:
            piece = draw(st.sampled_from(literals))
        elif kind < 9:
            name = draw(st.sampled_from(sorted(regexes)))
            if name in ("NAME", "NUMBER") and draw(st.booleans()):
                piece = draw(st.sampled_from(VOCABULARY if name == "NAME" else NUMBERS))
            else:
                piece = draw(st.from_regex(regexes[name], fullmatch=True))
        else:
            piece = draw(st.sampled_from(strangers))
        pieces.append(piece)
        pieces.append(draw(st.sampled_from(["", " ", " ", "\n", ";"])))
    return "".join(pieces)


@st.composite
def mutated_programs(draw, base=None):
    """A valid program with 1-3 edits: a character deleted, duplicated or replaced, a token
    swapped for another of the grammar, or two lines exchanged."""
    source = draw(base if base is not None else programs(max_depth=3))
    literals, _ = grammar_alphabet()
    replacements = literals + VOCABULARY + NUMBERS + ["\n", "", "(", ")", "\u0430", "\t"]
    for _ in range(draw(st.integers(1, 3))):
        if not source:
            break
        i = draw(st.integers(0, len(source) - 1))
        kind = draw(st.integers(0, 4))
        if kind == 0:
            source = source[:i] + source[i + 1:]
        elif kind == 1:
            source = source[:i] + source[i] + source[i:]
        elif kind == 2:
            source = source[:i] + draw(st.sampled_from(replacements)) + source[i + 1:]
        elif kind == 3:  # replace the token at i
            tokens = re.split(r"(\s+|[(),;=+\-*/^<>!])", source)
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[j] = draw(st.sampled_from(replacements))
            source = "".join(tokens)
        else:
            lines = source.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[a], lines[b] = lines[b], lines[a]
            source = "\n".join(lines)
    return source


# -- hostile cases of issue 15: state keys, sizes, long names, numbers, long error lines -----

KEY_POOL = ["m", "v", "k", "exp_avg", "step", "master_param"]


@st.composite
def key_collision_programs(draw):
    """1-4 states, declared (with or without an `as` key) or inferred, whose names and keys
    come from one small pool that includes the reserved keys: two keys alike, a key that is
    another state's name, and reserved keys, in every order (issue 15, item 3)."""
    names = draw(st.lists(st.sampled_from(KEY_POOL), min_size=1, max_size=4, unique=True))
    decls, reads, body = [], [], []
    for name in names:
        if draw(st.booleans()):  # inferred: read before it is assigned
            reads.append(f"{name} = 0.5 * {name} + g")
        else:
            key = draw(st.sampled_from([None] + KEY_POOL + ["other"]))
            decls.append(f"state {name} = {draw(st.sampled_from(['0', 'w', '1']))}"
                         + (f" as {key}" if key else ""))
            body.append(f"{name} = 0.9 * {name} + g")
    lines = draw(st.permutations(decls + reads)) + body
    lines.append("w = w - 0.1 * (" + " + ".join(names) + ")")
    return "\n".join(lines) + "\n"


def _limit(name: str) -> int:
    from optdsl.frontend import limits

    return getattr(limits, name)


@st.composite
def oversized_programs(draw):
    """Programs at, just under and just over the front end's limits (issue 15, item 6):
    long lines, deep parentheses, long names and numbers, many statements, whole texts
    padded to the size limit, and shapes that used to check in quadratic time."""
    kind = draw(st.sampled_from(["line", "parens", "calls", "word", "number", "statements",
                                 "size", "hyper_defaults", "widened_chain"]))
    delta = draw(st.sampled_from([-2, -1, 0, 1, 2]))
    head = "hyper lr = 0.1\n"
    if kind == "line":
        width = _limit("MAX_LINE_CHARS") + delta
        line = ("x = g" + " + g" * width)[:width]
        line = line.rstrip("+ ") if line.endswith(("+", " ")) else line
        return head + line + " " * (width - len(line)) + "\nw = w - lr * x\n"
    if kind in ("parens", "calls"):
        depth = _limit("MAX_NESTING") + delta
        opener = "(" if kind == "parens" else draw(st.sampled_from(["sqrt(", "abs(", "exp("]))
        return head + "w = w - lr * " + opener * depth + "g" + ")" * depth + "\n"
    if kind in ("word", "number"):
        size = _limit("MAX_WORD_CHARS") + delta
        if kind == "word":
            name = "n" * size
            return f"optimizer {name}\nhyper {name} = 0.5\nw = w - {name} * g\n"
        return head + "w = w - lr * 0." + "1" * (size - 2) + " * g\n"
    if kind == "statements":
        return "w = w - 0.001 * g\n" * (_limit("MAX_STATEMENTS") + delta)
    if kind == "size":
        size = _limit("MAX_SOURCE_BYTES") + delta
        text = head + "w = w - lr * g\n"
        filler = draw(st.sampled_from(["x", "\u00e9"]))
        row = "#" + filler * (9_000 // len(filler)) + "\n"
        while len((text + row).encode()) < size:
            text += row
        rest = size - len(text.encode())
        return text + ("#" + "x" * (rest - 1) if rest > 0 else "")
    count = draw(st.integers(50, 400))
    if kind == "hyper_defaults":
        return ("".join(f"hyper h{i} = {draw(st.sampled_from(['0', '1', '2.5', '1e-3']))}\n"
                        for i in range(count)) + "w = w - h0 * g\n")
    return "".join(f"s{i} = s{i + 1}\n" for i in range(count)) + f"s{count} = g\nw = w - s0\n"


@st.composite
def long_name_programs(draw):
    """Valid programs with long titles and names and many switches, whose generated modules
    get long cache names (issue 15, item 7: `File name too long` on Triton steps)."""
    limit = _limit("MAX_WORD_CHARS")
    title = "T" * draw(st.integers(100, limit))
    switches = draw(st.integers(1, 200))
    name = "h" + "x" * draw(st.integers(0, limit - 2))
    lines = [f"optimizer {title}", f"hyper {name} = 0.1"]
    lines += [f"hyper f{i} = {draw(st.sampled_from(['0', '1']))}" for i in range(switches)]
    lines.append("x = g")
    lines += [f"x = where(f{i} != 0, x * 1.001, x)" for i in range(switches)]
    lines.append(f"w = w - {name} * x")
    return "\n".join(lines) + "\n"


EDGE_NUMBERS = ["1e-400", "1e309", "0e-999", "0.000e5", "00", "4.9e-324", "2e-324", "1e-320",
                "1.7976931348623157e308", "1.8e308", "2.2250738585072014e-308", ".0e-5",
                "1e-323", "3e-324", "0." + "0" * 330 + "1", "9" * 40, "1e+308", "1E-400"]


@st.composite
def number_edge_programs(draw):
    """Literals at the ends of float64 (overflow, underflow, subnormals, zeros written oddly)
    and errors on long lines, whose shown line is cut around the caret (issue 15, item 9)."""
    literal = draw(st.sampled_from(EDGE_NUMBERS))
    where = draw(st.sampled_from(["default", "expression", "interval", "long_line"]))
    if where == "default":
        return f"hyper a = {literal}\nw = w - a * g\n"
    if where == "interval":
        return f"hyper a = 0 in [0, {literal}]\nw = w - a * g\n"
    if where == "expression":
        return f"w = w - {literal} * g\n"
    terms = ["g"] * draw(st.integers(10, 2_300))
    fault = draw(st.sampled_from([literal, "$", "sqr(g)", "(g > 0)", "\u0430"]))
    terms[draw(st.integers(0, len(terms) - 1))] = fault
    return "w = w - 0.001 * (" + " + ".join(terms) + ")\n"
