"""Loss transformations of the train step: what the network is trained on, and on what loss.

A training mode is one small registered function:

* an **adversary** ``build(cfg: AdversaryConfig) -> perturb(logits_fn, x, y, key) -> x'``
  replaces the batch before the loss (``none``, ``pgd``, ``fastat``), using qadv's own
  attacks (:func:`qadv.attacks.make_pgd`) inside the jitted step. On a padded batch the
  train step also passes ``mask=`` (float ``(B,)``, 0 on padding rows): a perturbation
  that aggregates over the batch (NJS's calibration) must use the real rows only;
* a **regulariser** ``build(cfg: RegularizerConfig) -> penalty`` adds ``lam/2 * penalty``
  to the loss (``none``, ``fd``, ``exact``). ``penalty(loss_fn, x) -> (penalty, losses,
  aux)`` receives ``loss_fn(x) -> ((B,) per-example losses, aux)`` of the network being
  trained and returns the losses at ``x`` too, so it can share their forward pass.

:func:`make_objective` composes one of each into the objective the train step
differentiates. Register a new mode with ``@adversary("name")`` or
``@regularizer("name")`` (and add its name to the config's choices).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from qadv.attacks import hns, make_pgd, njs, start_and_run
from qadv.attacks.norms import get_norm
from qadv.signal import jacobian_singular_values
from qadv.training.config import AdversaryConfig, RegularizerConfig

__all__ = [
    "ADVERSARY_BUILDERS",
    "REGULARIZER_BUILDERS",
    "Objective",
    "adversary",
    "dual_norm",
    "igr_exact",
    "igr_fd",
    "make_objective",
    "regularizer",
]

LogitsFn = Callable[[jax.Array], jax.Array]
LossFn = Callable[[jax.Array], jax.Array]  # x (B, ...) -> per-example loss (B,)
ADVERSARY_BUILDERS: dict[str, Callable] = {}
REGULARIZER_BUILDERS: dict[str, Callable] = {}


def adversary(name: str):
    """Registers ``build(cfg) -> perturb(logits_fn, x, y, key) -> x_train``."""

    def deco(fn):
        ADVERSARY_BUILDERS[name] = fn
        return fn

    return deco


def regularizer(name: str):
    """Registers ``build(cfg) -> penalty(loss_fn, x) -> (penalty, losses, aux)`` (or
    ``None``: no penalty); see the module docstring."""

    def deco(fn):
        REGULARIZER_BUILDERS[name] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------- adversaries


@adversary("none")
def _clean(cfg: AdversaryConfig):
    return None


def _temperature(name: str, logits_fn: LogitsFn, x: jax.Array, mask: jax.Array | None = None):
    """PGD++ temperature for training: NJS calibrated on the training batch itself (on its
    real rows, where ``mask`` marks padding: the mean Jacobian singular value)."""
    if name == "njs":
        temperature = njs(logits_fn, x)
        if mask is None:
            return temperature
        sv = jacobian_singular_values(logits_fn, x)  # (B, d), each example on its own
        mean_sv = jnp.sum(sv * mask[:, None]) / (jnp.sum(mask) * sv.shape[1])
        return dataclasses.replace(temperature, beta1=1.0 / mean_sv)
    return hns() if name == "hns" else None


def _pgd_perturb(cfg: AdversaryConfig, *, steps: int, step_size: float):
    def perturb(logits_fn: LogitsFn, x, y, key, mask=None):
        atk = make_pgd(
            logits_fn,
            eps=cfg.eps,
            step_size=step_size,
            norm=cfg.norm,
            temperature=_temperature(cfg.temperature, logits_fn, x, mask),
            random_init=True,
        )
        state = start_and_run(atk, key, x, y, steps)
        return jax.lax.stop_gradient(state.x_adv)

    return perturb


@adversary("pgd")
def _pgd(cfg: AdversaryConfig):
    """Madry et al.: PGD-T from a random start (T = 7, eta = eps/4 by default)."""
    return _pgd_perturb(cfg, steps=cfg.resolved_steps, step_size=cfg.resolved_step_size)


@adversary("fastat")
def _fastat(cfg: AdversaryConfig):
    """Wong et al. 2020: one FGSM step of 1.25 eps from a uniform random start."""
    return _pgd_perturb(cfg, steps=1, step_size=cfg.resolved_step_size)


# ----------------------------------------------------------------------------- regularisers


def dual_norm(g: jax.Array, norm: str) -> jax.Array:
    """Per-example dual norm of ``g`` for a threat ``norm``: l1 for linf, l2 for l2."""
    flat = g.reshape(g.shape[0], -1)
    if norm == "linf":
        return jnp.sum(jnp.abs(flat), axis=1)
    return jnp.sqrt(jnp.sum(flat * flat, axis=1))


def _input_grad(loss_fn, x):
    losses, vjp, aux = jax.vjp(loss_fn, x, has_aux=True)
    (g,) = vjp(jnp.ones_like(losses))
    return losses, g, aux


def _aux(loss_fn, has_aux: bool):
    return loss_fn if has_aux else (lambda z: (loss_fn(z), None))


def igr_exact(loss_fn: LossFn, x: jax.Array, *, norm: str = "linf", has_aux: bool = False):
    """``||grad_x l(x)||_*^2`` per example, by double backprop (differentiable).

    ``loss_fn(x) -> (B,)`` per-example losses (``-> ((B,), aux)`` with ``has_aux``; then
    ``(penalty, losses, aux)`` is returned, so the caller reuses the forward pass).

    Example:
        >>> f = lambda z: jnp.sum(3.0 * z.reshape(z.shape[0], -1), axis=1)  # grad = 3
        >>> igr_exact(f, jnp.zeros((1, 2, 1, 1))).tolist()  # ||(3, 3)||_1^2
        [36.0]
    """
    losses, g, aux = _input_grad(_aux(loss_fn, has_aux), x)
    penalty = dual_norm(g, norm) ** 2
    return (penalty, losses, aux) if has_aux else penalty


def igr_fd(loss_fn: LossFn, x: jax.Array, *, h: float, norm: str = "linf", has_aux: bool = False):
    """Finite-difference ``((l(x + h d) - l(x)) / h)^2`` per example (Finlay & Oberman).

    ``d`` is the steepest-ascent unit direction of the threat norm at ``x`` (``sign(g)``
    for linf, ``g / ||g||_2`` for l2), held constant, so ``l(x + h d) - l(x) ~ h ||g||_*``
    and the square approaches the exact penalty as ``h -> 0`` (its error is proportional
    to the curvature, which it therefore also penalises). Cost: the forward pass at
    ``x`` with its backward pass to ``g`` (shared with the loss itself under
    ``has_aux``), the forward pass at ``x + h d``, and one backward pass through both
    losses: no double backprop.

    Example:
        >>> f = lambda z: jnp.sum(3.0 * z.reshape(z.shape[0], -1), axis=1)
        >>> [round(v, 4) for v in igr_fd(f, jnp.zeros((1, 2, 1, 1)), h=0.01).tolist()]
        [36.0]
    """
    fn = _aux(loss_fn, has_aux)
    losses, g, aux = _input_grad(fn, x)
    d = jax.lax.stop_gradient(get_norm(norm).normalize(g))
    shifted, _ = fn(x + h * d)
    penalty = ((shifted - losses) / h) ** 2
    return (penalty, losses, aux) if has_aux else penalty


@regularizer("none")
def _no_penalty(cfg: RegularizerConfig):
    return None


@regularizer("fd")
def _fd(cfg: RegularizerConfig):
    return functools.partial(igr_fd, h=cfg.h, norm=cfg.norm, has_aux=True)


@regularizer("exact")
def _exact(cfg: RegularizerConfig):
    return functools.partial(igr_exact, norm=cfg.norm, has_aux=True)


# ----------------------------------------------------------------------------- composition


class Objective(NamedTuple):
    """The loss transformation of a train step.

    ``perturb(logits_fn, x, y, key) -> x_train`` (``None``: clean training) and
    ``penalty(loss_fn, x) -> (penalty, losses, aux)`` (``None``: no regulariser), weighted
    by ``lam / 2``.
    """

    perturb: Callable | None = None
    penalty: Callable | None = None
    lam: float = 0.0


def make_objective(adv: AdversaryConfig, reg: RegularizerConfig) -> Objective:
    """The :class:`Objective` of an adversary config and a regulariser config."""
    perturb = ADVERSARY_BUILDERS[adv.name](adv)
    penalty = REGULARIZER_BUILDERS[reg.igr](reg)
    return Objective(perturb, penalty, float(reg.lam) if penalty is not None else 0.0)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
