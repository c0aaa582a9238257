"""Experiments behind the CPU speed proposals (not a test; see bench/bench_cpu.py for the bench).

Each row is one idea, timed interleaved with torch on the same ~12.6M float32 params in 117
tensors (bench_cpu.transformer_shapes). Prototypes live here, not in optdsl/:

  chunk N        the generated NumPy step with optdsl.codegen.numpy.CHUNK = N
  wd switch      the library program with `weight_decay` (and SGD's `dampening`) written as
                 switches, so that the existing flag specialization drops `g + 0 * w`
                 (torch skips that term too when weight_decay == 0)
  cached views   a NumpyRunner that keeps each parameter's NumPy views between steps
  2 threads      the generated step run by 2 Python threads over halves of the elements
                 (NumPy releases the GIL inside ufuncs; needs big chunks to beat the GIL
                 hand-off)
  torch chunked  torch in-place ops (mul_/add_/addcmul_/addcdiv_) on 1M-element chunks
  C kernel       a C loop with the generated step's exact operation order, compiled with
                 `cc -O3 -march=native -ffp-contract=off`, called through ctypes (which
                 releases the GIL); bit-exact with the NumPy step (checked here)

    python bench/cpu_experiments.py [--only adam|sgd] [--rounds 8] [--steps 6] [--sweep]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optdsl  # noqa: E402
import optdsl.codegen.numpy as numpy_codegen  # noqa: E402
from bench_cpu import make_params, transformer_shapes, wait_quiet  # noqa: E402
from optdsl.library import path as library_path  # noqa: E402
from optdsl.runtime.numpy_runner import NumpyRunner  # noqa: E402
from optdsl.runtime.numpy_step import NumpyStep, Slot  # noqa: E402

LR = 1e-4
T = 5.0  # step number used by the step-only rows
ADAM_HY = dict(lr=LR, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=0,
               maximize=0, decoupled_weight_decay=0)
SGD_HY = dict(lr=LR, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=0, maximize=0)


# -- programs ---------------------------------------------------------------------------------
SWITCH_EDITS = {  # (plain form, form with the switch); either may be what the library has
    "Adam": [("where(decoupled_weight_decay != 0, g, g + weight_decay * w)",
              "where(decoupled_weight_decay != 0, g, where(weight_decay != 0, "
              "g + weight_decay * w, g))")],
    "SGD": [("g = g + weight_decay * w",
             "g = where(weight_decay != 0, g + weight_decay * w, g)"),
            ("momentum * buf + (1 - dampening) * g",
             "momentum * buf + where(dampening != 0, (1 - dampening) * g, g)")],
}


def library_program(name: str, chunk: int, switches: bool):
    """The library program compiled with CHUNK = chunk, with the weight-decay (and SGD's
    dampening) switches present (``switches``) or taken out, whatever the library has now."""
    text = library_path(name).read_text()
    for plain, switched in SWITCH_EDITS[name]:
        if switched in text:
            if not switches:
                text = text.replace(switched, plain)
        elif plain in text:
            if switches:
                text = text.replace(plain, switched)
        else:
            raise RuntimeError(f"library {name} changed; cannot find {plain!r}")
    saved = numpy_codegen.CHUNK
    numpy_codegen.CHUNK = chunk
    try:
        prog = optdsl.compile(text, name=name)
        prog.variant(ADAM_HY if name == "Adam" else SGD_HY).numpy_step  # generate now
    finally:
        numpy_codegen.CHUNK = saved
    return prog


def flat_arrays(nstate: int, total: int, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for shape in transformer_shapes(total, count):
        n = int(np.prod(shape))
        w = rng.standard_normal(n, dtype=np.float32) * 0.02
        g = rng.standard_normal(n, dtype=np.float32) * 1e-3
        out.append((w, g, [np.abs(g) * 0.1 for _ in range(nstate)]))
    return out


# -- runtimes ---------------------------------------------------------------------------------
def split_slots(slots, parts: int):
    """``parts`` lists of slots with equal element counts (a parameter may be cut)."""
    total = sum(s.w.shape[0] for s in slots)
    bounds = [total * (i + 1) // parts for i in range(parts)]
    out: list[list[Slot]] = [[] for _ in range(parts)]
    acc, k = 0, 0
    for s in slots:
        n, lo = s.w.shape[0], 0
        while lo < n:
            hi = n if k == parts - 1 else max(lo, min(n, bounds[k] - acc))
            if hi > lo:
                out[k].append(Slot(s.t, s.w[lo:hi], s.g[lo:hi],
                                   [x[lo:hi] if isinstance(x, np.ndarray) else x
                                    for x in s.states]))
            if hi < n:
                k += 1
            lo = hi
        acc += n
    return out


class ThreadedStep:
    """Runs a generated step in ``threads`` threads, each with its own scratch buffers.
    Only for programs without reductions (a reduction must see all of a tensor)."""

    def __init__(self, numpy_step: NumpyStep, threads: int = 2) -> None:
        assert numpy_step.num_reductions == 0
        self.steps = [numpy_step] + [NumpyStep(numpy_step.source, f"thread{i}")
                                     for i in range(1, threads)]
        self.pool = ThreadPoolExecutor(threads - 1)

    def run(self, hyper, slots) -> None:
        parts = split_slots(slots, len(self.steps))
        futures = [self.pool.submit(st.run, hyper, part)
                   for st, part in zip(self.steps[1:], parts[1:])]
        self.steps[0].run(hyper, parts[0])
        for f in futures:
            f.result()


def _view(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().reshape(-1)


class CachedRunner(NumpyRunner):
    """NumpyRunner keeping each parameter's Slot (zero-copy views) between steps; re-views a
    tensor only when it is a new object or its storage moved. Falls back to the staging
    runner for anything but contiguous float32/float64 tensor state."""

    def __init__(self, program, threads: int = 1) -> None:
        super().__init__(program)
        self._cache: dict[int, list] = {}
        self.threads = threads
        self._threaded: dict[int, ThreadedStep] = {}

    def run(self, hyper, entries, state_keys) -> None:
        if not all(tensor for _, tensor in state_keys):
            return super().run(hyper, entries, state_keys)
        slots = []
        for param, grad, state, t in entries:
            c = self._cache.get(id(param))
            states = [state[k] for k, _ in state_keys]
            if (c is None or c[0] is not param or c[1] != param.data_ptr()
                    or any(a is not b for a, b in zip(c[4], states))):
                dt = param.dtype
                if not (dt in (torch.float32, torch.float64) and param.is_contiguous()
                        and grad.dtype == dt and grad.is_contiguous()
                        and all(s.dtype == dt and s.is_contiguous() for s in states)):
                    return super().run(hyper, entries, state_keys)
                c = [param, param.data_ptr(), grad, grad.data_ptr(), tuple(states),
                     Slot(t, _view(param), _view(grad), [_view(s) for s in states])]
                self._cache[id(param)] = c
            elif c[2] is not grad or c[3] != grad.data_ptr():
                if not (grad.dtype == param.dtype and grad.is_contiguous()):
                    return super().run(hyper, entries, state_keys)
                c[2], c[3] = grad, grad.data_ptr()
                c[5].g = _view(grad)
            c[5].t = t
            slots.append(c[5])
        step = self.program.variant(hyper).numpy_step
        if self.threads > 1 and step.num_reductions == 0:
            threaded = self._threaded.get(id(step))
            if threaded is None:
                threaded = self._threaded[id(step)] = ThreadedStep(step, self.threads)
            threaded.run(hyper, slots)
        else:
            step.run(hyper, slots)


# -- C kernels ----------------------------------------------------------------------------------
C_SOURCE = r"""
#include <stdint.h>
#include <math.h>
/* Same operation order and rounding as the generated NumPy steps (no FMA contraction). */
void adam_step(int64_t k, float **w, float **g, float **m, float **v, const int64_t *n,
               const double *scal) {
    float b1 = (float)scal[0], b2 = (float)scal[1], omb1 = (float)scal[2],
          omb2 = (float)scal[3], c2 = (float)scal[4], eps = (float)scal[5],
          step = (float)scal[6];
    for (int64_t i = 0; i < k; i++) {
        float *restrict W = w[i], *restrict G = g[i], *restrict M = m[i], *restrict V = v[i];
        for (int64_t j = 0; j < n[i]; j++) {
            float gj = G[j];
            float mj = b1 * M[j] + omb1 * gj;
            float vj = b2 * V[j] + omb2 * (gj * gj);
            M[j] = mj; V[j] = vj;
            float denom = sqrtf(vj) / c2 + eps;
            W[j] = W[j] - step * (mj / denom);
        }
    }
}
void sgd_step(int64_t k, float **w, float **g, float **buf, const int64_t *n,
              const double *scal) {
    float mom = (float)scal[0], lr = (float)scal[1];
    for (int64_t i = 0; i < k; i++) {
        float *restrict W = w[i], *restrict G = g[i], *restrict B = buf[i];
        for (int64_t j = 0; j < n[i]; j++) {
            float b = mom * B[j] + G[j];
            B[j] = b; W[j] = W[j] - lr * b;
        }
    }
}
"""


def build_c():
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler"
    d = Path(tempfile.mkdtemp(prefix="optdsl-bench-"))
    (d / "k.c").write_text(C_SOURCE)
    t0 = time.perf_counter()
    subprocess.run([cc, "-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno",
                    "-shared", "-fPIC", str(d / "k.c"), "-o", str(d / "k.so")], check=True)
    lib = ctypes.CDLL(str(d / "k.so"))
    lib.adam_step.restype = None
    lib.sgd_step.restype = None
    return lib, f"compiled in {time.perf_counter() - t0:.2f} s"


def adam_scalars(hy, t):
    b1, b2 = hy["beta1"], hy["beta2"]
    return (b1, b2, 1 - b1, 1 - b2, math.sqrt(1 - b2 ** t), hy["eps"],
            hy["lr"] / (1 - b1 ** t))


def c_call(lib, kind, groups, scal, threads):
    """A closure running the C kernel over ``groups`` (lists of array tuples), one group per
    thread."""
    calls = []
    for group in groups:
        k = len(group)
        P = ctypes.c_void_p * k
        cols = [P(*[a[i].ctypes.data for a in group]) for i in range(len(group[0]))]
        n = (ctypes.c_int64 * k)(*[a[0].shape[0] for a in group])
        calls.append((ctypes.c_int64(k), cols, n))
    S = (ctypes.c_double * len(scal))(*scal)
    fn = lib.adam_step if kind == "adam" else lib.sgd_step

    def one(i, keep=groups):  # keep: the arrays must outlive the raw pointers
        k, cols, n = calls[i]
        fn(k, *cols, n, S)
    if threads == 1:
        return lambda: one(0)
    pool = ThreadPoolExecutor(threads - 1)

    def run():
        fs = [pool.submit(one, i) for i in range(1, threads)]
        one(0)
        for f in fs:
            f.result()
    return run


def split_arrays(arrs, parts):
    total = sum(a[0].shape[0] for a in arrs)
    bounds = [total * (i + 1) // parts for i in range(parts)]
    out = [[] for _ in range(parts)]
    acc, k = 0, 0
    for a in arrs:
        n, lo = a[0].shape[0], 0
        while lo < n:
            hi = n if k == parts - 1 else max(lo, min(n, bounds[k] - acc))
            if hi > lo:
                out[k].append(tuple(x[lo:hi] for x in a))
            if hi < n:
                k += 1
            lo = hi
        acc += n
    return out


# -- contenders -------------------------------------------------------------------------------
def step_only(prog, hy, nstate, total, count):
    arrs = flat_arrays(nstate, total, count)
    step = prog.variant(hy).numpy_step
    slots = [Slot(T, w, g, s) for w, g, s in arrs]
    return lambda: arrs and step.run(hy, slots)


def full(cls_or_prog, total, count, runner=None, **kw):
    params = make_params(transformer_shapes(total, count))
    if hasattr(cls_or_prog, "optimizer"):
        opt = cls_or_prog.optimizer(params, lr=LR, backend="numpy", **kw)
    else:
        opt = cls_or_prog(params, lr=LR, **kw)
    if runner is not None:
        opt._runner = lambda: runner
    return opt.step


def torch_chunked_adam(total, count, chunk=1 << 20):
    arrs = flat_arrays(2, total, count)
    work = []
    for w, g, (m, v) in arrs:
        for lo in range(0, w.shape[0], chunk):
            work.append(tuple(torch.from_numpy(x[lo:lo + chunk]) for x in (w, g, m, v)))
    b1, b2, o1, o2, c2, eps, step = adam_scalars(ADAM_HY, T)
    buf = torch.empty(chunk)

    def run():
        for cw, cg, cm, cv in work:
            b0 = buf[:cw.shape[0]]
            cm.mul_(b1).add_(cg, alpha=o1)
            cv.mul_(b2).addcmul_(cg, cg, value=o2)
            torch.sqrt(cv, out=b0)
            b0.div_(c2).add_(eps)
            cw.addcdiv_(cm, b0, value=-step)
    return run


def check_c_exact(lib, total=300_007, count=9):
    """The C kernels give the same bits as the generated NumPy steps (3 steps)."""
    ok = {}
    for kind, name, hy, nstate in (("adam", "Adam", ADAM_HY, 3), ("sgd", "SGD", SGD_HY, 1)):
        prog = library_program(name, numpy_codegen.CHUNK, switches=True)
        a = flat_arrays(nstate, total, count)
        b = [(w.copy(), g.copy(), [s.copy() for s in st]) for w, g, st in a]
        step = prog.variant(hy).numpy_step
        for t in (2.0, 3.0, 4.0):  # t == 1 is SGD's buffer-initialisation branch
            step.run(hy, [Slot(t, w, g, s) for w, g, s in a])
            cols = [(w, g, *st[:2]) if kind == "adam" else (w, g, st[0]) for w, g, st in b]
            scal = adam_scalars(hy, t) if kind == "adam" else (hy["momentum"], hy["lr"])
            c_call(lib, kind, [cols], scal, 1)()
        ok[kind] = all(np.array_equal(x[0], y[0]) and all(
            np.array_equal(p, q) for p, q in zip(x[2][:2], y[2][:2])) for x, y in zip(a, b))
    return ok


def adam_rows(total, count, lib, sweep):
    from optdsl.library import Adam
    rows = {f"optdsl Adam as in the repo (full step, CHUNK {numpy_codegen.CHUNK})":
            lambda: full(Adam, total, count)}
    chunks = [2048, 8192, 16384, 32768, 65536, 131072] if sweep else [8192, 32768, 65536]
    for ch in chunks:
        rows[f"step only, CHUNK {ch}, no wd switch"] = (
            lambda ch=ch: step_only(library_program("Adam", ch, False), ADAM_HY, 3, total, count))
    rows["step only, CHUNK 32768 + wd switch"] = lambda: step_only(
        library_program("Adam", 32768, True), ADAM_HY, 3, total, count)

    def proposal(chunk, threads):
        prog = library_program("Adam", chunk, True)
        return full(prog, total, count, CachedRunner(prog, threads))
    rows["full: CHUNK 32768 + wd switch + cached views"] = lambda: proposal(32768, 1)
    rows["full: same, 2 threads, CHUNK 131072"] = lambda: proposal(131072, 2)
    rows["torch ops on 1M chunks (prototype)"] = lambda: torch_chunked_adam(total, count)
    if lib is not None:
        for th in (1, 2):
            rows[f"C kernel, {th} thread(s) (prototype)"] = (
                lambda th=th: c_call(lib, "adam", split_arrays(
                    [(w, g, *s) for w, g, s in flat_arrays(2, total, count)], th),
                    adam_scalars(ADAM_HY, T), th))
    for label, kw in (("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True)),
                      ("fused", dict(fused=True))):
        rows[f"torch Adam {label}"] = lambda kw=kw: full(torch.optim.Adam, total, count, **kw)
    return rows


def sgd_rows(total, count, lib, sweep):
    from optdsl.library import SGD
    rows = {f"optdsl SGD as in the repo (full step, CHUNK {numpy_codegen.CHUNK})":
            lambda: full(SGD, total, count, momentum=0.9)}
    for ch in ([8192, 32768, 65536] if sweep else [8192, 32768]):
        rows[f"step only, CHUNK {ch}, no switches"] = (
            lambda ch=ch: step_only(library_program("SGD", ch, False), SGD_HY, 1, total, count))
    rows["step only, CHUNK 32768 + wd/dampening switches"] = lambda: step_only(
        library_program("SGD", 32768, True), SGD_HY, 1, total, count)

    def proposal(chunk, threads):
        prog = library_program("SGD", chunk, True)
        return full(prog, total, count, CachedRunner(prog, threads), momentum=0.9)
    rows["full: CHUNK 32768 + switches + cached views"] = lambda: proposal(32768, 1)
    rows["full: same, 2 threads, CHUNK 131072"] = lambda: proposal(131072, 2)
    if lib is not None:
        rows["C kernel, 1 thread (prototype)"] = lambda: c_call(
            lib, "sgd", [[(w, g, s[0]) for w, g, s in flat_arrays(1, total, count)]],
            (0.9, LR), 1)
    for label, kw in (("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True)),
                      ("fused", dict(fused=True))):
        rows[f"torch SGD {label}"] = lambda kw=kw: full(torch.optim.SGD, total, count,
                                                        momentum=0.9, **kw)
    return rows


def measure(rows, rounds, steps, bytes_per_param, total, max_wait=15.0):
    fns = {}
    for k, make in rows.items():
        try:
            fns[k] = make()
            for _ in range(3):
                fns[k]()
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"  {k}: not run ({type(exc).__name__}: {exc})")
            fns.pop(k, None)
    samples = {k: [] for k in fns}
    loads = []
    for _ in range(rounds):
        for k, fn in fns.items():
            gc.collect()
            loads.append(wait_quiet(0.15, max_wait))
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                samples[k].append(time.perf_counter() - t0)
    torch_cols = [k for k in samples if k.startswith("torch ") and "chunk" not in k]
    med = {k: statistics.median(s) for k, s in samples.items()}
    lines = ["| idea | ms (median) | p10 | p90 | GB/s | "
             + " | ".join("/ " + k.split()[-1] for k in torch_cols) + " |",
             "| --- " * (5 + len(torch_cols)) + "|"]
    for k, s in samples.items():
        s = sorted(s)
        lines.append(f"| {k} | {med[k] * 1e3:.1f} | {s[len(s) // 10] * 1e3:.1f} | "
                     f"{s[len(s) * 9 // 10] * 1e3:.1f} | "
                     f"{bytes_per_param * total / med[k] / 1e9:.1f} | "
                     + " | ".join(f"{med[k] / med[t]:.2f}" for t in torch_cols) + " |")
    lines.append(f"\nBackground CPU load before the timed runs (others' share): median "
                 f"{statistics.median(loads):.2f}, max {max(loads):.2f}.")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=12.6e6)
    ap.add_argument("--tensors", type=int, default=117)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--only", choices=["adam", "sgd"])
    ap.add_argument("--sweep", action="store_true", help="more CHUNK sizes")
    ap.add_argument("--out", help="append the markdown to this file")
    ap.add_argument("--max-wait", type=float, default=15.0,
                    help="seconds to wait for a quiet machine before each timed run")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    total = int(args.params)
    lib, how = build_c()
    print(f"C kernels: {how}")
    text = [f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy "
            f"{np.__version__}; {total:,} params in {args.tensors} tensors; {args.rounds} "
            f"interleaved rounds x {args.steps} steps. C kernels: {how}."]
    if lib is not None:
        exact = check_c_exact(lib)
        text.append(f"C kernels bit-exact with the generated NumPy step: {exact}")
        print(text[-1])
    for kind in ([args.only] if args.only else ["adam", "sgd"]):
        rows = (adam_rows if kind == "adam" else sgd_rows)(total, args.tensors, lib, args.sweep)
        print(f"{kind} ...", flush=True)
        table = measure(rows, args.rounds, args.steps, 28 if kind == "adam" else 20, total,
                        args.max_wait)
        text += ["", f"### {kind}", "", table]
        print(table, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
