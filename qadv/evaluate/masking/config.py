"""What the masking report measures: :class:`MaskingConfig`, validated in one place."""

from __future__ import annotations

import dataclasses
import math

from qadv.attacks import get_norm, registry
from qadv.evaluate.core import check_seed

__all__ = ["MaskingConfig"]


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """What the masking report measures.

    Attributes:
        norm: threat model, ``"linf"`` or ``"l2"``.
        eps: the radius the verdicts speak about (0.1 is Fashion-MNIST's usual L∞ budget;
            the paper's CIFAR budget is 8/255).
        steps: iterations of the white-box PGD every comparison uses.
        step_size: its step; ``None`` takes the norm's default (ε/4 for L∞).
        max_steps: the accuracy-against-iterations curve runs PGD this long.
        eps_factors: ε values of the accuracy-against-ε curves, as multiples of ``eps``;
            past the last one ε keeps doubling while PGD still leaves robust examples,
            up to ``eps_cap``.
        eps_cap: largest ε; ``None`` is 1 for L∞ (any image reachable) and
            ``sqrt(pixels)`` for L2.
        step_factors: step sizes of the step-size sweep, as multiples of ``eps``.
        temperatures: the PGD++ temperatures compared with PGD.
        margin_loss: also run PGD on the CW margin loss (no softmax to saturate).
        square_queries: query budget of the Square attack.
        tolerance: percentage points by which an attack must beat PGD to count.
        zero_gradient_threshold: percent of the correctly classified examples with an
            all-zero input gradient that flags masking.
        fidelity_threshold: fraction of examples whose gradient and finite difference
            disagree (relative error > 0.5, above the rounding floor) that flags masking.
        fd_step: smallest finite-difference step (pixel units, along a random ±1
            direction); the check also tries 4, 16, 64 and 256 times it, and uses per
            example the smallest step that rounding does not swamp (see the
            ``gradient-fidelity`` check).
        batch_size: examples per compiled attack call.
        seed: attack randomness (example ``i`` uses ``fold_in(key(seed), i)``).
    """

    norm: str = "linf"
    eps: float = 0.1
    steps: int = 20
    step_size: float | None = None
    max_steps: int = 200
    eps_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    eps_cap: float | None = None
    step_factors: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
    temperatures: tuple[str, ...] = ("njs", "hns")
    margin_loss: bool = True
    square_queries: int = 1000
    tolerance: float = 2.0
    zero_gradient_threshold: float = 1.0
    fidelity_threshold: float = 0.25
    fd_step: float = 1e-4
    batch_size: int = 250
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and what is allowed."""
        norm = get_norm(self.norm)
        if not (isinstance(self.eps, int | float) and self.eps > 0):
            raise ValueError(f"invalid eps {self.eps!r}; choose a number > 0")
        for name in ("steps", "max_steps", "square_queries", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"invalid {name} {v!r}; choose an integer >= 1")
        check_seed(self.seed)
        if self.max_steps < 2:
            raise ValueError(f"invalid max_steps {self.max_steps}; choose an integer >= 2")
        for name in ("eps_factors", "step_factors"):
            v = tuple(getattr(self, name))
            if not v or any(not isinstance(f, int | float) or f <= 0 for f in v):
                raise ValueError(f"invalid {name} {v!r}; choose positive multiples of eps")
        if self.eps_cap is not None:
            cap = self.eps_cap
            if not (isinstance(cap, int | float) and math.isfinite(cap) and cap >= self.eps):
                raise ValueError(f"invalid eps_cap {cap!r}; choose a finite value >= eps")
            norm.check_eps(cap)  # beyond the box (L2: the eps curve stops at the box)
        for t in self.temperatures:
            registry.make_temperature(t)
        for name in ("tolerance", "zero_gradient_threshold", "fd_step"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"invalid {name} {v!r}; choose a finite number > 0")
        if not 0 < self.fidelity_threshold < 1:
            raise ValueError(
                f"invalid fidelity_threshold {self.fidelity_threshold!r}; "
                "choose a fraction in (0, 1)"
            )
        registry.make(
            "pgd", norm=norm.name, eps=self.eps, steps=self.steps, step_size=self.step_size
        )
