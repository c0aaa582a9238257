"""Host work of a Triton step, with every kernel launch replaced by one that does nothing, against
torch.optim.Adam(fused=True)'s whole CPU step on the same tensors (issue 11). Not a test.

    python bench/bench_host.py                       # 148 and 1,480 one-element tensors
    python bench/bench_host.py --tensors 148 --steps 50 --rounds 3 --no-save

What is measured: ``opt.step()`` of optdsl's Adam and AdamWClip (global-norm clipping) with
``backend="triton"`` on CPU tensors (TRITON_INTERPRET=1 makes the Triton back end accept
them; the interpreter itself never runs, since no kernel is launched): everything the host
does in a steady-state step (checks, gathering the tensors, table updates, argument binding
up to the launch), which on a GPU decides the step's time for every model that is not huge.
Against it, torch.optim.Adam(fused=True)'s step on the same CPU tensors, which does its
arithmetic as well (on one-element tensors, a few flops each). Every step gets new gradient
tensors (as after ``zero_grad()``), made outside the timed region; each step is timed alone
and the table gives medians over ``--rounds`` rounds of ``--steps`` steps, the ratio
(optdsl / torch fused; target <= 1.0) and the launches optdsl's step made.

Writes bench/results/host-<date>[-<tag>].md and .json unless --no-save (machine, versions,
date and the load average, since the machine may be shared); ``--tag`` keeps a second run
of the day from replacing the first's files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # (before Triton is imported)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optdsl import library  # noqa: E402


class NoLaunch:
    """A launcher that counts launches and runs nothing."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, kernel, grid, *args, **kwargs) -> None:
        self.count += 1


def make_params(n: int, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(1, generator=gen)) for _ in range(n)]


def new_grads(params, gen: torch.Generator) -> None:
    for p in params:
        p.grad = torch.randn(1, generator=gen)


def time_steps(opt, params, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` steps (after ``warmup``), new gradients before each."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(warmup):
        new_grads(params, gen)
        opt.step()
    out = []
    for _ in range(steps):
        new_grads(params, gen)
        begin = time.perf_counter()
        opt.step()
        out.append(time.perf_counter() - begin)
    return out


def contenders():
    def optdsl_step(cls):
        def make(params):
            opt = cls(params, lr=1e-3, backend="triton")
            launcher = NoLaunch()
            opt._runner()  # (this optimizer's runner, made now to give it the launcher)
            opt._runner_of[1].launcher = launcher
            return opt, launcher
        return make

    return [("optdsl Adam", optdsl_step(library.Adam)),
            ("optdsl AdamWClip", optdsl_step(library.AdamWClip)),
            ("torch Adam(fused=True)",
             lambda params: (torch.optim.Adam(params, lr=1e-3, fused=True), None))]


def bench(n: int, steps: int, rounds: int, warmup: int) -> dict:
    """Each contender's median step, the contenders interleaved round by round (so drift in
    the machine's load falls on all of them alike)."""
    entries = contenders()
    medians: dict[str, list[float]] = {name: [] for name, _ in entries}
    launches: dict[str, int | None] = {name: None for name, _ in entries}
    for _ in range(rounds):
        for name, make in entries:
            params = make_params(n)
            opt, launcher = make(params)
            times = time_steps(opt, params, steps, warmup)
            medians[name].append(statistics.median(times))
            if launcher is not None:
                before = launcher.count
                new_grads(params, torch.Generator().manual_seed(2))
                opt.step()
                launches[name] = launcher.count - before
    rows = [{"name": name, "ms": 1e3 * statistics.median(medians[name]),
             "rounds_ms": [1e3 * m for m in medians[name]], "launches": launches[name]}
            for name, _ in entries]
    torch_ms = rows[-1]["ms"]
    for row in rows:
        row["ratio"] = row["ms"] / torch_ms
    return {"tensors": n, "rows": rows}


def meta(args) -> dict:
    import triton

    return {"date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "numpy": np.__version__,
            "load": list(os.getloadavg()), "threads": torch.get_num_threads(),
            "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
            "command": " ".join(["python bench/bench_host.py"] + sys.argv[1:])}


def markdown(info: dict, results: list[dict]) -> str:
    load = ", ".join(f"{x:.1f}" for x in info["load"])
    lines = [f"# Host work per step, kernel launches stubbed ({info['date']})", "",
             f"Machine: {info['machine']}; load average {load} (shared machine); torch "
             f"{info['torch']} ({info['threads']} threads), triton {info['triton']}, numpy "
             f"{info['numpy']}, Python {info['python']}. Command: `{info['command']}`. "
             f"Median over {info['rounds']} interleaved rounds of the median of "
             f"{info['steps']} steps (after {info['warmup']} warm-up steps), new gradients "
             f"every step.", ""]
    for res in results:
        lines += [f"## {res['tensors']} one-element tensors", "",
                  "| step | ms/step | / torch fused | launches per step |",
                  "|---|---:|---:|---:|"]
        for row in res["rows"]:
            launches = "-" if row["launches"] is None else str(row["launches"])
            lines.append(f"| {row['name']} | {row['ms']:.3f} | {row['ratio']:.2f}x | "
                         f"{launches} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tensors", type=int, nargs="+", default=[148, 1480])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--tag", help="suffix of the result files: host-<date>-<tag>.md/.json")
    args = ap.parse_args(argv)
    info = meta(args)
    results = [bench(n, args.steps, args.rounds, args.warmup) for n in args.tensors]
    text = markdown(info, results)
    print(text)
    if not args.no_save:
        tag = f"-{args.tag}" if args.tag else ""
        stem = ROOT / "bench" / "results" / f"host-{info['date']}{tag}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps({"meta": info, "results": results},
                                                         indent=2))
        print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
