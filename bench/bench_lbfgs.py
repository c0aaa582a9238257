"""L-BFGS benchmark: optdsl.library.LBFGS against torch.optim.LBFGS, per iteration, CPU.

Not a test. The target (issue 14): optdsl's LBFGS per iteration <= 1.0x torch.optim.LBFGS
on a 10M-parameter list in ~100 tensors with history_size=10 and a fixed deterministic
closure, on the CPU; and how many sweeps (optdsl) and ATen kernels (torch) one iteration
runs.

    python bench/bench_lbfgs.py                      # 10M float32 params in 100 tensors
    python bench/bench_lbfgs.py --params 1e6 --rounds 2 --no-save

Sides: torch.optim.LBFGS; optdsl's LBFGS as a user gets it (backend="auto": C at this size,
its phases compiled and run on torch's threads); and optdsl's LBFGS on the NumPy back end
(one thread; ``--no-numpy`` leaves it out).

Method: every optimizer gets its own copy of the same parameters (float32) and the same
closure, the gradient of the quadratic 0.5 * sum(a * w^2) written in place into each
``p.grad`` (a fixed deterministic closure: the same cost for every side). Tolerances are
set so that no test stops a step early (tolerance_grad = tolerance_change = -1). Each
optimizer first runs ``--warmup`` iterations (its history fills up: history_size=10), then
rounds alternate between the sides (``--rounds`` x one step of ``--iters`` iterations each,
after waiting for the machine to be quiet), so that a noisy shared machine slows all alike.
The table gives the median time per iteration; the ratio is optdsl / torch. The iterates are
compared at the end (the same algorithm: they agree to float32 rounding).

Counting: optdsl's phases are the compiled phases run per iteration, and its sweeps the
passes over the elements their generated steps hold (NumPy: a Python loop of chunked NumPy
calls each; C: each runs inside the phase's one foreign call, over blocks on torch's
threads); threads are those the sweeps run on. torch's kernels are the ATen operators its
step dispatches per iteration (a TorchDispatchMode), the closure's own excluded on both
sides.

Writes bench/results/lbfgs-<date>[-<tag>].json and .md unless --no-save; ``--threads 1``
runs torch (and the C phases) on one thread (on a busy 2-core machine torch's OpenMP ops
slow down most).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cpu import wait_quiet

from optdsl.library import LBFGS
from optdsl.runtime import procedure as procedure_runtime

SIDES = ("torch", "optdsl", "numpy")  # torch.optim.LBFGS; optdsl's (backend "auto"); NumPy


def make_problem(total: int, count: int, seed: int = 0):
    """``count`` float32 tensors of ``total`` elements in all, and the curvatures a."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [total // count] * count
    sizes[-1] += total - sum(sizes)
    params = [torch.randn(n, generator=gen) for n in sizes]
    curvature = [torch.rand(n, generator=gen) + 0.5 for n in sizes]
    return params, curvature


def optimizer(kind: str, base, curvature, iters: int):
    params = [torch.nn.Parameter(p.clone()) for p in base]
    for p in params:
        p.grad = torch.zeros_like(p)
    keywords = {"lr": 0.5, "max_iter": iters, "max_eval": 10 * iters, "history_size": 10,
                "tolerance_grad": -1.0, "tolerance_change": -1.0}
    if kind == "torch":
        opt = torch.optim.LBFGS(params, **keywords)
    else:
        opt = LBFGS(params, backend="auto" if kind == "optdsl" else kind, **keywords)

    def closure():
        for p, a in zip(params, curvature):
            torch.mul(a, p.detach(), out=p.grad)  # the gradient of 0.5 a w^2, in place
        return torch.zeros(())

    return params, opt, closure


class _Counts:
    """Phases optdsl runs, and the sweeps over the elements their generated steps hold (on
    the NumPy back end each is a Python loop of chunked NumPy calls; on C each runs inside
    the phase's one foreign call, over blocks on torch's threads)."""

    def __init__(self) -> None:
        self.sweeps = self.phases = 0

    def __enter__(self):
        self._phase = procedure_runtime.Frame.run_phase
        counts = self

        def run_phase(frame, spec, scalars, handles):
            counts.phases += 1
            program = frame.machine.program.phase_program(spec)
            module = program.variant(scalars).generated(frame.machine.backend)
            counts.sweeps += sum(1 for sweep in module.sweeps if sweep.kernel is not None)
            return counts._phase(frame, spec, scalars, handles)

        procedure_runtime.Frame.run_phase = run_phase
        return self

    def __exit__(self, *exc) -> None:
        procedure_runtime.Frame.run_phase = self._phase


def torch_kernels(opt, closure, iters: int) -> int:
    """ATen operators torch.optim.LBFGS's step dispatches (not the closure's), per iteration."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0
        inside_closure = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not Count.inside_closure:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    def counted():
        Count.inside_closure = True
        try:
            return closure()
        finally:
            Count.inside_closure = False

    with Count():
        opt.step(counted)
    return round(Count.n / iters)


def run(args) -> dict:
    total, count = int(args.params), args.tensors
    base, curvature = make_problem(total, count)
    start = max(float(p.abs().max()) for p in base)
    kinds = [k for k in SIDES if k != "numpy" or not args.no_numpy]
    sides = {kind: optimizer(kind, base, curvature, args.iters) for kind in kinds}
    for _, opt, closure in sides.values():  # the history fills up
        opt.param_groups[0]["max_iter"] = args.warmup
        opt.step(closure)
        opt.param_groups[0]["max_iter"] = args.iters
    samples = {kind: [] for kind in sides}
    loads = []
    for _ in range(args.rounds):
        for kind, (_, opt, closure) in sides.items():
            loads.append(wait_quiet(args.quiet, args.max_wait))
            began = time.perf_counter()
            opt.step(closure)
            samples[kind].append((time.perf_counter() - began) / args.iters)
    tp, topt, tclosure = sides["torch"]
    scale = max(float(a.abs().max()) for a in tp)
    medians = {kind: statistics.median(s) for kind, s in samples.items()}
    optdsl = {}
    for kind in kinds[1:]:
        params, opt, closure = sides[kind]
        difference = max(float((a - b).abs().max()) for a, b in zip(tp, params))
        with _Counts() as counts:  # (after the comparison: two more iterations)
            opt.param_groups[0]["max_iter"] = 2
            opt.step(closure)
        optdsl[kind] = {
            "backend": opt.backend,
            "threads": torch.get_num_threads() if opt.backend == "c" else 1,
            "max_abs_difference": difference,
            "sweeps_per_iter": counts.sweeps / 2, "phases_per_iter": counts.phases / 2,
            "ratio": medians[kind] / medians["torch"]}
    kernels = torch_kernels(topt, tclosure, args.iters)
    return {"params": total, "tensors": count, "iters_per_step": args.iters,
            "rounds": args.rounds, "warmup_iters": args.warmup, "start_abs_param": start,
            "seconds_per_iter": {k: {"median": medians[k], "all": samples[k]} for k in medians},
            "ratio": optdsl["optdsl"]["ratio"], "optdsl": optdsl,
            "max_abs_difference": max(o["max_abs_difference"] for o in optdsl.values()),
            "max_abs_param": scale, "torch_kernels_per_iter": kernels,
            "background_load": {"median": statistics.median(loads), "max": max(loads)}}


def environment() -> dict:
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": platform.processor() or platform.machine(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "torch_num_threads": torch.get_num_threads(),
           "numpy": np.__version__, "python": platform.python_version(),
           "loadavg": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f
                                     if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        env["optdsl_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short",
                                               "HEAD"], capture_output=True, text=True,
                                              check=False).stdout.strip()
    except OSError:
        pass
    return env


def report(env: dict, res: dict) -> str:
    per = res["seconds_per_iter"]
    verdict = "met" if res["ratio"] <= 1.0 else "NOT met"
    rows = [(f"| torch.optim.LBFGS | {env['torch_num_threads']} | "
             f"{1e3 * per['torch']['median']:.1f} | 1.00 | "
             f"{res['torch_kernels_per_iter']} ATen kernels / iteration |")]
    for kind, side in res["optdsl"].items():
        name = {"optdsl": "optdsl LBFGS (backend='auto': ", "numpy": "optdsl LBFGS ("}[kind]
        name += {"c": "C", "numpy": "NumPy"}.get(side["backend"], side["backend"]) + ")"
        c = side["backend"] == "c"
        sweeps = "blocks of compiled C" if c else "chunked NumPy"
        calls = ", one foreign call each" if c else ""
        rows.append(f"| {name} | {side['threads']} | {1e3 * per[kind]['median']:.1f} | "
                    f"{side['ratio']:.2f} | {side['sweeps_per_iter']:g} sweeps ({sweeps}) in "
                    f"{side['phases_per_iter']:g} phases{calls} / iteration |")
    spread = ", ".join(f"{kind} {1e3 * min(s['all']):.0f}-{1e3 * max(s['all']):.0f}"
                       for kind, s in per.items())
    setup = (f"{res['params']:,} float32 params in {res['tensors']} tensors, "
             f"history_size=10, a fixed deterministic closure; "
             f"{env.get('cpu_model') or env['machine']}, {env['cpu_count']} CPUs, torch "
             f"{env['torch']} ({env['torch_num_threads']} threads), numpy {env['numpy']}, "
             f"Python {env['python']}, optdsl {env.get('optdsl_commit', '?')}. "
             f"{res['rounds']} interleaved rounds of one step of {res['iters_per_step']} "
             f"iterations each, after {res['warmup_iters']} warm-up iterations (history "
             f"full).")
    load = (f"Load average at the start: {', '.join(f'{x:.2f}' for x in env['loadavg'])}; "
            f"others' share of the CPUs before the timed runs: median "
            f"{res['background_load']['median']:.2f}, max "
            f"{res['background_load']['max']:.2f}.")
    lines = [
        f"# L-BFGS per iteration, {env['date']}", "", setup, "", load, "",
        "| optimizer | threads | ms / iteration (median) | x torch | passes over memory |",
        "| --- | --- | --- | --- | --- |", *rows, "",
        f"Rounds' range (ms / iteration): {spread}.", "",
        f"Target (optdsl <= 1.0x torch per iteration): ratio {res['ratio']:.2f}, {verdict}.",
        (f"The parameters after the run differ from torch's by at most "
         f"{res['max_abs_difference']:.1e} (largest |w| {res['max_abs_param']:.1e}; started "
         f"at up to {res['start_abs_param']:.1f}): the same iterates, to float32 rounding."),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=float, default=10e6)
    ap.add_argument("--tensors", type=int, default=100)
    ap.add_argument("--iters", type=int, default=5, help="iterations per timed step")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=12)
    ap.add_argument("--quiet", type=float, default=0.15,
                    help="wait until others use less than this share of the CPUs")
    ap.add_argument("--max-wait", type=float, default=60.0)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--tag", help="suffix of the result files: lbfgs-<date>-<tag>.json/.md")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--no-numpy", action="store_true", help="leave out the NumPy back end's row")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment()
    print("env: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    res = run(args)
    text = report(env, res)
    print(text)
    if not args.no_save:
        out = ROOT / "bench" / "results"
        stamp = datetime.date.today().isoformat() + (f"-{args.tag}" if args.tag else "")
        (out / f"lbfgs-{stamp}.json").write_text(json.dumps({"env": env, **res}, indent=1))
        (out / f"lbfgs-{stamp}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
