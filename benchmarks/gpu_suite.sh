#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md, in one command on a CUDA machine:
#
#   bash benchmarks/gpu_suite.sh [tests] [steps] [epochs] [compile]    (default: all four)
#
# Each benchmark runs in its own process (clean peak-memory figures) under a time limit, and
# appends its JSON line to $OUT/results.jsonl (OUT defaults to ./bench-out); logs go next to it.
set -u
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STAGES=${*:-tests steps epochs compile}
RESULTS="$OUT/results.jsonl"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
} | tee -a "$OUT/machine.txt"

bench() {  # bench LIMIT_SECONDS NAME SCRIPT ARGS...
  local limit=$1 name=$2; shift 2
  echo "== $name: $*"
  if timeout "$limit" python "$@" --json > "$OUT/$name.log" 2>&1; then
    tail -n 1 "$OUT/$name.log" | python -c "import json,sys; d=json.loads(sys.stdin.read()); d['name']='$name'; print(json.dumps(d))" >> "$RESULTS"
    tail -n 1 "$RESULTS" | cut -c1-400
  else
    echo "   failed or timed out (see $name.log):"; tail -n 3 "$OUT/$name.log"
  fi
}

PAPER="--batch-size 64 --init-channels 16 --layers 8 --warmup 2 --steps 8 --device cuda"
for stage in $STAGES; do
  case $stage in
    tests)
      timeout 300 python -m pytest -q -x -k "cuda" -p no:cacheprovider tests > "$OUT/tests.log" 2>&1
      tail -n 15 "$OUT/tests.log" ;;
    steps)
      bench 90 first-fp32 benchmarks/search_step.py $PAPER
      bench 120 first-amp-cl benchmarks/search_step.py $PAPER --amp --channels-last
      bench 120 first-cl benchmarks/search_step.py $PAPER --channels-last
      bench 150 second-fp32 benchmarks/search_step.py $PAPER --unrolled
      bench 150 second-amp-cl benchmarks/search_step.py $PAPER --unrolled --amp --channels-last
      bench 120 train-fp32 benchmarks/train_step.py --cell darts_v2 --batch-size 96 --warmup 3 --steps 10 --device cuda
      bench 120 train-amp-cl benchmarks/train_step.py --cell darts_v2 --batch-size 96 --warmup 3 --steps 10 --device cuda --amp --channels-last
      ;;
    epochs)
      bench 240 epoch-first-amp-cl-gpudata benchmarks/search_epoch.py --epochs 2 --amp --channels-last --gpu-data --data /tmp/fake-cifar
      bench 200 epoch-first-amp-cl-loader benchmarks/search_epoch.py --epochs 1 --steps-per-epoch 100 --amp --channels-last --no-gpu-data --workers 8 --data /tmp/fake-cifar
      bench 300 epoch-second-amp-cl-gpudata benchmarks/search_epoch.py --epochs 1 --unrolled --amp --channels-last --gpu-data --data /tmp/fake-cifar
      bench 200 epoch-train-amp-cl-gpudata benchmarks/search_epoch.py --mode train --epochs 1 --amp --channels-last --gpu-data --data /tmp/fake-cifar
      ;;
    compile)
      bench 300 first-amp-cl-compile benchmarks/search_step.py $PAPER --amp --channels-last --compile
      bench 300 train-amp-cl-compile benchmarks/train_step.py --cell darts_v2 --batch-size 96 --warmup 3 --steps 10 --device cuda --amp --channels-last --compile
      ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "results: $RESULTS"
