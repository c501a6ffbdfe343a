"""The explicit alias table: the groups of a :class:`~qadv.training.config.TrainConfig`
(:data:`GROUPS`), every declared short name (:data:`ALIASES`), how a flat key reaches its
field (:func:`route`), and the flags of ``qadv train`` (:func:`train_flags`).

Each group declares its short names next to its fields (``aliases``, a tuple of
:class:`~qadv.training.config.base.Alias`); :func:`alias_table` collects them and refuses
a name or a flag declared twice, when this module is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import NamedTuple

from qadv.training.config.adversary import AdversaryConfig, RegularizerConfig
from qadv.training.config.base import Group
from qadv.training.config.groups import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
)
from qadv.training.config.quant import QuantConfig

__all__ = [
    "ALIASES",
    "FLAG_SECTIONS",
    "GROUPS",
    "RESUMABLE",
    "TrainFlag",
    "alias_table",
    "route",
    "train_flags",
]

GROUPS: dict[str, type[Group]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "quant": QuantConfig,
    "optim": OptimConfig,
    "adversary": AdversaryConfig,
    "regularizer": RegularizerConfig,
    "checkpoint": CheckpointConfig,
    "eval": EvalConfig,
}


def alias_table(groups: Mapping[str, type[Group]]) -> dict[str, str]:
    """Short name -> ``"group.field"`` from the groups' declared :class:`Alias` es.

    Raises:
        ValueError: an alias names no field of its group, or a short name or flag is
            declared twice (or is a group name or ``seed``).
    """
    table: dict[str, str] = {}
    flags: dict[str, str] = {}
    for g, cls in groups.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        for a in cls.aliases:
            if a.field not in fields:
                raise ValueError(f"alias {a.name!r} names no field {a.field!r} of group {g!r}")
            taken = table.get(a.name) or ("a group" if a.name in (*groups, "seed") else None)
            if taken:
                raise ValueError(f"alias {a.name!r} of {g}.{a.field} is already {taken}")
            table[a.name] = f"{g}.{a.field}"
            if a.help is not None:
                flag = a.flag or a.name
                if flag in flags or flag == "seed":
                    raise ValueError(f"flag --{flag} of {g}.{a.field} is declared twice")
                flags[flag] = table[a.name]
    return table


ALIASES: dict[str, str] = alias_table(GROUPS)
"""Every short name -> ``"group.field"`` (e.g. ``"lr": "optim.lr"``)."""

# Settings that may change when a run resumes (they do not change the trained weights,
# except optim.epochs, which extends or shortens the schedule).
RESUMABLE = frozenset(
    {"optim.epochs"}
    | {f"checkpoint.{f.name}" for f in dataclasses.fields(CheckpointConfig)}
    | {f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)}
)


def route(key: str) -> tuple[str, str]:
    """The ``(group, field)`` a flat key names: ``"group.field"`` or a short name.

    Example:
        >>> route("lr"), route("adversary.eps")
        (('optim', 'lr'), ('adversary', 'eps'))
    """
    if "." in key:
        group, _, field = key.partition(".")
        if group in GROUPS and field in {f.name for f in dataclasses.fields(GROUPS[group])}:
            return group, field
    elif key in ALIASES:
        return route(ALIASES[key])
    names = sorted(set(ALIASES) | {"seed"} | set(GROUPS))
    close = difflib.get_close_matches(key.rpartition(".")[2], names, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise ValueError(
        f"unknown TrainConfig field {key!r}{hint}; use a group ({', '.join(GROUPS)}), "
        "'group.field' or a short name such as arch, policy, lr, epochs"
    )


class TrainFlag(NamedTuple):
    """A flag of ``qadv train``: ``--{name}`` (``_`` written ``-``) sets ``key``.

    Attributes:
        name: the flag without ``--``, e.g. ``"adv_eps"``.
        key: the dotted config key it sets, e.g. ``"adversary.eps"`` (or ``"seed"``).
        annotation: the field's type annotation, e.g. ``"float | None"``.
        help: the flag's help text.
        section: the help section of its group (``None``: the command's own options).
    """

    name: str
    key: str
    annotation: str
    help: str
    section: str | None


FLAG_SECTIONS: dict[str, str] = {
    "adversary": "adversarial training",
    "regularizer": "input-gradient regularisation (L + λ/2 ||∇x L||*²)",
    "eval": "per-epoch evaluation",
}


def train_flags() -> tuple[TrainFlag, ...]:
    """The flags of ``qadv train``: every :class:`Alias` with a help text, then ``seed``.

    Example:
        >>> flags = {f.name: f for f in train_flags()}
        >>> flags["quant"].key, flags["adv_eps"].key, flags["adv_eps"].annotation
        ('quant.policy', 'adversary.eps', 'float')
    """
    out = []
    for g, cls in GROUPS.items():
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        for a in cls.aliases:
            if a.help is not None:
                key = f"{g}.{a.field}"
                out.append(
                    TrainFlag(a.flag or a.name, key, types[a.field], a.help, FLAG_SECTIONS.get(g))
                )
    seed_help = "seed of initialization, data order, augmentation and step keys (default 0)"
    out.append(TrainFlag("seed", "seed", "int", seed_help, None))
    return tuple(out)
