"""What a masking check returns, how checks register, and the paired test they share.

A check is a function ``probe -> CheckOutcome`` (the probe is
:class:`qadv.evaluate.masking.probe.Probe`) registered in :data:`CHECKS` with
:func:`check`; :func:`beats` decides whether one attack beats PGD on the same examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from qadv.evaluate.masking.probe import Probe

__all__ = [
    "CHECKS",
    "PASS",
    "SKIPPED",
    "SUSPECTED",
    "CheckOutcome",
    "Verdict",
    "beats",
    "check",
    "eps_text",
    "pct",
]

PASS, SUSPECTED, SKIPPED = "pass", "masking suspected", "skipped"


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """One masking check's outcome: its ``name``, ``status`` (``pass``, ``masking
    suspected`` or ``skipped``), the ``reason`` in words, and the measured ``data``."""

    name: str
    status: str
    reason: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


#: The former name of :class:`CheckOutcome`, kept so that existing imports work.
Verdict = CheckOutcome

#: Registered checks, in report order: name -> (title, function of a probe).
CHECKS: dict[str, tuple[str, Callable[[Probe], CheckOutcome]]] = {}


def check(name: str, title: str):
    """Register a masking check: a function ``probe -> CheckOutcome`` (see ``Probe``)."""

    def deco(fn):
        if name in CHECKS:
            raise ValueError(f"masking check {name!r} is already registered")
        CHECKS[name] = (title, fn)
        return fn

    return deco


def beats(robust_other: np.ndarray, robust_pgd: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Whether an attack beats PGD on the same examples, per example (paired).

    It beats PGD when its robust accuracy is lower by more than ``tolerance`` points AND a
    one-sided sign test on the examples that only one of the two breaks rejects "equally
    strong" at p < 0.01: a handful of examples on a small test set is not masking.
    """
    from scipy.stats import binomtest

    other_only = int((robust_pgd & ~robust_other).sum())
    pgd_only = int((robust_other & ~robust_pgd).sum())
    n = max(len(robust_pgd), 1)
    diff = 100.0 * (other_only - pgd_only) / n
    discordant = other_only + pgd_only
    p = binomtest(other_only, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    return {
        "beats": bool(diff > tolerance and p < 0.01),
        "points": diff,
        "broken_only_by_other": other_only,
        "broken_only_by_pgd": pgd_only,
        "p_value": float(p),
    }


def pct(v: float) -> str:
    """A percentage as the report writes it: ``12.3%``."""
    return f"{v:.1f}%"


def eps_text(eps: float) -> str:
    """A radius as the report writes it, with its k/255 form if it has one:
    ``0.0314 (8/255)``."""
    k = eps * 255
    return f"{eps:.3g} ({k:.3g}/255)" if abs(k - round(k)) < 1e-6 else f"{eps:.3g}"
