"""``optdsl bench``: time bundled optimizers against torch.optim on this machine.

A compact version of bench/bench_cpu.py for users: one model-shaped set of float32 tensors,
each optimizer stepped after a warm-up, medians printed with the ratio to every torch.optim
variant measured in the same run and the effective bandwidth. On a GPU the Triton back end
and torch's fused step are included. Timings are medians of interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

SIZES = {"small": (1_000_000, 20), "medium": (12_600_000, 117), "large": (50_000_000, 160)}
BYTES = {"Adam": 28, "SGD": 20}  # fp32 bytes moved per parameter (read w g m v, write w m v)


def _tensors(total: int, count: int, device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = total // count
    sizes = [base + (7 if i % 3 == 0 else 0) for i in range(count - 1)]
    sizes.append(max(1, total - sum(sizes)))
    params = []
    for n in sizes:
        p = torch.randn(n, generator=gen).to(device)
        p.grad = torch.randn(n, generator=gen).to(device)
        params.append(p)
    return params


def _candidates(name: str, device: str) -> dict[str, Callable]:
    from optdsl import library

    ours = getattr(library, name)
    twin = getattr(torch.optim, name)
    kw = {"lr": 1e-3, "momentum": 0.9} if name == "SGD" else {"lr": 1e-3}
    backend = "triton" if device == "cuda" else "numpy"
    made: dict[str, Callable] = {f"optdsl {name} ({backend})": lambda ps: ours(ps, **kw)}
    made[f"torch {name} for-loop"] = lambda ps: twin(ps, foreach=False, **kw)
    made[f"torch {name} foreach"] = lambda ps: twin(ps, foreach=True, **kw)
    made[f"torch {name} fused"] = lambda ps: twin(ps, fused=True, **kw)
    return made


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(opt, device: str, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _progress(done: int, total: int, label: str) -> None:
    width = 24
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40}")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    total, count = SIZES[args.size]
    rounds, steps = 3, 5
    print(f"optdsl bench: {total:,} float32 params in {count} tensors on {device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for name in ("Adam", "SGD"):
        makers = _candidates(name, device)
        made = {}
        for label, make in makers.items():
            try:
                params = _tensors(total, count, device)
                opt = make(params)
                opt.step()  # warm-up: compiles, creates state
                made[label] = opt
            except (RuntimeError, ValueError, TypeError) as exc:
                print(f"  {label}: not available ({exc})")
        samples: dict[str, list[float]] = {label: [] for label in made}
        work = rounds * len(made)
        for r in range(rounds):
            for i, (label, opt) in enumerate(made.items()):
                _progress(r * len(made) + i, work, label)
                samples[label] += _time(opt, device, steps)
        _progress(work, work, "done")
        sys.stderr.write("\n")
        medians = {label: statistics.median(ts) for label, ts in samples.items()}
        peers = [label for label in medians if label.startswith("torch")]
        head = "| optimizer | ms/step | GB/s | " + " | ".join(f"/ {p.split()[-1]}" for p in peers)
        print(f"\n{name} ({BYTES[name]} bytes/param)\n{head} |")
        print("|" + " --- |" * (3 + len(peers)))
        for label, median in medians.items():
            gbs = BYTES[name] * total / median / 1e9
            ratios = " | ".join(f"{median / medians[p]:.2f}" for p in peers)
            print(f"| {label} | {median * 1e3:.1f} | {gbs:.1f} | {ratios} |")
    print("\nRatios are row time / column time: below 1 is faster. The machine may be shared;"
          " bench/bench_cpu.py runs the longer protocol behind the README's numbers.")
    return 0
