"""Generated Python source to a module object, in memory: exactly the text given is compiled
(no file, no bytecode cache), and linecache is seeded with it so that tracebacks and
``inspect`` show the generated lines."""

from __future__ import annotations

import hashlib
import linecache
import types

from optdsl.codegen.contract import GeneratedModule


def load_source(source: str, tag: str) -> GeneratedModule:
    return GeneratedModule.of(load_python(source, tag))


def load_python(source: str, tag: str) -> types.ModuleType:
    """The module of generated Python ``source`` (see the module docstring)."""
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]
    filename = f"<optdsl-{tag}-{digest}>"
    module = types.ModuleType(f"optdsl_generated_{digest}")
    code = compile(source, filename, "exec")
    # (an entry without a modification time is never checked against a file)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(code, module.__dict__)
    return module
