"""Input Hessian norms of the temperature-scaled cross-entropy (paper Eq. 8).

``||H(beta)||_F = beta^2 sqrt(tr(S G S G))`` from the Gram matrix ``G = J J^T`` of one
Jacobian per example (Gauss-Newton; exact for ReLU / max-pool / straight-through
networks), evaluated through the centred Gram matrix (:func:`centred_gram`) so that it
stays accurate when ``p`` is nearly one-hot; :func:`log_hessian_norm_topk` keeps the
rows of the ``k`` largest logits only; ``hessian_norm(..., exact=True)`` adds the
curvature term of smooth networks (:func:`curvature_terms`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from qadv.losses import at_least_float32
from qadv.signal.jacobians import _HIGHEST, LogitsFn, gram, jacobian
from qadv.static_fn import jit_over_model


def _single(logits_fn: LogitsFn) -> Callable[[jax.Array], jax.Array]:
    """Per-example view ``x_i (H,W,C) -> logits (d,)`` of a batched logits function."""
    return lambda xi: logits_fn(xi[None])[0]


def _probs_and_complements(logits: jax.Array, betas: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``p = softmax(beta a)`` ``(B, K, d)`` and ``q_i = sum_{k != i} p_k`` (accurate 1 - p_i)."""
    z = betas[:, :, None] * logits[:, None, :]
    p = jax.nn.softmax(z, axis=-1)
    d = logits.shape[-1]
    off = jnp.ones((d, d), p.dtype) - jnp.eye(d, dtype=p.dtype)
    q = jnp.einsum("bkm,mi->bki", p, off, precision=_HIGHEST)
    return p, q


def centred_gram(g: jax.Array, top: jax.Array) -> jax.Array:
    """Gram matrix of the Jacobian rows minus the top class's row, from ``G = J J^T``.

    ``G'_ij = (J_i - J_t)(J_j - J_t)^T`` with ``t = top`` ``(B,)``; row and column ``t``
    are zero. Because every row of ``V = I - 1 p^T`` sums to zero when ``sum(p) = 1``,
    ``V G V^T = V G' V^T``, and ``G'`` keeps that product accurate when ``p`` is nearly
    one-hot on ``t`` (which it is for large ``beta``).

    Example:
        >>> import jax.numpy as jnp
        >>> centred_gram(jnp.array([[[4.0, 1.0], [1.0, 2.0]]]), jnp.array([0])).tolist()
        [[[0.0, 0.0], [0.0, 4.0]]]
    """
    gt = jnp.take_along_axis(g, top[:, None, None].astype(jnp.int32), axis=1)[:, 0, :]  # (B, d)
    gtt = jnp.take_along_axis(gt, top[:, None].astype(jnp.int32), axis=1)[:, 0]
    gc = g - gt[:, None, :] - gt[:, :, None] + gtt[:, None, None]
    # row and column t exactly zero (rounding leaves ~eps * G_tt in the column): at large
    # beta a residue there, weighted by p_t p_j, would outweigh the true p_j p_k terms
    on_t = jnp.arange(g.shape[-1])[None, :] == top[:, None].astype(jnp.int32)  # (B, d)
    return jnp.where(on_t[:, :, None] | on_t[:, None, :], jnp.zeros_like(gc), gc)


def _gauss_newton_trace(gc: jax.Array, log_p: jax.Array) -> jax.Array:
    """``log tr(S G S G) = log sum_ij p_i p_j (V G' V^T)_ij^2`` ``(B, K)`` for centred
    ``G'`` ``(B, m, m)`` and log-distributions ``log_p`` ``(B, K, m)`` (``O(m^2)`` per
    ``beta``; ``-inf`` where the trace is zero).

    The weights ``p_i p_j`` are formed from log-probabilities, relative to the largest
    term's scale: at large ``beta`` the probabilities of the other classes fall below
    float32's smallest normal number (about ``1e-38``) long before the norm does, and as
    products of probabilities they would flush to zero or lose their digits.
    """
    p = jnp.exp(log_p)
    a = jnp.einsum("bij,bkj->bki", gc, p, precision=_HIGHEST)  # G' p
    s = jnp.einsum("bki,bki->bk", p, a, precision=_HIGHEST)  # p^T G' p
    c = gc[:, None, :, :] - a[..., :, None] - a[..., None, :] + s[..., None, None]
    # the sum is dominated by p_j p_k G'_jk^2 of the classes j, k after the top one (its
    # row of G' is zero), so the weights are taken relative to the square of the second
    # largest probability; weights above e^60 (only the top class's, whose terms are
    # O(p_j) smaller than the rest then) are capped to stay in float32's range
    second = jax.lax.top_k(jax.lax.stop_gradient(log_p), 2)[0][..., 1]
    shift = jnp.where(jnp.isfinite(second), 2.0 * second, 0.0)
    rel = log_p[..., :, None] + log_p[..., None, :] - shift[..., None, None]
    total = jnp.sum(jnp.exp(jnp.minimum(rel, 60.0)) * (c * c), axis=(-2, -1))
    return shift + _log0(total)


def _log0(v: jax.Array) -> jax.Array:
    """``log v`` for ``v >= 0``: ``-inf`` at 0, with a NaN-free derivative there."""
    return jnp.where(v > 0, jnp.log(jnp.where(v > 0, v, 1.0)), -jnp.inf)


def _log_norm(log_inner: jax.Array, betas: jax.Array, scale: jax.Array) -> jax.Array:
    return 2.0 * jnp.log(betas) + jnp.log(scale)[:, None] + 0.5 * log_inner


def _gram_scale(g: jax.Array) -> jax.Array:
    tiny = jnp.finfo(g.dtype).tiny
    return jnp.maximum(jnp.max(jnp.abs(g), axis=(1, 2)), tiny)  # (B,)


def top_classes(logits: jax.Array, k: int) -> jax.Array:
    """``(B, k)`` indices of the ``k`` largest logits per example, largest first.

    Example:
        >>> import jax.numpy as jnp
        >>> top_classes(jnp.array([[0.1, 3.0, 2.0]]), 2).tolist()
        [[1, 2]]
    """
    safe = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
    return jax.lax.top_k(safe, int(k))[1].astype(jnp.int32)


def _truncated_log_probs(logits: jax.Array, classes: jax.Array, betas: jax.Array) -> jax.Array:
    """``log softmax(beta a)`` restricted to ``classes`` plus the log of the remaining mass
    as a last column, ``(B, K, k + 1)`` (no ``1 - sum``)."""
    z = betas[:, :, None] * logits[:, None, :]  # (B, K, d)
    lse = jax.nn.logsumexp(z, axis=-1)  # (B, K)
    picked = jnp.take_along_axis(logits, classes, axis=1)  # (B, k)
    in_top = jnp.zeros(logits.shape, jnp.bool_)
    in_top = jax.vmap(lambda m, c: m.at[c].set(True))(in_top, classes)
    rest = jnp.where(in_top, -jnp.inf, logits)
    lse_rest = jax.nn.logsumexp(betas[:, :, None] * rest[:, None, :], axis=-1)  # (B, K)
    log_p = betas[:, :, None] * picked[:, None, :] - lse[..., None]
    return jnp.concatenate([log_p, (lse_rest - lse)[..., None]], axis=-1)


def log_hessian_norm_topk(
    gc: jax.Array, logits: jax.Array, classes: jax.Array, betas: jax.Array
) -> jax.Array:
    """``log ||H(beta)||_F`` from the Jacobian rows of ``k`` classes only (Gauss-Newton).

    The ``d - k`` other classes are treated as moving with the top class (their rows are
    replaced by the top class's row), which is exact when ``k = d`` and loses only terms
    weighted by their probability mass, which is tiny at the large ``beta`` that HNS
    picks when the ``k`` classes are those with the largest logits. Costs ``k`` reverse
    passes and ``O(K k^2)`` per example instead of ``d`` passes and ``O(K d^2)``.

    Args:
        gc: ``(B, k, k)`` centred Gram matrix of the rows of ``classes`` (see
            :func:`centred_gram`; ``classes[:, 0]`` must be the top class).
        logits: ``(B, d)`` logits (all classes: the remaining mass needs them).
        classes: ``(B, k)`` class indices, top class first (:func:`top_classes`).
        betas: ``(B, K)`` temperatures.

    Returns:
        ``(B, K)`` log-norms.
    """
    log_p = _truncated_log_probs(logits, classes, betas)  # (B, K, k + 1)
    scale = _gram_scale(gc)
    gs = jnp.pad(gc / scale[:, None, None], ((0, 0), (0, 1), (0, 1)))  # rest row: zero
    return _log_norm(_gauss_newton_trace(gs, log_p), betas, scale)


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
    log_p = jax.nn.log_softmax(betas[:, :, None] * logits[:, None, :], axis=-1)
    top = jnp.argmax(jnp.where(jnp.isnan(logits), -jnp.inf, logits), axis=-1)
    gc = centred_gram(g, top)
    scale = _gram_scale(gc)
    log_inner = _gauss_newton_trace(gc / scale[:, None, None], log_p)  # ||H||^2/(b^4 s^2)
    if curvature is not None:
        p, q = _probs_and_complements(logits, betas)
        qm, r = curvature
        d = logits.shape[-1]
        onehot = jax.nn.one_hot(labels, d, dtype=p.dtype)[:, None, :]
        psi = jnp.where(onehot > 0, -q, p)  # p - onehot(y), accurate at the label
        s = jnp.where(
            jnp.eye(d, dtype=jnp.bool_), (p * q)[..., :, None], -p[..., :, None] * p[..., None, :]
        )
        quad = jnp.einsum("bki,bij,bkj->bk", psi, qm, psi, precision=_HIGHEST)
        cross = jnp.einsum("bkc,bkij,bcij->bk", psi, s, r, precision=_HIGHEST)
        # ||H||^2 = beta^2 (beta^2 GN + quad + 2 beta cross), GN the Gauss-Newton trace:
        # nothing is divided by beta^2 or the Gram scale, which may be 0 or underflow
        log_beta = jnp.log(betas)
        gn = jnp.exp(2.0 * log_beta + 2.0 * jnp.log(scale)[:, None] + log_inner)
        return log_beta + 0.5 * _log0(jnp.maximum(gn + quad + 2.0 * betas * cross, 0.0))
    return _log_norm(log_inner, betas, scale)


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


@jit_over_model(static_argnames=("exact",))
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
    logits = at_least_float32(logits)  # a float16 beta of 1e5 is inf
    jac = jacobian(logits_fn, x)
    betas = _as_beta_grid(betas, x.shape[0], logits.dtype)
    curv = curvature_terms(logits_fn, x, jac) if exact else None
    return jnp.exp(log_hessian_norm_from_gram(gram(jac), logits, betas, curv, y))
