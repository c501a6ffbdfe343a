"""``qadv study``: train and measure a grid of networks from a config file (one table)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qadv.apps.cli.options import add_data_dir, add_progress, split_list

NAME = "study"
HELP = "train and measure a grid of networks from a config file (one table)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="Python file defining config(**options)")
    p.add_argument("--out", required=True, help="study folder (runs, cells, study.md)")
    p.add_argument("--only", default=None, help="comma-separated cell names to run now")
    p.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the config file's config() function, e.g. size=gpu (repeatable)",
    )
    p.add_argument(
        "--size",
        choices=("paper", "gpu", "cpu"),
        default=None,
        help="experiment size (the same as --set size=SIZE; see experiments/README.md)",
    )
    p.add_argument(
        "--store",
        default=None,
        help="checkpoint store shared by studies (default: $QADV_STORE, else runs/store "
        "for paper experiments and OUT/runs for plain studies)",
    )
    add_data_dir(p)
    add_progress(p)


def _options(items: list[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad --set {item!r}; use KEY=VALUE, e.g. size=gpu")
        options[key.strip()] = value.strip()
    return options


def run(args) -> None:
    from qadv.apps.study import StudyConfig, load_study_config, run_study

    options = _options(args.options)
    if args.size is not None:
        options["size"] = args.size
    only = split_list(args.only) if args.only is not None else None
    config = load_study_config(args.config, options)
    if not isinstance(config, StudyConfig):  # a paper experiment (qadv.apps.repro)
        _run_experiment(config, args, only)
        return
    result = run_study(
        config,
        args.out,
        only=only,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        store=args.store or os.environ.get("QADV_STORE"),
    )
    missing = f"; not finished: {', '.join(result['missing'])}" if result["missing"] else ""
    print(
        f"{config.name}: {len(result['complete'])}/{len(config.cells)} cells done{missing} "
        f"-> {Path(args.out) / 'study.md'}"
    )


def _run_experiment(config, args, only) -> None:
    from qadv.apps.repro import run_experiment

    rec = run_experiment(
        config,
        args.out,
        store=args.store,
        only=only,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        command=" ".join(["qadv", *sys.argv[1:]]) if sys.argv[1:] else "",
    )
    missing = sum(len(p.get("missing", [])) for p in rec["parts"].values())
    print(
        f"{config.name}: {len(rec['parts'])} parts, {missing} cells not finished "
        f"-> {Path(args.out) / 'experiment.md'}"
    )
