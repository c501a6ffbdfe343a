"""``qadv table``: a Table-2-style summary of a folder of attack results."""

from __future__ import annotations

import argparse

NAME = "table"
HELP = "Table-2-style summary of a folder of attack results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="folder with the JSON files of `qadv attack` and `qadv evaluate`")
    p.add_argument("--wall-time", action="store_true", help="seconds instead of accuracy")


def run(args) -> None:
    from qadv.records import results_table

    print(results_table(args.folder, wall_time=args.wall_time))
