"""Paper Fig. 2 with ground truth: flip rate against the L∞ bound for IPROP, PGD, PGD++ (NJS)
and the exact MILP value, on small MLPs trained on real Fashion-MNIST.

    .venv/bin/python experiments/fig2_iprop.py    # about 20-30 min on 2 CPU cores (IPROP most)
    N=4 EPOCHS=1 .venv/bin/python experiments/fig2_iprop.py      # quick look

Trains a BNN-WAQ MLP (widths ``WIDTHS``, default 100x2) and a BNN-WQ MLP of the same widths
(BinaryConnect weights), then runs ``qadv verify`` on the first ``N`` test images at every
radius of ``EPS``, and brackets the exact minimal L∞ perturbation of the first ``MINIMAL``
correctly classified images beside FAB's and DeepFool's. Checkpoints go to
``runs/fig2_mlp_<policy>``, results (gap.json, gap.md, flip_rate.png, minimal.json,
minimal.md and the per-example JSONL files) to ``results/fig2_iprop/<policy>``.
Every step resumes after a kill: rerun the same command.

The paper's network is 5x100 on MNIST; the MILP cost grows quickly with depth, so the
default here is 2x100 (``WIDTHS=100,100,100,100,100`` for the paper's size, with a larger
``TIME_LIMIT`` and more unsolved examples).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qadv.apps import cli  # noqa: E402
from qadv.training import TrainConfig, train  # noqa: E402

N = int(os.environ.get("N", "25"))
EPS = os.environ.get("EPS", "0.01,0.03,0.1")
TIME_LIMIT = os.environ.get("TIME_LIMIT", "5")
EPOCHS = int(os.environ.get("EPOCHS", "3"))
WIDTHS = tuple(int(w) for w in os.environ.get("WIDTHS", "100,100").split(","))
MINIMAL = os.environ.get("MINIMAL", "10")  # exact minimal L∞ perturbation of this many images
DATA_DIR = os.environ.get("DATA_DIR")
OUT = Path(os.environ.get("OUT", ROOT / "results" / "fig2_iprop"))
RUNS = Path(os.environ.get("RUNS", ROOT / "runs"))


def main() -> int:
    data = ["--data-dir", DATA_DIR] if DATA_DIR else []
    for policy in ("bnn_waq", "bnn_wq"):
        run = RUNS / f"fig2_mlp_{policy}"
        t0 = time.time()
        config = TrainConfig(
            dataset="fashion_mnist",
            arch="mlp",
            arch_opts={"widths": WIDTHS},
            policy=policy,
            wq_method="bc",
            epochs=EPOCHS,
        )
        summary = train(config, run, data_dir=DATA_DIR, progress=False)
        print(
            f"{policy}: clean accuracy {100 * summary['clean_accuracy']:.2f}% "
            f"(train {time.time() - t0:.0f}s)",
            flush=True,
        )
        out = OUT / policy
        t0 = time.time()
        code = cli.main(
            [
                "verify",
                "--checkpoint",
                str(run),
                "--eps",
                EPS,
                "--n",
                str(N),
                "--time-limit",
                TIME_LIMIT,
                "--attacks",
                "pgd,pgd++njs,square",
                "--minimal",
                MINIMAL,
                "--out",
                str(out),
                "--no-progress",
                *data,
            ]
        )
        print(f"{policy}: verify {time.time() - t0:.0f}s", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
