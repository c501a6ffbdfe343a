"""The multi-bit design space of Frickenstein et al. (Table 2 pattern) on real Fashion-MNIST:
BOPS, clean accuracy and PGD-20/PGD-50 accuracy at ε = 2/255 (step α = 0.5/255) of
float, PACT-4/2, XNOR-Net and MBN M×N networks, trained naturally and with FastAT.

    .venv/bin/python experiments/mbn_design_space.py           # about an hour on 2 CPU cores
    POLICIES=ref,mbn3x1 MODES=natural EPOCHS=1 .venv/bin/python experiments/mbn_design_space.py

Each (policy, mode) trains a CifarResNet (``ARCH``, default ``resnet20`` with ``DEPTH``
layers, default 8 on CPU; ``DEPTH=20`` is the paper's network) on the first
``TRAIN_EXAMPLES`` training images (default 6,000) for ``EPOCHS`` epochs (Adam, cosine;
FastAT: ε = 2/255, one FGSM step of 1.25 ε from a random start, cyclic learning rate),
then attacks the first ``N`` test images (default 300) with PGD-20 and PGD-50. BOPS
follow 004's convention (first and last layers at 8 bits; :mod:`qadv.info`) for the
trained network on 28×28×1 images, and for ResNet-20 on CIFAR-10 (32×32×3), the
setting of 004's Table 2. Run folders go to ``runs/mbn_design_space/<policy>_<mode>``,
results (``results.json``, ``README.md`` table, per-attack JSON) to ``OUT`` (default
``results/mbn_design_space``). Every step resumes after a kill: rerun the same command.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qadv import records  # noqa: E402
from qadv.attacks import registry  # noqa: E402
from qadv.checkpoint import load_checkpoint  # noqa: E402
from qadv.data import load_split  # noqa: E402
from qadv.evaluate.core import cached_attack  # noqa: E402
from qadv.info import model_info  # noqa: E402
from qadv.training import TrainConfig, train  # noqa: E402

POLICIES = os.environ.get(
    "POLICIES", "ref,pact4,pact2,xnor,mbn1x1,mbn3x1,mbn1x3,mbn5x1,mbn7x1"
).split(",")
MODES = os.environ.get("MODES", "natural,fastat").split(",")
ARCH = os.environ.get("ARCH", "resnet20")
DEPTH = int(os.environ.get("DEPTH", "8"))
EPOCHS = int(os.environ.get("EPOCHS", "2"))
TRAIN_EXAMPLES = int(os.environ.get("TRAIN_EXAMPLES", "6000"))
N = int(os.environ.get("N", "300"))
EPS, ALPHA = 2 / 255, 0.5 / 255
DATA_DIR = os.environ.get("DATA_DIR")
OUT = Path(os.environ.get("OUT", ROOT / "results" / "mbn_design_space"))
RUNS = Path(os.environ.get("RUNS", ROOT / "runs" / "mbn_design_space"))


def config(policy: str, mode: str) -> TrainConfig:
    kw = {"adv": "fastat", "adv_eps": EPS, "schedule": "cyclic"} if mode == "fastat" else {}
    return TrainConfig(
        dataset="fashion_mnist",
        arch=ARCH,
        arch_opts={"depth": DEPTH} if ARCH == "resnet20" else {},
        policy=policy,
        epochs=EPOCHS,
        optimizer="adam",
        lr=1e-3,
        train_examples=TRAIN_EXAMPLES,
        robust_examples=0,
        **kw,
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    x, y = load_split("fashion_mnist", "test", data_dir=DATA_DIR)
    x = x[:N].astype("float32") / 255.0
    y = y[:N]
    attacks = {
        f"pgd{steps}": registry.make("pgd", eps=EPS, step_size=ALPHA, steps=steps)
        for steps in (20, 50)
    }
    rows = []
    for mode in MODES:
        for policy in POLICIES:
            name = f"{policy}_{mode}"
            cfg = config(policy, mode)
            t = time.time()
            summary = train(cfg, RUNS / name, data_dir=DATA_DIR, progress=False)
            loaded = load_checkpoint(RUNS / name)
            fn = loaded.logits_fn
            row = {
                "policy": policy,
                "mode": mode,
                "clean_accuracy": summary["clean_accuracy"],
                "train_time_s": summary["train_time_s"],
                "bops": model_info(
                    ARCH,
                    dataset="fashion_mnist",
                    quant=policy,
                    arch_opts=cfg.model.arch_opts,
                )["bops"],
                "bops_resnet20_cifar10": model_info("resnet20", quant=policy)["bops"],
            }
            for key, atk in attacks.items():
                rec = cached_attack(
                    OUT / "attacks" / f"{name}_{key}.json",
                    fn,
                    x,
                    y,
                    atk,
                    batch_size=250,
                    progress=False,
                )
                row[f"{key}_accuracy"] = rec["robust_accuracy"] / 100.0
                row["clean_accuracy_n"] = rec["clean_accuracy"] / 100.0
            row["wall_time_s"] = time.time() - t
            rows.append(row)
            print(
                f"{name}: clean {100 * row['clean_accuracy']:.2f}% PGD-20 "
                f"{100 * row['pgd20_accuracy']:.2f}% PGD-50 {100 * row['pgd50_accuracy']:.2f}% "
                f"BOPS {row['bops'] / 1e8:.3f}e8 ({row['wall_time_s']:.0f}s)",
                flush=True,
            )
    result = {
        "arch": ARCH,
        "depth": DEPTH,
        "epochs": EPOCHS,
        "train_examples": TRAIN_EXAMPLES,
        "n": N,
        "eps": EPS,
        "alpha": ALPHA,
        "rows": rows,
        "environment": records.environment(),
    }
    (OUT / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| policy | training | BOPS (this net, ×10⁸) | BOPS ResNet-20 CIFAR-10 (×10⁸) | clean % "
        f"(10k) | clean % (first {N}) | PGD-20 % | PGD-50 % | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['mode']} | {r['bops'] / 1e8:.3f} | "
            f"{r['bops_resnet20_cifar10'] / 1e8:.2f} | {100 * r['clean_accuracy']:.2f} | "
            f"{100 * r['clean_accuracy_n']:.2f} | "
            f"{100 * r['pgd20_accuracy']:.2f} | {100 * r['pgd50_accuracy']:.2f} | "
            f"{r['train_time_s']:.0f} |"
        )
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
