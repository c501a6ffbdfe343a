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
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import signal
from qadv.attacks.keys import example_keys
from qadv.attacks.norms import ALL_NORMS, Norm, get_norm
from qadv.attacks.protocol import split_logits_fn
from qadv.evaluate.core import padded
from qadv.losses import cw_margin

__all__ = [
    "BALL_NORMS",
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

LogitsFn = Callable[[jax.Array], jax.Array]

BALL_NORMS = tuple(ALL_NORMS)
DUAL_NORMS = {name: norm.dual_name for name, norm in ALL_NORMS.items()}
CLEVER_OUTPUTS = ("probs", "logits")
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_norm(norm: str) -> Norm:
    return get_norm(norm, among=ALL_NORMS)


def _check_positive(name: str, value, *, integer: bool = False) -> None:
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
    return _check_norm(norm).magnitude(v.reshape(v.shape[0], -1))


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
    return _check_norm(norm).sample(key, x, radius, n)


def _points(keys, x, radius, norm: str, n: int, clip: bool) -> jax.Array:
    """``(B, n, ...)`` sample points around each example, clipped to ``[0, 1]`` if asked."""
    pts = x[:, None] + jax.vmap(lambda k, xi: sample_ball(k, xi, radius, norm, n))(keys, x)
    if clip:
        pts = jnp.clip(pts, jnp.zeros((), x.dtype), jnp.ones((), x.dtype))
    return pts


def _chunked(fn, pts: jax.Array, chunk: int):
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


def _chunk_size(b: int, p: int, per_point: int) -> int:
    """Points per chunk so that one chunk holds at most ~2^24 floats of Jacobians."""
    return int(max(1, min(p, (1 << 24) // max(1, b * per_point))))


# ------------------------------------------------------------------------------ CLEVER


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
    pts = _points(k_pts, x, radius, norm, n_points, clip)

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

    norms = _chunked(lambda f: jnp.moveaxis(per_chunk(f), 1, 0), pts, chunk)  # (P, B, H, d)
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
    _check_norm(norm)
    _check_positive("radius", radius)
    for name, v in (("nb_batches", nb_batches), ("batch_size", batch_size)):
        _check_positive(name, v, integer=True)
    if pool_factor is not None:
        _check_positive("pool_factor", pool_factor, integer=True)
    _check_positive("example_batch", example_batch, integer=True)
    outputs = tuple(outputs)
    bad = [o for o in outputs if o not in CLEVER_OUTPUTS]
    if bad or not outputs:
        raise ValueError(
            f"bad CLEVER outputs {outputs!r}; choose from: {', '.join(CLEVER_OUTPUTS)}"
        )
    images = np.asarray(images, np.float32)
    n = len(images)
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
    indices = np.arange(n) if indices is None else np.asarray(indices, np.int64)
    pool = pool_factor is not None
    n_points = pool_factor * batch_size if pool else nb_batches * batch_size
    fn_static, fn_dyn = split_logits_fn(logits_fn)
    bsz = min(example_batch, n)
    per_point = math.prod(images.shape[1:]) * 10 * max(1, len(heads))
    chunk = _chunk_size(bsz, n_points, per_point)
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
            order = [int(j) for j in np.argsort(-clean[i], kind="stable") if j != int(c[i])]
            chosen = order if targets is None else order[: int(targets)]
            for h, name in enumerate(heads):
                best = float(radius)
                for j in chosen:
                    lip = reverse_weibull_location(maxima[i, h, j], c_init=c_init)
                    g = max(float(g0[i, h, j]), 0.0)
                    score = float(radius) if lip == 0 and g > 0 else (0.0 if g == 0 else g / lip)
                    best = min(best, score)
                scores[name][start + i] = best
    return scores


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
    pts = _points(keys, x, radius, norm, n_points, clip)

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

    gnorm, rem, dist = _chunked(per_chunk, pts, chunk)  # each (P, B)
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
    _check_norm(norm)
    _check_positive("radius", radius)
    _check_positive("n_samples", n_samples, integer=True)
    _check_positive("example_batch", example_batch, integer=True)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.ndim < 2 or labels.shape != (len(images),):
        raise ValueError(
            f"images must be (N, ...) and labels (N,); got {images.shape} and {labels.shape}"
        )
    n = len(images)
    indices = np.arange(n) if indices is None else np.asarray(indices, np.int64)
    fn_static, fn_dyn = split_logits_fn(logits_fn)
    bsz = min(example_batch, n)
    chunk = _chunk_size(bsz, n_samples, 4 * math.prod(images.shape[1:]))
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
