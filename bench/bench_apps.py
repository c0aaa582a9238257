"""The demo and the landscape races on each CPU back end, same racers, same run (issue 12: they
must get faster with the C back end, not slower). Not a test.

    python bench/bench_apps.py                        # numpy, c, torch; 3 rounds
    python bench/bench_apps.py --backends numpy c --rounds 1 --no-save

What is measured: ``run_demo`` (the digits MLP, the six DSL racers and torch.optim.SGD, 10
epochs) and ``run_landscape`` (six racers on four functions), without pictures or progress
bars. Per run: the racers' own seconds summed (training, as each app reports it: the demo's
include evaluating after each epoch; the landscape's every step's loss and gradient) and the
whole call's wall time (construction, the checks before racing, data). The back ends take
turns in every round (interleaved), after one untimed run each that builds and caches what
they compile; the table gives medians over the rounds and each back end's ratio to NumPy's
(the demo's back end before the C one existed).

Writes bench/results/apps-<date>.md and .json unless --no-save (machine, versions, date and
the load average, since the machine may be shared).
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

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optdsl.apps.demo import run_demo  # noqa: E402
from optdsl.apps.landscape import run_landscape  # noqa: E402

APPS = ("demo", "landscape")


def one_run(app: str, backend: str, epochs: int) -> tuple[float, float]:
    """(racers' seconds summed, wall seconds) of one run of ``app`` on ``backend``."""
    start = time.perf_counter()
    if app == "demo":
        results = run_demo(epochs=epochs, backend=backend, progress=False)
    else:
        results = run_landscape(backend=backend)
    wall = time.perf_counter() - start
    return sum(r["seconds"] for r in results), wall


def bench(backends: list[str], rounds: int, epochs: int) -> dict:
    for app in APPS:  # untimed: compiles and caches each back end's steps
        for backend in backends:
            one_run(app, backend, epochs)
    samples = {(app, b): [] for app in APPS for b in backends}
    for _ in range(rounds):
        for app in APPS:
            for backend in backends:
                samples[app, backend].append(one_run(app, backend, epochs))
    out = {}
    for (app, backend), runs in samples.items():
        racing = [r for r, _ in runs]
        wall = [w for _, w in runs]
        out[f"{app}/{backend}"] = {
            "racers_s": racing, "wall_s": wall,
            "racers_median_s": statistics.median(racing),
            "wall_median_s": statistics.median(wall),
        }
    return out


def meta(args: argparse.Namespace) -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "rounds": args.rounds, "epochs": args.epochs, "backends": args.backends,
    }


def markdown(info: dict, results: dict) -> str:
    lines = [
        f"# The demo and the landscape races per back end ({info['date']})",
        "",
        f"{info['cpus']} CPUs ({info['machine']}), Python {info['python']}, torch "
        f"{info['torch']} ({info['torch_threads']} threads); load average at the end "
        f"{', '.join(f'{x:.2f}' for x in info['load_average'])}. Medians of "
        f"{info['rounds']} interleaved rounds (after one untimed run each); the demo "
        f"{info['epochs']} epochs. `bench/bench_apps.py`.",
        "",
        "| app | back end | racers' seconds (median) | ratio to numpy | wall (median) | "
        "ratio to numpy | all rounds (racers) |",
        "|---|---|---|---|---|---|---|",
    ]
    for app in APPS:
        base = results.get(f"{app}/numpy")
        for backend in info["backends"]:
            r = results[f"{app}/{backend}"]
            ratio = (f"{r['racers_median_s'] / base['racers_median_s']:.2f}x" if base else "-")
            wall_ratio = (f"{r['wall_median_s'] / base['wall_median_s']:.2f}x" if base else "-")
            rounds = ", ".join(f"{x:.2f}" for x in r["racers_s"])
            lines.append(f"| {app} | {backend} | {r['racers_median_s']:.2f} s | {ratio} | "
                         f"{r['wall_median_s']:.2f} s | {wall_ratio} | {rounds} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=["numpy", "c", "torch"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--tag", default="", help="appended to the results' file name")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    results = bench(args.backends, args.rounds, args.epochs)
    info = meta(args)
    text = markdown(info, results)
    print(text)
    if not args.no_save:
        name = f"apps-{info['date']}" + (f"-{args.tag}" if args.tag else "")
        stem = ROOT / "bench" / "results" / name
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps({"meta": info, "results": results},
                                                        indent=2))
        print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
