#!/usr/bin/env bash
# MD-tanh-S against BinaryConnect on the Fashion-MNIST BNN-WQ CNN, at equal epochs and data.
#
#   bash experiments/md_tanh_s.sh       # about 25 min on 2 CPU cores
#
# Trains experiments/configs/fmnist_cnn_bnn_wq_{bc,md}.py (3 epochs on the first 30,000
# training images) and two MD-tanh-S ablations; reports hard-±1 test accuracy on the full
# test set. Runs go to runs/md_vs_bc/, results to results/md_vs_bc/.
# Every step resumes after a kill: rerun the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
QADV=${QADV:-.venv/bin/qadv}
DATA=()
[ -n "${DATA_DIR:-}" ] && DATA=(--data-dir "$DATA_DIR")
OUT=results/md_vs_bc
mkdir -p "$OUT"
run() {  # name, extra args...
  local name=$1; shift
  "$QADV" train "$@" --out "runs/md_vs_bc/$name" "${DATA[@]}" --no-progress | tee "$OUT/$name.txt"
  cp "runs/md_vs_bc/$name/summary.json" "$OUT/summary_$name.json"
  cp "runs/md_vs_bc/$name/metrics.jsonl" "$OUT/metrics_$name.jsonl"
}
run bc --config experiments/configs/fmnist_cnn_bnn_wq_bc.py
run md --config experiments/configs/fmnist_cnn_bnn_wq_md.py
# ablations: a shorter hard phase and lower final beta; the earlier recipe (beta to 100, no
# hard phase, no BatchNorm re-estimation)
run md_b100_h10 --config experiments/configs/fmnist_cnn_bnn_wq_md.py \
  --anneal-end 100 --hard-fraction 0.1
run md_b100_plain --config experiments/configs/fmnist_cnn_bnn_wq_md.py \
  --anneal-end 100 --hard-fraction 0 --no-recalibrate-bn
