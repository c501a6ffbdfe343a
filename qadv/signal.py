"""Signal-propagation diagnostics: input-output Jacobians, input Hessian norms, gradients.

Notation (Gupta & Ajanthan): logits ``a = f(x)`` with ``d`` classes, ``p(beta) =
softmax(beta a)``, loss ``l(beta) = CE(beta a, y)``, error signal ``psi = p - onehot(y)``,
Jacobian ``J = da/dx`` (``d x N`` with ``N = H*W*C``) and Gram matrix ``G = J J^T``.

The input Hessian of the temperature-scaled cross-entropy is (paper Eq. 8)::

    H(beta) = beta * sum_k psi_k d2a_k/dx2  +  beta^2 J^T S J,    S = diag(p) - p p^T.

For ReLU, max-pool and straight-through (``sign_ste``) networks the first term vanishes
almost everywhere, and ``||H||_F = beta^2 sqrt(tr(S G S G))``: one Jacobian per example
(``d`` reverse passes) and then ``O(d^3)`` per ``beta``; the ``N x N`` Hessian is never
formed. ``tr(S G S G)`` is evaluated in the covariance form ``sum_ij p_i p_j Gc_ij^2`` with
``Gc = V G V^T``, ``V = I - 1 p^T`` and the diagonal ``1 - p_i`` computed as the sum of
the other probabilities, so that it stays accurate (and non-negative) when ``p`` is
nearly one-hot.

``hessian_norm(..., exact=True)`` adds the curvature term for smooth networks (tanh,
GELU, softplus) through the ``beta``-independent matrices ``Q_kl = <d2a_k, d2a_l>_F``
and ``R_k = J (d2a_k) J^T``; building ``Q`` costs ``N`` Jacobian-vector products of the
Jacobian per example (forward-over-reverse), so exact mode is meant for small inputs or
few examples. Every ``beta`` then costs ``O(d^3)``.

All functions are batched over the leading axis, pure, and usable under ``jax.jit``.
``logits_fn`` must treat examples independently (eval mode).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qadv.losses import get_loss, temperature_scaled

LogitsFn = Callable[[jax.Array], jax.Array]

__all__ = [
    "curvature_terms",
    "error_signal_norm",
    "gram",
    "hessian_norm",
    "input_gradient",
    "input_gradient_norm",
    "jacobian",
    "jacobian_singular_values",
    "log_hessian_norm_from_gram",
    "logit_gap",
    "prop1_beta",
    "prop1_log_constant",
    "sign_gradient_norm",
    "zero_gradient_fraction",
    "zero_gradient_mask",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def _single(logits_fn: LogitsFn) -> Callable[[jax.Array], jax.Array]:
    """Per-example view ``x_i (H,W,C) -> logits (d,)`` of a batched logits function."""
    return lambda xi: logits_fn(xi[None])[0]


def _feature_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _scaled_l2(v: jax.Array) -> jax.Array:
    """Per-example L2 norm over non-batch axes that does not underflow for tiny entries."""
    axes = _feature_axes(v)
    m = jnp.max(jnp.abs(v), axis=axes, keepdims=True)
    safe = jnp.where(m > 0, m, jnp.ones_like(m))
    return jnp.sqrt(jnp.sum(jnp.square(v / safe), axis=axes)) * m.reshape(v.shape[0])


def jacobian(logits_fn: LogitsFn, x: jax.Array) -> jax.Array:
    """Per-example input-output Jacobian ``da/dx``.

    Computed with ``jax.jacrev`` on one example (``d`` reverse passes), vmapped over the
    batch.

    Args:
        logits_fn: maps images ``(B, H, W, C)`` to logits ``(B, d)``.
        x: images ``(B, H, W, C)``.

    Returns:
        ``(B, d, H, W, C)`` Jacobians.

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.arange(6.0).reshape(3, 2)
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> jacobian(f, jnp.ones((1, 3, 1, 1))).shape
        (1, 2, 3, 1, 1)
    """
    return jax.vmap(jax.jacrev(_single(logits_fn)))(x)


def gram(jac: jax.Array) -> jax.Array:
    """Gram matrices ``G = J J^T`` ``(B, d, d)`` of Jacobians ``(B, d, ...)``.

    Example:
        >>> import jax.numpy as jnp
        >>> gram(jnp.ones((1, 2, 3))).tolist()
        [[[3.0, 3.0], [3.0, 3.0]]]
    """
    jf = jac.reshape(jac.shape[0], jac.shape[1], -1)
    return jnp.einsum("bin,bjn->bij", jf, jf, precision=_HIGHEST)


def jacobian_singular_values(logits_fn: LogitsFn, x: jax.Array) -> jax.Array:
    """All ``d`` singular values of each example's Jacobian, largest first.

    Square roots of the eigenvalues of the ``d x d`` Gram matrix (clipped at 0).

    Returns:
        ``(B, d)`` singular values.

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([[3.0, 0.0], [0.0, 4.0]])
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> jacobian_singular_values(f, jnp.ones((1, 2, 1, 1))).tolist()
        [[4.0, 3.0]]
    """
    ev = jnp.linalg.eigvalsh(gram(jacobian(logits_fn, x)))
    return jnp.sqrt(jnp.clip(ev, 0.0, None))[:, ::-1]


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
    return jnp.asarray(prop1_log_constant(rho, d), gap.dtype) / gap


# ----------------------------------------------------------------------------- Hessian


def _probs_and_complements(logits: jax.Array, betas: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``p = softmax(beta a)`` ``(B, K, d)`` and ``q_i = sum_{k != i} p_k`` (accurate 1 - p_i)."""
    z = betas[:, :, None] * logits[:, None, :]
    p = jax.nn.softmax(z, axis=-1)
    d = logits.shape[-1]
    off = jnp.ones((d, d), p.dtype) - jnp.eye(d, dtype=p.dtype)
    q = jnp.einsum("bkm,mi->bki", p, off, precision=_HIGHEST)
    return p, q


def _centering(p: jax.Array, q: jax.Array) -> jax.Array:
    """Rows ``e_i - p`` ``(B, K, d, d)`` with the diagonal taken from ``q``."""
    d = p.shape[-1]
    eye = jnp.eye(d, dtype=jnp.bool_)
    return jnp.where(eye, q[..., :, None], -p[..., None, :])


def _gauss_newton_trace(g: jax.Array, p: jax.Array, q: jax.Array) -> jax.Array:
    """``tr(S G S G) = sum_ij p_i p_j (V G V^T)_ij^2``, ``(B, K)``."""
    v = _centering(p, q)
    gc = jnp.einsum("bkim,bmn,bkjn->bkij", v, g, v, precision=_HIGHEST)
    w = p[..., :, None] * p[..., None, :]
    return jnp.sum(w * gc * gc, axis=(-2, -1))


def _as_beta_grid(betas: jax.Array, batch: int, dtype) -> jax.Array:
    betas = jnp.asarray(betas, dtype)
    if betas.ndim == 0:
        betas = betas[None]
    if betas.ndim == 1:
        betas = jnp.broadcast_to(betas[None, :], (batch, betas.shape[0]))
    if betas.ndim != 2 or betas.shape[0] != batch:
        raise ValueError(f"betas must have shape (K,) or (B, K) with B={batch}, got {betas.shape}")
    return betas


def log_hessian_norm_from_gram(
    g: jax.Array, logits: jax.Array, betas: jax.Array, curvature=None, labels=None
) -> jax.Array:
    """``log ||d2 CE(beta a, y)/dx2||_F`` from precomputed per-example quantities.

    Args:
        g: ``(B, d, d)`` Gram matrices ``J J^T``.
        logits: ``(B, d)`` logits ``a``.
        betas: ``(B, K)`` temperatures.
        curvature: ``None`` (piecewise-linear network: curvature term dropped) or a pair
            ``(Q (B, d, d), R (B, d, d, d))`` from ``curvature_terms`` (exact mode).
        labels: ``(B,)`` labels, needed only with ``curvature``.

    Returns:
        ``(B, K)`` log-norms (``-inf`` where the norm is exactly zero). Working in logs keeps
        ``beta^2`` from overflowing for the very large ``beta`` of the HNS grid.
    """
    p, q = _probs_and_complements(logits, betas)
    tiny = jnp.finfo(g.dtype).tiny
    scale = jnp.maximum(jnp.max(jnp.abs(g), axis=(1, 2)), tiny)  # (B,)
    gs = g / scale[:, None, None]
    inner = _gauss_newton_trace(gs, p, q)  # ||H||^2 / (beta^4 scale^2)
    if curvature is not None:
        qm, r = curvature
        d = logits.shape[-1]
        onehot = jax.nn.one_hot(labels, d, dtype=p.dtype)[:, None, :]
        psi = jnp.where(onehot > 0, -q, p)  # p - onehot(y), accurate at the label
        s = jnp.where(
            jnp.eye(d, dtype=jnp.bool_), (p * q)[..., :, None], -p[..., :, None] * p[..., None, :]
        )
        quad = jnp.einsum("bki,bij,bkj->bk", psi, qm, psi, precision=_HIGHEST)
        cross = jnp.einsum("bkc,bkij,bcij->bk", psi, s, r, precision=_HIGHEST)
        inner = (
            inner
            + quad / (betas * betas * scale[:, None] * scale[:, None])
            + 2.0 * cross / (betas * scale[:, None] * scale[:, None])
        )
    inner = jnp.maximum(inner, 0.0)
    log_inner = jnp.where(inner > 0, jnp.log(jnp.where(inner > 0, inner, 1.0)), -jnp.inf)
    return 2.0 * jnp.log(betas) + jnp.log(scale)[:, None] + 0.5 * log_inner


def curvature_terms(logits_fn: LogitsFn, x: jax.Array, jac: jax.Array):
    """``Q_kl = <d2a_k, d2a_l>_F`` ``(B,d,d)`` and ``R_kij = J_i d2a_k J_j^T`` ``(B,d,d,d)``."""
    jac_fn = jax.jacrev(_single(logits_fn))

    def per_example(xi, ji):
        n = xi.size
        d = ji.shape[0]

        def djac(v):  # directional derivative of the Jacobian: (d, N)
            return jax.jvp(jac_fn, (xi,), (v.reshape(xi.shape),))[1].reshape(d, n)

        chunk = int(max(1, min(n, (1 << 20) // max(1, d * n))))
        n_chunks = -(-n // chunk)

        def body(i, acc):
            idx = i * chunk + jnp.arange(chunk)
            basis = jax.nn.one_hot(idx, n, dtype=xi.dtype)  # rows beyond n are zero
            dj = jax.vmap(djac)(basis)  # (chunk, d, N)
            return acc + jnp.einsum("cKn,cLn->KL", dj, dj, precision=_HIGHEST)

        qm = jax.lax.fori_loop(0, n_chunks, body, jnp.zeros((d, d), xi.dtype))
        jf = ji.reshape(d, n)
        ej = jax.vmap(djac)(jf)  # (d_j, d_k, N): d2a_k J_j^T
        r = jnp.einsum("in,jkn->kij", jf, ej, precision=_HIGHEST)
        return qm, r

    return jax.vmap(per_example)(x, jac)


def hessian_norm(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    betas: jax.Array,
    *,
    exact: bool = False,
) -> jax.Array:
    """Frobenius norm of the input Hessian ``||d2 CE(beta f(x), y) / dx2||_F`` per example.

    Default mode drops the curvature term ``beta psi . dJ/dx``, which is exactly zero almost
    everywhere for ReLU / max-pool / straight-through networks:
    ``beta^2 sqrt(tr(S G S G))`` from one Jacobian per example; never forms ``N x N``.
    ``exact=True`` includes it (``N`` extra Jacobian-vector products of the Jacobian per
    example; use it for smooth networks with small inputs).

    Args:
        logits_fn: batched logits function.
        x: ``(B, H, W, C)`` images.
        y: ``(B,)`` labels (only used by the curvature term).
        betas: ``(K,)`` temperatures shared by all examples, or ``(B, K)``.
        exact: include the curvature term.

    Returns:
        ``(B, K)`` Hessian norms.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> w = jnp.array([[1.0, -1.0], [2.0, 0.5]])
        >>> f = lambda x: jax.nn.relu(x.reshape(x.shape[0], -1)) @ w
        >>> x, y = jnp.full((1, 2, 1, 1), 0.5), jnp.array([0])
        >>> ref = jax.hessian(lambda z: -jax.nn.log_softmax(2.0 * f(z[None]))[0, 0])(x[0])
        >>> bool(jnp.allclose(hessian_norm(f, x, y, jnp.array([2.0]))[0, 0],
        ...                   jnp.linalg.norm(ref.reshape(2, 2))))
        True
    """
    logits = logits_fn(x)
    jac = jacobian(logits_fn, x)
    betas = _as_beta_grid(betas, x.shape[0], logits.dtype)
    curv = curvature_terms(logits_fn, x, jac) if exact else None
    return jnp.exp(log_hessian_norm_from_gram(gram(jac), logits, betas, curv, y))


# ---------------------------------------------------------------------- gradients, psi


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
    b = jnp.asarray(beta, logits.dtype)
    b = b[:, None] if b.ndim == 1 else b
    p = jax.nn.softmax(b * logits, axis=-1)
    psi = p - jax.nn.one_hot(y, logits.shape[-1], dtype=p.dtype)
    return _scaled_l2(psi)


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
