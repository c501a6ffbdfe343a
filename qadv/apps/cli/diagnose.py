"""``qadv diagnose``: signal-propagation diagnostics of a checkpoint (paper Table 13)."""

from __future__ import annotations

import argparse

from qadv.apps.cli.options import add_data_dir, load, positive_int

NAME = "diagnose"
HELP = "signal-propagation diagnostics (paper Table 13)"
OUT_IS_FILE = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=positive_int("n"), default=500)
    p.add_argument("--batch-size", type=positive_int("batch size"), default=100)
    p.add_argument("--out", default=None, help="JSON file for the statistics")
    add_data_dir(p)


def run(args) -> None:
    from qadv import records
    from qadv.evaluate import diagnose

    loaded, images, labels = load(args.checkpoint, args.data_dir, args.n)
    stats = diagnose(loaded.logits_fn, images, labels, batch_size=args.batch_size)
    rows = [[k, v] for k, v in stats.items() if isinstance(v, int | float)]
    print(records.format_table(["statistic", "value"], rows, markdown=False))
    if args.out:
        records.atomic_write_json(args.out, {"checkpoint": args.checkpoint, **stats})
