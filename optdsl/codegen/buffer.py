"""An indenting source writer: generated code is built line by line, deterministically."""

from __future__ import annotations

from contextlib import contextmanager


class CodeBuffer:
    def __init__(self, indent: str = "    ") -> None:
        self.lines: list[str] = []
        self._indent = indent
        self._level = 0

    def line(self, text: str = "", comment: str | None = None) -> None:
        if not text:
            self.lines.append("")
            return
        suffix = f"  # {comment}" if comment else ""
        self.lines.append(self._indent * self._level + text + suffix)

    @contextmanager
    def block(self, header: str, comment: str | None = None):
        self.line(header, comment)
        self._level += 1
        try:
            yield
        finally:
            self._level -= 1

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
