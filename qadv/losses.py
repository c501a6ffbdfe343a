"""Per-example attack losses and loss modifiers.

Every loss maps ``logits (B, d)`` and integer ``labels (B,)`` to a per-example value
``(B,)``; *higher* means *more adversarial* (an attack ascends it).

- ``"ce"``: cross-entropy ``logsumexp(z) - z_y``.
- ``"dlr"``: difference of logits ratio (Croce & Hein 2020),
  ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``, needs ``d >= 3``.
- ``"cw"``: Carlini-Wagner margin ``max_{i != y} z_i - z_y`` (unclipped).

Loss *modifiers* return a new loss function (in the style of ``jax.grad``):
``temperature_scaled(loss_fn, beta)`` evaluates ``loss_fn(beta * logits, labels)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

__all__ = [
    "LOSS_NAMES",
    "LossFn",
    "at_least_float32",
    "cross_entropy",
    "cw_margin",
    "dlr",
    "get_loss",
    "temperature_scaled",
    "wide_dtype",
]


def _label_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)[:, 0]


def _max_other(logits: jax.Array, labels: jax.Array) -> jax.Array:
    d = logits.shape[-1]
    is_label = jnp.arange(d, dtype=jnp.int32)[None, :] == labels[:, None].astype(jnp.int32)
    neg_inf = jnp.array(-jnp.inf, logits.dtype)
    return jnp.max(jnp.where(is_label, neg_inf, logits), axis=1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy ``logsumexp(z) - z_y``.

    Args:
        logits: ``(B, d)`` logits.
        labels: ``(B,)`` integer labels.

    Returns:
        ``(B,)`` losses.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))[0]), 4)  # log 4
        1.3863
    """
    return jax.nn.logsumexp(logits, axis=1) - _label_logit(logits, labels)


def cw_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example margin ``max_{i != y} z_i - z_y`` (positive iff misclassified, ties aside).

    Example:
        >>> import jax.numpy as jnp
        >>> cw_margin(jnp.array([[3.0, 1.0, 0.0]]), jnp.array([0])).tolist()
        [-2.0]
    """
    return _max_other(logits, labels) - _label_logit(logits, labels)


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Difference of logits ratio (Croce & Hein 2020), needs at least 3 classes.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= ...``
    the sorted logits. Invariant to positive scaling of the logits (up to the 1e-12).

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(dlr(jnp.array([[3.0, 1.0, 0.0]]), jnp.array([0]))[0]), 4)
        -0.6667
    """
    if logits.shape[-1] < 3:
        raise ValueError(f"dlr loss needs at least 3 classes, got d={logits.shape[-1]}")
    top3 = jax.lax.top_k(logits, 3)[0]
    denom = top3[:, 0] - top3[:, 2] + jnp.asarray(1e-12, logits.dtype)
    return cw_margin(logits, labels) / denom


_LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "dlr": dlr, "cw": cw_margin}
LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def get_loss(name: str) -> LossFn:
    """Look up a per-example loss by name (``"ce"``, ``"dlr"`` or ``"cw"``).

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> get_loss("cw") is cw_margin
        True
    """
    if not isinstance(name, str) or name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSS_NAMES)}")
    return _LOSSES[name]


def wide_dtype(dtype) -> jnp.dtype:
    """``dtype``, or float32 for a narrower float (float16, bfloat16): the dtype losses,
    temperatures and an attack's radius, steps and projections are computed in."""
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def at_least_float32(a: jax.Array) -> jax.Array:
    """``a`` in :func:`wide_dtype` (float32 if it is a narrower float, else unchanged: no
    dtype promotion, so it also holds under strict promotion and with float64)."""
    return a.astype(wide_dtype(a.dtype))


def temperature_scaled(loss_fn: LossFn, beta: jax.Array | float) -> LossFn:
    """Return ``loss_fn`` evaluated on temperature-scaled logits ``beta * logits``.

    ``beta`` is a scalar or a per-example ``(B,)`` array; any ``beta > 0`` leaves the
    prediction ``argmax`` unchanged.

    Example:
        >>> import jax.numpy as jnp
        >>> ce2 = temperature_scaled(cross_entropy, 2.0)
        >>> z, y = jnp.array([[1.0, 0.0]]), jnp.array([0])
        >>> bool(jnp.allclose(ce2(z, y), cross_entropy(2.0 * z, y)))
        True
    """

    def scaled(logits: jax.Array, labels: jax.Array) -> jax.Array:
        # at least float32: a float16 beta of 1e5 is inf, and the loss is float32 anyway
        logits = at_least_float32(logits)
        b = jnp.asarray(beta, logits.dtype)
        if b.ndim == 1:
            b = b[:, None]
        elif b.ndim != 0:
            raise ValueError(f"beta must be a scalar or shape (B,), got shape {b.shape}")
        return loss_fn(b * logits, labels)

    return scaled
