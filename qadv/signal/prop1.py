"""Logit gaps and Proposition 1's temperature bound (Gupta & Ajanthan)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def logit_gap(logits: jax.Array) -> jax.Array:
    """Top-1 minus runner-up logit per example, ``(B, d) -> (B,)``.

    Example:
        >>> import jax.numpy as jnp
        >>> logit_gap(jnp.array([[1.0, 5.0, 2.0]])).tolist()
        [3.0]
    """
    top2 = jax.lax.top_k(logits, 2)[0]
    return top2[:, 0] - top2[:, 1]


def prop1_log_constant(rho: float, d: int) -> float:
    """``-log(rho / ((d-1)(1-rho))) = -log rho + log(1-rho) + log(d-1)`` in float64.

    Computed in log space so that ``rho = 1e-72`` (which underflows float32) works.

    Raises:
        ValueError: unless ``d >= 2`` and ``0 < rho < 1``.

    Example:
        >>> round(prop1_log_constant(1e-72, 10), 3)  # 72 log(10) + log(9)
        167.983
    """
    if int(d) != d or d < 2:
        raise ValueError(f"number of classes d must be an integer >= 2, got {d}")
    rho = float(rho)
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must lie in (0, 1), got {rho}")
    return -math.log(rho) + math.log1p(-rho) + math.log(d - 1)


def prop1_beta(gap: jax.Array, rho: float, d: int) -> jax.Array:
    """Proposition 1 bound: ``1 - softmax(beta a)_1 > rho`` for every ``beta`` below it.

    ``beta* = (-log rho + log(1-rho) + log(d-1)) / gap`` where ``gap = a_1 - a_d``
    (max minus min logit) makes the proposition hold; HNS uses the top-1 minus top-2 gap.
    The constant is computed in float64 log space (``rho = 1e-72`` is fine). A zero gap
    gives ``inf``.

    Args:
        gap: ``(...)`` positive logit gaps.
        rho: Python float in ``(0, 1)``; must be ``< (d-1)/d`` for a positive bound.
        d: number of classes (``>= 2``).

    Example:
        >>> import jax.numpy as jnp
        >>> b = prop1_beta(jnp.array([2.0]), 0.01, 10)
        >>> round(float(b[0]), 4)  # (log(99) + log(9)) / 2
        3.3962
    """
    gap = jnp.asarray(gap)
    if not jnp.issubdtype(gap.dtype, jnp.floating):  # an integer gap: no integer constant
        gap = gap.astype(jnp.float32)
    return jnp.asarray(prop1_log_constant(rho, d), gap.dtype) / gap
