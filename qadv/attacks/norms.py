"""Threat-model geometry: three small functions per norm (as in foolbox v3).

``random_start(keys, x, eps)``, ``normalize(g)`` (steepest-ascent direction of unit norm)
and ``project(x_adv, x, eps)`` (back into the ball around ``x`` and into ``[0, 1]``).
L-inf and L2 PGD differ only here. Norms are taken per example over *all* non-batch axes
(``H*W*C``).

Differences from the authors' PyTorch release:

- the L2 ball is the ball of the *total* norm over ``H*W*C`` (the release projects each
  colour channel separately, so its total norm can reach ``sqrt(3) * eps``);
- the L2 random start is uniform in the ball (direction uniform on the sphere, radius
  ``eps * U^(1/N)``), then clipped to ``[0, 1]``;
- clipping to ``[0, 1]`` moves every coordinate towards the clean image, so it never
  leaves the ball.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qadv.attacks.keys import example_keys
from qadv.losses import at_least_float32

__all__ = ["ALL_NORMS", "L1", "L2", "LINF", "NORMS", "Norm", "find_norm", "get_norm", "per_example"]


class Norm(NamedTuple):
    """Geometry of one threat model: everything an attack or an evaluation asks of a norm.

    Attributes:
        name: registry name (``"linf"``, ``"l2"``).
        label: display name (``"L∞"``, ``"L2"``).
        random_start: ``(keys (B,), x, eps) -> x0``, uniform in the ball, clipped to
            ``[0, 1]``; example ``i`` draws from ``keys[i]`` alone.
        normalize: ``g -> `` steepest-ascent direction of unit norm (0 where ``g == 0``).
        project: ``(x_adv, x, eps) ->`` the point in the ball and ``[0, 1]``.
        distance: ``(x_adv, x) -> (B,)`` per-example norm of ``x_adv - x``.
        default_step: ``(eps, steps) ->`` the paper's step size (Table 6).
        length: ``v (..., n) -> (...)`` the norm over the last axis, by its plain formula.
        magnitude: ``v (..., n) -> (...)`` the same norm, computed so that values far below
            the float32 square-root range (``1e-30``) do not underflow (for gradients).
        dual_name: name of the dual norm (L∞ <-> L1, L2 <-> L2); :attr:`dual` is its record.
        dual_exponent: ``q`` of the dual norm ``||.||_q`` (1 for L∞, 2 for L2, ``inf``
            for L1): the minimum-norm move onto a hyperplane ``w·d = c`` scales
            coordinate ``i`` by ``|w_i|^(q-1)``.
        random_direction: ``(key, shape, dtype) ->`` a random vector whose direction is
            uniform for this norm's ball shape (L∞: uniform in the cube; L2: Gaussian).
        sample: ``(key, x, radius, n) -> (n, *x.shape)`` perturbations drawn uniformly in
            the ball of ``radius`` (``x`` gives the shape and dtype only).
        diameter: ``n ->`` the largest distance between two images of ``n`` values in
            ``[0, 1]`` (1 for L∞, ``sqrt(n)`` for L2; ``None`` for an unknown ``n`` where it
            depends on it): no meaningful radius exceeds it.
    """

    name: str
    label: str
    random_start: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    normalize: Callable[[jax.Array], jax.Array]
    project: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    distance: Callable[[jax.Array, jax.Array], jax.Array]
    default_step: Callable[[float, int], float]
    length: Callable[[jax.Array], jax.Array]
    magnitude: Callable[[jax.Array], jax.Array]
    dual_name: str
    dual_exponent: float
    random_direction: Callable[[jax.Array, tuple[int, ...], Any], jax.Array]
    sample: Callable[[jax.Array, jax.Array, Any, int], jax.Array]

    diameter: Callable[[int | None], float | None] = lambda n: 1.0
    """``n -> `` the largest distance between two images of ``n`` values in ``[0, 1]``
    (``None`` where it depends on ``n`` and ``n`` is unknown)."""

    @property
    def dual(self) -> Norm:
        """The dual norm's record (the norm of a gradient that bounds a change of a
        function over this norm's ball)."""
        return ALL_NORMS[self.dual_name]

    def within(self, dist, eps, *, rtol: float = 1e-4, atol: float = 1e-5) -> np.ndarray:
        """Host-side ``dist <= eps`` with the ball's float tolerance: a perturbation that an
        attack placed on the sphere of radius ``eps`` in float32 measures slightly above
        ``eps`` when read back in float64. Every count of "broken at radius r" uses this
        comparison, so a record and a reading of it at its own ``eps`` agree."""
        dist = np.asarray(dist, np.float64)
        return dist <= np.float64(eps) * (1 + rtol) + atol

    def in_ball(self, x_adv, x, eps, *, rtol: float = 1e-4, atol: float = 1e-5) -> np.ndarray:
        """Host-side check ``(B,)``: finite, in ``[0, 1]`` and within ``eps`` (float tolerance)."""
        x_adv = np.asarray(x_adv, np.float64)
        x = np.asarray(x, np.float64)
        axes = tuple(range(1, x.ndim))
        finite = np.all(np.isfinite(x_adv), axis=axes)
        box = np.all((x_adv >= -atol) & (x_adv <= 1 + atol), axis=axes)
        dist = np.asarray(self.distance(x_adv, x))
        return finite & box & self.within(dist, eps, rtol=rtol, atol=atol)

    def check_eps(self, eps: float, size: int | None = None) -> None:
        """Refuse a radius in the wrong units: larger than the diameter of the ``[0, 1]``
        box of ``size`` values (L∞: 1 whatever the size; L2: ``sqrt(size)``, checked only
        once the size is known), which usually means pixel units (seed papers write ε = 2
        for 2/255). One-line ``ValueError``.

        Example:
            >>> LINF.check_eps(2.0)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: eps=2 is larger than 1, ... did you mean 2/255 = 0.007843?
        """
        limit = self.diameter(None if size is None else int(size))
        if limit is not None and float(eps) > limit * (1 + 1e-6):
            raise ValueError(
                f"eps={float(eps):g} is larger than {limit:.4g}, the {self.label} diameter of "
                f"[0, 1] images, so every image is in the ball; qadv's images are in [0, 1]: "
                f"did you mean {float(eps):g}/255 = {float(eps) / 255:.4g}?"
            )


def _axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _safe_norm(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example L2 norm with keepdims and a NaN-free derivative at zero; also ``v != 0``."""
    s = jnp.sum(v * v, axis=_axes(v), keepdims=True)
    nonzero = s > 0
    return jnp.sqrt(jnp.where(nonzero, s, jnp.ones_like(s))), nonzero


def _clip01(x: jax.Array) -> jax.Array:
    return jnp.clip(x, jnp.zeros((), x.dtype), jnp.ones((), x.dtype))


def _toward(v: jax.Array, x: jax.Array) -> jax.Array:
    """``v`` (computed in a wider dtype) in ``x.dtype``, each coordinate rounded towards
    ``x``: ``|out - x| <= |v - x|`` coordinate by coordinate, so a point inside a ball
    of any norm around ``x`` (and inside ``[0, 1]``) stays inside it. Rounding to
    nearest could step up to half a unit in the last place beyond the radius (2-3 % of
    8/255 in bfloat16)."""
    if v.dtype == x.dtype:
        return v
    out = v.astype(x.dtype)
    xw = x.astype(v.dtype)
    beyond = jnp.abs(out.astype(v.dtype) - xw) > jnp.abs(v - xw)
    return jnp.where(beyond, jnp.nextafter(out, x), out)


def per_example(draw: Callable[[jax.Array, jax.Array], jax.Array], keys, x) -> jax.Array:
    """``draw(key, x_i[None])`` for every example with its own key, stacked ``(B, ...)``.

    ``keys`` is a ``(B,)`` batch of PRNG keys (one per example), or one key (example ``i``
    then uses ``fold_in(key, i)``). A result then depends only on the example's own key,
    never on the batch it was evaluated in.
    """
    keys = example_keys(keys, x.shape[0])
    return jax.vmap(lambda k, xi: draw(k, xi[None])[0])(keys, x)


# ------------------------------------------------------------------------------ L-inf


def _linf_random_start(keys, x, eps):
    eps = jnp.asarray(eps, x.dtype)
    delta = per_example(
        lambda k, xi: jax.random.uniform(k, xi.shape, xi.dtype, minval=-eps, maxval=eps), keys, x
    )
    return _clip01(x + delta)


def _linf_normalize(g):
    return jnp.sign(g)


def _linf_project(x_adv, x, eps):
    xw, aw = at_least_float32(x), at_least_float32(x_adv)
    eps = jnp.asarray(eps, xw.dtype)
    return _toward(_clip01(jnp.clip(aw, xw - eps, xw + eps)), x)


def _linf_length(v):
    return jnp.max(jnp.abs(v), axis=-1)


def _linf_distance(x_adv, x):
    return _linf_length((x_adv - x).reshape(x.shape[0], -1))


def _linf_direction(key, shape, dtype):
    return jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0)


def _linf_sample(key, x, radius, n):
    r = jnp.asarray(radius, x.dtype)
    return jax.random.uniform(key, (n, *x.shape), x.dtype, minval=-r, maxval=r)


def _linf_default_step(eps, steps):
    """Paper Table 6: eta = eps/4 (8/255 -> 2/255 and 4/255 -> 1/255)."""
    return eps / 4


# --------------------------------------------------------------------------------- L2


def _l2_draw(key, xi):
    k_dir, k_rad = jax.random.split(key)
    u = jax.random.normal(k_dir, xi.shape, xi.dtype)
    n, nonzero = _safe_norm(u)
    direction = jnp.where(nonzero, u / n, jnp.zeros_like(u))
    r = jax.random.uniform(k_rad, (), xi.dtype) ** jnp.asarray(1.0 / xi.size, xi.dtype)
    return r * direction


def _l2_random_start(keys, x, eps):
    eps = jnp.asarray(eps, x.dtype)
    return _clip01(x + eps * per_example(_l2_draw, keys, x))


def _l2_normalize(g):
    """``g / ||g||_2``, scale-invariant: divided by ``max |g|`` first, so gradients far below
    the float32 square-root range (e.g. 1e-30, whose squares underflow) still give a unit
    direction."""
    axes = _axes(g)
    scale = jnp.max(jnp.abs(g), axis=axes, keepdims=True)
    nonzero = scale > 0
    g = g / jnp.where(nonzero, scale, jnp.ones_like(scale))
    n, _ = _safe_norm(g)
    return jnp.where(nonzero, g / n, jnp.zeros_like(g))


def _l2_project(x_adv, x, eps):
    xw = at_least_float32(x)
    eps = jnp.asarray(eps, xw.dtype)
    delta = at_least_float32(x_adv) - xw
    n, nonzero = _safe_norm(delta)
    outside = nonzero & (n > eps)
    factor = jnp.where(outside, eps / n, jnp.ones_like(n))
    return _toward(_clip01(xw + delta * factor), x)


def _l2_length(v):
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def _l2_magnitude(v):
    """``||v||_2`` over the last axis, divided by ``max |v|`` first (no underflow)."""
    a = jnp.abs(v)
    m = jnp.max(a, axis=-1)
    safe = jnp.where(m > 0, m, jnp.ones_like(m))
    return jnp.sqrt(jnp.sum(jnp.square(a / safe[..., None]), axis=-1)) * m


def _l2_distance(x_adv, x):
    return _l2_length((x_adv - x).reshape(x.shape[0], -1))


def _l2_direction(key, shape, dtype):
    return jax.random.normal(key, shape, dtype)


def _l2_sample(key, x, radius, n):
    size = math.prod(x.shape)
    r = jnp.asarray(radius, x.dtype)
    k1, k2 = jax.random.split(key)
    u = jax.random.normal(k1, (n, size), x.dtype)
    direction = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    rad = jax.random.uniform(k2, (n, 1), x.dtype) ** jnp.asarray(1.0 / size, x.dtype)
    return (r * rad * direction).reshape((n, *x.shape))


# --------------------------------------------------------------------------------- L1
# L1 is no attack threat model here (no projection onto the L1 ball): it is the dual of
# L∞ and a ball that bounds (CLEVER) sample in.


def _l1_length(v):
    return jnp.sum(jnp.abs(v), axis=-1)


def _l1_sample(key, x, radius, n):
    """Random signs times ``radius * (E_1..E_N) / (E_1 + ... + E_{N+1})``, ``E_i ~ Exp(1)``
    (uniform in the simplex ``{u >= 0, sum u <= 1}``)."""
    size = math.prod(x.shape)
    r = jnp.asarray(radius, x.dtype)
    k1, k2 = jax.random.split(key)
    e = jax.random.exponential(k1, (n, size + 1), x.dtype)
    signs = jnp.where(jax.random.bernoulli(k2, 0.5, (n, size)), 1.0, -1.0).astype(x.dtype)
    u = e[:, :size] / jnp.sum(e, axis=1, keepdims=True)
    return (r * signs * u).reshape((n, *x.shape))


def _l1_distance(x_adv, x):
    return _l1_length((x_adv - x).reshape(x.shape[0], -1))


def _not_a_threat_model(*args):
    raise ValueError("norm 'l1' is no attack threat model; choose one of: linf, l2")


def _l2_default_step(eps, steps):
    """The authors' rule eta = 2.5 eps / T (Table 6: 120/255, T=20 -> 15/255; 60/255,
    T=10 -> 15/255)."""
    return 2.5 * eps / steps


LINF = Norm(
    "linf",
    "L∞",
    _linf_random_start,
    _linf_normalize,
    _linf_project,
    _linf_distance,
    _linf_default_step,
    length=_linf_length,
    magnitude=_linf_length,
    dual_name="l1",
    dual_exponent=1,
    random_direction=_linf_direction,
    sample=_linf_sample,
)
L2 = Norm(
    "l2",
    "L2",
    _l2_random_start,
    _l2_normalize,
    _l2_project,
    _l2_distance,
    _l2_default_step,
    length=_l2_length,
    magnitude=_l2_magnitude,
    dual_name="l2",
    dual_exponent=2,
    random_direction=_l2_direction,
    sample=_l2_sample,
    diameter=lambda n: None if n is None else float(np.sqrt(n)),
)
L1 = Norm(
    "l1",
    "L1",
    _not_a_threat_model,
    _not_a_threat_model,
    _not_a_threat_model,
    _l1_distance,
    _not_a_threat_model,
    length=_l1_length,
    magnitude=_l1_length,
    dual_name="linf",
    dual_exponent=math.inf,
    random_direction=_not_a_threat_model,
    sample=_l1_sample,
    diameter=lambda n: None if n is None else float(n),
)
NORMS: dict[str, Norm] = {"linf": LINF, "l2": L2}
"""The threat models attacks run in."""
ALL_NORMS: dict[str, Norm] = {"l1": L1, "l2": L2, "linf": LINF}
"""Every norm qadv knows: the threat models and L1 (the dual of L∞; CLEVER's balls)."""


def find_norm(name: Any, among: Mapping[str, Norm] | None = None) -> Norm | None:
    """The record of ``name`` among ``among`` (default :data:`NORMS`), or ``None``."""
    table = NORMS if among is None else among
    return table.get(name) if isinstance(name, str) else None


def get_norm(name: str, among: Mapping[str, Norm] | None = None) -> Norm:
    """Look up a norm by name: the one place a norm's name is read.

    ``among`` is the table to choose from (default :data:`NORMS`, the attack threat models
    ``"linf"`` and ``"l2"``; :data:`ALL_NORMS` adds ``"l1"``). An unknown name raises a
    one-line ``ValueError`` naming the allowed ones.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.full((1, 2, 2, 1), 0.5)
        >>> far = get_norm("l2").project(x + 1.0, x, 0.1)
        >>> round(float(jnp.linalg.norm(far - x)), 4)
        0.1
        >>> get_norm("linf").dual.name, get_norm("l1", among=ALL_NORMS).dual.label
        ('l1', 'L∞')
    """
    table = NORMS if among is None else among
    norm = find_norm(name, table)
    if norm is None:
        raise ValueError(f"unknown norm {name!r}; choose one of: {', '.join(table)}")
    return norm
