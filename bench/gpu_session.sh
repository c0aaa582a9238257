#!/usr/bin/env bash
# The whole GPU session of issue 11 as ONE command, for a session that has a GPU lent:
#
#   OUT=/some/dir bench/gpu_session.sh           # on the GPU machine (a few minutes)
#   OUT=/tmp/x bench/gpu_session.sh --smoke      # on the CPU: checks the script runs
#
# 1. pytest -m cuda (tests/test_triton_cuda.py: the Triton back end natively, CUDA-graph
#    capture and replay against eager steps, no synchronisation in steady-state steps);
# 2. the synchronisation check of every bundled optimizer (bench_gpu.py --sync-check);
# 3. bench/bench_gpu.py on 10xLinear(1024) (with the torch.compile row), GPT-2 124M shapes
#    and GPT-2 large (774M parameters), with the CUDA-graph rows;
# 4. bench/bench_matrix.py on GPT-2-small's matrices: Muon and Adafactor on Triton (and the
#    torch back end) against torch.optim.Muon and torch.optim.Adafactor (issue 13).
# Everything goes under $OUT (default ./gpu-session-out): one log per part, the tables,
# and summary.txt with each part's exit status. Parts run even when an earlier one failed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-session-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT/summary.txt"

part() {  # part NAME COMMAND...: run it, log it, record its status
    local name=$1
    shift
    local begin=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status in $((SECONDS - begin)) s" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log"
}

"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available()
else 'no GPU')" | tee "$OUT/versions.txt"
if [ "$SMOKE" = 1 ]; then
    export TRITON_INTERPRET=1
    part pytest-cuda "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_triton_cuda.py
    part sync-check "$PY" bench/bench_gpu.py --sync-check --smoke
    part bench "$PY" bench/bench_gpu.py --smoke --no-latency
    part bench-matrix "$PY" bench/bench_matrix.py --layers 1 --width 32 --backend triton \
        --rounds 1 --steps 1 --quiet 1 --out "$OUT"
else
    part pytest-cuda "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_triton_cuda.py
    part sync-check "$PY" bench/bench_gpu.py --sync-check
    part bench-linear10 "$PY" bench/bench_gpu.py --cases linear10 --steps 20 --rounds 3 \
        --out "$OUT"
    part bench-gpt2 "$PY" bench/bench_gpu.py --cases gpt2 --no-compile --no-latency \
        --steps 10 --rounds 3 --out "$OUT"
    part bench-large "$PY" bench/bench_gpu.py --cases large --precisions fp32 --no-compile \
        --no-latency --steps 5 --rounds 3 --out "$OUT"
    part bench-matrix "$PY" bench/bench_matrix.py --device cuda --backend triton,torch \
        --rounds 3 --steps 5 --quiet 1 --tag gpu --out "$OUT"
fi
cat "$OUT/summary.txt"
! grep -qv "exit 0 " "$OUT/summary.txt"
