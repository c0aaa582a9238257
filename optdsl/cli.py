"""The command line: ``optdsl check|show|compile|demo|landscape|bench`` and ``--version``.

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
        for note in undeclared_notes(prog, path) + keyword_notes(prog, path):
            print(note, file=sys.stderr)  # (after the ok line, as a terminal shows)
    return 1 if failed else 0


def undeclared_notes(prog, path: str) -> list[str]:
    """Notes on names a program with declarations leaves undeclared: each becomes a required
    hyperparameter (as docs/language.md says), which is what a misspelling (`epsilon` for `eps`)
    also does. One-line programs, which declare nothing, rely on that and get no note."""
    from optdsl.errors import suggest

    declared = [n for n, s in prog.hypers.items() if not s.inferred]
    declared += [part for s in prog.hypers.values() if s.parts for part in s.parts]
    states = [n for n, s in prog.states.items() if not s.inferred]
    if not declared and not states:
        return []
    undeclared = [(name, spec) for name, spec in prog.hypers.items() if spec.inferred]
    notes = [f"{path}:{spec.line}: note: `{name}` is not declared, so it is a required "
             f"hyperparameter{suggest(name, declared + states)}"
             for name, spec in undeclared[:MAX_NOTES]]
    if len(undeclared) > MAX_NOTES:  # (each note searches every declared name: keep it linear)
        notes.append(f"{path}: note: {len(undeclared) - MAX_NOTES} more names are not "
                     f"declared, so they are required hyperparameters too")
    return notes


MAX_NOTES = 20  # undeclared names noted one by one by `optdsl check`


def keyword_notes(prog, path: str) -> list[str]:
    """Notes on hypers named like a Python keyword (`lambda`): a constructor keyword that
    Python code can pass only through ``**kwargs``."""
    import keyword

    return [f"{path}:{spec.line}: note: hyper `{name}` is a Python keyword, so Python code can "
            f"only pass it as **{{{name!r}: value}} (e.g. prog.optimizer(params, "
            f"**{{{name!r}: 0.1}})); a name such as `{name}_` avoids that"
            for name, spec in prog.hypers.items() if keyword.iskeyword(name)]


def cmd_show(args: argparse.Namespace) -> int:
    prog = _load(args.file)
    what = args.what or "numpy"
    sys.stdout.write(prog.source(what).rstrip("\n") + "\n")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from optdsl.runtime import backends as registry
    from optdsl.runtime.export import write_kernels

    out = Path(args.output)
    programs = [_load(path) for path in args.files]
    for path in write_kernels(programs, out, backends=args.backend):
        print(path)
    for prog in programs:
        if prog.library_work and args.backend != "all" \
                and not registry.get(args.backend).library_stages:
            print(f"note: {prog.name} has matrix work ({prog.library_work}), which the "
                  f"{args.backend} back end does not run yet: its NumPy step was written",
                  file=sys.stderr)
    return 0


def _require_extras(command: str, modules: list[str]) -> None:
    """Fail with how to install the demo extra when one of ``modules`` is missing."""
    from optdsl.apps.ui import missing_demo_extras

    message = missing_demo_extras(command, modules)
    if message:
        raise _Fail(message)


def cmd_demo(args: argparse.Namespace) -> int:
    _require_extras("demo", ["sklearn", "matplotlib"] if args.out else ["sklearn"])
    from optdsl.apps.demo import format_table, run_demo

    optimizers = args.optimizers or None
    results = run_demo(epochs=args.epochs, optimizers=optimizers, backend=args.backend,
                       out_dir=args.out or None, progress=not args.quiet,
                       validation_split=args.validation_split, patience=args.patience,
                       init=args.init)
    print(format_table(results))
    if args.out:
        print(f"wrote {Path(args.out) / 'loss_curves.png'} and {Path(args.out) / 'results.json'}")
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    _require_extras("landscape", ["matplotlib"] if args.out else [])
    from optdsl.apps.landscape import format_table, run_landscape, write_pictures

    if getattr(args, "second_order", False):
        return cmd_second_order(args)
    results = run_landscape(programs=args.programs or None, max_iters=args.max_iters,
                            tol=args.tol, backend=args.backend, progress=not args.quiet)
    print(format_table(results), flush=True)  # the table first: it survives a plotting error
    if not args.out:
        return 0
    try:
        written = write_pictures(results, args.out)
    except OSError:
        raise
    except Exception as exc:  # matplotlib's own errors, after the table was printed
        if os.environ.get("OPTDSL_DEBUG"):
            raise
        raise _Fail(f"optdsl landscape: error: the pictures could not be drawn "
                    f"({type(exc).__name__}: {exc})") from exc
    names = ", ".join(path.name for path in written)
    print(f"wrote {len(written)} pictures to {args.out}{os.sep}: {names}")
    return 0


def cmd_second_order(args: argparse.Namespace) -> int:
    """``optdsl landscape --second-order``: the lectures' second-order methods racing."""
    from optdsl.apps.landscape import format_table
    from optdsl.apps.second_order import format_evaluations, run_second_order

    if args.programs:
        raise _Fail("optdsl landscape --second-order races its own set (Newton, saddle-free "
                    "Newton, BFGS, L-BFGS, CG, coordinate descent, gradient descent); give "
                    "programs without --second-order")
    results = run_second_order(out_dir=args.out or None, max_iters=args.max_iters, tol=args.tol,
                               backend=args.backend)
    print(format_table(results))
    print(format_evaluations(results))
    return 0


def cmd_fullbatch(args: argparse.Namespace) -> int:
    """``optdsl fullbatch``: L-BFGS against gradient descent and Adam, full batch."""
    from optdsl.apps.fullbatch import format_fullbatch, run_fullbatch

    results = run_fullbatch(iterations=args.iterations, target=args.target,
                            backend=args.backend, out_dir=args.out or None, progress=not args.quiet)
    print(format_fullbatch(results))
    if args.out:
        print(f"wrote {Path(args.out) / 'fullbatch.png'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from optdsl.apps.bench import run

    return run(args)


RACER_HELP = """\
racers (NAME_OR_FILE):
  a bundled name ({names})
  or a .opt file; either may end in :name=value,... to set its hyperparameters
  (values are Python literals):
    adam:lr=3e-3    mine.opt:lr=0.05    'mine.opt:lr=0.05,betas=(0.9,0.99)'
  A file's lr is its own default when it declares one, else {fallback}.
  A default chosen for another model may train badly here: give FILE:lr=... .
  The table printed at the end shows the lr each racer ran with. Naming only .opt
  files races them alongside the default set.
"""


def _racer_epilog(fallback: str) -> str:
    from optdsl.apps.racers import BUILTIN_OPTIMIZERS

    return RACER_HELP.format(names=", ".join(BUILTIN_OPTIMIZERS), fallback=fallback)


def _add_backend(p: argparse.ArgumentParser) -> None:
    from optdsl.runtime import backends

    p.add_argument("--backend", default="auto", choices=list(backends.names()),
                   help="how the compiled optimizers step: auto (Triton for CUDA tensors; "
                        "C for CPU tensors where a C compiler works, else NumPy), or one "
                        "back end: "
                        + "; ".join(f"{n} ({b.summary})" for n, b in backends.BACKENDS.items())
                        + " (default: auto)")


def _add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="compile programs and report mistakes",
                       description="Compile each FILE; print what it declares, or one "
                                   "file:line:col error with a caret (exit status 1).")
    p.add_argument("files", nargs="+", metavar="FILE", help="optimizer programs (.opt files)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.set_defaults(run=cmd_check)

    from optdsl.runtime import backends

    p = sub.add_parser("show", help="print a program's IR or generated code")
    p.add_argument("file", metavar="FILE", help="an optimizer program (.opt file)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--ir", dest="what", action="store_const", const="ir",
                      help="the optimized IR")
    for name, backend in backends.BACKENDS.items():
        default = " (default)" if name == "numpy" else ""
        what.add_argument(f"--{name}", dest="what", action="store_const", const=name,
                          help=f"the generated code of the {name} back end: "
                               f"{backend.summary}{default}")
    p.set_defaults(run=cmd_show, what=None)

    p = sub.add_parser("compile", help="write generated kernels to a directory",
                       description="Write each program's generated code into DIR as "
                                   "NAME_triton.py and/or NAME_numpy.py (see README.md, "
                                   "'What optdsl compile writes').")
    p.add_argument("files", nargs="+", metavar="FILE", help="optimizer programs (.opt files)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="the directory to write into (created if needed)")
    p.add_argument("--backend", choices=list(backends.BACKENDS) + ["all"], default="triton",
                   help="which generated code to write (default: triton)")
    p.set_defaults(run=cmd_compile)

    formatter = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("demo", help="train a small MLP on the 8x8 digits with several optimizers",
                       formatter_class=formatter, epilog=_racer_epilog("the demo's lr=0.1"),
                       description="Train the lecture's MLP (64-32-10, sigmoid, minibatch 128)\n"
                                   "on scikit-learn's 8x8 digits, once per optimizer, from the\n"
                                   "same start; print a table and plot the curves.")
    p.add_argument("--epochs", type=int, default=10,
                   help="passes over the training set (default: 10)")
    p.add_argument("--optimizers", nargs="*", metavar="NAME_OR_FILE",
                   help="the racers, e.g. adam:lr=3e-3 mine.opt:lr=0.05 (default: sgd momentum "
                        "nesterov adagrad rmsprop adam torch-sgd); see below")
    _add_backend(p)
    p.add_argument("--out", default="demo-out", metavar="DIR",
                   help="where to write loss_curves.png and results.json ('' for nowhere; "
                        "default: demo-out)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--validation-split", type=float, default=0.0, metavar="F",
                   help="hold out the last fraction F of the training set, as Keras' "
                        "validation_split (the recipe's is 0.1)")
    p.add_argument("--patience", type=int, default=None, metavar="N",
                   help="stop early once the validation loss has not improved for N epochs")
    p.add_argument("--init", default="torch", choices=["torch", "glorot_uniform", "orthogonal"],
                   help="weight initialisation (glorot_uniform: Keras' default)")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("landscape", help="race optimizers on 2-D test functions",
                       formatter_class=formatter,
                       epilog=_racer_epilog("the landscape's own lr for each function"),
                       description="Race optimizers on four 2-D functions (bowl, two minima,\n"
                                   "Rosenbrock, saddle); print where each one went, and draw\n"
                                   "one contour plot per function with every path.")
    p.add_argument("programs", nargs="*", metavar="NAME_OR_FILE",
                   help="the racers, e.g. adam:lr=0.1 mine.opt:lr=0.05 (default: sgd momentum "
                        "nesterov adagrad rmsprop adam); see below")
    p.add_argument("--out", default="landscape-out", metavar="DIR",
                   help="where to write landscape_<function>.png ('' for nowhere; "
                        "default: landscape-out)")
    p.add_argument("--max-iters", type=int, default=5000, metavar="N",
                   help="steps allowed per racer and function (default: 5000)")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="converged when the gradient norm or the distance to a known minimum "
                        "is below this (default: 1e-3)")
    _add_backend(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--second-order", action="store_true",
                   help="race Newton, saddle-free Newton, BFGS, L-BFGS, conjugate gradients "
                        "and coordinate descent beside gradient descent")
    p.set_defaults(run=cmd_landscape)

    p = sub.add_parser("fullbatch", help="full-batch logistic regression on the digits: "
                                         "L-BFGS (optdsl's and torch's) against GD and Adam")
    p.add_argument("--iterations", type=int, default=100, metavar="N",
                   help="full-batch steps per racer, from zero weights (default: 100)")
    p.add_argument("--target", type=float, default=0.27,
                   help="the training loss to reach (default: 0.27)")
    _add_backend(p)
    p.add_argument("--out", default="fullbatch-out", metavar="DIR",
                   help="where to write fullbatch.png ('' for nowhere; default: fullbatch-out)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_fullbatch)

    p = sub.add_parser("bench", help="benchmark bundled optimizers against torch.optim")
    p.add_argument("--size", default="small", choices=["small", "medium", "large"],
                   help="parameters stepped: small 1M in 20 tensors, medium 12.6M in 117, "
                        "large 50M in 160 (default: small)")
    p.set_defaults(run=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    from optdsl import __version__

    parser = argparse.ArgumentParser(
        prog="optdsl", description="A compiler for deep-learning optimizers.")
    parser.add_argument("--version", action="version", version=f"optdsl {__version__}",
                        help="print optdsl's version and exit")
    _add_subcommands(parser.add_subparsers(dest="command", metavar="COMMAND"))
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
