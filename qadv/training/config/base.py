"""What every config group shares: :class:`Alias` (a declared short name of a field) and
the group base class (its name, its aliases, its JSON round trip)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from qadv.validation import check_keys

__all__ = ["Alias", "Group"]


@dataclasses.dataclass(frozen=True)
class Alias:
    """A short name of one field of a config group.

    ``TrainConfig(lr=0.1)``, ``config.replace(lr=0.1)`` and ``config.lr`` use it. With a
    ``help`` text it is also a flag of ``qadv train`` (``--lr``), parsed by the field's type.

    Attributes:
        name: the short name, unique over every group.
        field: the field of the declaring group it stands for.
        help: help text of the ``qadv train`` flag; ``None``: no flag.
        flag: the flag's name when it is not ``name`` (``quant`` for ``policy``: ``--quant``).
    """

    name: str
    field: str
    help: str | None = None
    flag: str | None = None


class Group:
    """Base of the config groups: their name, declared aliases and JSON round trip.

    A group is a frozen dataclass that validates itself in ``__post_init__`` (with
    :mod:`qadv.validation`).
    """

    group: ClassVar[str] = ""
    aliases: ClassVar[tuple[Alias, ...]] = ()

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        if isinstance(d, cls):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"invalid {cls.group} config {d!r}; expected a mapping of fields")
        check_keys(f"{cls.group} option", d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)
