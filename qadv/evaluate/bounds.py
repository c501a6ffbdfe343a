"""Empirical lower bounds on the minimal adversarial perturbation: CLEVER and the L/C-bounds.

Both estimate how far an example is from the decision boundary from gradients sampled
around it; neither is certified. They are *estimates*: a Lipschitz constant taken as the
largest gradient seen at finitely many sample points can be smaller than the true one,
and then the "bound" exceeds the true minimal distance. Report them beside the distance
a minimum-norm attack (FAB, DeepFool) actually found: a bound above that distance proves
the estimate wrong for that example (:func:`compare_with_distance`).

Norms: ``norm`` is the norm of the perturbation (``"l1"``, ``"l2"`` or ``"linf"``); every
gradient is measured in its dual norm (``linf``, ``l2``, ``l1`` respectively). Sample
points are drawn uniformly in the ``norm``-ball of radius ``radius`` around each example
(:func:`sample_ball`) and, with ``clip=True``, clipped to the image box ``[0, 1]``.

**CLEVER** (Weng et al. 2018, *Evaluating the robustness of neural networks: an extreme
value theory approach*). For the predicted class ``c``, each other class ``j`` and
``g_j = m_c - m_j`` (``m`` = logits, or the softmax probabilities ``softmax(beta a)``):
draw ``nb_batches`` batches of ``batch_size`` points, keep the largest dual-norm gradient
``||grad g_j||_*`` of each batch, fit a reverse Weibull distribution to those maxima
(``scipy.stats.weibull_max``; its location estimates the local Lipschitz constant
``L_j``) and score ``min(g_j(x0) / L_j, radius)``. The untargeted score is the minimum
over ``j``. With ``pool_factor`` (the Adversarial Robustness Toolbox's scheme, which the
paper's Table 11 used) gradients are computed at ``pool_factor * batch_size`` points only
and the batches are drawn from that pool with replacement; without it (Weng et al.)
every batch has fresh points.

Temperature. On logits, ``g_j`` and its gradient both scale with ``beta``, so a
per-example temperature cannot change the score: ``output="logits"`` is
temperature-invariant. Gupta & Ajanthan's Table 11 reports scores that *do* change with
``beta`` (Original 0.86, ``beta = 0.01`` 0.88, NJS 0.41, HNS 0.35 for a BNN-WQ), so their
classifier exposed probabilities: ``output="probs"`` scores ``softmax(beta a)``, where
``beta`` changes both the margin ``p_c - p_j`` and its gradient non-linearly. A saturated
softmax gives zero gradients, ``L = 0`` and the score ``radius`` (the largest possible):
gradient masking makes CLEVER overestimate robustness (Goodfellow 2018).

**L-bound and C-bound** (Finlay & Oberman, *Scaleable input gradient regularization*).
With the margin loss ``l(x) = max_{j != y} z_j - z_y`` (misclassified iff ``l >= 0``, so
``l0 = 0``) and the slack ``s = max(l0 - l(x), 0)``:

- L-bound ``s / L``, ``L`` = the largest dual-norm gradient ``||grad l||_*`` over the
  sample points and ``x`` itself;
- C-bound ``(-||grad l(x)||_* + sqrt(||grad l(x)||_*^2 + 2 C s)) / C`` (computed as
  ``2 s / (G + sqrt(G^2 + 2 C s))``, which tends to ``s / G`` as ``C -> 0``), where ``C``
  is the largest finite-difference curvature over the sample points,
  ``C = max_i 2 max(l(x_i) - l(x) - grad l(x) . (x_i - x), 0) / ||x_i - x||^2``: the
  smallest constant for which the quadratic upper bound
  ``l(x + v) <= l(x) + ||grad l(x)||_* ||v|| + C ||v||^2 / 2`` holds at every sample.

Both constants are measured inside the ``radius``-ball only, so both bounds are capped at
``radius``. Finlay & Oberman state the C-bound for L2; here it is stated and estimated for
whichever ``norm`` is chosen (``C`` relative to that norm).

CLEVER lives in :mod:`qadv.evaluate.clever`, the ball sampling both share in
:mod:`qadv.evaluate.sampling`; their public names are importable from here too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv.attacks.keys import example_keys
from qadv.attacks.norms import ALL_NORMS, get_norm
from qadv.attacks.protocol import split_logits_fn
from qadv.evaluate.clever import CLEVER_OUTPUTS, clever, reverse_weibull_location
from qadv.evaluate.core import padded
from qadv.evaluate.inputs import as_images
from qadv.evaluate.sampling import (
    BALL_NORMS,
    DUAL_NORMS,
    LogitsFn,
    check_norm,
    check_positive,
    chunk_size,
    chunked,
    lp_norm,
    sample_ball,
    sample_points,
)
from qadv.losses import cw_margin

__all__ = [
    "BALL_NORMS",
    "CLEVER_OUTPUTS",
    "DUAL_NORMS",
    "c_bound",
    "clever",
    "compare_with_distance",
    "l_bound",
    "lipschitz_bounds",
    "lp_norm",
    "reverse_weibull_location",
    "sample_ball",
]


# ------------------------------------------------------------------ L-bound, C-bound


def l_bound(slack, lipschitz, *, radius: float = math.inf) -> np.ndarray:
    """Finlay & Oberman's L-bound ``max(l0 - l(x), 0) / L``, capped at ``radius``.

    ``slack = l0 - l(x)`` (negative slack counts as 0). ``L = 0`` with positive slack
    gives ``radius``.

    Example:
        >>> l_bound([2.0, -1.0], [4.0, 4.0]).tolist()
        [0.5, 0.0]
    """
    s = np.maximum(np.asarray(slack, np.float64), 0.0)
    lip = np.asarray(lipschitz, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(s > 0, np.where(lip > 0, s / np.where(lip > 0, lip, 1.0), np.inf), 0.0)
    return np.minimum(out, radius)


def c_bound(slack, grad_norm, curvature, *, radius: float = math.inf) -> np.ndarray:
    """Finlay & Oberman's C-bound ``(-G + sqrt(G^2 + 2 C s)) / C``, capped at ``radius``.

    ``s = max(l0 - l(x), 0)``, ``G`` = the gradient's dual norm at ``x``, ``C`` the
    curvature constant. Computed as ``2 s / (G + sqrt(G^2 + 2 C s))`` (no cancellation;
    ``C = 0`` gives the linear limit ``s / G``).

    Example:
        >>> c_bound([2.0], [1.0], [4.0]).tolist()   # (-1 + sqrt(1 + 16)) / 4
        [0.7807764064044151]
        >>> c_bound([2.0], [1.0], [0.0]).tolist()
        [2.0]
    """
    s = np.maximum(np.asarray(slack, np.float64), 0.0)
    g = np.asarray(grad_norm, np.float64)
    c = np.maximum(np.asarray(curvature, np.float64), 0.0)
    den = g + np.sqrt(g * g + 2.0 * c * s)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(s > 0, np.where(den > 0, 2.0 * s / np.where(den > 0, den, 1.0), np.inf), 0.0)
    return np.minimum(out, radius)


@functools.partial(jax.jit, static_argnames=("fn_static", "norm", "n_points", "clip", "chunk"))
def _bounds_core(fn_static, fn_dyn, x, y, keys, radius, *, norm, n_points, clip, chunk):
    logits_fn = fn_static if fn_static is not None else fn_dyn
    b = x.shape[0]
    dual = get_norm(norm, among=ALL_NORMS).dual_name

    def loss_and_grad(z, yz):
        loss_fn = lambda zz: jnp.sum(cw_margin(logits_fn(zz), yz))  # noqa: E731
        return cw_margin(logits_fn(z), yz), jax.grad(loss_fn)(z)

    l0, g0 = loss_and_grad(x, y)
    pts = sample_points(keys, x, radius, norm, n_points, clip)

    def per_chunk(flat):
        m = flat.shape[0] // b
        li, gi = loss_and_grad(flat, jnp.tile(y, m))
        x_rep = jnp.tile(x, (m,) + (1,) * (x.ndim - 1))
        v = flat - x_rep
        lin = jnp.sum(
            (jnp.tile(g0, (m,) + (1,) * (x.ndim - 1)) * v).reshape(flat.shape[0], -1), axis=1
        )
        remainder = li - jnp.tile(l0, m) - lin
        return lp_norm(gi, dual), remainder, lp_norm(v, norm)

    gnorm, rem, dist = chunked(per_chunk, pts, chunk)  # each (P, B)
    g0n = lp_norm(g0, dual)
    lip = jnp.maximum(g0n, jnp.max(gnorm, axis=0))
    ok = dist > 0
    curv_i = jnp.where(
        ok, 2.0 * jnp.maximum(rem, 0.0) / jnp.where(ok, dist * dist, jnp.ones_like(dist)), 0.0
    )
    return -l0, g0n, lip, jnp.max(curv_i, axis=0)


def lipschitz_bounds(
    logits_fn: LogitsFn,
    images,
    labels,
    *,
    key: jax.Array,
    norm: str = "linf",
    radius: float,
    n_samples: int = 100,
    clip: bool = True,
    indices=None,
    example_batch: int = 32,
) -> dict[str, np.ndarray]:
    """Empirical L-bound and C-bound per example (Finlay & Oberman; module docstring).

    Not certified: ``L`` and ``C`` are the largest values seen at ``n_samples`` points drawn
    uniformly in the ``norm``-ball of ``radius`` (clipped to ``[0, 1]``), so a bound can
    exceed the true minimal distance where the sampling missed a steeper region.

    Args:
        logits_fn: images ``(B, H, W, C)`` in ``[0, 1]`` -> logits ``(B, d)``.
        images: ``(N, H, W, C)``; labels: ``(N,)``.
        key: PRNG key; example ``i`` samples from ``fold_in(key, indices[i])``.
        norm: perturbation norm (``l1``, ``l2``, ``linf``); gradients in its dual norm.
        radius: sampling radius; both bounds are capped at it.
        n_samples: sample points per example.

    Returns:
        ``(N,)`` float64 arrays: ``slack`` (``l0 - l(x)`` = ``z_y - max_{j != y} z_j``),
        ``grad_norm`` (``||grad l(x)||_*``), ``lipschitz`` (``L``), ``curvature`` (``C``),
        ``l_bound`` and ``c_bound``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> w = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> x, y = jnp.array([[0.6, 0.4]]).reshape(1, 2, 1, 1), jnp.array([0])
        >>> r = lipschitz_bounds(f, x, y, key=jax.random.key(0), norm="linf", radius=1.0,
        ...                      n_samples=8)
        >>> round(float(r["l_bound"][0]), 4)  # margin 0.2 / ||w_0 - w_1||_1 = 0.2 / 2
        0.1
    """
    check_norm(norm)
    check_positive("radius", radius)
    check_positive("n_samples", n_samples, integer=True)
    check_positive("example_batch", example_batch, integer=True)
    images = as_images(images)
    labels = np.asarray(labels, np.int32)
    if images.ndim < 2 or labels.shape != (len(images),):
        raise ValueError(
            f"images must be (N, ...) and labels (N,); got {images.shape} and {labels.shape}"
        )
    n = len(images)
    indices = np.arange(n) if indices is None else np.asarray(indices, np.int64)
    fn_static, fn_dyn = split_logits_fn(logits_fn)
    bsz = min(example_batch, n)
    chunk = chunk_size(bsz, n_samples, 4 * math.prod(images.shape[1:]))
    parts = []
    for start in range(0, n, bsz):
        xb, m = padded(images[start : start + bsz], bsz)
        yb, _ = padded(labels[start : start + bsz], bsz)
        ib, _ = padded(indices[start : start + bsz], bsz)
        out = _bounds_core(
            fn_static,
            fn_dyn,
            jnp.asarray(xb),
            jnp.asarray(yb),
            example_keys(key, jnp.asarray(ib)),
            radius,
            norm=norm,
            n_points=n_samples,
            clip=clip,
            chunk=chunk,
        )
        parts.append([np.asarray(a, np.float64)[:m] for a in out])
    slack, gnorm, lip, curv = (np.concatenate(c) for c in zip(*parts, strict=True))
    return {
        "slack": slack,
        "grad_norm": gnorm,
        "lipschitz": lip,
        "curvature": curv,
        "l_bound": l_bound(slack, lip, radius=radius),
        "c_bound": c_bound(slack, gnorm, curv, radius=radius),
    }


def compare_with_distance(
    bounds: Mapping[str, np.ndarray], distance, *, rtol: float = 1e-4, atol: float = 1e-6
) -> dict[str, Any]:
    """Check lower bounds against the smallest adversarial perturbation actually found.

    Args:
        bounds: ``lipschitz_bounds`` output (its ``l_bound`` and ``c_bound`` are used).
        distance: ``(N,)`` minimum-norm attack distances in the same norm (``inf`` or
            ``None``/``nan`` where nothing was found).
        rtol, atol: tolerance of the comparison (float rounding of both sides).

    Returns:
        ``l_violation``/``c_violation``: ``(N,)`` bool, the bound exceeds the distance found
        (so that example's empirical ``L`` or ``C`` was too small); their counts and the
        violating indices; ``ratio`` statistics ``bound / distance`` where both are finite
        and positive.

    Example:
        >>> r = compare_with_distance({"l_bound": [0.1, 0.3], "c_bound": [0.1, 0.2]}, [0.2, 0.25])
        >>> r["l_violations"], r["c_violations"], r["l_violation_indices"]
        (1, 0, [1])
    """
    dist = np.array(
        [np.inf if v is None else float(v) for v in np.asarray(distance, object).reshape(-1)]
    )
    dist = np.where(np.isnan(dist), np.inf, dist)
    out: dict[str, Any] = {}
    for name in ("l", "c"):
        bnd = np.asarray(bounds[f"{name}_bound"], np.float64)
        if bnd.shape != dist.shape:
            raise ValueError(f"{name}_bound has shape {bnd.shape} but distance {dist.shape}")
        viol = bnd > dist * (1 + rtol) + atol
        ok = np.isfinite(dist) & (dist > 0)
        ratio = bnd[ok] / dist[ok]
        out[f"{name}_violation"] = viol
        out[f"{name}_violations"] = int(viol.sum())
        out[f"{name}_violation_indices"] = np.flatnonzero(viol).tolist()
        out[f"{name}_ratio_median"] = float(np.median(ratio)) if ratio.size else float("nan")
        out[f"{name}_ratio_max"] = float(ratio.max()) if ratio.size else float("nan")
    return out
