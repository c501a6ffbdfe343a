"""CLEVER scores (Weng et al. 2018): an extreme-value estimate of the local Lipschitz
constant of each class margin, and the distance to the boundary it implies.

For the predicted class ``c``, each other class ``j`` and ``g_j = m_c - m_j`` (``m`` =
logits, or the softmax probabilities ``softmax(beta a)``): draw ``nb_batches`` batches
of ``batch_size`` points in the ``norm``-ball of ``radius``, keep the largest dual-norm
gradient ``||grad g_j||_*`` of each batch, fit a reverse Weibull distribution to those
maxima (:func:`reverse_weibull_location`; its location estimates the local Lipschitz
constant ``L_j``) and score ``min(g_j(x0) / L_j, radius)``; the untargeted score is the
minimum over ``j``. The method, the pooled sampling of the Adversarial Robustness
Toolbox and the role of the temperature are described in :mod:`qadv.evaluate.bounds`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import signal
from qadv.attacks.keys import example_keys
from qadv.attacks.norms import ALL_NORMS, get_norm
from qadv.attacks.protocol import split_logits_fn
from qadv.evaluate.core import padded
from qadv.evaluate.inputs import as_images
from qadv.evaluate.sampling import (
    LogitsFn,
    check_norm,
    check_positive,
    chunk_size,
    chunked,
    lp_norm,
    sample_points,
)

__all__ = ["CLEVER_OUTPUTS", "clever", "reverse_weibull_location"]

CLEVER_OUTPUTS = ("probs", "logits")
_HIGHEST = jax.lax.Precision.HIGHEST


def _head_values(a: jax.Array, jac: jax.Array | None, betas: jax.Array, logits_head: bool):
    """Head outputs ``m`` ``(H, M, d)`` and (if ``jac``) their Jacobians ``(H, M, d, N)``.

    Heads: softmax(beta_k a) for each row of ``betas (K, M)``, then the logits if asked.
    """
    vals, jacs = [], []
    for k in range(betas.shape[0]):
        bk = betas[k][:, None]
        p = jax.nn.softmax(bk * a, axis=-1)
        vals.append(p)
        if jac is not None:
            mean_j = jnp.einsum("md,mdn->mn", p, jac, precision=_HIGHEST)
            jacs.append(bk[:, :, None] * p[:, :, None] * (jac - mean_j[:, None, :]))
    if logits_head:
        vals.append(a)
        if jac is not None:
            jacs.append(jac)
    return jnp.stack(vals), (jnp.stack(jacs) if jac is not None else None)


@functools.partial(
    jax.jit,
    static_argnames=(
        "fn_static",
        "norm",
        "n_points",
        "nb_batches",
        "batch_size",
        "pool",
        "clip",
        "logits_head",
        "chunk",
    ),
)
def _clever_core(
    fn_static,
    fn_dyn,
    x,
    keys,
    betas,
    radius,
    *,
    norm,
    n_points,
    nb_batches,
    batch_size,
    pool,
    clip,
    logits_head,
    chunk,
):
    logits_fn = fn_static if fn_static is not None else fn_dyn
    b = x.shape[0]
    dual = get_norm(norm, among=ALL_NORMS).dual_name
    clean = logits_fn(x)
    c = jnp.argmax(clean, axis=-1)
    k_pts = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    pts = sample_points(k_pts, x, radius, norm, n_points, clip)

    def per_chunk(flat):
        m = flat.shape[0] // b
        a = logits_fn(flat)
        jac = signal.jacobian(logits_fn, flat).reshape(a.shape[0], a.shape[1], -1)
        _, hj = _head_values(a, jac, jnp.tile(betas, (1, m)), logits_head)  # (H, M, d, N)
        cc = jnp.tile(c, m)
        gc = jnp.take_along_axis(hj, cc[None, :, None, None], axis=2)  # (H, M, 1, N)
        diff = gc - hj
        h, mm, d, n = diff.shape
        return lp_norm(diff.reshape(h * mm * d, n), dual).reshape(h, mm, d)

    norms = chunked(lambda f: jnp.moveaxis(per_chunk(f), 1, 0), pts, chunk)  # (P, B, H, d)
    if pool:
        k_idx = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        idx = jax.vmap(lambda k: jax.random.randint(k, (nb_batches * batch_size,), 0, n_points))(
            k_idx
        )  # (B, nb*bs)
    else:
        idx = jnp.broadcast_to(jnp.arange(n_points)[None, :], (b, n_points))
    per_ex = jnp.moveaxis(norms, 0, 1)  # (B, P, H, d)
    picked = jnp.take_along_axis(per_ex, idx[:, :, None, None], axis=1)
    maxima = jnp.max(picked.reshape(b, nb_batches, batch_size, *per_ex.shape[2:]), axis=2)
    vals, _ = _head_values(clean, None, betas, logits_head)  # (H, B, d)
    g0 = jnp.take_along_axis(vals, c[None, :, None], axis=2) - vals
    return c, clean, jnp.moveaxis(maxima, 1, 3), jnp.moveaxis(g0, 0, 1)  # (B,H,d,nb), (B,H,d)


def reverse_weibull_location(maxima, *, c_init: float = 1.0, max_shape: float = 1e3) -> float:
    """Location of a reverse Weibull fit to batch maxima: CLEVER's Lipschitz estimate.

    Fits ``scipy.stats.weibull_max`` by maximum likelihood (initial shape ``c_init``) to the
    maxima standardised as ``(m - max(m)) / std(m)``, which makes the fit independent of
    the gradients' scale (scipy's optimiser uses absolute tolerances, and on raw values
    the fitted location was seen to jump between the sample maximum and ``1e8`` when the
    data were multiplied by a constant), then maps the location back.

    Degenerate and failed fits return the largest observation: all maxima equal (e.g. a
    linear model), a fit that fails or is not finite, a location below the largest
    observation (impossible for a reverse Weibull), or a shape above ``max_shape`` (the
    Gumbel limit, where the likelihood keeps growing as the location runs off to
    infinity and no finite endpoint is identified). All maxima zero gives 0.

    Example:
        >>> reverse_weibull_location([2.0, 2.0, 2.0])
        2.0
        >>> import numpy as np
        >>> x = 1.0 - np.random.default_rng(0).weibull(2.0, 200) * 0.2
        >>> 1.0 <= reverse_weibull_location(x) < 1.05
        True
    """
    from scipy.stats import weibull_max

    m = np.asarray(maxima, np.float64).reshape(-1)
    if m.size == 0 or not np.all(np.isfinite(m)):
        return float("nan")
    top = float(m.max())
    if top <= 0:
        return 0.0
    sd = float(m.std())
    if sd <= 1e-12 * top:
        return top
    z = (m - top) / sd
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape, loc, _ = weibull_max.fit(z, c_init)
    except Exception:  # scipy raises several error types for failed fits
        return top
    if not (np.isfinite(loc) and np.isfinite(shape)) or loc < 0 or shape > max_shape:
        return top
    return top + sd * float(loc)


def clever(
    logits_fn: LogitsFn,
    images,
    *,
    key: jax.Array,
    norm: str = "l2",
    radius: float = 5.0,
    nb_batches: int = 50,
    batch_size: int = 10,
    pool_factor: int | None = None,
    betas: Mapping[str, Any] | None = None,
    outputs: Sequence[str] = ("probs",),
    targets: int | None = None,
    clip: bool = True,
    indices=None,
    example_batch: int = 8,
    c_init: float = 1.0,
) -> dict[str, np.ndarray]:
    """Untargeted CLEVER scores per example (Weng et al. 2018; see the module docstring).

    Args:
        logits_fn: images ``(B, H, W, C)`` in ``[0, 1]`` -> logits ``(B, d)``.
        images: ``(N, H, W, C)`` float images.
        key: PRNG key; example ``i`` samples from ``fold_in(key, indices[i])``.
        norm: perturbation norm ``l1``, ``l2`` or ``linf`` (gradients in its dual norm).
        radius: radius of the sampling ball; also the largest score.
        nb_batches: number of batches (``N_b``), each giving one maximum.
        batch_size: points per batch (``N_s``).
        pool_factor: ``None`` for fresh points in every batch (Weng et al.), or the pool
            size factor of the Adversarial Robustness Toolbox (gradients at
            ``pool_factor * batch_size`` points, batches drawn from them with replacement).
        betas: name -> temperature (a scalar or a per-example ``(N,)`` array) for the
            ``probs`` output; default ``{"original": 1.0}``.
        outputs: ``"probs"`` (one score per entry of ``betas``) and/or ``"logits"``
            (one temperature-invariant score, key ``"logits"``).
        targets: ``None`` takes the minimum over every class other than the predicted
            one; ``t`` over the ``t`` classes with the largest clean logits after it.
        clip: clip the sample points to ``[0, 1]``.
        indices: each example's index in the evaluated set (default ``0..N-1``).
        example_batch: examples per compiled call.
        c_init: initial Weibull shape.

    Returns:
        name -> ``(N,)`` float64 scores in ``[0, radius]``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> w = jnp.array([[1.0, 0.0], [-1.0, 0.0]])  # g = x0 - x1, ||grad g||_2 = sqrt 2
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> x = jnp.array([[0.6, 0.4]]).reshape(1, 2, 1, 1)
        >>> s = clever(f, x, key=jax.random.key(0), norm="l2", radius=1.0, nb_batches=5,
        ...            batch_size=4, outputs=("logits",))
        >>> round(float(s["logits"][0]), 4)  # 0.2 / sqrt(2)
        0.1414
    """
    outputs = _checked_outputs(
        norm, radius, nb_batches, batch_size, pool_factor, example_batch, outputs
    )
    images = as_images(images)
    n = len(images)
    heads, beta_arr = _heads(betas, outputs, n)
    indices = np.arange(n) if indices is None else np.asarray(indices, np.int64)
    pool = pool_factor is not None
    n_points = pool_factor * batch_size if pool else nb_batches * batch_size
    fn_static, fn_dyn = split_logits_fn(logits_fn)
    bsz = min(example_batch, n)
    per_point = math.prod(images.shape[1:]) * 10 * max(1, len(heads))
    chunk = chunk_size(bsz, n_points, per_point)
    scores = {h: np.zeros(n) for h in heads}
    for start in range(0, n, bsz):
        xb, m = padded(images[start : start + bsz], bsz)
        bb = (
            np.stack([padded(r[start : start + bsz], bsz)[0] for r in beta_arr])
            if len(beta_arr)
            else np.zeros((0, bsz), np.float32)
        )
        ib, _ = padded(indices[start : start + bsz], bsz)
        c, clean, maxima, g0 = _clever_core(
            fn_static,
            fn_dyn,
            jnp.asarray(xb),
            example_keys(key, jnp.asarray(ib)),
            jnp.asarray(bb),
            radius,
            norm=norm,
            n_points=n_points,
            nb_batches=nb_batches,
            batch_size=batch_size,
            pool=pool,
            clip=clip,
            logits_head="logits" in outputs,
            chunk=chunk,
        )
        c, clean, maxima, g0 = (np.asarray(a, np.float64) for a in (c, clean, maxima, g0))
        for i in range(m):
            best = _scores(c[i], clean[i], maxima[i], g0[i], radius, targets, c_init)
            for h, name in enumerate(heads):
                scores[name][start + i] = best[h]
    return scores


def _checked_outputs(
    norm, radius, nb_batches, batch_size, pool_factor, example_batch, outputs
) -> tuple[str, ...]:
    """``outputs`` as a tuple, once every sampling setting is checked (one-line errors)."""
    check_norm(norm)
    check_positive("radius", radius)
    for name, v in (("nb_batches", nb_batches), ("batch_size", batch_size)):
        check_positive(name, v, integer=True)
    if pool_factor is not None:
        check_positive("pool_factor", pool_factor, integer=True)
    check_positive("example_batch", example_batch, integer=True)
    outputs = tuple(outputs)
    bad = [o for o in outputs if o not in CLEVER_OUTPUTS]
    if bad or not outputs:
        raise ValueError(
            f"bad CLEVER outputs {outputs!r}; choose from: {', '.join(CLEVER_OUTPUTS)}"
        )
    return outputs


def _heads(
    betas: Mapping[str, Any] | None, outputs: tuple[str, ...], n: int
) -> tuple[list[str], np.ndarray]:
    """The scored heads (one per temperature, then ``"logits"``) and the temperatures as
    a ``(K, n)`` float32 array, checked finite and > 0."""
    betas = {"original": 1.0} if betas is None else dict(betas)
    if "probs" not in outputs:
        betas = {}
    if "logits" in betas:
        raise ValueError("'logits' is reserved for the logits output; rename that temperature")
    beta_rows = []
    for name, b in betas.items():
        arr = np.broadcast_to(np.asarray(b, np.float32), (n,))
        if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
            raise ValueError(f"temperature {name!r} must be finite and > 0")
        beta_rows.append(arr)
    if "probs" in outputs and not betas:
        raise ValueError("the probs output needs at least one temperature in betas")
    heads = [*betas, *(["logits"] if "logits" in outputs else [])]
    beta_arr = np.stack(beta_rows) if beta_rows else np.zeros((0, n), np.float32)
    return heads, beta_arr


def _scores(c, clean, maxima, g0, radius, targets, c_init) -> list[float]:
    """One example's score per head: the minimum over its target classes of
    ``g_j / L_j`` (``L_j`` the Weibull location of the batch maxima), capped at ``radius``.

    ``c`` is the predicted class, ``clean`` the clean logits ``(d,)``, ``maxima``
    ``(H, d, nb_batches)`` and ``g0`` ``(H, d)`` the margins at the clean point.
    """
    order = [int(j) for j in np.argsort(-clean, kind="stable") if j != int(c)]
    chosen = order if targets is None else order[: int(targets)]
    out = []
    for h in range(maxima.shape[0]):
        best = float(radius)
        for j in chosen:
            lip = reverse_weibull_location(maxima[h, j], c_init=c_init)
            g = max(float(g0[h, j]), 0.0)
            score = float(radius) if lip == 0 and g > 0 else (0.0 if g == 0 else g / lip)
            best = min(best, score)
        out.append(best)
    return out
