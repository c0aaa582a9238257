"""The documented size limits of a program, checked before any costly work, and the bounded
reading of program files.

A program above a limit is refused at once with a positioned DslError (docs/language.md,
"Limits"): a special or endless file such as /dev/zero is read only up to the size limit,
and the text is scanned once, in linear time, for lines, bracket nesting and words before
the parser sees it. The statement count is checked while the AST is built (to_ast). The
limits are far above any real optimizer (the bundled ones are under 40 lines; the tests
compile 2,000-line programs) and keep checking fast.
"""

from __future__ import annotations

import os
import re
import stat

from optdsl.errors import DslError, Span

MAX_SOURCE_BYTES = 256 * 1024  # UTF-8 bytes of program text
MAX_LINE_CHARS = 10_000  # characters in one line
MAX_NESTING = 256  # parentheses (grouping and calls) open at once
MAX_WORD_CHARS = 256  # characters in one name or number
MAX_STATEMENTS = 10_000  # statements; a declaration counts once per name it declares

_WORD = "A-Za-z0-9_."
# what the scan looks at: comments and descriptions (skipped), brackets, line ends, and the
# start of a word longer than the limit (only at a word's start, so the scan stays linear)
_SCAN = re.compile(rf'#[^\n]*|"[^"\n]*"|[()\n]|(?<![{_WORD}])[{_WORD}]{{{MAX_WORD_CHARS + 1}}}')


def position(source: str, index: int) -> tuple[int, int]:
    """The 1-based (line, column) of character ``index`` of ``source``."""
    line = source.count("\n", 0, index) + 1
    return line, index - (source.rfind("\n", 0, index) + 1) + 1


def _error(message: str, source: str, index: int, filename: str, length: int = 1) -> DslError:
    line, column = position(source, index)
    return DslError(message, Span(line, column, length), filename=filename, source=source)


def check_text(source: str, filename: str = "<string>") -> None:
    """Raise a positioned DslError when ``source`` is above a size limit (linear time)."""
    if len(source) > MAX_SOURCE_BYTES or \
            len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        prefix = source[:MAX_SOURCE_BYTES].encode("utf-8", "surrogatepass")[:MAX_SOURCE_BYTES]
        index = len(prefix.decode("utf-8", "ignore"))  # the first character past the limit
        raise _error(f"program text is longer than the limit of {MAX_SOURCE_BYTES:,} bytes",
                     source, index, filename)
    start = 0
    for text in source.split("\n"):
        if len(text.rstrip("\r")) > MAX_LINE_CHARS:
            raise _error(f"line is longer than the limit of {MAX_LINE_CHARS:,} characters",
                         source, start + MAX_LINE_CHARS, filename)
        start += len(text) + 1
    depth = 0
    for match in _SCAN.finditer(source):
        token = match.group()
        if token == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise _error(f"parentheses are nested deeper than the limit of {MAX_NESTING}",
                             source, match.start(), filename)
        elif token == ")":
            depth = max(0, depth - 1)
        elif token == "\n":
            depth = 0  # an expression never spans lines
        elif token[0] not in '#"':
            raise _error(f"a name or number is longer than the limit of {MAX_WORD_CHARS} "
                         f"characters", source, match.start(), filename, MAX_WORD_CHARS)


def read_source(path: str) -> str:
    """The text of the program file at ``path``, read once and at most to the size limit
    (a FIFO without a writer reads as empty instead of waiting); a file above the limit or
    not UTF-8 is a positioned DslError. OSErrors (a missing file) propagate."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_CLOEXEC", 0))
    try:
        if nonblocking and stat.S_ISFIFO(os.fstat(fd).st_mode):  # wait once a writer is there
            os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= MAX_SOURCE_BYTES:
            try:
                chunk = os.read(fd, MAX_SOURCE_BYTES + 1 - size)
            except BlockingIOError:  # a device with nothing to read now
                break
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(data) > MAX_SOURCE_BYTES:
            source = data.decode("utf-8", "replace")
        else:
            text = data[:exc.start].decode("utf-8")
            raise _error(f"file is not UTF-8 text ({exc.reason})", text, len(text), path) \
                from None
    if len(data) > MAX_SOURCE_BYTES:
        check_text(source, path)
    return source
