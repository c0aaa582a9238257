"""optdsl's version, in a module of its own so that any layer can read it."""

VERSION = "0.1.0"
