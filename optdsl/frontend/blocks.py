"""Blocks of closure-driven programs: which names are block words, and indentation as tokens.

The words that open and end blocks (``if elif else while for repeat`` and ``break``,
``return``) are not reserved: a plain program may still call a hyper ``if`` (tests and
outside programs do). A name is a block word only where it starts a block header, a line
whose code ends with ``:`` (``while n < max_iter:``), or stands alone as a statement
(``break``). ``scan`` finds those places in the text, and the postlexer ``BlockLexer``
retypes the NAME tokens there and turns the indentation of block bodies into ``_INDENT`` and
``_DEDENT`` (Python's rule: a body is indented deeper than its header, its lines share one
indentation, a dedent returns to an enclosing level). Outside blocks, indentation means
nothing, as in plain programs. Runs of newlines become one, so blank and comment lines may
sit anywhere.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from lark import Token

from optdsl.errors import DslError, Span

HEADER_WORDS = ("if", "elif", "else", "while", "for", "repeat")
ALONE_WORDS = ("break", "return")
TOKEN_TYPES = {word: "_" + word.upper() for word in HEADER_WORDS + ALONE_WORDS}
_WORD = re.compile(r"[ \t\f]*([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Scan:
    """What the postlexer needs to know of a program's text, line by line (1-based)."""

    filename: str
    source: str
    indent: dict[int, int] = field(default_factory=dict)  # code lines: leading blanks
    keywords: dict[tuple[int, int], str] = field(default_factory=dict)  # (line, col) -> type
    code_lines: list[int] = field(default_factory=list)

    @property
    def has_blocks(self) -> bool:
        return bool(self.keywords)

    def next_code_line(self, line: int) -> int | None:
        for candidate in self.code_lines:
            if candidate > line:
                return candidate
        return None

    def error(self, message: str, span: Span) -> DslError:
        return DslError(message, span, filename=self.filename, source=self.source)


def _code(line: str) -> str:
    """The line without its comment (a `#` outside a "string")."""
    quoted = False
    for i, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:i]
    return line


def _segments(code: str) -> list[tuple[int, str]]:
    """The statements of a line (split at `;` outside strings), with their start columns."""
    out, start, quoted = [], 0, False
    for i, char in enumerate(code):
        if char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            out.append((start, code[start:i]))
            start = i + 1
    out.append((start, code[start:]))
    return out


def scan(source: str, filename: str = "<string>") -> Scan:
    """Find the block words and the indentation of every code line."""
    found = Scan(filename, source)
    for number, line in enumerate(source.splitlines(), 1):
        code = _code(line).rstrip(" \t\f\r")
        if not code.strip(" \t\f"):
            continue
        found.code_lines.append(number)
        found.indent[number] = len(code) - len(code.lstrip(" \t\f"))
        segments = _segments(code)
        for k, (start, text) in enumerate(segments):
            match = _WORD.match(text)
            if match is None:
                continue
            word, column = match.group(1), start + match.start(1) + 1
            header = (word in HEADER_WORDS and k == len(segments) - 1
                      and text.rstrip().endswith(":"))
            if header or word in ALONE_WORDS and text.strip() == word:
                found.keywords[(number, column)] = TOKEN_TYPES[word]
    return found


_CURRENT = threading.local()  # the Scan of the text being parsed, per thread


def parsing(found: Scan):
    """Set the Scan the postlexer reads while one text is parsed (``with parsing(s): ...``)."""
    return _Parsing(found)


class _Parsing:
    def __init__(self, found: Scan) -> None:
        self.found = found

    def __enter__(self) -> Scan:
        _CURRENT.scan = self.found
        return self.found

    def __exit__(self, *exc) -> None:
        _CURRENT.scan = None


class BlockLexer:
    """The postlexer of closure-driven programs (see the module docstring)."""

    always_accept = ("_NL",)

    def process(self, stream):
        found: Scan = _CURRENT.scan
        blocks: list[tuple[int, int, Token]] = []  # (header indent, body indent, header)
        header: Token | None = None  # the `:` that ended the last line, if it did
        last: Token | None = None
        for token in stream:
            if token.type == "_NL":
                if last is not None and last.type != "_NL":
                    yield token
                    last = token
                following = found.next_code_line(token.line)
                if following == token.line + 1:
                    yield from self._indentation(found, blocks, header, following, token)
                    header = None
                continue
            if token.type == "NAME":
                kind = found.keywords.get((token.line, token.column))
                if kind is not None:
                    token = Token.new_borrow_pos(kind, str(token), token)
            yield token
            last = token
            header = token if token.type == "COLON" else None
        if header is not None:
            raise self._no_body(found, header)
        if blocks:
            if last is not None and last.type != "_NL":
                yield Token.new_borrow_pos("_NL", "\n", last)
            for _ in blocks:
                yield Token.new_borrow_pos("_DEDENT", "", last)

    def _indentation(self, found: Scan, blocks: list, header: Token | None, line: int,
                     at: Token):
        indent = found.indent[line]
        span = Span(line, indent + 1)
        if header is not None:
            outer = found.indent[header.line]
            if indent <= outer:
                raise self._no_body(found, header)
            blocks.append((outer, indent, header))
            yield Token.new_borrow_pos("_INDENT", "", at)
            return
        while blocks and indent < blocks[-1][1]:
            outer, _, _ = blocks.pop()
            if indent > outer:
                raise found.error("this line is indented less than the block above it but "
                                  "more than its header: indent it as the block or as the "
                                  "header", span)
            yield Token.new_borrow_pos("_DEDENT", "", at)
        if blocks and indent != blocks[-1][1]:
            raise found.error("unexpected indentation: the lines of a block are indented "
                              "alike", span)

    @staticmethod
    def _no_body(found: Scan, header: Token) -> DslError:
        return found.error("expected an indented block after this `:` (the body of the "
                           "block, on the next lines, indented deeper than its header)",
                           Span(header.line, header.column))
