#!/usr/bin/env bash
# The prepared GPU check (issue 15): everything a lent GPU should run, in one go, within 8
# minutes, every output under OUTDIR.
#
#     bash benchmarks/gpu_check.sh OUTDIR
#
# Steps, each with its own time limit (`timeout`), each writing OUTDIR/<step>.log; a step that
# fails or times out does not stop the next. OUTDIR/summary.txt gets one line per step (exit
# status, seconds); the script's exit status is 1 if any step failed.
#   gpu.txt          nvidia-smi and CuPy's view of the device
#   pytest-gpu       MINIALEX_REQUIRE_GPU=1 pytest -m gpu: every GPU test, none skipped     180 s
#   bench-kernels    benchmarks/bench_kernels.py --quick: checks, then GFLOP/s beside cuBLAS 100 s
#   bench-alexnet    benchmarks/bench_alexnet.py, the paper network at batch 128, minialex on
#                    the GPU beside PyTorch's GPU with TF32 off and with its defaults       110 s
#   train-epoch      one epoch of examples/train_alexnet.py --device cuda                    75 s
# Together 465 s at most, within 8 minutes.
# On a machine without a GPU (no CuPy, or no device) it prints one line saying so and exits 0.
set -u

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR  (every output goes under OUTDIR)" >&2
    exit 2
fi
out=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
python=${PYTHON:-python}
if ! command -v "$python" > /dev/null; then  # else the check below would say "no GPU", exit 0
    echo "gpu_check: no '$python' on PATH; set PYTHON to the interpreter that has CuPy" >&2
    exit 2
fi

if ! "$python" -c "import sys; from minialex.backend import cupy_available
sys.exit(0 if cupy_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no GPU here (CuPy missing or no CUDA device); nothing to check"
    exit 0
fi

mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
: > "$out/summary.txt"
failed=0

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 started status
    shift 2
    started=$(date +%s)
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    status=$?
    local line="$name: exit $status after $(( $(date +%s) - started )) s"
    [ $status -eq 124 ] && line="$line (timed out)"
    echo "$line" | tee -a "$out/summary.txt"
    [ $status -eq 0 ] || failed=1
}

{ nvidia-smi 2>&1; "$python" -c "import cupy; d = cupy.cuda.runtime.getDeviceProperties(0)
print('CuPy', cupy.__version__, d['name'].decode(), d['multiProcessorCount'], 'SMs')"; } \
    > "$out/gpu.txt" 2>&1

step pytest-gpu 180 env MINIALEX_REQUIRE_GPU=1 "$python" -m pytest -q -m gpu -p no:cacheprovider \
    --junitxml="$out/pytest-gpu.xml" tests
step bench-kernels 100 "$python" benchmarks/bench_kernels.py --quick --cpu-steps 0 \
    --out "$out/bench_kernels"
step bench-alexnet 110 "$python" benchmarks/bench_alexnet.py --variant paper \
    --engines mx-gpu,torch-gpu --batch 128 --quick --no-fast-table --no-layers --scaling '' \
    --out "$out/bench_alexnet"
step train-epoch 75 "$python" examples/train_alexnet.py --device cuda --epochs 1 \
    --batch-size 128 --threads 8 --no-progress --out "$out/train_alexnet"

echo "summary in $out/summary.txt"
exit $failed
