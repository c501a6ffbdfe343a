"""Square's window-size schedule, rescaled or not, on a real trained model.

AutoAttack's ``standard`` version builds Square with ``resc_schedule=False``: the
p-schedule (the window's share of the image halves after iterations 10, 50, 200, 500,
1000, 2000, 4000, 6000, 8000) runs on the real query budget. The reference class's default
(``True``) rescales the iteration to a 10,000-query budget, so at 5,000 queries the
windows shrink twice as fast. This script runs both on the same images of one model
through :func:`qadv.evaluate.evaluate_attack` (scored the qadv way: ball and box
verified, model re-run, misclassified clean images never robust) and reports robust
accuracy, the examples each schedule breaks and those only one of them breaks.

Run (the committed numbers, ``results/square_schedule/``)::

    python benchmarks/square_schedule.py --out results/square_schedule

It trains the demo's BNN-WQ MLP (3 x 1024, BinaryConnect, :data:`qadv.apps.demo.DEMO_MODELS`)
on Fashion-MNIST (``/usr/share/datasets/fashion-mnist`` by default) into
``runs/square_schedule/bnn_wq`` (reused when it is there), or loads ``--checkpoint``.
A quick run: ``--epochs 1 --n 50 --queries 300``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from qadv import data, records
from qadv.apps.demo import DEMO_MODELS
from qadv.attacks import registry
from qadv.checkpoint import load_checkpoint
from qadv.evaluate import evaluate_attack
from qadv.training import train

SCHEDULES = {"rescaled (10,000-query schedule)": True, "real budget (AutoAttack standard)": False}


def compare(logits_fn, images, labels, *, eps, queries, batch_size, seed, progress):
    """Both schedules at one ε on the same images: robust accuracy and paired counts."""
    rows, robust = {}, {}
    for name, rescale in SCHEDULES.items():
        cfg = registry.make(
            "square", norm="linf", eps=eps, queries=queries, rescale_schedule=rescale
        )
        rec = evaluate_attack(
            logits_fn,
            images,
            labels,
            cfg,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
        ex = rec["examples"]
        r = np.asarray(ex["robust"], bool)
        correct = np.asarray(ex["clean_correct"], bool)
        robust[name] = r
        rows[name] = {
            "rescale_schedule": rescale,
            "robust_accuracy": rec["robust_accuracy"],
            "clean_accuracy": rec["clean_accuracy"],
            "broken": int((correct & ~r).sum()),
            "queries": rec["queries"],
            "wall_time_s": rec["wall_time_s"],
        }
    (a, ra), (b, rb) = robust.items()
    return {
        "eps": eps,
        "schedules": rows,
        "broken_only_by": {a: int((rb & ~ra).sum()), b: int((ra & ~rb).sum())},
        "robust_under_both": int((ra & rb).sum()),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="run folder of a trained model")
    ap.add_argument("--run-dir", default="runs/square_schedule/bnn_wq", help="where to train")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (demo: 15)")
    ap.add_argument("--n", type=int, default=500, help="first N test images")
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--eps", default="0.1,8/255", help="comma-separated L∞ radii")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for square_schedule.json")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    progress = not args.no_progress

    train_config = None
    if args.checkpoint is None:
        train_config = DEMO_MODELS["bnn_wq"]
        if args.epochs is not None:
            train_config = dataclasses.replace(train_config, epochs=args.epochs)
        train(train_config, args.run_dir, data_dir=args.data_dir, progress=progress)
    model_dir = args.checkpoint or args.run_dir
    loaded = load_checkpoint(model_dir)
    t_model = time.time() - t0

    test_x, test_y = data.load_split("fashion_mnist", "test", data_dir=args.data_dir)
    images = test_x[: args.n].astype(np.float32) / np.float32(255.0)
    labels = test_y[: args.n].astype(np.int32)
    radii = [records.parse_fraction(e, name="eps") for e in args.eps.split(",")]
    results = [
        compare(
            loaded.logits_fn,
            images,
            labels,
            eps=e,
            queries=args.queries,
            batch_size=min(args.batch_size, args.n),
            seed=args.seed,
            progress=progress,
        )
        for e in radii
    ]
    out = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "model": str(model_dir),
        "train_config": dataclasses.asdict(train_config) if train_config else None,
        "n": args.n,
        "queries": args.queries,
        "seed": args.seed,
        "results": results,
        "model_time_s": t_model,
        "wall_time_s": time.time() - t0,
        "git_commit": records.git_commit(),
        "environment": records.environment(),
    }
    for r in results:
        print(f"ε = {r['eps']:.4g}, Square L∞, {args.queries} queries, n = {args.n}:")
        for name, row in r["schedules"].items():
            print(
                f"  {name:36s} robust {row['robust_accuracy']:5.1f}%  broken {row['broken']}  "
                f"median queries {row['queries']['median']:.0f}  ({row['wall_time_s']:.0f} s)"
            )
        only = ", ".join(f"{k}: {v}" for k, v in r["broken_only_by"].items())
        print(f"  broken by only one schedule: {only}")
    print(f"wall time {out['wall_time_s']:.0f} s (model {t_model:.0f} s)")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        records.atomic_write_json(Path(args.out) / "square_schedule.json", out)
    return out


if __name__ == "__main__":
    main()
