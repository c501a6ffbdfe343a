#!/usr/bin/env bash
# Small CNN on real Fashion-MNIST: train ref / bnn_wq / bnn_waq, then attack each.
#
#   bash experiments/fmnist_cnn.sh            # all three models, attacks on 1000 test images
#   N=10000 bash experiments/fmnist_cnn.sh    # attacks on the full test set
#
# Needs the Debian package dataset-fashion-mnist (or DATA_DIR=<folder with the IDX files>).
# Checkpoints go to runs/fmnist_cnn_<policy>, results to results/fmnist_cnn/.
# Every step resumes after a kill: rerun the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
QADV=${QADV:-.venv/bin/qadv}
N=${N:-1000}
EPOCHS=${EPOCHS:-8}
DATA=()
[ -n "${DATA_DIR:-}" ] && DATA=(--data-dir "$DATA_DIR")
OUT=results/fmnist_cnn
mkdir -p "$OUT"

for policy in ref bnn_wq bnn_waq; do
  extra=()
  [ "$policy" = bnn_wq ] && extra=(--wq-method bc)
  "$QADV" train --dataset fashion_mnist --arch cnn --quant "$policy" "${extra[@]}" \
      --epochs "$EPOCHS" --out "runs/fmnist_cnn_${policy}" "${DATA[@]}" --no-progress \
    | tee "$OUT/train_${policy}.txt"
  cp "runs/fmnist_cnn_${policy}/summary.json" "$OUT/summary_${policy}.json"
  cp "runs/fmnist_cnn_${policy}/metrics.jsonl" "$OUT/metrics_${policy}.jsonl"
done

for policy in ref bnn_wq bnn_waq; do
  ckpt="runs/fmnist_cnn_${policy}"
  "$QADV" diagnose --checkpoint "$ckpt" --n "$N" --out "$OUT/${policy}_diagnose.json" "${DATA[@]}"
  for temp in none njs hns; do
    "$QADV" attack --checkpoint "$ckpt" --attack fgsm --eps 8/255 --temperature "$temp" \
      --n "$N" --out "$OUT/${policy}_fgsm_${temp}.json" "${DATA[@]}" --no-progress
    "$QADV" attack --checkpoint "$ckpt" --attack pgd --norm linf --eps 8/255 --step 2/255 \
      --steps 20 --temperature "$temp" --n "$N" --out "$OUT/${policy}_pgd_linf_${temp}.json" \
      "${DATA[@]}" --no-progress
    "$QADV" attack --checkpoint "$ckpt" --attack pgd --norm l2 --eps 120/255 --step 15/255 \
      --steps 20 --temperature "$temp" --n "$N" --out "$OUT/${policy}_pgd_l2_${temp}.json" \
      "${DATA[@]}" --no-progress
  done
done
