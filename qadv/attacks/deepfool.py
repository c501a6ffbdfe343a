"""DeepFool (Moosavi-Dezfooli et al. 2016), multi-class, L∞ or L2: a minimum-norm attack.

At ``x_t`` still classified ``y``: the class ``l`` with the smallest linearised distance
``|f_l - f_y| / ||w_l||_dual`` (``w_l = ∇(f_l - f_y)``; dual norm: L1 for L∞, L2 for
L2), the smallest step onto its linearised boundary,
``|f_l - f_y| / ||w_l||_dual`` times the norm's steepest unit direction of ``w_l``
(L2: ``w_l / ||w_l||_2``; L∞: ``sign(w_l)``), added to the total perturbation ``r``, and
``x_{t+1} = clip(x + (1 + overshoot) r, 0, 1)``. An example stops once it is
misclassified.

``distance`` is the norm of the adversarial point found (``+inf`` if none after
``steps``), even beyond ``eps``; ``x_adv`` is that point where it lies within ``eps``,
else the clean ``x``. Queries: one per iteration and one for the final check. No
temperature: the ratios and hyperplanes it uses do not change when the logits are
scaled.

It shares FAB's linearisation (the class Jacobian, the closest class;
:mod:`qadv.attacks.fab`).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from qadv.attacks import attack, registry
    >>> f = lambda x: jnp.stack([x.reshape(x.shape[0], -1).sum(1) - 1.9,
    ...                          jnp.zeros(x.shape[0])], axis=1)
    >>> x, y = jnp.full((1, 2, 2, 1), 0.5), jnp.array([0])
    >>> res = attack(registry.make("deepfool", norm="linf", eps=0.01), f, x, y,
    ...              key=jax.random.key(0))
    >>> round(float(res.distance[0]), 4), bool(res.success[0])  # 1.02 * 0.1 / 4
    (0.0255, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from qadv.attacks import registry
from qadv.attacks.fab import (
    _class_jacobian,
    _closest_class,
    _dual_norm,
    _pick,
    _predicts_other,
    _safe_div,
)
from qadv.attacks.protocol import finish_min_norm, logits_in, narrowed, widened
from qadv.attacks.validation import check_int, check_scalar

__all__ = ["DeepFoolConfig"]

LogitsFn = Callable[[jax.Array], jax.Array]


# ------------------------------------------------------------------------------ DeepFool


class _DeepFoolState(NamedTuple):
    """Total perturbation ``r (B, n)``, iterate ``x1 (B, n)``, iterations used ``(B,)``."""

    r: jax.Array
    x1: jax.Array
    iterations: jax.Array


def _deepfool_core(cfg: DeepFoolConfig, logits_fn: LogitsFn, x, y):
    shape = x.shape
    b = shape[0]
    x0 = x.reshape(b, -1)
    geometry = cfg.geometry
    grow = jnp.asarray(1 + cfg.overshoot, x.dtype)

    def flat_fn(z):
        return logits_fn(z.reshape(shape))

    def step(s: _DeepFoolState, _) -> tuple[_DeepFoolState, None]:
        logits, jac = _class_jacobian(flat_fn, s.x1, y)
        active = ~_predicts_other(logits, y)
        j, df = _closest_class(logits, jac, y, geometry)
        w = jnp.take_along_axis(jac, j[:, None, None], axis=1)[:, 0]
        gap = jnp.abs(_pick(df, j))
        # the smallest step onto the hyperplane: its distance times the steepest direction
        r = _safe_div(gap, _dual_norm(w, geometry))[:, None] * geometry.normalize(w)
        r_total = jnp.where(active[:, None], s.r + r, s.r)
        x1 = jnp.where(active[:, None], jnp.clip(x0 + grow * r_total, 0.0, 1.0), s.x1)
        return _DeepFoolState(r_total, x1, s.iterations + active.astype(jnp.int32)), None

    init = _DeepFoolState(jnp.zeros_like(x0), x0, jnp.zeros((b,), jnp.int32))
    final = jax.lax.scan(step, init, None, length=cfg.steps)[0]
    adv = _predicts_other(flat_fn(final.x1), y)
    dist = jnp.where(adv, geometry.length(final.x1 - x0), jnp.inf)
    return final.x1.reshape(shape), dist, final.iterations


@registry.register("deepfool")
@dataclasses.dataclass(frozen=True)
class DeepFoolConfig(registry.AttackConfig):
    """DeepFool (multi-class, L∞ or L2): a minimum-norm attack (see the module docstring).

    ``distance`` is the norm of the adversarial point found (``+inf`` if none after
    ``steps``), even beyond ``eps``; ``x_adv`` is that point where it lies within
    ``eps``, else the clean ``x``. ``aux["iterations"]``: linearisation steps taken
    before the example was misclassified (or ``steps``).

    Attributes:
        steps: maximum number of iterations.
        overshoot: the total perturbation is scaled by ``1 + overshoot``.
    """

    kind: ClassVar[str] = "deepfool"
    minimum_norm: ClassVar[bool] = True

    steps: int = 50
    overshoot: float = 0.02

    def validate(self) -> None:
        super().validate()
        check_int("steps", self.steps, 1)
        check_scalar("overshoot", self.overshoot)

    @property
    def label(self) -> str:
        return f"DeepFool {self.geometry.label}"

    def run(self, data, logits_fn, x, y, keys):
        xw = widened(x)
        x_found, dist, iterations = _deepfool_core(self, logits_in(logits_fn, xw.dtype), xw, y)
        x_found, dist = narrowed(logits_fn, x, y, x_found, dist, norm=self.geometry)
        return finish_min_norm(
            logits_fn,
            x,
            y,
            x_found,
            dist,
            norm=self.geometry,
            eps=self.eps,
            queries=self.steps + 1,
            aux={"iterations": iterations},
        )
