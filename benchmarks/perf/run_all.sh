#!/usr/bin/env bash
# Every performance benchmark at the sizes of the committed results in results/perf/.
#
#   bash benchmarks/perf/run_all.sh            # ~1 hour on a 2-core CPU; minutes on a GPU
#   OUT=/tmp/perf bash benchmarks/perf/run_all.sh
#   BIG=1 bash benchmarks/perf/run_all.sh      # adds ResNet-18 at batch 1024 (GPU/TPU)
#
# Run it on an otherwise idle machine: the records carry the 1-minute load average.
# The Fashion-MNIST BNN-WQ CNN (runs/fmnist_cnn4_bnn_wq, 4 epochs, the network of
# experiments/fmnist_protocol.py) is trained first if it is missing (needs the Debian
# package dataset-fashion-mnist, or DATA_DIR=<folder with the IDX files>).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
QADV=${QADV:-.venv/bin/qadv}
OUT=${OUT:-results/perf}
CKPT=${CKPT:-runs/fmnist_cnn4_bnn_wq}
DATA=()
[ -n "${DATA_DIR:-}" ] && DATA=(--data-dir "$DATA_DIR")
mkdir -p "$OUT"

if [ ! -f "$CKPT/summary.json" ]; then
  "$QADV" train --dataset fashion_mnist --arch cnn --quant bnn_wq --wq-method bc \
      --epochs 4 --out "$CKPT" "${DATA[@]}" --no-progress
fi

R18_BATCH=(128)
[ -n "${BIG:-}" ] && R18_BATCH=(128 1024)

# 1. PGD-20 / PGD++ NJS / PGD++ HNS throughput
"$PY" benchmarks/perf/throughput.py --arch cnn --checkpoint "$CKPT" --batch 128 1024 \
    --repeats 3 --out "$OUT/throughput_cnn.json"
"$PY" benchmarks/perf/throughput.py --arch resnet18 --batch "${R18_BATCH[@]}" --repeats 1 \
    --out "$OUT/throughput_resnet18.json"
# 1b. HNS at d = 1000: all classes against top-k
"$PY" benchmarks/perf/d1000.py --classes 1000 --batch 8 32 --top-k 10 20 --repeats 2 --eps 0.0627 \
    --out "$OUT/d1000.json"
# 2. batched HNS beta search against the naive N x N search
"$PY" benchmarks/perf/hns_search.py --arch cnn cnn32 resnet18 --checkpoint "$CKPT" \
    --batch 128 --naive-examples 2 --repeats 3 --out "$OUT/hns_search.json"
# 3. qadv PGD against foolbox 3's LinfPGD on the same JAX model
"$PY" benchmarks/perf/foolbox_pgd.py --checkpoint "$CKPT" --batch 16 256 1024 --repeats 2 \
    --out "$OUT/foolbox_pgd.json"
# 4. 1, 2, 4, 8 devices (forced host devices on a CPU)
"$PY" benchmarks/perf/scaling.py --checkpoint "$CKPT" --n 1024 --batch 256 \
    --devices 1 2 4 8 --repeats 2 --out "$OUT/scaling.json"
# 5. memory: the streamed 10,000-image evaluation; HNS at d = 10, 100, 1000
"$PY" benchmarks/perf/memory.py --checkpoint "$CKPT" --n 10000 --batch 250 \
    --classes 10 100 1000 --hns-batch 8 64 --top-k 10 --out "$OUT/memory.json"
