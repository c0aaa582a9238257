"""The command line: ``optdsl check|show|compile|demo|landscape|bench``.

A mistake in a program prints one message (file:line:col, the line, a caret) to stderr and
exits with status 1; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from optdsl.errors import DslError


def _load(path: str):
    import optdsl

    if not os.path.exists(path):
        raise _Fail(f"{path}: no such file")
    if os.path.isdir(path):
        raise _Fail(f"{path}: is a directory, not a program file")
    return optdsl.load(path)


class _Fail(Exception):
    """A user-facing failure that is not a DslError (missing file, bad option)."""


def cmd_check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            prog = _load(path)
        except (DslError, _Fail) as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        if not args.quiet:
            hypers = ", ".join(prog.hypers) or "none"
            states = ", ".join(prog.states) or "none"
            print(f"{path}: ok ({prog.name}; hypers: {hypers}; state: {states})", flush=True)
        for note in undeclared_notes(prog, path):  # after the ok line, as a terminal shows
            print(note, file=sys.stderr)
    return 1 if failed else 0


def undeclared_notes(prog, path: str) -> list[str]:
    """Notes on names a program with declarations leaves undeclared: each becomes a required
    hyperparameter (as LANGUAGE.md says), which is what a misspelling (`epsilon` for `eps`)
    also does. One-line programs, which declare nothing, rely on that and get no note."""
    from optdsl.errors import suggest

    declared = [n for n, s in prog.hypers.items() if not s.inferred]
    declared += [part for s in prog.hypers.values() if s.parts for part in s.parts]
    states = [n for n, s in prog.states.items() if not s.inferred]
    if not declared and not states:
        return []
    return [f"{path}:{spec.line}: note: `{name}` is not declared, so it is a required "
            f"hyperparameter{suggest(name, declared + states)}"
            for name, spec in prog.hypers.items() if spec.inferred]


def cmd_show(args: argparse.Namespace) -> int:
    prog = _load(args.file)
    what = args.what or "numpy"
    sys.stdout.write(prog.source(what).rstrip("\n") + "\n")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from optdsl.runtime.export import write_kernels

    out = Path(args.output)
    programs = [_load(path) for path in args.files]
    for path in write_kernels(programs, out, backends=args.backend):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from optdsl.apps.demo import format_table, run_demo

    optimizers = args.optimizers or None
    results = run_demo(epochs=args.epochs, optimizers=optimizers, backend=args.backend,
                       out_dir=args.out, progress=not args.quiet,
                       validation_split=args.validation_split, patience=args.patience,
                       init=args.init)
    print(format_table(results))
    if args.out:
        print(f"wrote {Path(args.out) / 'loss_curves.png'}")
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    from optdsl.apps.landscape import format_table, run_landscape

    if getattr(args, "second_order", False):
        return cmd_second_order(args)
    results = run_landscape(programs=args.programs or None, out_dir=args.out,
                            max_iters=args.max_iters, tol=args.tol, backend=args.backend)
    print(format_table(results))
    return 0


def cmd_second_order(args: argparse.Namespace) -> int:
    """``optdsl landscape --second-order``: the lectures' second-order methods racing."""
    from optdsl.apps.landscape import format_table
    from optdsl.apps.second_order import format_evaluations, run_second_order

    if args.programs:
        raise _Fail("optdsl landscape --second-order races its own set (Newton, saddle-free "
                    "Newton, BFGS, L-BFGS, CG, coordinate descent, gradient descent); give "
                    "programs without --second-order")
    results = run_second_order(out_dir=args.out, max_iters=args.max_iters, tol=args.tol,
                               backend=args.backend)
    print(format_table(results))
    print(format_evaluations(results))
    return 0


def cmd_fullbatch(args: argparse.Namespace) -> int:
    """``optdsl fullbatch``: L-BFGS against gradient descent and Adam, full batch."""
    from optdsl.apps.fullbatch import format_fullbatch, run_fullbatch

    results = run_fullbatch(iterations=args.iterations, target=args.target,
                            backend=args.backend, out_dir=args.out, progress=not args.quiet)
    print(format_fullbatch(results))
    if args.out:
        print(f"wrote {Path(args.out) / 'fullbatch.png'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from optdsl.apps.bench import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optdsl", description="A compiler for deep-learning optimizers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="compile programs and report mistakes")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.set_defaults(run=cmd_check)

    from optdsl.runtime import backends

    p = sub.add_parser("show", help="print a program's IR or generated code")
    p.add_argument("file", metavar="FILE")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--ir", dest="what", action="store_const", const="ir",
                      help="the optimized IR")
    for name, backend in backends.BACKENDS.items():
        default = " (default)" if name == "numpy" else ""
        what.add_argument(f"--{name}", dest="what", action="store_const", const=name,
                          help=f"the generated code of the {name} back end: "
                               f"{backend.summary}{default}")
    p.set_defaults(run=cmd_show, what=None)

    p = sub.add_parser("compile", help="write generated kernels to a directory")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--backend", choices=list(backends.BACKENDS) + ["all"], default="triton")
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("demo", help="train a small MLP on the 8x8 digits with several optimizers")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--optimizers", nargs="*", metavar="NAME_OR_FILE",
                   help="bundled names or .opt files (default: the lecture's set)")
    p.add_argument("--backend", default="auto", choices=list(backends.names()))
    p.add_argument("--out", default="demo-out", metavar="DIR",
                   help="where to write loss_curves.png and results.json (default: demo-out)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--validation-split", type=float, default=0.0, metavar="F",
                   help="hold out the last fraction F of the training set, as Keras' "
                        "validation_split (the recipe's is 0.1)")
    p.add_argument("--patience", type=int, default=None, metavar="N",
                   help="stop early once the validation loss has not improved for N epochs")
    p.add_argument("--init", default="torch", choices=["torch", "glorot_uniform", "orthogonal"],
                   help="weight initialisation (glorot_uniform: Keras' default)")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("landscape", help="race optimizers on 2-D test functions")
    p.add_argument("programs", nargs="*", metavar="NAME_OR_FILE")
    p.add_argument("--out", default="landscape-out", metavar="DIR")
    p.add_argument("--max-iters", type=int, default=5000)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--backend", default="auto", choices=list(backends.names()))
    p.add_argument("--second-order", action="store_true",
                   help="race Newton, saddle-free Newton, BFGS, L-BFGS, conjugate gradients "
                        "and coordinate descent beside gradient descent")
    p.set_defaults(run=cmd_landscape)

    p = sub.add_parser("fullbatch", help="full-batch logistic regression on the digits: "
                                         "L-BFGS (optdsl's and torch's) against GD and Adam")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--target", type=float, default=0.27, help="the training loss to reach")
    p.add_argument("--backend", default="auto", choices=list(backends.names()))
    p.add_argument("--out", default="fullbatch-out", metavar="DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_fullbatch)

    p = sub.add_parser("bench", help="benchmark bundled optimizers against torch.optim")
    p.add_argument("--size", default="small", choices=["small", "medium", "large"])
    p.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (DslError, _Fail) as exc:
        print(exc, file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        if os.environ.get("OPTDSL_DEBUG"):
            raise
        print(f"optdsl {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. `-o` names a file, or a directory that cannot be written
        if os.environ.get("OPTDSL_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"optdsl {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
