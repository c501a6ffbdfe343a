"""Input gradients of the temperature-scaled loss, error signals and zero-gradient measures."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qadv.losses import at_least_float32, get_loss, temperature_scaled
from qadv.signal.jacobians import LogitsFn
from qadv.static_fn import jit_over_model


def _feature_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _scaled_l2(v: jax.Array) -> jax.Array:
    """Per-example L2 norm over non-batch axes that does not underflow for tiny entries."""
    axes = _feature_axes(v)
    m = jnp.max(jnp.abs(v), axis=axes, keepdims=True)
    safe = jnp.where(m > 0, m, jnp.ones_like(m))
    return jnp.sqrt(jnp.sum(jnp.square(v / safe), axis=axes)) * m.reshape(v.shape[0])


def error_signal_norm(logits: jax.Array, y: jax.Array, beta: jax.Array | float = 1.0) -> jax.Array:
    """``||softmax(beta a) - onehot(y)||_2`` per example, as float autodiff computes it.

    (The norm itself is computed with rescaling, so entries ~1e-20 do not underflow.)

    In float32, ``p_y`` rounds to exactly 1 once the label leads by more than ~17 (and
    the other ``p_k`` underflow beyond ~88-104), which is what makes gradients vanish.

    Example:
        >>> import jax.numpy as jnp
        >>> error_signal_norm(jnp.array([[200.0, 0.0]]), jnp.array([0])).tolist()
        [0.0]
    """
    logits = at_least_float32(logits)  # a float16 beta of 1e5 is inf
    b = jnp.asarray(beta, logits.dtype)
    b = b[:, None] if b.ndim == 1 else b
    p = jax.nn.softmax(b * logits, axis=-1)
    psi = p - jax.nn.one_hot(y, logits.shape[-1], dtype=p.dtype)
    return _scaled_l2(psi)


@jit_over_model(static_argnames=("loss",))
def input_gradient(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    beta: jax.Array | float = 1.0,
    *,
    loss: str = "ce",
) -> jax.Array:
    """Per-example input gradient ``d loss(beta f(x), y) / dx``, same shape as ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], axis=1)
        >>> input_gradient(f, jnp.zeros((1, 1, 1, 1)), jnp.array([0])).shape
        (1, 1, 1, 1)
    """
    loss_fn = temperature_scaled(get_loss(loss), beta)
    return jax.grad(lambda z: jnp.sum(loss_fn(logits_fn(z), y)))(x)


@jit_over_model(static_argnames=("loss",))
def input_gradient_norm(logits_fn, x, y, beta=1.0, *, loss: str = "ce") -> jax.Array:
    """``||d loss(beta f(x), y)/dx||_2`` per example ``(B,)`` (paper Table 13).

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], axis=1)
        >>> round(float(input_gradient_norm(f, jnp.zeros((1, 1, 1, 1)), jnp.array([0]))[0]), 4)
        1.0
    """
    g = input_gradient(logits_fn, x, y, beta, loss=loss)
    return _scaled_l2(g)


@jit_over_model(static_argnames=("loss",))
def sign_gradient_norm(logits_fn, x, y, beta=1.0, *, loss: str = "ce") -> jax.Array:
    """``||sign(d loss/dx)||_2`` per example ``(B,)``: sqrt of the number of non-zero entries.

    Its maximum is ``sqrt(N)`` (55.4 for 32x32x3); exactly-zero gradients lower it.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: jnp.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], axis=1)
        >>> sign_gradient_norm(f, jnp.zeros((1, 2, 2, 1)), jnp.array([0])).tolist()
        [2.0]
    """
    g = input_gradient(logits_fn, x, y, beta, loss=loss)
    nonzero = (g != 0).astype(g.dtype)
    return jnp.sqrt(jnp.sum(nonzero, axis=_feature_axes(g)))


@jit_over_model(static_argnames=("loss",))
def zero_gradient_mask(logits_fn, x, y, beta=1.0, *, loss: str = "ce") -> jax.Array:
    """``(B,)`` bool: the example's input gradient is exactly zero everywhere.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: 500.0 * jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], 1)
        >>> zero_gradient_mask(f, jnp.ones((1, 1, 1, 1)), jnp.array([0])).tolist()
        [True]
    """
    g = input_gradient(logits_fn, x, y, beta, loss=loss)
    return jnp.all(g == 0, axis=_feature_axes(g))


def zero_gradient_fraction(logits_fn, x, y, beta=1.0, *, loss: str = "ce") -> float:
    """Fraction of examples whose input gradient is exactly zero (a Python float).

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: 500.0 * jnp.concatenate([x.reshape(2, -1), -x.reshape(2, -1)], 1)
        >>> zero_gradient_fraction(f, jnp.array([1.0, 0.0]).reshape(2, 1, 1, 1), jnp.array([0, 0]))
        0.5
    """
    mask = zero_gradient_mask(logits_fn, x, y, beta, loss=loss)
    return float(np.mean(np.asarray(mask)))
