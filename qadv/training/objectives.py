"""Loss transformations of the train step: what the network is trained on, and on what loss.

A training mode is one small registered function:

* an **adversary** ``build(cfg) -> perturb(logits_fn, x, y, key) -> x'``
  replaces the batch before the loss: ``none``, or the registered attack config the
  adversary holds (``cfg.attack``: ``pgd``, ``fastat`` = one PGD step of ``1.25 eps``,
  or any registered gradient attack, with any registered temperature), prepared on the
  batch (its temperature calibrates there) and run inside the jitted step. On a padded
  batch the train step also passes ``mask=`` (float ``(B,)``, 0 on padding rows): a
  perturbation that aggregates over the batch (NJS's calibration) uses the real rows only;
* a **regulariser** ``build(cfg) -> penalty`` adds ``lam/2 * penalty``
  to the loss (``none``, ``fd``, ``exact``). ``penalty(loss_fn, x) -> (penalty, losses,
  aux)`` receives ``loss_fn(x) -> ((B,) per-example losses, aux)`` of the network being
  trained and returns the losses at ``x`` too, so it can share their forward pass.

:func:`make_objective` composes one of each into the objective the train step
differentiates. Register a new mode with ``@adversary("name")`` or
``@regularizer("name")``; a new gradient attack in :mod:`qadv.attacks.registry` is a
training adversary by its name without anything registered here.

``cfg`` is the group of :mod:`qadv.training.config` that the mode belongs to
(:class:`~qadv.training.config.AdversaryConfig` for an adversary,
:class:`~qadv.training.config.RegularizerConfig` for a regulariser). This module does not
import it: the config groups check their names against the registries here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from qadv.attacks import AttackContext, example_keys, registry
from qadv.attacks.norms import get_norm

__all__ = [
    "ADVERSARY_BUILDERS",
    "REGULARIZER_BUILDERS",
    "TRAINING_MODES",
    "Objective",
    "adversary",
    "adversary_names",
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


TRAINING_MODES: dict[str, tuple[str, dict]] = {"pgd": ("pgd", {}), "fastat": ("pgd", {})}
"""Training modes that are a registered attack with their own step rule (see
:class:`~qadv.training.config.AdversaryConfig`): name -> (attack, fixed options)."""


def gradient_attacks() -> tuple[str, ...]:
    """Registered attacks that take a temperature (gradient attacks): each one can be a
    training adversary by its name."""
    return tuple(n for n in registry.attack_names() if "temperature" in registry.own_options(n))


def adversary_names() -> tuple[str, ...]:
    """Every valid ``adversary.name``: the registered modes, then the gradient attacks."""
    names = (*ADVERSARY_BUILDERS, *TRAINING_MODES, *gradient_attacks())
    return tuple(dict.fromkeys(names))


@adversary("none")
def _clean(cfg):
    return None


def _attack_adversary(cfg):
    """Attack the batch with ``cfg.attack``: prepared on the batch itself (NJS calibrates
    on its real rows, where ``mask`` marks padding), one key per example."""
    config = cfg.attack

    def perturb(logits_fn: LogitsFn, x, y, key, mask=None):
        data = config.prepare(logits_fn, AttackContext(calib_images=x, calib_mask=mask))
        res = config.run(data, logits_fn, x, y, example_keys(key, x.shape[0]))
        return jax.lax.stop_gradient(res.x_adv)

    return perturb


for _name in TRAINING_MODES:
    ADVERSARY_BUILDERS[_name] = _attack_adversary


# ----------------------------------------------------------------------------- regularisers


def dual_norm(g: jax.Array, norm: str) -> jax.Array:
    """Per-example dual norm of ``g`` for a threat ``norm``: l1 for linf, l2 for l2."""
    return get_norm(norm).dual.length(g.reshape(g.shape[0], -1))


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
def _no_penalty(cfg):
    return None


@regularizer("fd")
def _fd(cfg):
    return functools.partial(igr_fd, h=cfg.h, norm=cfg.norm, has_aux=True)


@regularizer("exact")
def _exact(cfg):
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


def make_objective(adv, reg) -> Objective:
    """The :class:`Objective` of an adversary and a regulariser config group.

    Args:
        adv: a :class:`~qadv.training.config.AdversaryConfig`.
        reg: a :class:`~qadv.training.config.RegularizerConfig`.
    """
    perturb = ADVERSARY_BUILDERS.get(adv.name, _attack_adversary)(adv)
    penalty = REGULARIZER_BUILDERS[reg.igr](reg)
    return Objective(perturb, penalty, float(reg.lam) if penalty is not None else 0.0)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
