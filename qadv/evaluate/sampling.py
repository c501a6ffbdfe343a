"""Points sampled in a norm ball around each example, and gradient norms over them.

Shared by CLEVER (:mod:`qadv.evaluate.clever`) and the L-/C-bounds
(:mod:`qadv.evaluate.bounds`): :func:`sample_ball` draws uniformly in the ``norm``-ball,
:func:`sample_points` places those draws around a batch of examples, :func:`chunked`
evaluates a function over them a chunk at a time (memory), and :func:`lp_norm` measures
a gradient in a norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qadv.attacks.norms import ALL_NORMS, Norm, get_norm

__all__ = [
    "BALL_NORMS",
    "DUAL_NORMS",
    "check_norm",
    "check_positive",
    "chunk_size",
    "chunked",
    "lp_norm",
    "sample_ball",
    "sample_points",
]

LogitsFn = Callable[[jax.Array], jax.Array]

BALL_NORMS = tuple(ALL_NORMS)
DUAL_NORMS = {name: norm.dual_name for name, norm in ALL_NORMS.items()}


def check_norm(norm: str) -> Norm:
    """The :class:`~qadv.attacks.norms.Norm` named ``norm``; an unknown name raises."""
    return get_norm(norm, among=ALL_NORMS)


def check_positive(name: str, value, *, integer: bool = False) -> None:
    """Refuse (one-line ``ValueError``) a ``value`` that is not finite and > 0, or, with
    ``integer``, not a whole number >= 1."""
    bad = isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating)
    if not bad:
        bad = not (math.isfinite(float(value)) and value > 0)
        bad = bad or (integer and int(value) != value)
    if bad:
        kind = "an integer >= 1" if integer else "a finite number > 0"
        raise ValueError(f"bad {name} {value!r}; it must be {kind}")


def lp_norm(v: jax.Array, norm: str) -> jax.Array:
    """Per-example ``l1``/``l2``/``linf`` norm over all non-batch axes, ``(B, ...) -> (B,)``.

    The L2 norm is computed after dividing by ``max |v|``, so gradients far below the
    float32 square-root range (``1e-30``) do not underflow to 0.

    Example:
        >>> import jax.numpy as jnp
        >>> v = jnp.array([[3.0, -4.0]])
        >>> [float(lp_norm(v, n)[0]) for n in ("l1", "l2", "linf")]
        [7.0, 5.0, 4.0]
    """
    return check_norm(norm).magnitude(v.reshape(v.shape[0], -1))


def sample_ball(key: jax.Array, x: jax.Array, radius, norm: str, n: int) -> jax.Array:
    """``n`` perturbations drawn uniformly in the ``norm``-ball of ``radius``, ``(n, *x.shape)``.

    L∞: uniform in the cube. L2: a uniform direction times ``radius * U^(1/N)``. L1: random
    signs times ``radius * (E_1..E_N) / (E_1 + ... + E_{N+1})`` with ``E_i ~ Exp(1)``
    (uniform in the simplex ``{u >= 0, sum u <= 1}``). ``x`` only gives the shape and dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> v = sample_ball(jax.random.key(0), jnp.zeros((3, 2)), 0.5, "l1", 4)
        >>> v.shape, bool(jnp.all(jnp.abs(v).sum((1, 2)) <= 0.5))
        ((4, 3, 2), True)
    """
    return check_norm(norm).sample(key, x, radius, n)


def sample_points(keys, x, radius, norm: str, n: int, clip: bool) -> jax.Array:
    """``(B, n, ...)`` sample points around each example, clipped to ``[0, 1]`` if asked."""
    pts = x[:, None] + jax.vmap(lambda k, xi: sample_ball(k, xi, radius, norm, n))(keys, x)
    if clip:
        pts = jnp.clip(pts, jnp.zeros((), x.dtype), jnp.ones((), x.dtype))
    return pts


def chunked(fn, pts: jax.Array, chunk: int):
    """``fn`` over point-major chunks of ``pts (B, P, ...)``; ``fn`` maps ``(chunk*B, ...)``
    (index ``q * B + b``) to arrays with leading axis ``chunk*B``; returns ``(P, B, ...)``."""
    b, p = pts.shape[:2]
    n_chunks = -(-p // chunk)
    pm = jnp.moveaxis(pts, 1, 0)  # (P, B, ...)
    if n_chunks * chunk > p:
        pm = jnp.concatenate([pm, jnp.repeat(pm[-1:], n_chunks * chunk - p, axis=0)], axis=0)
    pm = pm.reshape(n_chunks, chunk * b, *pts.shape[2:])
    out = jax.lax.map(fn, pm)
    return jax.tree_util.tree_map(lambda a: a.reshape(n_chunks * chunk, b, *a.shape[2:])[:p], out)


def chunk_size(b: int, p: int, per_point: int) -> int:
    """Points per chunk so that one chunk holds at most ~2^24 floats of Jacobians."""
    return int(max(1, min(p, (1 << 24) // max(1, b * per_point))))
