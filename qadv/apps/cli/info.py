"""``qadv info``: parameters, MACs and BOPS per layer of a model."""

from __future__ import annotations

import argparse

NAME = "info"
HELP = "parameters, MACs and BOPS per layer of a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--quant", default="ref", help="ref, bnn_wq, bnn_waq, xnor, mbn:MxN, pact:K")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> None:
    import json

    from qadv.info import format_info, model_info

    info = model_info(args.arch, dataset=args.dataset, quant=args.quant)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
