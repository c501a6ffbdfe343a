"""Ensemble presets (AutoAttack's protocol): attacks run in cascade, each only on the
examples still robust.

- ``standard``: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries),
  as AutoAttack's standard version;
- ``plus-temperature``: ``standard`` plus PGD++ (NJS), PGD++ (HNS) and APGD-CE++ (HNS);
- ``gradient``: PGD, PGD++ (NJS), PGD++ (HNS) (no gradient-free member; quick).
"""

from __future__ import annotations

from qadv.attacks import registry

__all__ = ["ensemble_members"]

_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


def ensemble_members(names, *, norm: str, eps: float, **overrides) -> list:
    """Configs for registered attack ``names`` at one threat model.

    ``overrides`` apply to each member that has the option (e.g. ``steps``)."""
    out = []
    for name in names:
        temperature = None
        if "++" in name:
            name, temperature = name.split("++")
        opts = {k: v for k, v in overrides.items() if k in registry.option_names(name)}
        out.append(registry.make(name, norm=norm, eps=eps, temperature=temperature, **opts))
    return out


@registry.register_preset("standard")
def standard(*, norm: str, eps: float, **overrides) -> list:
    return ensemble_members(_STANDARD, norm=norm, eps=eps, **overrides)


@registry.register_preset("plus-temperature")
def plus_temperature(*, norm: str, eps: float, **overrides) -> list:
    extra = ("pgd++njs", "pgd++hns", "apgd-ce++hns")
    return ensemble_members(_STANDARD + extra, norm=norm, eps=eps, **overrides)


@registry.register_preset("gradient")
def gradient(*, norm: str, eps: float, **overrides) -> list:
    return ensemble_members(("pgd", "pgd++njs", "pgd++hns"), norm=norm, eps=eps, **overrides)
