"""Muon and Adafactor steps on a transformer's 2-D shapes: optdsl against torch.optim (CPU).

Not a test. The targets (issue 13, "Targets"), ratios in one run:
- Muon step on GPT-2-small's 2-D shapes <= 1.0x torch.optim.Muon;
- Adafactor step <= 1.0x torch.optim.Adafactor(foreach=True).

Shapes: per layer the attention's fused q/k/v (2304 x 768) and output (768 x 768), the MLP's
3072 x 768 and 768 x 3072, times ``--layers`` (GPT-2-small: 12; ``--small``: 2 layers at a
quarter of the width). Every optimizer gets its own copy of the parameters with fixed random
gradients; contenders are interleaved round-robin (``--rounds`` rounds of ``--steps`` timed
steps after ``--warmup``), each round waiting until other jobs use less than ``--quiet`` of the
CPUs (at most ``--max-wait`` s), so a noisy, shared machine slows every contender alike; the
table gives the median and p10/p90 of all timed steps and the background load seen. Muon is
GEMM-bound (5 Newton–Schulz iterations of three products each), Adafactor memory-bound;
bandwidth is reported for Adafactor against a plain copy of the same size.

    python bench/bench_matrix.py --small          # a quick run
    python bench/bench_matrix.py                  # GPT-2-small's 85M matrix parameters
    python bench/bench_matrix.py --backend c      # optdsl on one back end (default: numpy,c,torch)
    python bench/bench_matrix.py --device cuda --backend triton,torch --quiet 1 --out DIR

On a GPU (``--device cuda``) every step is timed between two ``torch.cuda.synchronize()``
and the copy is a device-to-device one; ``bench/gpu_session.sh`` runs it so.

Writes bench/results/matrix-<date>[-<tag>].json and .md (or into ``--out``) unless --no-save.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cpu import percentile, wait_quiet  # noqa: E402

from optdsl import library  # noqa: E402


def shapes(layers: int, width: int) -> list[tuple[int, int]]:
    one = [(3 * width, width), (width, width), (4 * width, width), (width, 4 * width)]
    return one * layers


def contenders(backends: list[str]) -> dict:
    """name -> (family, a function making the optimizer for some parameters): torch's, and
    optdsl's on each of ``backends``."""
    def muon(backend):
        return lambda ps: library.Muon(ps, lr=0.02, backend=backend)

    def adafactor(backend):
        return lambda ps: library.Adafactor(ps, backend=backend)

    out = {"torch Muon": ("muon", lambda ps: torch.optim.Muon(ps, lr=0.02))}
    out.update({f"optdsl Muon ({b})": ("muon", muon(b)) for b in backends})
    out["torch Adafactor foreach"] = ("adafactor",
                                      lambda ps: torch.optim.Adafactor(ps, foreach=True))
    out["torch Adafactor for-loop"] = ("adafactor",
                                       lambda ps: torch.optim.Adafactor(ps, foreach=False))
    out.update({f"optdsl Adafactor ({b})": ("adafactor", adafactor(b)) for b in backends})
    return out


def build(make, base: list[torch.Tensor], grads: list[torch.Tensor]):
    params = [torch.nn.Parameter(p.clone()) for p in base]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params, make(params)


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_ms(numel: int, device: torch.device, repeats: int = 10) -> float:
    src = torch.randn(numel, device=device)
    dst = torch.empty(numel, device=device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def run(args) -> dict:
    width, layers = (192, 2) if args.small else (args.width, args.layers)
    dims = shapes(layers, width)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    base = [(torch.randn(r, c, generator=gen) * 0.02).to(device) for r, c in dims]
    grads = [(torch.randn(r, c, generator=gen) * 1e-3).to(device) for r, c in dims]
    numel = sum(p.numel() for p in base)
    backends = args.backend.split(",")
    made = {name: build(make, base, grads) for name, (_, make) in
            contenders(backends).items()}
    times: dict[str, list[float]] = {name: [] for name in made}
    loads = []
    for name, (_, opt) in made.items():
        for _ in range(args.warmup):
            opt.step()
    for _ in range(args.rounds):
        for name, (_, opt) in made.items():
            loads.append(wait_quiet(args.quiet, args.max_wait))
            for _ in range(args.steps):
                _sync(device)
                t = time.perf_counter()
                opt.step()
                _sync(device)
                times[name].append(1e3 * (time.perf_counter() - t))
    families = {name: family for name, (family, _) in contenders(backends).items()}
    rows = {name: {"family": families[name], "median_ms": float(np.median(ts)),
                   "p10_ms": percentile(ts, 0.1), "p90_ms": percentile(ts, 0.9)}
            for name, ts in times.items()}
    copy = copy_ms(numel, device)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)} (host: {machine})"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine, "device": str(device),
            "torch": torch.__version__, "triton": _triton_version(),
            "threads": torch.get_num_threads(),
            "shapes": dims, "params": numel, "backends": backends,
            "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
            "background_load": {"median": float(np.median(loads)), "max": float(max(loads))},
            "copy_ms": copy, "rows": rows}


def table(result: dict) -> str:
    rows = result["rows"]
    ref = {"muon": "torch Muon", "adafactor": "torch Adafactor foreach"}
    lines = [f"# Muon and Adafactor steps, {result['date']}", "",
             f"{result['params']:,} float32 parameters in {len(result['shapes'])} matrices; "
             f"{result['machine']}, torch {result['torch']} ({result['threads']} threads), "
             f"triton {result.get('triton')}; "
             f"{result['rounds']} interleaved rounds x {result['steps']} steps after "
             f"{result['warmup']} warm-up; others' share of the CPUs before each round: median "
             f"{result['background_load']['median']:.2f}, max "
             f"{result['background_load']['max']:.2f}.", "",
             f"A plain copy of the same size: {result['copy_ms']:.2f} ms "
             f"({8 * result['params'] / result['copy_ms'] / 1e6:.1f} GB/s).", "",
             "| optimizer | ms/step (median) | p10 | p90 | / torch reference |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        ratio = row["median_ms"] / rows[ref[row["family"]]]["median_ms"]
        lines.append(f"| {name} | {row['median_ms']:.1f} | {row['p10_ms']:.1f} | "
                     f"{row['p90_ms']:.1f} | {ratio:.2f} |")
    lines += ["", "Targets (issue 13):", ""]
    for family, goal in (("muon", "torch.optim.Muon"),
                         ("adafactor", "torch.optim.Adafactor(foreach=True)")):
        for name, ours in rows.items():
            if not (name.startswith("optdsl") and ours["family"] == family):
                continue
            ratio = ours["median_ms"] / rows[ref[family]]["median_ms"]
            lines.append(f"- {name} / {goal}: {ratio:.2f} (goal <= 1.0): "
                         f"{'met' if ratio <= 1.0 else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="2 layers at a quarter width")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768, help="the model width (GPT-2-small's)")
    ap.add_argument("--backend", default="numpy,c,torch",
                    help="optdsl's back ends, comma-separated (default: numpy,c,torch)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quiet", type=float, default=0.25)
    ap.add_argument("--max-wait", type=float, default=20.0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="cpu", help="where the parameters live (cpu, cuda)")
    ap.add_argument("--out", help="write the results here instead of bench/results/")
    ap.add_argument("--tag")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    text = table(result)
    print(text)
    if not args.no_save:
        stem = f"matrix-{datetime.date.today().isoformat()}" + (f"-{args.tag}" if args.tag
                                                                else "")
        out = Path(args.out) if args.out else ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / f"{stem}.md").write_text(text)


if __name__ == "__main__":
    main()
