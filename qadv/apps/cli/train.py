"""``qadv train``: train (or resume) a run folder.

Its config flags are generated from the :class:`~qadv.training.config.Alias` es that the
config groups declare (:func:`qadv.training.config.train_flags`), parsed by each field's
type; the quantization-policy options (``--m-bases``, ``--float-last``, ...) go to
``quant.policy_opts``.
"""

from __future__ import annotations

import argparse
from typing import Any

from qadv.apps.cli.options import (
    add_data_dir,
    add_parallel,
    add_progress,
    devices,
    fraction,
    integer,
    positive_int,
)

NAME = "train"
HELP = "training: quantization-aware, adversarial (PGD-AT, FastAT), gradient-regularised"
DESCRIPTION = (
    "Train (or resume) a run folder. Flags override --config FILE, whose get_config() "
    "returns a TrainConfig or a dict; --set group.field=VALUE sets any field."
)

# options of the quantization policy (qadv.quant.get_policy), merged into quant.policy_opts
_POLICY_COUNTS = ("m_bases", "n_bases", "bits")
_POLICY_SWITCHES = {
    "float_first": "keep the first layer in float",
    "float_last": "keep the last layer in float",
    "float_bias": "keep biases in float",
}


def _flag_type(annotation: str, name: str):
    """The argument type of a config field from its annotation (ranges: the config's)."""
    if "float" in annotation:
        return fraction(name.replace("_", " "))
    if "int" in annotation:
        return integer(name.replace("_", " "))
    return None


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    from qadv.training.config import train_flags

    sections: dict[str | None, Any] = {None: p}  # help section -> parser or group
    for flag in train_flags():
        target = sections.get(flag.section)
        if target is None:
            target = sections[flag.section] = p.add_argument_group(flag.section)
        dashed = "--" + flag.name.replace("_", "-")
        if "bool" in flag.annotation:
            action = argparse.BooleanOptionalAction
            target.add_argument(dashed, dest=flag.name, action=action, default=None, help=flag.help)
            continue
        kind = _flag_type(flag.annotation, flag.name)
        target.add_argument(dashed, dest=flag.name, type=kind, default=None, help=flag.help)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="Python config file with get_config()")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config field, e.g. --set optim.cycle_peak=0.3 (repeatable)",
    )
    _add_config_flags(p)
    for name in _POLICY_COUNTS:
        dashed = name.replace("_", "-")
        p.add_argument("--" + dashed, type=positive_int(dashed), default=None)
    for name, help_ in _POLICY_SWITCHES.items():
        p.add_argument("--" + name.replace("_", "-"), action="store_true", help=help_)
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl)")
    add_parallel(p)
    add_data_dir(p)
    add_progress(p)


def parse_set(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; values are JSON (numbers, true/false, null, lists, strings)
    or fractions like 8/255; anything else is a string.

    Example:
        >>> parse_set(["optim.lr=0.01", "adv_eps=8/255", "arch=mlp", "augment=true"])["augment"]
        True
    """
    import json

    from qadv.validation import parse_fraction

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad --set {item!r}; use KEY=VALUE, e.g. optim.lr=0.01")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            try:
                value = parse_fraction(text, name=key) if "/" in text else text
            except ValueError:
                value = text
        out[key.strip()] = value
    return out


def train_config(args):
    """The :class:`~qadv.training.TrainConfig` the command line asks for."""
    from qadv.training.config import build_config, train_flags

    overrides = {
        f.key: getattr(args, f.name) for f in train_flags() if getattr(args, f.name) is not None
    }
    overrides.update(parse_set(args.set))
    policy_opts = {k: getattr(args, k) for k in _POLICY_COUNTS if getattr(args, k) is not None}
    policy_opts.update({k: True for k in _POLICY_SWITCHES if getattr(args, k)})
    return build_config(overrides, config_file=args.config, policy_opts=policy_opts)


def run(args) -> None:
    from qadv.training import train

    config = train_config(args)
    summary = train(
        config,
        args.out,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        devices=devices(args),
    )
    robust = ""
    if summary.get("robust_accuracy") is not None:
        robust = (
            f", PGD accuracy {100 * summary['robust_accuracy']:.2f}% at "
            f"eps={summary['robust_eps']:.4g}"
        )
    print(
        f"{config.model.arch}/{summary['policy']} on {config.data.dataset}: clean test "
        f"accuracy {100 * summary['clean_accuracy']:.2f}%{robust} in "
        f"{summary['wall_time_s']:.0f}s -> {args.out}"
    )
