"""bench/bench_gpu.py end to end on the CPU (``--smoke``: a tiny case, every contender that
runs there, the first-step latency subprocesses, the report), so the script a GPU session
runs is known to work before a GPU is lent. It asserts the report's shape, never a time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_smoke(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", OPTDSL_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--smoke"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for name in ("optdsl", "optdsl, bf16 state", "optdsl, master weights", "torch for-loop",
                 "torch foreach", "torch fused"):
        assert f"| {name} |" in out
    assert "## tiny, fp32" in out and "## tiny, bf16" in out
    assert "cold caches:" in out and "warm caches:" in out
    assert not list((ROOT / "bench" / "results").glob("gpu-*-cpu.*"))  # smoke saves nothing


def test_gpu_benchmark_without_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--smoke" in done.stderr
