"""``qadv masking``: the gradient-masking report of a checkpoint (checks with verdicts,
accuracy against ε, iterations and step)."""

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

NAME = "masking"
HELP = "gradient-masking report: checks with verdicts, accuracy against ε/iterations/step"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--surrogate", default=None, help="run folder of another model for the transfer check"
    )
    p.add_argument("--n", type=positive_int("n"), default=500, help="first N test images")
    p.add_argument("--norm", default="linf", help="linf or l2")
    p.add_argument(
        "--eps",
        type=fraction("eps"),
        default=None,
        help="radius of the verdicts, e.g. 0.1 or 8/255 (default: the dataset's usual L∞ "
        "radius, qadv.data.default_eps: 0.1 for (Fashion-)MNIST, 8/255 otherwise)",
    )
    p.add_argument("--steps", type=positive_int("steps"), default=20, help="PGD iterations")
    p.add_argument(
        "--max-steps", type=positive_int("max steps"), default=200, help="iteration curve length"
    )
    p.add_argument(
        "--queries", type=positive_int("queries"), default=1000, help="Square query budget"
    )
    p.add_argument(
        "--tolerance", type=float, default=2.0, help="points by which an attack must beat PGD"
    )
    p.add_argument(
        "--checks", default=None, help="comma-separated subset of the checks (default: all)"
    )
    p.add_argument("--batch-size", type=positive_int("batch size"), default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="report folder (default: <checkpoint>/masking)")
    add_data_dir(p)
    add_progress(p)


def _checks(text: str | None) -> list[str] | None:
    from qadv.evaluate.masking import CHECKS

    if text is None:
        return None
    checks = split_list(text)
    for c in checks:
        if c not in CHECKS:
            raise ValueError(f"unknown masking check {c!r}; choose from: " + ", ".join(CHECKS))
    return checks


def run(args) -> None:
    from qadv.attacks import AttackContext
    from qadv.checkpoint import load_checkpoint
    from qadv.data import default_eps
    from qadv.evaluate.masking import MaskingConfig, masking_report

    checks = _checks(args.checks)
    loaded, images, labels = load(args.checkpoint, args.data_dir, args.n)
    eps = default_eps(loaded.metadata["dataset"]) if args.eps is None else args.eps
    config = MaskingConfig(
        norm=args.norm,
        eps=eps,
        steps=args.steps,
        max_steps=args.max_steps,
        square_queries=args.queries,
        tolerance=args.tolerance,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    config.validate()
    surrogate = load_checkpoint(args.surrogate).logits_fn if args.surrogate else None
    out = Path(args.out) if args.out else Path(args.checkpoint) / "masking"
    r = masking_report(
        loaded.logits_fn,
        images,
        labels,
        config=config,
        surrogate=surrogate,
        context=AttackContext(calib_images=images, input_std=tuple(loaded.metadata["std"])),
        checks=checks,
        out_dir=out,
        progress=not args.no_progress,
        name=Path(args.checkpoint).name,
    )
    print(r["summary"].replace("**", ""))
    for v in r["checks"]:
        print(f"  {v['name']:<18} {v['status']:<18} {v['reason']}")
    print(f"-> {out / 'masking.md'}")
