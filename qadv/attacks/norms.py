"""Threat-model geometry: three small functions per norm (as in foolbox v3).

``random_start(key, x, eps)``, ``normalize(g)`` (steepest-ascent direction of unit norm)
and ``project(x_adv, x, eps)`` (back into the ball around ``x`` and into ``[0, 1]``).
L-inf and L2 PGD differ only here. Norms are taken per example over *all* non-batch axes
(``H*W*C``).

Differences from the authors' PyTorch release:

- the L2 ball is the ball of the *total* norm over ``H*W*C`` (the release projects each
  colour channel separately, so its total norm can reach ``sqrt(3) * eps``);
- the L2 random start is uniform in the ball (direction uniform on the sphere, radius
  ``eps * U^(1/N)``), then clipped to ``[0, 1]``;
- clipping to ``[0, 1]`` moves every coordinate towards the clean image, so it never
  leaves the ball.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["L2", "LINF", "NORMS", "Norm", "get_norm"]


class Norm(NamedTuple):
    """Geometry of one threat model."""

    name: str
    random_start: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    normalize: Callable[[jax.Array], jax.Array]
    project: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _safe_norm(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example L2 norm with keepdims and a NaN-free derivative at zero; also ``v != 0``."""
    s = jnp.sum(v * v, axis=_axes(v), keepdims=True)
    nonzero = s > 0
    return jnp.sqrt(jnp.where(nonzero, s, jnp.ones_like(s))), nonzero


def _clip01(x: jax.Array) -> jax.Array:
    return jnp.clip(x, jnp.zeros((), x.dtype), jnp.ones((), x.dtype))


# ------------------------------------------------------------------------------ L-inf


def _linf_random_start(key, x, eps):
    eps = jnp.asarray(eps, x.dtype)
    delta = jax.random.uniform(key, x.shape, x.dtype, minval=-eps, maxval=eps)
    return _clip01(x + delta)


def _linf_normalize(g):
    return jnp.sign(g)


def _linf_project(x_adv, x, eps):
    eps = jnp.asarray(eps, x.dtype)
    return _clip01(jnp.clip(x_adv, x - eps, x + eps))


# --------------------------------------------------------------------------------- L2


def _l2_random_start(key, x, eps):
    eps = jnp.asarray(eps, x.dtype)
    k_dir, k_rad = jax.random.split(key)
    u = jax.random.normal(k_dir, x.shape, x.dtype)
    n, nonzero = _safe_norm(u)
    direction = jnp.where(nonzero, u / n, jnp.zeros_like(u))
    dims = x[0].size
    rshape = (x.shape[0],) + (1,) * (x.ndim - 1)
    r = jax.random.uniform(k_rad, rshape, x.dtype) ** jnp.asarray(1.0 / dims, x.dtype)
    return _clip01(x + eps * r * direction)


def _l2_normalize(g):
    n, nonzero = _safe_norm(g)
    return jnp.where(nonzero, g / n, jnp.zeros_like(g))


def _l2_project(x_adv, x, eps):
    eps = jnp.asarray(eps, x.dtype)
    delta = x_adv - x
    n, nonzero = _safe_norm(delta)
    outside = nonzero & (n > eps)
    factor = jnp.where(outside, eps / n, jnp.ones_like(n))
    return _clip01(x + delta * factor)


LINF = Norm("linf", _linf_random_start, _linf_normalize, _linf_project)
L2 = Norm("l2", _l2_random_start, _l2_normalize, _l2_project)
NORMS: dict[str, Norm] = {"linf": LINF, "l2": L2}


def get_norm(name: str) -> Norm:
    """Look up a threat model by name (``"linf"`` or ``"l2"``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.full((1, 2, 2, 1), 0.5)
        >>> far = get_norm("l2").project(x + 1.0, x, 0.1)
        >>> round(float(jnp.linalg.norm(far - x)), 4)
        0.1
    """
    if not isinstance(name, str) or name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of: {', '.join(NORMS)}")
    return NORMS[name]
