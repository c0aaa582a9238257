"""Text to Lark parse tree, with every syntax error turned into a positioned DslError.

The grammar lives in grammars/optdsl.lark (shipped inside the package as
optdsl/grammars/optdsl.lark); the LALR parser is built once per process. Closure-driven
programs (blocks, calls, tuple assignment: docs/language.md) are read by a second parser,
built from the same text with grammars/closure.lark appended and the block postlexer of
optdsl.frontend.blocks; a text is read by the first parser unless it has blocks or the
first parser fails where the second goes further.
"""

from __future__ import annotations

import functools
from pathlib import Path

import lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from optdsl.errors import DslError, Span, source_lines
from optdsl.frontend import blocks
from optdsl.frontend.limits import check_text

GRAMMAR_PATH = Path(__file__).resolve().parent.parent / "grammars" / "optdsl.lark"
CLOSURE_GRAMMAR_PATH = GRAMMAR_PATH.with_name("closure.lark")

# What users call the grammar's terminals, for "expected ..." messages.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "INF": "a number",
    "NAN": "a number",
    "_AND": "`and`",
    "_OR": "`or`",
    "_NOT": "`not`",
    "AUGOP": "`+=`, `-=`, `*=` or `/=`",
    "NONE": "`None`",
    "PER_WHAT": "`row` or `col`",
    "_PER": "`per`",
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "AT": "`@`",
    "DOT": "`.`",
    "STRING": "a quoted description",
    "_NL": "end of line",
    "SEMICOLON": "`;`",
    "$END": "end of input",
    "LPAR": "`(`",
    "RPAR": "`)`",
    "LSQB": "`[`",
    "RSQB": "`]`",
    "COMMA": "`,`",
    "EQUAL": "`=`",
    "PLUS": "`+`",
    "MINUS": "`-`",
    "STAR": "`*`",
    "SLASH": "`/`",
    "CIRCUMFLEX": "`^`",
    "__ANON_0": "`**`",
    "COMPOP": "a comparison",
    "_IN": "`in`",
    "_AS": "`as`",
    "OPTIMIZER": "`optimizer`",
    "HYPER": "`hyper`",
    "STATE": "`state`",
    "REQUIRE": "`require`",
    "SPARSE": "`sparse`",
    "_ONLY": "`only`",
    "COLON": "`:`",
    "_INDENT": "an indented block",
    "_DEDENT": "the end of the block",
    "_IF": "`if`", "_ELIF": "`elif`", "_ELSE": "`else`", "_WHILE": "`while`",
    "_FOR": "`for`", "_REPEAT": "`repeat`", "_BREAK": "`break`", "_RETURN": "`return`",
}


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(
        GRAMMAR_PATH.read_text(encoding="utf-8"),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
    )


@functools.lru_cache(maxsize=1)
def _closure_parser() -> lark.Lark:
    text = (GRAMMAR_PATH.read_text(encoding="utf-8") + "\n"
            + CLOSURE_GRAMMAR_PATH.read_text(encoding="utf-8"))
    return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True,
                     start="procedure", postlex=blocks.BlockLexer())


def _expected(terminals: set[str] | frozenset[str]) -> str:
    words = sorted({_TERMINAL_WORDS.get(t, f"`{t.lower()}`") for t in terminals})
    if not words:
        return ""
    if len(words) > 6:
        words = words[:6] + ["..."]
    return "; expected " + (words[0] if len(words) == 1 else "one of " + ", ".join(words))


def _describe(token: lark.Token) -> str:
    if token.type == "$END":
        return "end of input"
    if token.type == "_NL":
        return "end of line"
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(token)[:41])
    return f"`{text[:37]}...`" if len(text) > 40 else f"`{text}`"  # (a long description)


def parse(source: str, filename: str = "<string>") -> lark.Tree:
    """Parse program text; raise DslError (with file, line, column, caret) on a syntax error
    or a program above the size limits (optdsl.frontend.limits)."""
    check_text(source, filename)
    if "\x00" in source:
        at = source.index("\x00")
        line = source.count("\n", 0, at) + 1
        column = at - (source.rfind("\n", 0, at) + 1) + 1
        raise DslError("program text contains a NUL character", Span(line, column),
                       filename=filename, source=source)
    found = blocks.scan(source, filename)
    if found.has_blocks:
        return _parse_closure(source, filename, found)
    try:
        return _parser().parse(source)
    except UnexpectedInput as exc:  # the one place Lark's errors become ours
        plain = _syntax_error(exc, source, filename)
    try:  # tuple assignments, calls as statements, indexing, choices: a closure program
        return _parse_closure(source, filename, found)
    except DslError as other:
        if (other.line, other.column) > (plain.line, plain.column):
            raise other from None
    raise plain


def _parse_closure(source: str, filename: str, found: blocks.Scan) -> lark.Tree:
    with blocks.parsing(found):
        try:
            return _closure_parser().parse(source)
        except UnexpectedInput as exc:
            raise _syntax_error(exc, source, filename) from None


# What to write instead of a construct of other languages (appended to the syntax error).
_MASK_HINT = "; combine masks with `and`, `or`, `not`"
_IF_HINT = ("; optdsl has no one-line `if`: choose between values with where(mask, a, b), "
            "e.g. `w = where(g > 0, w - lr, w)` (a closure-driven step may branch with `if "
            "cond:` and an indented block)")


def _hint(source: str, line: int, column: int) -> str:
    """A suggestion for the fault at (line, column), or ''."""
    lines = source_lines(source)
    if not 1 <= line <= len(lines):
        return ""
    text = lines[line - 1]
    before, at = text[:column - 1], text[column - 1:]
    words = before.split()
    header = text.split("#")[0].rstrip().endswith(":")  # a block header: its own errors
    if not header and (words and words[0] in ("if", "elif", "else", "while", "for")
                       or at.startswith("if ")):
        return _IF_HINT
    if at[:1] in ("&", "|") or (at.startswith("!") and not at.startswith("!=")):
        return _MASK_HINT
    if at.startswith("+") and before.rstrip().endswith("+") or at.startswith("++"):
        return "; `x++` is not optdsl: write `x += 1`"
    if at.startswith("--") and not at[2:].strip():
        return "; `x--` is not optdsl: write `x -= 1`"
    return ""


def _unclosed_repeat(source: str) -> str:
    """'' or a hint naming a `repeat` block that has no `end`."""
    open_at: list[int] = []
    for number, line in enumerate(source_lines(source), start=1):
        words = line.split("#")[0].replace(";", " ").split()
        for i, word in enumerate(words):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if word == "repeat" and not nxt.startswith(("=", "+=", "-=", "*=", "/=")):
                open_at.append(number)
            elif word == "end" and open_at and not nxt.startswith("="):
                open_at.pop()
    return f"; the `repeat` block of line {open_at[-1]} has no `end`" if open_at else ""


def _syntax_error(exc: UnexpectedInput, source: str, filename: str) -> DslError:
    error = _plain_syntax_error(exc, source, filename)
    hint = _hint(source, error.line, error.column)
    if not hint and "end of input" in error.message:
        hint = _unclosed_repeat(source)
    if hint:
        return DslError(error.message + hint, error.span, filename=filename, source=source)
    return error


def _plain_syntax_error(exc: UnexpectedInput, source: str, filename: str) -> DslError:
    if isinstance(exc, UnexpectedCharacters):
        char = source[exc.pos_in_stream] if exc.pos_in_stream < len(source) else "?"
        if char.isascii() and char.isprintable():
            message = f"unexpected character `{char}`"
        else:  # control and invisible characters are named by code point, never printed
            shown = f"`{char}` " if char.isprintable() else ""
            message = f"unexpected character {shown}(U+{ord(char):04X})"
            if not char.isascii():
                message += "; names and operators are ASCII only"
        span = Span(exc.line, exc.column)
    elif isinstance(exc, UnexpectedToken):
        token = exc.token
        message = f"unexpected {_describe(token)}" + _expected(exc.accepts or exc.expected)
        if token.type == "$END":
            lines = source_lines(source) or [""]
            span = Span(len(lines), len(lines[-1]) + 1)
        else:
            span = Span(token.line or 1, token.column or 1, max(1, len(str(token).rstrip("\n"))))
    elif isinstance(exc, UnexpectedEOF):
        lines = source_lines(source) or [""]
        message = "unexpected end of input" + _expected(set(exc.expected))
        span = Span(len(lines), len(lines[-1]) + 1)
    else:  # pragma: no cover - Lark has no other UnexpectedInput kinds today
        message, span = "syntax error", Span(getattr(exc, "line", 1), getattr(exc, "column", 1))
    return DslError(message, span, filename=filename, source=source)
