#!/usr/bin/env bash
# One prepared accelerator run, under 10 minutes on one GPU (an H200 here): the default
# test suite on the GPU, the main job (`qadv demo`, cold compilation cache) beside it,
# and what each float32 precision policy costs the attacks and changes in their numbers.
#
#   OUT=results/gpu QADV_DATA_DIR=/path/to/fashion-mnist bash benchmarks/gpu/run.sh
#
# Writes into $OUT: device.txt (GPU, driver, library versions), tests.log (pytest's
# summary), demo.log and demo.tar.gz (the demo's report folder), precision_cost.json/.log.
# The demo and the tests run at the same time (the demo's wall time is then an upper
# bound); the precision benchmark runs alone after them.
set -u
OUT=${OUT:-results/gpu}
DATA=${QADV_DATA_DIR:-/usr/share/datasets/fashion-mnist}
PY=${PYTHON:-python3}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU
export QADV_CACHE_DIR=/tmp/qadv-jax-cache   # cold compilation cache

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi -L 2>/dev/null; nproc
  $PY -c "import jax, flax, optax, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__); print(jax.devices())"
} > "$OUT/device.txt" 2>&1

( start=$(date +%s)
  timeout 390 $PY -m qadv.cli demo --data-dir "$DATA" --out /tmp/qadv-demo --no-progress
  echo "demo rc=$? wall_s=$(( $(date +%s) - start ))"
  (cd /tmp && find qadv-demo -name '*.md' -o -name '*.png' -o -name demo.json | tar czf "$OUT/demo.tar.gz" -T -)
) > "$OUT/demo.log" 2>&1 &
demo=$!

start=$(date +%s)
timeout 390 $PY -m pytest -p no:benchmark -m "not slow" -n 10 --dist loadgroup -q -p no:cacheprovider -rfE \
  > "$OUT/tests.log" 2>&1
echo "pytest rc=$? wall_s=$(( $(date +%s) - start ))" >> "$OUT/tests.log"
wait $demo

timeout 90 $PY benchmarks/perf/precision_cost.py --arch resnet18 --batch 512 --repeats 3 \
  --out "$OUT/precision_cost.json" > "$OUT/precision_cost.log" 2>&1
echo "precision_cost rc=$?" >> "$OUT/precision_cost.log"
