"""``qadv signal``: signal propagation, the ρ ablation, CLEVER and lower bounds of a
checkpoint (paper Tables 11-13)."""

from __future__ import annotations

import argparse
from pathlib import Path

from qadv.apps.cli.options import (
    add_data_dir,
    add_progress,
    fraction,
    load,
    positive_int,
    split_list,
)

NAME = "signal"
HELP = "signal propagation, rho ablation, CLEVER and lower bounds (paper Tables 11-13)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=positive_int("n"), default=200, help="first N test images")
    p.add_argument("--norm", default="linf", help="linf or l2 (PGD, FAB and the bounds)")
    p.add_argument("--eps", type=fraction("eps"), default=8 / 255, help="radius, e.g. 8/255")
    p.add_argument("--steps", type=positive_int("steps"), default=20, help="PGD iterations")
    p.add_argument(
        "--rhos", default=None, help="comma-separated NJS rho values (default: paper Table 12)"
    )
    p.add_argument(
        "--clever-examples", type=int, default=50, help="correctly classified images (0: skip)"
    )
    p.add_argument(
        "--beta-sweep-examples",
        type=int,
        default=0,
        help="correctly classified images of the β sweep (paper Figs. 4-5; 0: skip)",
    )
    p.add_argument("--min-norm-attack", default="fab", help="fab or deepfool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int("batch size"), default=250)
    p.add_argument("--out", required=True, help="report folder (signal.json, signal.md, plots)")
    add_data_dir(p)
    add_progress(p)


def run(args) -> None:
    from qadv.evaluate.signal_report import PAPER_RHOS, SignalConfig, signal_report
    from qadv.validation import parse_fraction

    rhos = PAPER_RHOS
    if args.rhos is not None:
        rhos = tuple(parse_fraction(r, name="rho") for r in split_list(args.rhos))
    config = SignalConfig(
        eps=args.eps,
        norm=args.norm,
        steps=args.steps,
        rhos=rhos,
        clever_examples=args.clever_examples,
        beta_sweep_examples=args.beta_sweep_examples,
        min_norm_attack=args.min_norm_attack,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    config.validate()
    loaded, images, labels = load(args.checkpoint, args.data_dir, args.n)
    record = signal_report(
        loaded,
        images,
        labels,
        config=config,
        out_dir=args.out,
        progress=not args.no_progress,
        model_name=str(args.checkpoint),
    )
    print(
        f"{args.checkpoint}: signal report on n={record['n']} "
        f"({record['wall_time_s']:.0f}s) -> {Path(args.out) / 'signal.md'}"
    )
