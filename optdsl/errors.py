"""Source spans and the one user-facing error type, DslError.

Every mistake in a program surfaces as a DslError carrying the file name, the 1-based line
and column, the offending source line and a caret under the fault. Nothing else in the
compiler talks to users about their programs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A position in a program's source: 1-based line and column, and the length of the fault."""

    line: int
    column: int
    length: int = 1
    end_line: int | None = None

    @staticmethod
    def at(line: int, column: int, length: int = 1) -> Span:
        return Span(line, column, max(1, length))


class DslError(Exception):
    """A mistake in an optdsl program, positioned at file:line:col with a caret under it."""

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        *,
        filename: str = "<string>",
        source: str | None = None,
    ) -> None:
        self.message = message
        self.span = span
        self.filename = filename
        self.source = source
        super().__init__(self._render())

    @property
    def line(self) -> int:
        return self.span.line if self.span else 1

    @property
    def column(self) -> int:
        return self.span.column if self.span else 1

    def with_source(self, filename: str, source: str) -> DslError:
        """Return this error bound to the program text it is about (for rendering the caret)."""
        return DslError(self.message, self.span, filename=filename, source=source)

    def _render(self) -> str:
        head = f"{self.filename}:{self.line}:{self.column}: error: {self.message}"
        if self.source is None or self.span is None:
            return head
        lines = source_lines(self.source)
        if not 1 <= self.span.line <= len(lines):
            return head
        # tabs and other invisible or control characters show as one space each
        text = "".join(c if c.isprintable() else " " for c in lines[self.span.line - 1])
        width = max(1, min(self.span.length, len(text) - self.span.column + 1))
        text, column, width = _excerpt(text, self.span.column, width)
        caret = " " * (column - 1) + "^" * width
        gutter = f"{self.span.line:4d} | "
        return f"{head}\n{gutter}{text}\n{' ' * (len(gutter) - 2)}| {caret}"

    def __reduce__(self):  # keep pickling (multiprocessing) working with keyword-only args
        return (_rebuild, (self.message, self.span, self.filename, self.source))


SHOWN_CHARS = 100  # the most of a line an error shows: a longer one is cut around the caret


def _excerpt(text: str, column: int, width: int) -> tuple[str, int, int]:
    """The part of line ``text`` an error shows (cuts marked with ``...``), and the caret's
    column and width in it: the caret stays under the fault."""
    if len(text) <= SHOWN_CHARS:
        return text, column, width
    start = min(max(0, column - 1 - SHOWN_CHARS // 3), len(text) - SHOWN_CHARS)
    end = start + SHOWN_CHARS
    head = "..." if start > 0 else ""
    tail = "..." if end < len(text) else ""
    width = max(1, min(width, end - (column - 1)))
    return head + text[start:end] + tail, column - start + len(head), width


def source_lines(source: str) -> list[str]:
    r"""The program's lines as the parser numbers them: only ``\n`` ends a line (``\r\n`` is
    one end), so form feeds, ``\x1c``-``\x1e``, ``\x85`` and U+2028 inside a line or comment
    do not shift the lines (``str.splitlines`` would)."""
    lines = source.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _rebuild(message: str, span: Span | None, filename: str, source: str | None) -> DslError:
    return DslError(message, span, filename=filename, source=source)


def suggest(name: str, candidates: list[str] | set[str]) -> str:
    """A ' (did you mean `x`?)' suffix for the closest candidate, or ''."""
    import difflib

    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


class CompilerBug(Exception):
    """An internal failure while compiling the part of a program at ``span``: a bug of the
    compiler, reported to users as a DslError positioned there (optdsl.program)."""

    def __init__(self, span: Span | None, cause: BaseException) -> None:
        self.span = span
        self.cause = cause
        super().__init__(f"{type(cause).__name__}: {cause}")


class located:  # noqa: N801 - used as a context manager, like contextlib's
    """``with located(eq.span): ...``: an unexpected exception inside is re-raised as a
    CompilerBug at ``span`` (the innermost span wins; DslError and CompilerBug pass through)."""

    __slots__ = ("span",)

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, (DslError, CompilerBug, RecursionError)) or \
                not isinstance(exc, Exception):
            return False
        raise CompilerBug(self.span, exc) from exc
