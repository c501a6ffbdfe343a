"""``qadv eval``: clean test accuracy of a checkpoint."""

from __future__ import annotations

import argparse

from qadv.apps.cli.options import add_data_dir, add_dtype, load, positive_int

NAME = "eval"
HELP = "clean test accuracy of a checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder written by `qadv train`")
    p.add_argument("--n", type=positive_int("n"), default=None, help="first N test images")
    p.add_argument("--batch-size", type=positive_int("batch size"), default=500)
    add_dtype(p)
    add_data_dir(p)


def run(args) -> None:
    from qadv.evaluate import clean_predictions

    loaded, images, labels = load(args.checkpoint, args.data_dir, args.n, dtype=args.dtype)
    preds = clean_predictions(loaded.logits_fn, images, batch_size=args.batch_size)
    acc = 100.0 * float((preds == labels).mean())
    print(f"{args.checkpoint}: clean accuracy {acc:.2f}% on {len(labels)} test images")
