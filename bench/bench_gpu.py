"""GPU benchmark: optdsl's Triton back end against torch.optim.Adam. Not a test (issue #3).

    python bench/bench_gpu.py                          # every case, on the current CUDA GPU
    python bench/bench_gpu.py --cases linear10 gpt2 --no-compile
    TRITON_INTERPRET=1 python bench/bench_gpu.py --smoke   # CPU, tiny: checks the script runs

Cases (parameter shapes): ``linear10`` ten Linear(1024, 1024) with biases (10.5M),
``gpt2`` GPT-2 124M (tied embedding, 148 tensors), ``large`` GPT-2 large (774M, 436 tensors).
Precisions: ``fp32`` (params, grads, state) and ``bf16`` (bf16 params and grads; optdsl keeps
fp32 state by default, torch.optim keeps bf16 state, so a row "optdsl, bf16 state" runs
optdsl with ``state_dtype="param"`` as torch does, and a row "optdsl, master weights" adds
fp32 master weights).

Contenders, each measured in the same run on the same parameters and gradients: optdsl
(``backend="triton"``), torch.optim.Adam with ``foreach=False`` (for-loop), ``foreach=True``,
``fused=True``, and a ``torch.compile``'d step of the for-loop Adam (after its compilation).
Each is warmed up, then timed with CUDA events over ``--steps`` steps, ``--rounds`` times;
the table gives the median time per step, the ratio to every peer and the effective
bandwidth: the bytes Adam must move (read w, g, m, v; write w, m, v, in each tensor's dtype)
over the median time, also as a share of a device-to-device copy timed in the same run.

First-step latency: a fresh process builds the optdsl Adam on ``linear10`` and times
construction + first step (codegen, Triton compilation, launch), with empty optdsl and Triton
caches ("cold") and again with the caches it filled ("warm").

CUDA graphs (issue 11): with ``capturable=True`` and a tensor lr, optdsl's step and torch's
``Adam(fused=True, capturable=True)`` are each captured once after warm-up and the table adds
their replays ("..., CUDA graph" rows; fp32 only). ``--sync-check`` runs every bundled
optimizer's steady-state steps under ``torch.cuda.set_sync_debug_mode("error")`` and reports
any synchronisation (there should be none).

Writes bench/results/gpu-<date>-<device>-<cases>.json and .md (or under ``--out DIR``) unless
--no-save. bench/gpu_session.sh runs the whole GPU session (tests, sync check, bench). The whole
set takes minutes (torch.compile of 436 tensors most); on a machine with a per-command time
limit run the cases one at a time (``--cases linear10``, ``--cases gpt2``, ``--cases large
--no-latency``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optdsl.library import Adam  # noqa: E402

LR = 1e-4


# -- shapes ---------------------------------------------------------------------------------------
def linear10() -> list[tuple[int, ...]]:
    return [(1024, 1024), (1024,)] * 10


def gpt2(layers: int = 12, d: int = 768, vocab: int = 50257, ctx: int = 1024) -> list[tuple]:
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
                   (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


CASES = {
    "linear10": linear10,
    "gpt2": gpt2,
    "large": lambda: gpt2(layers=36, d=1280),
    "tiny": lambda: [(7,), (1000,), (300, 5)],  # --smoke
}


# -- timing ---------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` consecutive steps."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / steps
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - begin) / steps


def copy_bandwidth(nbytes: int, device: torch.device, repeats: int = 20) -> float:
    """Bytes per second of a device-to-device copy of ``nbytes`` (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    times = [time_steps(lambda: dst.copy_(src), 5, device) for _ in range(repeats)]
    return 2 * nbytes / statistics.median(times)


def adam_bytes(params, state_dtype: torch.dtype | None, master: bool = False) -> int:
    """Bytes one Adam step must move: read w, g, m, v and write w, m, v; with an fp32
    master weight, w is the master (read and written) and the parameter is only written."""
    total = 0
    for p in params:
        s = (state_dtype or p.dtype).itemsize
        w = 2 * 4 + p.element_size() if master else 2 * p.element_size()
        total += p.numel() * (w + p.element_size() + 4 * s)
    return total


# -- contenders -----------------------------------------------------------------------------------
def contenders(params, precision: str, compile_step: bool) -> list[tuple[str, object, int]]:
    """(name, make optimizer, bytes its step must move)."""
    same = adam_bytes(params, None)
    out = [("optdsl", lambda: Adam(params, lr=LR, backend="triton"),
            adam_bytes(params, torch.float32 if precision == "bf16" else None))]
    if precision == "bf16":
        out.append(("optdsl, bf16 state",
                    lambda: Adam(params, lr=LR, backend="triton", state_dtype="param"), same))
        out.append(("optdsl, master weights",
                    lambda: Adam(params, lr=LR, backend="triton", master_weights=True),
                    adam_bytes(params, torch.float32, master=True)))
    out += [
        ("torch for-loop", lambda: torch.optim.Adam(params, lr=LR, foreach=False), same),
        ("torch foreach", lambda: torch.optim.Adam(params, lr=LR, foreach=True), same),
        ("torch fused", lambda: torch.optim.Adam(params, lr=LR, fused=True), same),
    ]
    if compile_step:
        out.append(("torch.compile", lambda: _compiled(params), same))
    return out


class _compiled:
    """torch.optim.Adam's step under torch.compile (the recipe of torch's tutorial)."""

    def __init__(self, params) -> None:
        self.opt = torch.optim.Adam(params, lr=LR, foreach=False)
        self.step = torch.compile(self.opt.step, fullgraph=False)


def graph_contenders(params, device: torch.device) -> list[tuple[str, object]]:
    """(name, make optimizer) of the steps timed as CUDA-graph replays."""
    def lr():
        return torch.tensor(LR, device=device)

    return [("optdsl, CUDA graph",
             lambda: Adam(params, lr=lr(), backend="triton", capturable=True)),
            ("torch fused, CUDA graph",
             lambda: torch.optim.Adam(params, lr=lr(), fused=True, capturable=True))]


def time_graph(opt, steps: int, rounds: int, warmup: int) -> list[float]:
    """Seconds per replay of one captured step (warmed up on a side stream first)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(max(warmup, 2)):
            opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    graph.replay()
    torch.cuda.synchronize()
    return [time_steps(graph.replay, steps, torch.device("cuda")) for _ in range(rounds)]


def sync_check(device: torch.device) -> dict[str, str]:
    """Every bundled optimizer's steady-state steps under set_sync_debug_mode("error")."""
    from optdsl import library

    out = {}
    for name in library.PROGRAMS:
        prog = library.program(name)
        hypers = {n: 0.1 for n, spec in prog.hypers.items() if spec.required}
        params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in CASES["tiny"]()]
        opt = prog.optimizer(params, backend="triton", **hypers)
        try:
            for step in range(5):
                for p in params:
                    p.grad = torch.randn_like(p)
                if step == 2:
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                opt.step()
            out[name] = "ok"
        except RuntimeError as exc:
            out[name] = f"synchronised: {str(exc).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out


def bench_case(case: str, precision: str, device: torch.device, args) -> dict:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device, dtype))
              for s in CASES[case]()]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(device, dtype)
    numel = sum(p.numel() for p in params)
    copy_bw = copy_bandwidth(max(adam_bytes(params, None) // 2, 1 << 20), device)
    rows = []
    for name, make, moved in contenders(params, precision, args.compile):
        opt = make()
        begin = time.perf_counter()
        for _ in range(args.warmup):
            opt.step()
        sync(device)
        warm = time.perf_counter() - begin
        times = [time_steps(opt.step, args.steps, device) for _ in range(args.rounds)]
        median = statistics.median(times)
        rows.append({"name": name, "ms": median * 1e3, "min_ms": min(times) * 1e3,
                     "warmup_s": warm, "bytes": moved, "GBps": moved / median / 1e9,
                     "copy_share": moved / median / copy_bw})
        del opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda" and precision == "fp32" and args.graphs:
        for name, make in graph_contenders(params, device):
            times = time_graph(make(), args.steps, args.rounds, args.warmup)
            median = statistics.median(times)
            moved = adam_bytes(params, None)
            rows.append({"name": name, "ms": median * 1e3, "min_ms": min(times) * 1e3,
                         "warmup_s": 0.0, "bytes": moved, "GBps": moved / median / 1e9,
                         "copy_share": moved / median / copy_bw})
            torch.cuda.empty_cache()
    ours = rows[0]["ms"]
    for row in rows:
        row["optdsl_ratio"] = ours / row["ms"]  # < 1: optdsl is faster
    return {"case": case, "precision": precision, "params": numel, "tensors": len(params),
            "copy_GBps": copy_bw / 1e9, "rows": rows}


# -- first-step latency ---------------------------------------------------------------------------
def first_step(device: str, case: str) -> float:
    """Seconds to build the optdsl Adam on ``case`` and finish its first step."""
    params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in CASES[case]()]
    for p in params:
        p.grad = torch.randn_like(p)
    sync(torch.device(device))
    begin = time.perf_counter()
    Adam(params, lr=LR, backend="triton").step()
    sync(torch.device(device))
    return time.perf_counter() - begin


def first_step_latency(device: str, case: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OPTDSL_CACHE_DIR=f"{tmp}/optdsl", TRITON_CACHE_DIR=f"{tmp}/triton")
        out = {}
        for label in ("cold", "warm"):
            done = subprocess.run([sys.executable, __file__, "--first-step", device, case],
                                  env=env, capture_output=True, text=True, check=True)
            out[label] = float(done.stdout.strip().splitlines()[-1])
        return out


# -- report ---------------------------------------------------------------------------------------
def markdown(meta: dict, results: list[dict], latency: dict | None = None) -> str:
    lines = [f"# GPU benchmark, {meta['date']}", "",
             f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}, "
             f"CUDA {meta['cuda']}. Command: `{meta['command']}`. Median of {meta['rounds']} "
             f"rounds of {meta['steps']} steps after {meta['warmup']} warm-up steps.", ""]
    for res in results:
        lines += [f"## {res['case']}, {res['precision']}: {res['params'] / 1e6:.1f}M params in "
                  f"{res['tensors']} tensors (copy: {res['copy_GBps']:.0f} GB/s)", "",
                  "| contender | ms/step | optdsl time / this | GB/s | share of copy |",
                  "|---|---:|---:|---:|---:|"]
        for row in res["rows"]:
            lines.append(f"| {row['name']} | {row['ms']:.3f} | {row['optdsl_ratio']:.2f}x | "
                         f"{row['GBps']:.0f} | {100 * row['copy_share']:.0f}% |")
        lines.append("")
    if latency:
        lines += [f"## First step (construction + codegen + compile + step, "
                  f"{latency['case']})", "",
                  f"cold caches: {latency['cold']:.2f} s; warm caches: {latency['warm']:.3f} s",
                  ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["linear10", "gpt2", "large"],
                    choices=sorted(CASES))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                    choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--no-latency", dest="latency", action="store_false")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny case on the CPU under TRITON_INTERPRET=1; saves nothing")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--no-graphs", dest="graphs", action="store_false",
                    help="skip the CUDA-graph rows")
    ap.add_argument("--sync-check", action="store_true",
                    help="only check that steady-state steps never synchronise")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                    help="where the results go")
    ap.add_argument("--first-step", nargs=2, metavar=("DEVICE", "CASE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.first_step:
        print(first_step(*args.first_step))
        return 0
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.cases, args.compile, args.no_save = ["tiny"], False, True
        args.steps, args.rounds, args.warmup = 2, 2, 1
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("no CUDA GPU: run with --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    if args.sync_check:
        if device.type != "cuda":
            print("sync check: skipped (no CUDA GPU)")
            return 0
        found = sync_check(device)
        for name, status in found.items():
            print(f"sync check {name}: {status}")
        return 0 if all(v == "ok" for v in found.values()) else 1
    import triton

    meta = {"date": datetime.date.today().isoformat(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "steps": args.steps, "rounds": args.rounds,
            "warmup": args.warmup, "command": " ".join(["python bench/bench_gpu.py"] +
                                                        (argv or sys.argv[1:]))}
    results = []
    for case in args.cases:
        for precision in args.precisions:
            res = bench_case(case, precision, device, args)
            results.append(res)
            print(markdown(meta, [res]), flush=True)
    latency = None
    if args.latency:
        case = "tiny" if args.smoke else "linear10"
        latency = dict(first_step_latency(str(device), case), case=case)
        print(markdown(meta, [], latency).split("\n## ", 1)[-1])
    text = markdown(meta, results, latency)
    if not args.no_save:
        slug = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
        cases = "-".join(args.cases)  # one run per case fits a 10-minute device call
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"gpu-{meta['date']}-{slug}-{cases}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps(
            {"meta": meta, "results": results, "first_step_s": latency}, indent=2))
        print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
