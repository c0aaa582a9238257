"""CPU speed benchmark: optdsl's C and NumPy back ends against torch.optim (for-loop,
foreach, fused).

Not a test. The targets (issue 12, "a compiled CPU back end"), ratios in one run:
- Adam on ~12.6M float32 params in 117 tensors: C <= 1.0x torch.optim.Adam(fused=True) and
  <= 0.4x foreach=True; SGD with momentum: C <= 1.0x torch's fused SGD;
- 148 and 1,480 one-element tensors: C <= 1.0x torch's fused Adam (fixed costs);
- a never-seen program: compile + first step <= 0.5 s above torch.optim.Adam's own first
  step on the same fresh tensors (``--first-step``);
- bandwidth against a plain copy measured in the same run.

Every timed step follows an untimed torch op that keeps torch's OpenMP threads busy (as
backward does in training: a threaded step that ignored torch's threads lost there);
``--no-torch-work`` turns it off.

    python bench/bench_cpu.py                     # defaults: 12.6M params, 117 tensors
    python bench/bench_cpu.py --steps 40 --rounds 5 --json bench/results/x.json

Method: every optimizer gets its own copy of the parameters (float32, shaped like a small
transformer) with fixed random gradients. Runs are interleaved round-robin (``--rounds``
rounds of ``--steps`` timed steps each, after ``--warmup`` untimed steps) so that a noisy,
shared machine slows every contender alike. The default is one step a round (60 rounds):
this machine's memory bandwidth swings between phases within seconds (Adam's step between
5 and 7.5 ms), so rounds of 10 steps could put one contender's round in a fast phase and
the next one's in a slow phase (2026-12-04: 1.05x and 1.11x fused in such runs, where
step-by-step alternation in one process gave 0.89-0.96x). The table gives the median and
p10/p90 of all timed steps. Bandwidth is bytes that must move per step / median time:
Adam fp32 = 28 B/param (read w, g, m, v; write w, m, v),
SGD with momentum fp32 = 20 B/param (read w, g, buf; write w, buf).
The reference copy bandwidth counts 8 B/param (read src, write dst) for a copy of the same
total size (one flat tensor). ``--threads`` sets torch's thread count; optdsl's NumPy step
runs on one thread.

Writes bench/results/cpu-<date>.json and .md unless --no-save; --json PATH writes the JSON
(also) to PATH.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optdsl  # noqa: E402

BYTES_PER_PARAM = {"adam": 28, "sgd": 20, "small": 28}
CONTENDED = 0.15  # median share of the CPUs used by others above which a run is flagged


# -- the parameters ---------------------------------------------------------------------------
def transformer_shapes(total: int, count: int, d: int = 384) -> list[tuple[int, ...]]:
    """``count`` shapes totalling exactly ``total`` elements, laid out like a small transformer.

    Each layer (16 tensors): q, k, v, o (d, d) with biases (d,), fc1 (4d, d) + bias (4d,),
    fc2 (d, 4d) + bias (d,), two layer norms (weight, bias). Then a final norm (2 vectors),
    and the rest of the parameters in embedding-like (rows, d) matrices, the last one
    absorbing the remainder as a vector.
    """
    per_layer = 4 * d * d + 4 * d + 4 * d * d + 4 * d + 4 * d * d + d + 4 * d
    shapes: list[tuple[int, ...]] = []
    layers = max(0, (count - 4) // 16)
    while layers and layers * per_layer + 2 * d > total:
        layers -= 1
    for _ in range(layers):
        for _ in range(4):
            shapes += [(d, d), (d,)]
        shapes += [(4 * d, d), (4 * d,), (d, 4 * d), (d,)]
        shapes += [(d,), (d,), (d,), (d,)]
    if len(shapes) + 2 <= count:
        shapes += [(d,), (d,)]
    rest = total - sum(int(np.prod(s)) for s in shapes)
    slots = count - len(shapes)
    if slots <= 0 or rest < slots:
        raise SystemExit(f"cannot lay out {total} params in {count} tensors with d={d}")
    rows = max(1, (rest // slots) // d)
    for _ in range(slots - 1):
        if rest - rows * d < 1:
            rows = max(1, (rest - 1) // d // 2)
        shapes.append((rows, d))
        rest -= rows * d
    shapes.append((rest,))
    assert len(shapes) == count and sum(int(np.prod(s)) for s in shapes) == total
    return shapes


def make_params(shapes, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02)
        p.grad = torch.randn(shape, generator=gen, dtype=torch.float32) * 1e-3
        params.append(p)
    return params


def clone_params(params) -> list[torch.Tensor]:
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.detach().clone()
        out.append(q)
    return out


# -- the contenders ---------------------------------------------------------------------------
def optdsl_class(name: str):
    """(class, where it came from): the library class when importable, else a fallback."""
    try:
        from optdsl import library

        return getattr(library, name), f"optdsl.library.{name}"
    except (ImportError, AttributeError):
        if name == "Adam":
            prog = optdsl.load(ROOT / "examples" / "adam.opt")
            return prog.optimizer_class, "optdsl.load('examples/adam.opt')"
        prog = optdsl.compile("v = a*v - lr*g; w = w + v", name="momentum")
        return prog.optimizer_class, "optdsl.compile(momentum)"


def contenders(kind: str, params, lr: float):
    """(label, factory(params) -> optimizer, note) for ``kind`` "adam" or "sgd"."""
    out = []
    if kind == "adam":
        cls, origin = optdsl_class("Adam")
        out.append(("optdsl Adam (c)", lambda ps: cls(ps, lr=lr, backend="c"), origin))
        out.append(("optdsl Adam (numpy)", lambda ps: cls(ps, lr=lr, backend="numpy"), origin))
        example = optdsl.load(ROOT / "examples" / "adam.opt")
        out.append(("optdsl examples/adam.opt (numpy)",
                    lambda ps: example.optimizer(ps, lr=lr, backend="numpy"),
                    "optdsl.load('examples/adam.opt')"))
        out.append(("torch Adam for-loop",
                    lambda ps: torch.optim.Adam(ps, lr=lr, foreach=False), "foreach=False"))
        out.append(("torch Adam foreach",
                    lambda ps: torch.optim.Adam(ps, lr=lr, foreach=True), "foreach=True"))
        out.append(("torch Adam fused",
                    lambda ps: torch.optim.Adam(ps, lr=lr, fused=True), "fused=True"))
    else:
        cls, origin = optdsl_class("SGD")
        out.append(("optdsl SGD momentum (c)",
                    lambda ps: cls(ps, lr=lr, momentum=0.9, backend="c"), origin))
        out.append(("optdsl SGD momentum (numpy)",
                    lambda ps: cls(ps, lr=lr, momentum=0.9, backend="numpy"), origin))
        prog = optdsl.compile("v = a*v - lr*g; w = w + v", name="momentum")
        out.append(("optdsl compile(momentum) (numpy)",
                    lambda ps: prog.optimizer(ps, lr=lr, a=0.9, backend="numpy"),
                    "optdsl.compile('v = a*v - lr*g; w = w + v')"))
        out.append(("torch SGD for-loop",
                    lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, foreach=False),
                    "foreach=False"))
        out.append(("torch SGD foreach",
                    lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, foreach=True),
                    "foreach=True"))
        out.append(("torch SGD fused",
                    lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, fused=True),
                    "fused=True"))
    return out


def background_busy(interval: float = 0.25) -> float:
    """Fraction of the machine's CPU time used by others while this process sleeps."""
    def read():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait
    try:
        t0, i0 = read()
        time.sleep(interval)
        t1, i1 = read()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(limit: float, max_wait: float) -> float:
    """Sleep until others use less than ``limit`` of the CPUs (or ``max_wait`` s passed);
    returns the last background load seen (a contended 2-core box slows torch's OpenMP
    ops by 5-20x while single-threaded NumPy barely notices, so rounds wait for quiet)."""
    deadline = time.monotonic() + max_wait
    busy = background_busy()
    while busy > limit and time.monotonic() < deadline:
        time.sleep(1.0)
        busy = background_busy()
    return busy


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(samples):
    return {"median_ms": statistics.median(samples) * 1e3,
            "p10_ms": percentile(samples, 0.1) * 1e3,
            "p90_ms": percentile(samples, 0.9) * 1e3,
            "n": len(samples)}


_TORCH_WORK: list = []


def torch_work() -> None:
    """An untimed torch op on all of torch's threads (what backward leaves behind)."""
    if _TORCH_WORK:
        x = _TORCH_WORK[0]
        x.mul_(1.0000001).add_(1e-7)


def bench_kind(kind, base, lr, warmup, steps, rounds, quiet=(1.0, 0.0), make=None):
    """Time every contender of ``kind`` interleaved; returns {label: result dict}."""
    runs = []
    for label, factory, note in (make or contenders)(kind, base, lr):
        params = clone_params(base)
        try:
            opt = factory(params)
            for _ in range(warmup):
                opt.step()
        except Exception as exc:  # e.g. fused not supported on this torch / CPU
            runs.append((label, note, None, f"{type(exc).__name__}: {exc}"))
            print(f"  {label}: not run ({type(exc).__name__}: {exc})", flush=True)
            continue
        runs.append((label, note, opt, []))
    loads = []
    for r in range(rounds):
        for label, note, opt, samples in runs:
            if opt is None:
                continue
            gc.collect()
            loads.append(wait_quiet(*quiet))
            for _ in range(steps):
                torch_work()
                t0 = time.perf_counter()
                opt.step()
                samples.append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{rounds} done (background load before each run: "
              f"{', '.join(f'{x:.2f}' for x in loads[-len(runs):])})", flush=True)
    results = {"_background_load": loads}
    for label, note, opt, samples in runs:
        if opt is None:
            results[label] = {"note": note, "error": samples}
        else:
            results[label] = {"note": note, **summarize(samples)}
            if hasattr(opt, "backend"):
                results[label]["backend"] = opt.backend
    return results


def copy_bandwidth(total, repeats, quiet=(1.0, 0.0)):
    src = torch.randn(total)
    dst = torch.empty_like(src)
    a, b = src.numpy(), dst.numpy()
    out = {}
    for name, fn, nbytes in (("torch copy_", lambda: dst.copy_(src), 8),
                             ("numpy copyto", lambda: np.copyto(b, a), 8),
                             ("torch add_ in place", lambda: dst.add_(src), 12),
                             ("numpy add in place", lambda: np.add(b, a, out=b), 12)):
        wait_quiet(*quiet)
        for _ in range(3):
            fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        s = summarize(ts)
        s["bytes_per_param"] = nbytes
        s["GBps"] = nbytes * total / (s["median_ms"] * 1e-3) / 1e9
        out[name] = s
    return out


# -- the targets -----------------------------------------------------------------------------
TARGETS = {  # kind -> (row, column, goal): the ratio row / column must be <= goal
    "adam": [("optdsl Adam (c)", "torch Adam fused", 1.0),
             ("optdsl Adam (c)", "torch Adam foreach", 0.4)],
    "sgd": [("optdsl SGD momentum (c)", "torch SGD fused", 1.0)],
    "small": [("optdsl Adam (c)", "torch Adam fused", 1.0)],
}


def verdicts(res: dict, goals) -> list[dict]:
    out = []
    for row, column, goal in goals:
        if row in res and column in res and "error" not in res[row] \
                and "error" not in res[column]:
            ratio = res[row]["median_ms"] / res[column]["median_ms"]
            out.append({"row": row, "column": column, "ratio": ratio, "goal": goal,
                        "met": ratio <= goal})
    return out


def small_contenders(kind, params, lr):
    del kind
    from optdsl.library import Adam

    return [("optdsl Adam (c)", lambda ps: Adam(ps, lr=lr, backend="c"), "backend='c'"),
            ("optdsl Adam (numpy)", lambda ps: Adam(ps, lr=lr, backend="numpy"),
             "backend='numpy'"),
            ("torch Adam for-loop", lambda ps: torch.optim.Adam(ps, lr=lr, foreach=False),
             "foreach=False"),
            ("torch Adam foreach", lambda ps: torch.optim.Adam(ps, lr=lr, foreach=True),
             "foreach=True"),
            ("torch Adam fused", lambda ps: torch.optim.Adam(ps, lr=lr, fused=True),
             "fused=True")]


def small_tensors(lr, args, results) -> list[str]:
    """The fixed costs: Adam on 148 and 1,480 one-element tensors."""
    md = []
    for count in (148, 1480):
        print(f"{count} one-element tensors ...", flush=True)
        base = make_params([(1,)] * count)
        res = bench_kind("small", base, lr, args.warmup, args.steps * 3, args.rounds,
                         (args.quiet, args.max_wait), make=small_contenders)
        loads = res.pop("_background_load")
        rows = ["| optimizer | ms/step (median) | p10 | p90 | / fused |", "| --- " * 5 + "|"]
        for label, r in res.items():
            if "error" in r:
                continue
            rows.append(f"| {label} | {r['median_ms']:.3f} | {r['p10_ms']:.3f} | "
                        f"{r['p90_ms']:.3f} | "
                        f"{r['median_ms'] / res['torch Adam fused']['median_ms']:.2f} |")
        found = verdicts(res, TARGETS["small"])
        results[f"small_{count}"] = {"results": res, "targets": found, "background": loads}
        md += ["", f"## Adam on {count} one-element tensors (fixed costs)", ""] + rows + [""] + [
            f"- target {v['row']} / {v['column']}: {v['ratio']:.2f} (goal <= {v['goal']}): "
            f"{'met' if v['met'] else 'NOT met'}" for v in found] + [
            f"- background load: median {statistics.median(loads):.2f}"]
    return md


def first_step(shapes, lr, results) -> list[str]:
    """A never-seen program: construction + compile + first step, against torch.optim.Adam's
    construction + first step on the same fresh tensors (the C compiler's time included).
    Timed twice: into an empty cache (the first program on a machine also compiles the
    routines every step links, optdsl.codegen.c_routines), and as the next never-seen
    program (those routines already cached)."""
    import tempfile

    from optdsl.library import path as library_path

    saved = os.environ.get("OPTDSL_CACHE_DIR")
    out = {}

    def never_seen(ps):
        # a title of its own: its generated source (and so its cache key) is new
        prog = optdsl.compile(library_path("Adam").read_text(),
                              name=f"FreshAdam{time.time_ns()}")
        return prog.optimizer(ps, lr=lr, backend="c")

    with tempfile.TemporaryDirectory(prefix="optdsl-bench-cache-") as fresh:
        os.environ["OPTDSL_CACHE_DIR"] = fresh
        try:
            for label, make in (("torch Adam (default)", lambda ps: torch.optim.Adam(ps, lr=lr)),
                                ("torch Adam fused", lambda ps: torch.optim.Adam(
                                    ps, lr=lr, fused=True)),
                                ("optdsl never-seen Adam (c), empty cache", never_seen),
                                ("optdsl never-seen Adam (c), routines cached", never_seen)):
                params = make_params(shapes, seed=1)
                torch_work()
                t0 = time.perf_counter()
                make(params).step()
                out[label] = time.perf_counter() - t0
        finally:
            if saved is None:
                os.environ.pop("OPTDSL_CACHE_DIR", None)
            else:
                os.environ["OPTDSL_CACHE_DIR"] = saved
    base = out["torch Adam (default)"]
    extra = out["optdsl never-seen Adam (c), routines cached"] - base
    extra_empty = out["optdsl never-seen Adam (c), empty cache"] - base
    results["first_step"] = {**out, "extra_s": extra, "met": extra <= 0.5,
                             "extra_empty_cache_s": extra_empty,
                             "met_empty_cache": extra_empty <= 0.5}
    return ["", "## A never-seen program: construction, compile and first step", ""] + [
        f"- {k}: {v:.3f} s" for k, v in out.items()] + [
        (f"- optdsl above torch's default Adam: {extra:.3f} s (goal <= 0.5 s): "
         f"{'met' if extra <= 0.5 else 'NOT met'}"),
        (f"- the first program into an empty cache (it compiles the routines too): "
         f"{extra_empty:.3f} s above: {'met' if extra_empty <= 0.5 else 'NOT met'}")]


# -- report -----------------------------------------------------------------------------------
def table(kind, results, total):
    torch_labels = [k for k in results if k.startswith("torch") and "error" not in results[k]]
    head = ["optimizer", "ms/step (median)", "p10", "p90", "GB/s"] + \
           [f"/ {k.split()[-1]}" for k in torch_labels]
    rows = [head, ["---"] * len(head)]
    for label, r in results.items():
        if "error" in r:
            rows.append([label, "not run: " + r["error"]] + [""] * (len(head) - 2))
            continue
        gbps = BYTES_PER_PARAM[kind] * total / (r["median_ms"] * 1e-3) / 1e9
        r["GBps"] = gbps
        r["ratio"] = {t: r["median_ms"] / results[t]["median_ms"] for t in torch_labels}
        rows.append([label, f"{r['median_ms']:.1f}", f"{r['p10_ms']:.1f}", f"{r['p90_ms']:.1f}",
                     f"{gbps:.1f}"] + [f"{r['ratio'][t]:.2f}" for t in torch_labels])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=12.6e6, help="total parameters")
    ap.add_argument("--tensors", type=int, default=117, help="number of tensors")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=60, help="interleaved rounds")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", choices=["adam", "sgd"], help="run one optimizer family")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--quiet", type=float, default=0.15,
                    help="before each timed run wait until others use less than this "
                         "fraction of the CPUs (1 = never wait)")
    ap.add_argument("--max-wait", type=float, default=60.0, help="seconds, per wait")
    ap.add_argument("--json", help="also write the JSON results here")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    ap.add_argument("--tag", help="suffix of the result files: cpu-<date>-<tag>.json/.md")
    ap.add_argument("--no-torch-work", action="store_true",
                    help="no torch op before each timed step")
    ap.add_argument("--first-step", action="store_true",
                    help="also time a never-seen program's compile + first step")
    args = ap.parse_args(argv)
    if not args.no_torch_work:
        _TORCH_WORK.append(torch.ones(1 << 22))

    if args.threads:
        torch.set_num_threads(args.threads)
    total = int(args.params)
    shapes = transformer_shapes(total, args.tensors)
    base = make_params(shapes)
    now = datetime.datetime.now()
    env = {
        "date": now.isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu_model"] = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                None)
    except OSError:
        pass
    print(f"params: {total:,} in {len(shapes)} float32 tensors "
          f"(largest {max(shapes, key=lambda s: int(np.prod(s)))}, "
          f"{sum(1 for s in shapes if len(s) == 1)} vectors)")
    print("env: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)

    lr = 1e-4
    results = {"env": env, "params": total, "tensors": len(shapes),
               "shapes": [list(s) for s in shapes],
               "method": {"warmup": args.warmup, "steps_per_round": args.steps,
                          "rounds": args.rounds, "interleaved": True},
               "bytes_per_param": BYTES_PER_PARAM}
    print("copy bandwidth ...", flush=True)
    results["copy"] = copy_bandwidth(total, max(20, args.steps * 2),
                                     (args.quiet, args.max_wait))
    md = [f"# CPU optimizer step, {env['date']}", "",
          f"{total:,} float32 params in {len(shapes)} tensors; {env['cpu_model'] if 'cpu_model' in env else env['machine']}, "
          f"{env['cpu_count']} CPUs, torch {env['torch']} ({env['torch_num_threads']} threads), "
          f"numpy {env['numpy']}, OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}. "
          f"{args.rounds} interleaved rounds x {args.steps} steps after {args.warmup} warm-up.",
          "", "Ratios are optdsl (or row) time / torch column time: < 1 is faster.", "",
          "Reference bandwidth, one flat array of the same size (copy: read + write = 8 B/param, "
          "not counting the write-allocate read of the destination; in-place add: 12 B/param):",
          "", "| reference | ms (median) | GB/s |", "| --- | --- | --- |"]
    for name, r in results["copy"].items():
        md.append(f"| {name} ({r['bytes_per_param']} B/param) | {r['median_ms']:.2f} | "
                  f"{r['GBps']:.1f} |")
    for kind in ([args.only] if args.only else ["adam", "sgd"]):
        print(f"{kind} ...", flush=True)
        res = bench_kind(kind, base, lr, args.warmup, args.steps, args.rounds,
                         (args.quiet, args.max_wait))
        loads = res.pop("_background_load")
        text = table(kind, res, total)
        results[kind] = res
        results[kind + "_background_load"] = loads
        title = f"## {kind} ({BYTES_PER_PARAM[kind]} B/param)"
        md += ["", title, "", text]
        goals = TARGETS[kind]
        results[kind + "_targets"] = verdicts(res, goals)
        md += ["", "Targets (issue 12):", ""] + [
            f"- {v['row']} / {v['column']}: {v['ratio']:.2f} (goal <= {v['goal']}): "
            f"{'met' if v['met'] else 'NOT met'}" for v in results[kind + "_targets"]]
        if statistics.median(loads) > CONTENDED:
            md += ["", ("**CONTENDED RUN**: other processes kept the CPUs busy (median "
                        f"background load {statistics.median(loads):.2f}); ratios are "
                        "unreliable.")]
        for label, r in res.items():
            md.append(f"- {label}: {r['note']}")
        md.append(f"- background CPU load seen before the timed runs (others' share of the "
                  f"CPUs): median {statistics.median(loads):.2f}, max {max(loads):.2f}")
    if not args.only:
        md += small_tensors(lr, args, results)
    if args.first_step:
        md += first_step(shapes, lr, results)
    report = "\n".join(md) + "\n"
    print()
    print(report)
    if not args.no_save:
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / (f"cpu-{now.strftime('%Y-%m-%d')}"
                          + (f"-{args.tag}" if args.tag else ""))
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        stem.with_suffix(".md").write_text(report)
        print(f"wrote {stem}.json and {stem}.md")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
