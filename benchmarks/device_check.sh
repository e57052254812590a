#!/usr/bin/env bash
# The one device script: correctness on CUDA at realistic shapes (one past 2^31 elements, no host
# sync, CUDA-graph replay), then benchmark rows into $OUT/results.csv (merge them with
# `python benchmarks/results_csv.py merge`). The default STEPS take about 6.5 minutes on an H200
# (measured step by step: correctness 34 s, logits 95 s, fused_linear 25 s, anatomy 25 s, e2e
# about 200 s); the timeouts below cap each step:
#   bash benchmarks/device_check.sh        # env correctness logits fused_linear anatomy e2e
#   STEPS="tune liger memory" bash benchmarks/device_check.sh    # the optional extras
# Peers' wheels (liger-kernel, cut-cross-entropy: pure Python) travel in .whl/ (carry it).
# Tried on the CPU too (SYMMPO_BENCH_TINY=1): the CUDA tests skip, the benchmarks run tiny shapes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SYMMPO_RESULTS_CSV="$OUT/results.csv"
if python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  export TRITON_INTERPRET=0
fi
# Peers the device image lacks (liger-kernel, cut-cross-entropy) travel as wheels in .whl/.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# Import symmpo and symmpo_kernels (the folder kernels/) from this checkout without installing.
if ! python3 -c "import symmpo_kernels" 2>/dev/null; then
  mkdir -p /tmp/symmpo_path && ln -sfn "$PWD/kernels" /tmp/symmpo_path/symmpo_kernels
  export PYTHONPATH="$PWD:/tmp/symmpo_path${PYTHONPATH:+:$PYTHONPATH}"
fi

STEPS=${STEPS:-"env correctness logits fused_linear anatomy e2e"}
status=0
run() {
  local name=$1
  shift
  echo "=== $name ($(date +%T))"
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "!!! $name failed with exit code $rc"
    status=1
  fi
}
for step in $STEPS; do
  case $step in
    env) run env bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null;
           python3 -c "import torch, triton; print(torch.__version__, triton.__version__,
                       torch.cuda.get_device_name() if torch.cuda.is_available() else \"cpu\")"' ;;
    correctness) run correctness timeout 80 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -rfEs ;;
    anatomy) run anatomy timeout 90 python3 benchmarks/host_overhead.py --cuda ;;
    tune) if [ "${TRITON_INTERPRET:-}" = 0 ]; then run tune timeout 90 python3 benchmarks/tune_logits_blocks.py; fi ;;
    logits) run logits timeout 100 python3 -m pytest -q -p no:cacheprovider --benchmark-disable \
              benchmarks/bench_logits_path.py ;;
    fused_linear) run fused_linear timeout 50 python3 -m pytest -q -p no:cacheprovider \
                    --benchmark-disable benchmarks/bench_fused_linear.py ;;
    liger) run liger timeout 120 python3 train.py --liger --max_steps 5 --n_train 32 --heldout 8 \
             --batch_size 4 --eval_generate 2 --logging_steps 1 --output_dir /tmp/liger_run ;;
    memory) run memory timeout 240 python3 benchmarks/memory_breakdown.py --response 150 \
              --providers shared_varlen,shared --liger ;;
    e2e) run e2e timeout 280 python3 -m pytest -q -p no:cacheprovider --benchmark-disable \
           benchmarks/bench_end_to_end.py ;;
    *) echo "unknown step $step"; status=1 ;;
  esac
done
echo "=== summary ($(date +%T))"
python3 benchmarks/summarize.py "$OUT/results.csv" | tee "$OUT/summary.txt"
exit $status
