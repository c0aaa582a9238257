"""AdamW with clipping by global norm: one optdsl step (library AdamWClip) against
torch.nn.utils.clip_grad_norm_ followed by torch.optim.AdamW (for-loop, foreach, fused),
measured in the same run on this machine. Prints ms/step (median of interleaved rounds) and
ratios; writes bench/results/clip-<date>.md unless --no-save.

    python bench/bench_clip.py [--params 12600000] [--tensors 117] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch

from optdsl.library import AdamWClip


def make(total: int, count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    size = total // count
    params = [torch.randn(size, generator=gen) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size, generator=gen)
    return params


def runners(total: int, count: int) -> dict:
    kw = dict(lr=1e-3, weight_decay=1e-2)
    out = {}
    ps = make(total, count)
    ours = AdamWClip(ps, max_norm=1.0, **kw)
    out["optdsl AdamWClip (one step)"] = ours.step
    for variant, flags in (("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True)),
                           ("fused", dict(fused=True))):
        qs = make(total, count)
        opt = torch.optim.AdamW(qs, **kw, **flags)

        def step(opt=opt, qs=qs, foreach=flags.get("foreach")):
            torch.nn.utils.clip_grad_norm_(qs, 1.0, foreach=foreach)
            opt.step()

        out[f"clip_grad_norm_ + AdamW {variant}"] = step
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=12_600_000)
    parser.add_argument("--tensors", type=int, default=117)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = runners(args.params, args.tensors)
    for step in steps.values():
        step()  # warm-up: compile, create state
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    peers = [n for n in med if n.startswith("clip")]
    lines = [f"# AdamW + clipping by global norm, {datetime.date.today()}", "",
             f"{args.params:,} float32 params in {args.tensors} tensors; {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
             f"{args.rounds} rounds x {args.steps} steps, medians.", "",
             "| step | ms | " + " | ".join(f"/ {p.split()[-1]}" for p in peers) + " |",
             "|" + " --- |" * (2 + len(peers))]
    for name, m in med.items():
        lines.append(f"| {name} | {m * 1e3:.1f} | "
                     + " | ".join(f"{m / med[p]:.2f}" for p in peers) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        tag = f"-threads{args.threads}" if args.threads else ""
        (out / f"clip-{datetime.date.today()}{tag}.md").write_text(text)


if __name__ == "__main__":
    main()
