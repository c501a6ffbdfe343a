#!/usr/bin/env bash
# Every attack of the protocol on the Fashion-MNIST CNNs (the paper's Table 5 pattern):
# FGSM, PGD, PGD++ (NJS, HNS), APGD-CE, APGD-DLR, APGD-T, Square, FAB-T, DeepFool,
# transfer from the float model, and the AutoAttack `standard` ensemble, for the float
# (ref), binary-weight (bnn_wq, BinaryConnect) and binary weight+activation (bnn_waq) CNN.
#
#   bash experiments/fmnist_protocol.sh              # first 200 test images, ε = 8/255
#   N=1000 EPS=25/255 bash experiments/fmnist_protocol.sh
#
# Needs the Debian package dataset-fashion-mnist (or DATA_DIR=<folder with the IDX files>).
# Checkpoints: runs/fmnist_cnn${EPOCHS}_<policy>; results: results/fmnist_protocol/.
# Every step resumes after a kill (finished results are skipped): rerun the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
QADV=${QADV:-.venv/bin/qadv}
N=${N:-200}
EPS=${EPS:-8/255}
EPOCHS=${EPOCHS:-4}
OUT=${OUT:-results/fmnist_protocol}
DATA=()
[ -n "${DATA_DIR:-}" ] && DATA=(--data-dir "$DATA_DIR")
mkdir -p "$OUT"

for policy in ref bnn_wq bnn_waq; do
  extra=()
  [ "$policy" = bnn_wq ] && extra=(--wq-method bc)
  "$QADV" train --dataset fashion_mnist --arch cnn --quant "$policy" "${extra[@]}" \
      --epochs "$EPOCHS" --out "runs/fmnist_cnn${EPOCHS}_${policy}" "${DATA[@]}" --no-progress
done

FLOAT=runs/fmnist_cnn${EPOCHS}_ref
# name | qadv attack arguments (cheap ones first)
ATTACKS=(
  "fgsm|--attack fgsm"
  "pgd|--attack pgd"
  "pgd++njs|--attack pgd --temperature njs"
  "pgd++hns|--attack pgd --temperature hns"
  "transfer|--attack transfer --source pgd"
  "deepfool|--attack deepfool"
  "apgd-ce|--attack apgd-ce"
  "apgd-dlr|--attack apgd-dlr"
  "square|--attack square"
  "apgd-t|--attack apgd-t"
  "fab-t|--attack fab-t"
)
for policy in ref bnn_wq bnn_waq; do
  ckpt="runs/fmnist_cnn${EPOCHS}_${policy}"
  [ -f "$OUT/${policy}_standard.json" ] && continue
  "$QADV" evaluate --checkpoint "$ckpt" --preset standard --eps "$EPS" --n "$N" \
    --out "$OUT/${policy}_standard.json" "${DATA[@]}" --no-progress
done
for entry in "${ATTACKS[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  for policy in ref bnn_wq bnn_waq; do
    res="$OUT/${policy}_${name}.json"
    [ -f "$res" ] && continue
    # shellcheck disable=SC2086
    "$QADV" attack --checkpoint "runs/fmnist_cnn${EPOCHS}_${policy}" $args --eps "$EPS" \
      --n "$N" --surrogate "$FLOAT" --out "$res" "${DATA[@]}" --no-progress
  done
done
"$QADV" table "$OUT" > "$OUT/table.md"
"$QADV" table "$OUT" --wall-time > "$OUT/wall_time.md"
cat "$OUT/table.md"
