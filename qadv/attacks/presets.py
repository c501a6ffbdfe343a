"""Ensemble presets (AutoAttack's protocol): attacks run in cascade, each only on the
examples still robust.

- ``standard``: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries),
  as AutoAttack's standard version (which builds Square with ``resc_schedule=False``:
  its window-size schedule runs on the real 5,000 queries, not rescaled to 10,000);
- ``plus-temperature``: ``standard`` plus PGD++ (NJS), PGD++ (HNS) and APGD-CE++ (HNS);
- ``gradient``: PGD, PGD++ (NJS), PGD++ (HNS) (no gradient-free member; quick).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qadv.attacks import registry

__all__ = ["ensemble_members"]

_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
#: How AutoAttack's ``standard`` version builds its members where that differs from the
#: registered defaults (``autoattack.py``: ``SquareAttack(..., resc_schedule=False)``).
_STANDARD_DEFAULTS = {"square": {"rescale_schedule": False}}


def ensemble_members(
    names,
    *,
    norm: str,
    eps: float,
    member_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    **overrides,
) -> list:
    """Configs for registered attack ``names`` at one threat model.

    ``member_defaults`` maps a name to options of that member (e.g. ``{"square":
    {"rescale_schedule": False}}``); ``overrides`` then apply to each member that has the
    option (e.g. ``steps``), over those defaults. An override that no member has is
    refused (one line), not dropped.

    Example:
        >>> [c.label for c in ensemble_members(["pgd", "square"], norm="linf", eps=0.1)]
        ['PGD L∞', 'Square L∞']
    """
    member_defaults = member_defaults or {}
    known = {o for n in names for o in registry.option_names(n.split("++")[0])}
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in known)
    if unknown:  # an option no member has would be dropped without a word
        raise ValueError(
            f"unknown option {unknown[0]!r} for the attacks {', '.join(names)}; "
            f"their options: {', '.join(sorted(known - {'norm', 'eps'}))}"
        )
    out = []
    for name in names:
        temperature = None
        if "++" in name:
            name, temperature = name.split("++")
        opts = dict(member_defaults.get(name, {}))
        opts.update(
            {
                k: v
                for k, v in overrides.items()
                if v is not None and k in registry.option_names(name)
            }
        )
        out.append(registry.make(name, norm=norm, eps=eps, temperature=temperature, **opts))
    return out


@registry.register_preset("standard")
def standard(*, norm: str, eps: float, **overrides) -> list:
    return ensemble_members(
        _STANDARD, norm=norm, eps=eps, member_defaults=_STANDARD_DEFAULTS, **overrides
    )


@registry.register_preset("plus-temperature")
def plus_temperature(*, norm: str, eps: float, **overrides) -> list:
    extra = ("pgd++njs", "pgd++hns", "apgd-ce++hns")
    return ensemble_members(
        _STANDARD + extra, norm=norm, eps=eps, member_defaults=_STANDARD_DEFAULTS, **overrides
    )


@registry.register_preset("gradient")
def gradient(*, norm: str, eps: float, **overrides) -> list:
    return ensemble_members(("pgd", "pgd++njs", "pgd++hns"), norm=norm, eps=eps, **overrides)
