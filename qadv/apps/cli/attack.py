"""``qadv attack``: robust accuracy of a checkpoint under one attack.

Besides the threat model, it has one flag per option of every registered attack and
temperature (looked up in :mod:`qadv.attacks.registry`), so a new attack's options are
flags without a change here.
"""

from __future__ import annotations

import argparse
import dataclasses

from qadv.apps.cli.options import add_run_options, devices, fraction, integer, load, run_options

NAME = "attack"
HELP = "robust accuracy of a checkpoint under one attack"
OUT_IS_FILE = True

_THREAT = ("norm", "eps", "temperature", "source")  # flags of their own


def attack_options() -> dict[str, tuple[str, object, str]]:
    """Every option of every registered attack and temperature:
    name -> (annotation, default, the attacks/temperatures that have it)."""
    from qadv.attacks import registry

    opts: dict[str, tuple[str, object, list[str]]] = {}
    owners = [(n, registry.lookup(n)[0]) for n in registry.attack_names()]
    owners += list(registry.temperatures().items())
    for owner, cls in owners:
        for f in dataclasses.fields(cls):
            if f.name in _THREAT:
                continue
            opts.setdefault(f.name, (str(f.type), f.default, []))[2].append(owner)
    return {k: (a, d, ", ".join(o)) for k, (a, d, o) in opts.items()}


def _option_type(annotation: str, name: str):
    """Parse an attack option from its dataclass annotation (fractions like 8/255 ok)."""
    if "float" in annotation:
        return fraction(name)
    if annotation.strip() == "int":
        return integer(name)
    return str


def add_attack_options(p: argparse.ArgumentParser) -> None:
    """The threat model plus one flag per registered attack/temperature option."""
    p.add_argument("--norm", default="linf", help="linf or l2")
    p.add_argument("--eps", type=fraction("eps"), default=8 / 255, help="radius, e.g. 8/255")
    p.add_argument(
        "--temperature", default=None, help="none, fixed, njs, hns or prop1 (PGD++, APGD++)"
    )
    p.add_argument("--source", default=None, help="transfer: the attack run on the surrogate")
    group = p.add_argument_group("attack options (each applies to the attacks that have it)")
    for name, (annotation, default, owners) in attack_options().items():
        flag = "--" + name.replace("_", "-")
        help_ = f"for: {owners}"
        if annotation == "bool":
            if default is True:
                no_flag = "--no-" + name.replace("_", "-")
                group.add_argument(
                    no_flag, dest=name, action="store_false", default=None, help=help_
                )
            else:
                group.add_argument(flag, dest=name, action="store_true", default=None, help=help_)
            continue
        aliases = [flag, "--step"] if name == "step_size" else [flag]
        group.add_argument(
            *aliases, dest=name, type=_option_type(annotation, name), default=None, help=help_
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--attack", default="pgd", help="a registered attack (see `qadv attacks`)")
    add_attack_options(p)
    add_run_options(p)
    p.add_argument("--out", required=True, help="result JSON (partial progress resumes)")


def run(args) -> None:
    from qadv.attacks import registry
    from qadv.evaluate import evaluate_attack

    options = {k: getattr(args, k, None) for k in attack_options()}
    config = registry.make(
        args.attack,
        norm=args.norm,
        eps=args.eps,
        temperature=args.temperature,
        source=args.source,
        **options,
    )
    loaded, images, labels = load(
        args.checkpoint, args.data_dir, args.n, devices(args), dtype=args.dtype
    )
    record = evaluate_attack(
        loaded.logits_fn, images, labels, config, **run_options(args, loaded, images)
    )
    fallbacks = f", {record['fallback_count']} β fallbacks" if "fallback_count" in record else ""
    print(
        f"{config.label}: clean {record['clean_accuracy']:.2f}%, robust "
        f"{record['robust_accuracy']:.2f}% on n={record['n']}{fallbacks} "
        f"({record['wall_time_s']:.1f}s) -> {args.out}"
    )
