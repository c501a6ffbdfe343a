"""``qadv demo``: the main job (float and BNN-WQ MLPs, masking reports, the attacks that
break the binary network)."""

from __future__ import annotations

import argparse
from pathlib import Path

from qadv.apps.cli.options import add_data_dir, add_progress, positive_int

NAME = "demo"
HELP = "the main job: float and BNN-WQ MLPs, masking reports, the attacks that break it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--n", type=positive_int("n"), default=500, help="first N test images evaluated")
    p.add_argument(
        "--epochs",
        type=positive_int("epochs"),
        default=None,
        help="override every model's training epochs",
    )
    p.add_argument("--batch-size", type=positive_int("batch size"), default=250)
    add_data_dir(p)
    add_progress(p)


def run(args) -> None:
    from qadv.apps.demo import run_demo

    result = run_demo(
        args.out,
        n=args.n,
        epochs=args.epochs,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print(result["verdict"].replace("**", ""))
    print()
    print(result["table"])
    print(f"\nreport: {Path(args.out) / 'report.md'}")
