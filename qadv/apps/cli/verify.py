"""``qadv verify``: exact robustness of a small MLP by MILP, and each attack's gap to it.

Exits with status 2 when an attack breaks an example the MILP proved robust, or finds a
perturbation below the proven minimum (``--minimal``): either means a bug.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from qadv.apps.cli.options import (
    add_data_dir,
    add_progress,
    fraction,
    load,
    positive_int,
    split_list,
)

NAME = "verify"
HELP = "exact robustness of a small MLP by MILP, and each attack's gap to it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder of an mlp checkpoint")
    p.add_argument("--eps", required=True, help="comma-separated L∞ radii, e.g. 0.02,0.05,8/255")
    p.add_argument("--n", type=positive_int("n"), default=100, help="first N test images")
    p.add_argument(
        "--time-limit", type=float, default=10.0, help="MILP seconds per example and radius"
    )
    p.add_argument(
        "--attacks",
        default="pgd,pgd++njs,square",
        help="comma-separated attack names (pgd++njs style for PGD++); '' for none",
    )
    p.add_argument("--steps", type=positive_int("steps"), default=None, help="attack iterations")
    p.add_argument(
        "--no-iprop",
        action="store_true",
        help="skip IPROP (default: run it when every hidden unit is a sign, BNN-WAQ)",
    )
    p.add_argument(
        "--minimal",
        type=int,
        default=0,
        metavar="K",
        help="also bracket the exact minimal L∞ perturbation of the first K correctly "
        "classified images by bisection, beside FAB's and DeepFool's (0: skip)",
    )
    p.add_argument(
        "--minimal-tol", type=fraction("minimal tol"), default=1e-3, help="bisection width"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder: per-example results (resume), report")
    add_data_dir(p)
    add_progress(p)


def _radii(args) -> list[float]:
    from qadv.validation import parse_fraction

    eps_list = [parse_fraction(e, name="eps") for e in split_list(args.eps)]
    if not eps_list or any(not 0 < e <= 1 for e in eps_list):
        raise ValueError(f"bad --eps {args.eps!r}; use comma-separated radii in (0, 1]")
    if not (np.isfinite(args.time_limit) and args.time_limit > 0):
        raise ValueError(f"bad --time-limit {args.time_limit!r}; use seconds > 0")
    if args.minimal < 0:
        raise ValueError(f"bad --minimal {args.minimal!r}; use an integer >= 0")
    return eps_list


def _minimal(args, loaded, images, labels) -> None:
    from qadv.verify.report import count_violations, minimal_perturbations

    minimal = minimal_perturbations(
        loaded,
        images,
        labels,
        count=args.minimal,
        tol=args.minimal_tol,
        time_limit=args.time_limit,
        out=args.out,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print((Path(args.out) / "minimal.md").read_text())
    if count_violations(minimal):
        raise ValueError("an attack found a perturbation below the proven minimum; see minimal.md")


def run(args) -> None:
    from qadv.verify.report import count_violations, gap_to_truth

    eps_list = _radii(args)
    loaded, images, labels = load(args.checkpoint, args.data_dir, args.n)
    record = gap_to_truth(
        loaded,
        images,
        labels,
        eps_list,
        split_list(args.attacks),
        out=args.out,
        time_limit=args.time_limit,
        seed=args.seed,
        run_iprop=False if args.no_iprop else None,  # None: where IPROP applies
        attack_overrides={"steps": args.steps} if args.steps else None,
        progress=not args.no_progress,
    )
    print((Path(args.out) / "gap.md").read_text())
    print(f"-> {args.out} (gap.json, gap.md, flip_rate.png)")
    if args.minimal:
        _minimal(args, loaded, images, labels)
    if count_violations(record):
        raise ValueError("an attack broke an example the MILP proved robust; see gap.md")
