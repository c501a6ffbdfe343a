"""Straight-through quantizers: pure functions usable under jit, vmap and every autodiff mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_jvp
def sign_ste(x: jax.Array) -> jax.Array:
    """Binarise to ±1 with the hardtanh straight-through estimator.

    Forward: ``sign(x)`` with ``sign(0) = +1``. Derivative: ``1{|x| <= 1}``.
    Built with ``jax.custom_jvp`` so that forward mode (``jacfwd``, ``jvp``,
    ``hessian``) works as well as reverse mode.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> sign_ste(jnp.array([-2.0, 0.0, 0.5])).tolist()
        [-1.0, 1.0, 1.0]
        >>> jax.grad(lambda x: sign_ste(x).sum())(jnp.array([-2.0, 0.0, 0.5])).tolist()
        [0.0, 1.0, 1.0]
    """
    return jnp.where(x >= 0, jnp.ones_like(x), -jnp.ones_like(x))


@sign_ste.defjvp
def _sign_ste_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    mask = (jnp.abs(x) <= 1).astype(t.dtype)
    return sign_ste(x), mask * t
