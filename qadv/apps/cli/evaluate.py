"""``qadv evaluate``: ensemble evaluation (AutoAttack's cascade) of a checkpoint."""

from __future__ import annotations

import argparse

from qadv.apps.cli.options import (
    add_run_options,
    devices,
    fraction,
    load,
    positive_int,
    run_options,
    split_list,
)

NAME = "evaluate"
HELP = "ensemble evaluation (AutoAttack's cascade) of a checkpoint"
OUT_IS_FILE = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--preset",
        default=None,
        help="standard (APGD-CE, APGD-T, FAB-T, Square), plus-temperature, gradient",
    )
    p.add_argument(
        "--attacks",
        default=None,
        help="comma-separated attack names instead of a preset, e.g. apgd-ce,square,pgd++hns",
    )
    p.add_argument("--norm", default="linf", help="linf or l2")
    p.add_argument("--eps", type=fraction("eps"), default=8 / 255, help="radius, e.g. 8/255")
    p.add_argument(
        "--steps", type=positive_int("steps"), default=None, help="iterations of each member"
    )
    p.add_argument(
        "--queries", type=positive_int("queries"), default=None, help="Square query budget"
    )
    add_run_options(p)
    p.add_argument("--out", required=True, help="result JSON; members go to <out>.members/")


def _members(args) -> tuple[list, str]:
    """The ensemble's attack configs and its name."""
    from qadv.attacks import presets, registry

    if (args.preset is None) == (args.attacks is None):
        raise ValueError(
            "give exactly one of --preset (one of: "
            + ", ".join(registry.preset_names())
            + ") or --attacks NAME,NAME,..."
        )
    overrides = {k: v for k, v in (("steps", args.steps), ("queries", args.queries)) if v}
    if args.preset is not None:
        configs = registry.preset(args.preset, norm=args.norm, eps=args.eps, **overrides)
        return configs, args.preset
    names = split_list(args.attacks)
    configs = presets.ensemble_members(names, norm=args.norm, eps=args.eps, **overrides)
    return configs, "+".join(names)


def run(args) -> None:
    from qadv import records
    from qadv.evaluate import evaluate_ensemble

    configs, name = _members(args)
    loaded, images, labels = load(
        args.checkpoint, args.data_dir, args.n, devices(args), dtype=args.dtype
    )
    record = evaluate_ensemble(
        loaded.logits_fn, images, labels, configs, name=name, **run_options(args, loaded, images)
    )
    rows = [
        [m["attack"], m["attacked"], m["broken"], m["robust_accuracy_after"], m["wall_time_s"]]
        for m in record["attacks"]
    ]
    print(
        records.format_table(
            ["attack", "attacked", "broken", "robust % after", "time (s)"], rows, markdown=False
        )
    )
    print(
        f"{name}: clean {record['clean_accuracy']:.2f}%, robust {record['robust_accuracy']:.2f}% "
        f"on n={record['n']} ({record['wall_time_s']:.1f}s) -> {args.out}"
    )
