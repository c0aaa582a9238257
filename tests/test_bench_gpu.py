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


def test_gpu_session_script_smoke(tmp_path):
    """bench/gpu_session.sh, the one command a session with a GPU runs, on the CPU: every
    part runs and reports its status under $OUT."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable,
               OPTDSL_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--smoke"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    for part in ("pytest-cuda", "sync-check", "bench", "bench-matrix"):
        assert f"{part}: exit 0" in summary
    assert "| optdsl |" in (out / "bench.log").read_text()
    [matrix] = out.glob("matrix-*.md")  # Muon and Adafactor, written where the session says
    assert "| optdsl Muon (triton) |" in matrix.read_text()
    assert "| optdsl Adafactor (triton) |" in matrix.read_text()
    assert "sync check: skipped" in (out / "sync-check.log").read_text()
