"""``qadv attacks``: list the registered attacks, temperatures and presets, or show one
attack's options."""

from __future__ import annotations

import argparse
import dataclasses

NAME = "attacks"
HELP = "list the registered attacks, temperatures and presets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=None, help="show one attack's options")


def run(args) -> None:
    from qadv.attacks import registry

    if args.name is not None:
        cfg = registry.make(args.name)
        print(f"{args.name}: {cfg.label}")
        for opt in registry.option_names(args.name):
            value = getattr(cfg, opt, None)
            shown = registry.to_dict(value) if dataclasses.is_dataclass(value) else value
            print(
                f"  --{opt.replace('_', '-')}" + ("" if value is None else f"  (default {shown})")
            )
        return
    print("attacks:      " + ", ".join(registry.attack_names()))
    print("temperatures: " + ", ".join(registry.temperature_names()) + "  (e.g. pgd++hns)")
    print("presets:      " + ", ".join(registry.preset_names()))
