#!/usr/bin/env bash
# One prepared accelerator run (under 8 minutes on one H200): the main job's wall time
# with a cold and a warm compilation cache, ResNet-18 PGD-20 throughput at batch
# 128/1024/4096 in float32 and bfloat16 with the PGD++ NJS/HNS ratios, HNS at d = 1000
# with top-k, and qadv against a plain PyTorch PGD loop on the same ResNet-18.
#
#   OUT=results/gpu/<date> QADV_DATA_DIR=/path/to/fashion-mnist bash benchmarks/gpu/run.sh
#   TINY=1 OUT=/tmp/gpu_smoke bash benchmarks/gpu/run.sh     # a minutes-long CPU smoke run
#   TESTS=1 ...                                              # also the default test suite
#
# Writes into $OUT: device.txt, demo_cold.log / demo_warm.log, one JSON per benchmark
# (peak.json, throughput_f32.json, throughput_bf16.json, d1000.json, torch_pgd*.json), and
# summary.json + summary.md (benchmarks/gpu/summarize.py: one table of everything).
# Every step has its own timeout, so one that hangs cannot take the others with it.
set -u
OUT=${OUT:-results/gpu/run}
DATA=${QADV_DATA_DIR:-/usr/share/datasets/fashion-mnist}
PY=${PYTHON:-python3}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
CACHE=$(mktemp -d /tmp/qadv-jax-cache.XXXX)   # cold compilation cache for the demo
if [ -n "${TINY:-}" ]; then
  BATCHES="8"; BIG="8"; STEPS=2; REPEATS=1; DEMO_ARGS="--epochs 1 --n 20"; T=900
  D1000="--classes 20 --batch 4 --top-k 4 --train-steps 20"; PEAK=512
else
  BATCHES="128 1024 4096"; BIG="128 1024"; STEPS=20; REPEATS=3; DEMO_ARGS=""; T=150
  D1000="--classes 1000 --batch 32 256 --top-k 10"; PEAK=8192
fi

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi -L 2>/dev/null; nproc
  $PY -c "import jax, flax, optax, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__); print(jax.devices())"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -1
} > "$OUT/device.txt" 2>&1

demo() {  # name: the demo into a fresh folder, with the shared compilation cache
  local start=$(date +%s)
  # shellcheck disable=SC2086
  QADV_CACHE_DIR=$CACHE timeout $((2 * T)) $PY -m qadv.cli demo --data-dir "$DATA" \
    --out "/tmp/qadv-demo-$1-$$" --no-progress $DEMO_ARGS
  echo "demo rc=$? wall_s=$(( $(date +%s) - start ))"
}
demo cold > "$OUT/demo_cold.log" 2>&1
demo warm > "$OUT/demo_warm.log" 2>&1

timeout 60 $PY benchmarks/gpu/peak.py --n $PEAK --out "$OUT/peak.json" > "$OUT/peak.log" 2>&1
cd benchmarks/perf
for dt in float32 bfloat16; do
  tag=$([ $dt = float32 ] && echo f32 || echo bf16)
  # shellcheck disable=SC2086
  timeout $T $PY throughput.py --arch resnet18 --batch $BATCHES --steps $STEPS \
    --repeats $REPEATS --compute-dtype $dt --out "$OUT/throughput_$tag.json" \
    > "$OUT/throughput_$tag.log" 2>&1
done
# shellcheck disable=SC2086
timeout $T $PY d1000.py $D1000 --steps $STEPS --repeats $REPEATS --out "$OUT/d1000.json" \
  > "$OUT/d1000.log" 2>&1
DEV=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
# shellcheck disable=SC2086
timeout $T $PY torch_pgd.py --device "$DEV" --channels-last --batch $BIG --steps $STEPS \
  --repeats $REPEATS --out "$OUT/torch_pgd.json" > "$OUT/torch_pgd.log" 2>&1
# shellcheck disable=SC2086
timeout $T $PY torch_pgd.py --device "$DEV" --channels-last --bf16 --batch $BIG --steps $STEPS \
  --repeats $REPEATS --out "$OUT/torch_pgd_bf16.json" > "$OUT/torch_pgd_bf16.log" 2>&1
cd ../..

if [ -n "${TESTS:-}" ]; then
  start=$(date +%s)
  timeout 390 $PY -m pytest -p no:benchmark -m "not slow" -n 10 --dist loadgroup -q \
    -p no:cacheprovider -rfE > "$OUT/tests.log" 2>&1
  echo "pytest rc=$? wall_s=$(( $(date +%s) - start ))" >> "$OUT/tests.log"
fi
rm -rf "$CACHE" /tmp/qadv-demo-*-$$
$PY benchmarks/gpu/summarize.py "$OUT"
