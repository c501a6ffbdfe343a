#!/usr/bin/env bash
# The paper's CIFAR-10 setting (Gupta & Ajanthan, Tables 2-3) on a GPU/TPU machine.
#
#   bash experiments/cifar10_table2.sh                       # ResNet-18, all three policies
#   ARCHS="resnet18 vgg16" EPOCHS=200 bash experiments/cifar10_table2.sh
#   RUNLOCAL=1 bash experiments/cifar10_table2.sh            # 1 epoch, 200 test images: a smoke run
#
# Needs CIFAR-10 prepared for tfds on a connected machine:
#   python -c "import tensorflow_datasets as tfds; tfds.data_source('cifar10', download=True)"
# BNN-WQ uses MD-tanh-S (as the paper); BNN-WAQ the widened BinaryNet variants when
# WAQ_BINARYNET=1 (binarynet_resnet18 / binarynet_vgg16, as the reference release).
# Attacks follow Table 6 (CIFAR-10): FGSM 8/8, PGD-Linf 8/2/20, PGD-L2 120/15/20.
set -euo pipefail
cd "$(dirname "$0")/.."
QADV=${QADV:-.venv/bin/qadv}
ARCHS=${ARCHS:-resnet18}
EPOCHS=${EPOCHS:-100}
N=${N:-10000}
if [ -n "${RUNLOCAL:-}" ]; then EPOCHS=1; N=200; fi
OUT=${OUT:-results/cifar10_table2}
mkdir -p "$OUT"

for arch in $ARCHS; do
  for policy in ref bnn_wq bnn_waq; do
    a=$arch
    extra=()
    [ "$policy" = bnn_wq ] && extra=(--wq-method md_tanh_s)
    [ "$policy" = bnn_waq ] && [ -n "${WAQ_BINARYNET:-}" ] && a="binarynet_${arch}"
    run="runs/cifar10_${a}_${policy}"
    "$QADV" train --dataset cifar10 --arch "$a" --quant "$policy" "${extra[@]}" \
      --epochs "$EPOCHS" --optimizer adam --lr 1e-3 --schedule cosine --batch-size 128 \
      --out "$run" --no-progress
    "$QADV" diagnose --checkpoint "$run" --n 500 --out "$OUT/${a}_${policy}_diagnose.json"
    for temp in none njs hns; do
      "$QADV" attack --checkpoint "$run" --attack fgsm --eps 8/255 --temperature "$temp" \
        --n "$N" --out "$OUT/${a}_${policy}_fgsm_${temp}.json" --no-progress
      "$QADV" attack --checkpoint "$run" --attack pgd --norm linf --eps 8/255 --step 2/255 \
        --steps 20 --temperature "$temp" --n "$N" --out "$OUT/${a}_${policy}_pgd_linf_${temp}.json" \
        --no-progress
      "$QADV" attack --checkpoint "$run" --attack pgd --norm l2 --eps 120/255 --step 15/255 \
        --steps 20 --temperature "$temp" --n "$N" --out "$OUT/${a}_${policy}_pgd_l2_${temp}.json" \
        --no-progress
    done
    # AutoAttack's standard ensemble and PGD++/APGD++ on top (paper Tables 5, 8, 10)
    "$QADV" evaluate --checkpoint "$run" --preset plus-temperature --eps 8/255 --n "$N" \
      --out "$OUT/${a}_${policy}_plus_temperature.json" --no-progress
  done
done
