"""Minimum-norm attacks: FAB / FAB-T (Croce & Hein 2020) and DeepFool (Moosavi-Dezfooli
et al. 2016).

Both search for the *smallest* adversarial perturbation instead of the strongest one
inside the ``eps``-ball. Each result's ``distance`` is the norm of the smallest
adversarial perturbation found, even beyond ``eps`` (``+inf`` where none was found, ``0``
for a clean example that is already misclassified), so robust accuracy at every radius
``r`` is ``mean(distance > r)`` from one run. ``x_adv`` stays in the threat model: it is
the minimal adversarial point where that lies within ``eps``, else the clean ``x``.

**Linearised boundary projection.** Both attacks linearise the decision boundary between
the label ``y`` and a class ``j`` at the current point ``z``:
``f_j - f_y ≈ df + w·(z' - z)`` with ``df = f_j(z) - f_y(z)`` and
``w = ∇(f_j - f_y)(z)``, so the boundary is the hyperplane ``w·z' = b``,
``b = w·z - df``. :func:`project_to_hyperplane` finds the smallest perturbation (in L∞
or L2) that takes a point onto that hyperplane *within* the box ``[0, 1]^n``, exactly:
the minimal L∞ perturbation moves every coordinate by ``min(λ, room_i)`` along
``sign(w_i)`` and the minimal L2 one by ``min(μ |w_i|, room_i)`` (the box-clipped
KKT solution); the scalar ``λ``/``μ`` solves a piecewise-linear equation whose breakpoints
are sorted once per row (``O(n log n)``, no iteration). Where the box cannot reach the
hyperplane, the projection moves every coordinate as far as the box allows towards it.

**FAB** (fra31/auto-attack ``fab_base.py``). At each of ``steps`` iterations, at the
iterate ``x_t``:

- untargeted: the class ``j != y`` with the smallest linearised distance
  ``|f_j - f_y| / ||∇(f_j - f_y)||_dual`` (dual norm: L1 for L∞, L2 for L2), from the
  full ``d``-class Jacobian; FAB-T: the fixed target ``t``, with ``f_t - f_y``;
- the projections ``d1`` of ``x_t`` and ``d2`` of the original point ``x`` onto that
  hyperplane, ``alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max)`` and the biased step
  ``x_{t+1} = clip((x_t + eta d1)(1 - alpha) + (x + eta d2) alpha, 0, 1)``;
- if ``x_{t+1}`` is misclassified, it is kept when it is the closest adversarial point
  so far, and the iterate steps back towards ``x``: ``x + beta (x_{t+1} - x)``.

On an affine model (box inactive) the first step lands ``eta`` times the exact minimal
distance away and later steps settle about 0.5% above it (default ``eta``, ``beta``), as
the reference does.

Restart 0 starts from ``x``; restart ``r > 0`` starts from a random point at distance
``eps / 2`` from ``x`` (L∞: uniform noise scaled to max-norm ``eps / 2``; L2: Gaussian
noise scaled to norm ``eps / 2``), clipped to ``[0, 1]``, drawn from
``fold_in(keys[i], run)``. FAB-T attacks the ``n_targets`` classes with the highest
non-true logits at the clean point, in that order (``min(n_targets, d - 1)`` of them),
with ``restarts`` runs each. AutoAttack's standard FAB-T is ``restarts=1, steps=100,
n_targets=9``.

**DeepFool** (its own module, :mod:`qadv.attacks.deepfool`; importable from here too)
steps onto the linearised boundary of the closest class without the box.

**No temperature.** Both attacks only use logit differences through ratios
``|f_j - f_y| / ||∇(f_j - f_y)||`` and the hyperplanes ``{f_j - f_y = 0}``, which are
unchanged when every logit is scaled by a temperature ``beta > 0``; so neither takes a
``temperature`` option.

**Queries** per example: FAB counts one for the clean point (targets, labels) and two
per iteration and run (the linearisation — one forward pass and the Jacobian's backward
passes — and the check of the new iterate); DeepFool counts one per iteration and one for
the final check.

Differences from the reference:

- every run (all restarts, all targets) runs on every example and the smallest
  adversarial perturbation over all of them is reported; the reference runs a further
  restart or target only on the examples not yet fooled within ``eps`` and returns
  points, not distances (at radius ``eps`` both count an example as fooled when any run
  fools it within ``eps``); its random restarts draw from one batch-level generator;
- the L∞/L2 projections solve the same problems (same solutions up to float rounding)
  by a sort and cumulative sums rather than a bisection over the sorted breakpoints, and
  normalise ``w`` by ``max |w_i|`` first, so tiny gradients do not underflow;
- non-finite gradient entries are replaced by 0.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from qadv.attacks import attack, registry
    >>> # class 0 leads by 0.1, the boundary is sum(x) = 1.9: minimal L2 distance 0.05
    >>> f = lambda x: jnp.stack([x.reshape(x.shape[0], -1).sum(1) - 1.9,
    ...                          jnp.zeros(x.shape[0])], axis=1)
    >>> x, y = jnp.full((1, 2, 2, 1), 0.5), jnp.array([0])
    >>> res = attack(registry.make("fab", norm="l2", eps=0.1, steps=20), f, x, y,
    ...              key=jax.random.key(0))
    >>> round(float(res.distance[0]), 3), bool(res.success[0])
    (0.05, True)
    >>> res = attack(registry.make("deepfool", norm="linf", eps=0.01), f, x, y,
    ...              key=jax.random.key(0))
    >>> round(float(res.distance[0]), 4), bool(res.success[0])  # 1.02 * 0.1 / 4
    (0.0255, False)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from qadv.attacks import registry
from qadv.attacks.norms import Norm, get_norm, per_example
from qadv.attacks.protocol import finish_min_norm, logits_in, narrowed, widened
from qadv.attacks.validation import check_int, check_scalar

__all__ = ["DeepFoolConfig", "FABConfig", "fab_targets", "project_to_hyperplane"]  # noqa: F822

LogitsFn = Callable[[jax.Array], jax.Array]

# ------------------------------------------------ linearisation (shared with DeepFool)


def _safe_div(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a / b`` where ``b > 0``, else 0 (no NaN, no inf)."""
    ok = b > 0
    return jnp.where(ok, a / jnp.where(ok, b, jnp.ones_like(b)), jnp.zeros_like(a))


def _dual_norm(v: jax.Array, geometry: Norm) -> jax.Array:
    """The dual norm of ``geometry`` over the last axis (scale-free: no underflow)."""
    scale = jnp.max(jnp.abs(v), axis=-1)
    u = _safe_div(v, scale[..., None])
    return scale * geometry.dual.length(u)


def _finite(g: jax.Array) -> jax.Array:
    return jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g))


def _pick(a: jax.Array, idx: jax.Array) -> jax.Array:
    """``a[i, idx[i]]`` for ``a`` of shape ``(B, d)``."""
    return jnp.take_along_axis(a, idx[:, None].astype(jnp.int32), axis=1)[:, 0]


def _class_jacobian(flat_fn, z: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits ``(B, d)`` and ``∇(f_j - f_y)`` for every class ``j``: ``(B, d, n)``."""
    logits, vjp_fn = jax.vjp(flat_fn, z)
    d = logits.shape[-1]
    eye = jnp.eye(d, dtype=logits.dtype)
    cotangents = eye[:, None, :] - jnp.take(eye, y, axis=0)[None, :, :]  # (d, B, d)
    (jac,) = jax.vmap(vjp_fn)(cotangents)
    return logits, _finite(jnp.swapaxes(jac, 0, 1))


def _closest_class(logits, jac, y, geometry: Norm):
    """Index of the smallest linearised distance ``|f_j - f_y| / ||∇(f_j - f_y)||_dual``."""
    df = logits - _pick(logits, y)[:, None]
    dist = jnp.abs(df) / (1e-12 + _dual_norm(jac, geometry))
    is_y = jnp.arange(logits.shape[-1], dtype=jnp.int32)[None, :] == y[:, None]
    dist = jnp.where(is_y | ~jnp.isfinite(dist), jnp.inf, dist)
    return jnp.argmin(dist, axis=-1).astype(jnp.int32), df


def _predicts_other(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.argmax(logits, axis=-1).astype(y.dtype) != y


# ---------------------------------------------------------------- hyperplane projection


def _solve_capped(slope: jax.Array, cap: jax.Array, need: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row, the smallest ``lam >= 0`` with ``sum_i min(lam * slope_i, cap_i) = need``.

    ``slope, cap >= 0`` are ``(B, n)`` (``cap_i = 0`` where ``slope_i = 0``) and
    ``need >= 0`` is ``(B,)``. The left side is nondecreasing and piecewise linear in
    ``lam``, with breakpoints ``cap_i / slope_i``: after one sort, its values at all
    breakpoints come from cumulative sums, and ``lam`` lies on the first segment whose end
    reaches ``need``.

    Returns:
        ``(lam (B,), feasible (B,) bool)``; ``lam = 0`` where ``need`` exceeds
        ``sum_i cap_i`` (infeasible).
    """
    n = slope.shape[-1]
    active = slope > 0
    knots = jnp.where(active, cap / jnp.where(active, slope, jnp.ones_like(slope)), jnp.inf)
    order = jnp.argsort(knots, axis=-1)
    knots_s = jnp.take_along_axis(knots, order, axis=-1)
    slope_s = jnp.take_along_axis(slope, order, axis=-1)
    cap_s = jnp.take_along_axis(cap, order, axis=-1)
    capped = jnp.cumsum(cap_s, axis=-1)  # sum of caps of knots <= knot k
    slope_from = jnp.flip(jnp.cumsum(jnp.flip(slope_s, -1), axis=-1), -1)  # knots >= k
    slope_after = jnp.concatenate([slope_from[:, 1:], jnp.zeros_like(slope_from[:, :1])], 1)
    finite = jnp.isfinite(knots_s)
    at_knot = capped + jnp.where(finite, knots_s, jnp.zeros_like(knots_s)) * slope_after
    m = jnp.sum((at_knot < need[:, None]).astype(jnp.int32), axis=-1)  # first knot >= need
    feasible = m < n
    idx = jnp.minimum(m, n - 1)[:, None]
    capped_before = jnp.take_along_axis(
        jnp.concatenate([jnp.zeros_like(capped[:, :1]), capped], 1), m[:, None], axis=-1
    )[:, 0]
    slope_here = jnp.take_along_axis(slope_from, idx, axis=-1)[:, 0]
    lam = jnp.maximum(_safe_div(need - capped_before, slope_here), 0.0)
    return jnp.where(feasible, lam, jnp.zeros_like(lam)), feasible


def _project(t: jax.Array, w: jax.Array, c: jax.Array, geometry: Norm) -> jax.Array:
    """Smallest ``d`` with ``w·d = c`` and ``t + d`` in ``[0, 1]`` (rows of ``(B, n)``).

    Coordinate ``i`` moves by ``min(lam |w_i|^(q-1), room_i)`` with ``q`` the dual
    exponent of ``geometry`` (L∞: ``q = 1``, L2: ``q = 2``), ``lam`` solving the budget."""
    scale = jnp.max(jnp.abs(w), axis=-1)
    w = _safe_div(w, scale[:, None])  # scale-free: the solution does not change
    c = _safe_div(c, scale)
    ws = jnp.where(c[:, None] >= 0, w, -w)  # now w·d must rise by |c| >= 0
    need = jnp.abs(c)
    up, down = ws > 0, ws < 0
    zero = jnp.zeros_like(t)
    room = jnp.where(up, 1 - t, jnp.where(down, t, zero))
    room = jnp.maximum(room, zero)
    aw = jnp.abs(ws)
    q = geometry.dual_exponent
    slope = aw**q  # |w_i| * |w_i|^(q-1)
    lam, feasible = _solve_capped(slope, aw * room, need)
    reach = lam[:, None] * aw ** (q - 1)
    move = jnp.where(feasible[:, None], jnp.minimum(reach, room), room)
    return jnp.sign(ws) * jnp.where(aw > 0, move, zero)


def project_to_hyperplane(t: jax.Array, w: jax.Array, b: jax.Array, *, norm: str) -> jax.Array:
    """The smallest perturbation onto a hyperplane within the box ``[0, 1]^n``, per row.

    Solves ``min ||d||`` subject to ``w·(t + d) = b`` and ``0 <= t + d <= 1``, exactly, for
    the L∞ or the L2 norm. Where the box cannot reach the hyperplane, returns the move as
    far towards it as the box allows (every coordinate with ``w_i != 0`` to the bound in
    the direction that brings ``w·(t + d)`` closer to ``b``). Coordinates with
    ``w_i = 0`` never move.

    Args:
        t: ``(B, n)`` points in ``[0, 1]``.
        w: ``(B, n)`` hyperplane normals.
        b: ``(B,)`` offsets.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        ``(B, n)`` perturbations ``d``.

    Example:
        >>> import jax.numpy as jnp
        >>> t = jnp.array([[0.5, 0.9]])
        >>> w, b = jnp.array([[1.0, 1.0]]), jnp.array([1.8])   # x1 + x2 = 1.8
        >>> show = lambda d: [round(v, 4) for v in d[0].tolist()]
        >>> show(project_to_hyperplane(t, w, b, norm="linf"))  # x2 stops at 1
        [0.3, 0.1]
        >>> show(project_to_hyperplane(t, w, b, norm="l2"))
        [0.3, 0.1]
        >>> show(project_to_hyperplane(t, w, jnp.array([1.2]), norm="l2"))
        [-0.1, -0.1]
        >>> show(project_to_hyperplane(t, w, jnp.array([2.5]), norm="l2"))  # unreachable
        [0.5, 0.1]
    """
    return _project_compiled(t, w, b, geometry=get_norm(norm))


@functools.partial(jax.jit, static_argnames=("geometry",))
def _project_compiled(t, w, b, *, geometry):
    return _project(t, w, b - jnp.sum(w * t, axis=-1), geometry)


# ----------------------------------------------------------------------------------- FAB


def fab_targets(logits: jax.Array, y: jax.Array, n_targets: int) -> jax.Array:
    """FAB-T's targets: the ``n_targets`` non-true classes with the highest logits, highest
    first (ties: lower class index first). ``(B, d)``, ``(B,)`` -> ``(B, n_targets)``.

    Example:
        >>> import jax.numpy as jnp
        >>> fab_targets(jnp.array([[0.0, 3.0, 1.0, 2.0]]), jnp.array([1]), 2).tolist()
        [[3, 2]]
    """
    is_y = jnp.arange(logits.shape[-1], dtype=jnp.int32)[None, :] == y[:, None]
    others = jnp.where(is_y, -jnp.inf, logits)
    return jnp.argsort(-others, axis=-1)[:, :n_targets].astype(jnp.int32)


class _FABState(NamedTuple):
    """One FAB run: iterate ``x1 (B, n)``, closest adversarial ``best (B, n)`` and its
    norm ``best_dist (B,)`` (``+inf`` until one is found)."""

    x1: jax.Array
    best: jax.Array
    best_dist: jax.Array


class _FABBest(NamedTuple):
    """Over runs: the closest adversarial point ``x (B, n)``, its norm ``dist (B,)`` and the
    target class of the run that found it ``target (B,)`` (``-1``: untargeted / none)."""

    x: jax.Array
    dist: jax.Array
    target: jax.Array


def _fab_linearise(flat_fn, z, y, target, geometry: Norm):
    """``(df (B,), w (B, n))`` of the boundary FAB projects onto at ``z``."""
    if target is None:
        logits, jac = _class_jacobian(flat_fn, z, y)
        j, df = _closest_class(logits, jac, y, geometry)
        w = jnp.take_along_axis(jac, j[:, None, None], axis=1)[:, 0]
        return _pick(df, j), w
    logits, vjp_fn = jax.vjp(flat_fn, z)
    d = logits.shape[-1]
    ct = jax.nn.one_hot(target, d, dtype=logits.dtype) - jax.nn.one_hot(y, d, dtype=logits.dtype)
    (g,) = vjp_fn(ct)
    return _pick(logits, target) - _pick(logits, y), _finite(g)


def _fab_run(cfg: FABConfig, flat_fn, x0, y, start, target) -> _FABState:
    """``cfg.steps`` FAB iterations from ``start`` (flat ``(B, n)``); ``target`` or None."""
    geometry = cfg.geometry
    b = x0.shape[0]
    eta = jnp.asarray(cfg.eta, x0.dtype)
    beta = jnp.asarray(cfg.beta, x0.dtype)
    alpha_max = jnp.asarray(cfg.alpha_max, x0.dtype)

    def step(s: _FABState, _) -> tuple[_FABState, None]:
        x1 = s.x1
        df, w = _fab_linearise(flat_fn, x1, y, target, geometry)
        c1 = -df  # w·d must change by -df from x1 ...
        c0 = -df - jnp.sum(w * (x0 - x1), axis=-1)  # ... and by this from x0
        d = _project(
            jnp.concatenate([x1, x0]), jnp.concatenate([w, w]), jnp.concatenate([c1, c0]), geometry
        )
        d1, d2 = d[:b], d[b:]
        a1 = jnp.maximum(geometry.length(d1), 1e-8)
        a2 = jnp.maximum(geometry.length(d2), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        x_new = (x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha
        x_new = jnp.clip(x_new, 0.0, 1.0)
        adv = _predicts_other(flat_fn(x_new), y)
        dist = geometry.length(x_new - x0)
        better = adv & (dist < s.best_dist)
        best = jnp.where(better[:, None], x_new, s.best)
        best_dist = jnp.where(better, dist, s.best_dist)
        x1 = jnp.where(adv[:, None], x0 + beta * (x_new - x0), x_new)
        return _FABState(x1, best, best_dist), None

    init = _FABState(start, x0, jnp.full((b,), jnp.inf, x0.dtype))
    return jax.lax.scan(step, init, None, length=cfg.steps)[0]


def _fab_random_start(keys, x0, eps, geometry: Norm):
    """A point at distance ``eps / 2`` from ``x0`` (random direction), clipped to [0, 1]."""

    def draw(key, xi):
        t = geometry.random_direction(key, xi.shape, xi.dtype)
        return _safe_div(t, geometry.length(t)[:, None])

    delta = per_example(draw, keys, x0)
    return jnp.clip(x0 + (0.5 * eps) * delta, 0.0, 1.0)


def _fab_core(cfg: FABConfig, logits_fn: LogitsFn, x, y, keys):
    """All runs (targets x restarts); the smallest adversarial perturbation per example."""
    shape = x.shape
    b = shape[0]
    x0 = x.reshape(b, -1)

    def flat_fn(z):
        return logits_fn(z.reshape(shape))

    logits0 = flat_fn(x0)
    d = logits0.shape[-1]
    n_targets = min(cfg.n_targets, d - 1) if cfg.targeted else 1
    targets = fab_targets(logits0, y, n_targets)  # (B, n_targets)
    eps = jnp.asarray(cfg.eps, x.dtype)

    def body(carry: _FABBest, run):
        target_rank, restart = run // cfg.restarts, run % cfg.restarts
        if cfg.restarts > 1:
            run_keys = jax.vmap(lambda k: jax.random.fold_in(k, run))(keys)
            start = jnp.where(restart > 0, _fab_random_start(run_keys, x0, eps, cfg.geometry), x0)
        else:
            start = x0
        target = (
            jnp.take_along_axis(targets, jnp.broadcast_to(target_rank, (b, 1)), axis=1)[:, 0]
            if cfg.targeted
            else None
        )
        out = _fab_run(cfg, flat_fn, x0, y, start, target)
        better = out.best_dist < carry.dist
        run_target = jnp.full((b,), -1, jnp.int32) if target is None else target
        new = _FABBest(
            jnp.where(better[:, None], out.best, carry.x),
            jnp.where(better, out.best_dist, carry.dist),
            jnp.where(better, run_target, carry.target),
        )
        return new, None

    n_runs = n_targets * cfg.restarts
    init = _FABBest(x0, jnp.full((b,), jnp.inf, x.dtype), jnp.full((b,), -1, jnp.int32))
    final = jax.lax.scan(body, init, jnp.arange(n_runs, dtype=jnp.int32))[0]
    misclassified = _predicts_other(logits0, y)
    dist = jnp.where(misclassified, jnp.zeros_like(final.dist), final.dist)
    best = jnp.where(misclassified[:, None], x0, final.x)
    target = jnp.where(misclassified, jnp.full_like(final.target, -1), final.target)
    queries = 1 + 2 * cfg.steps * n_runs
    return best.reshape(shape), dist, target, queries


@registry.register("fab")
@dataclasses.dataclass(frozen=True)
class FABConfig(registry.AttackConfig):
    """FAB (untargeted) / FAB-T (``targeted=True``): Fast Adaptive Boundary attack.

    A minimum-norm attack (see the module docstring): ``distance`` is the smallest
    adversarial perturbation found, even beyond ``eps``; ``x_adv`` is that point where it
    lies within ``eps``, else the clean ``x``. ``eps`` also sets the radius ``eps / 2`` of
    the random starts of restarts ``> 0``. ``aux["target"]``: the class whose run found
    the returned distance (FAB-T; ``-1`` untargeted or where nothing was found).

    Attributes:
        steps: iterations per run.
        restarts: runs per target; restart 0 starts at ``x``, later ones at random.
        n_targets: FAB-T only: the top non-true classes attacked (at most ``d - 1``).
        targeted: FAB-T (linearise ``f_t - f_y`` for a fixed target ``t``).
        alpha_max: cap of the bias ``alpha`` towards the original point.
        eta: overshoot of the projections (``>= 1``).
        beta: step back towards ``x`` once adversarial (``0 < beta <= 1``).
    """

    kind: ClassVar[str] = "fab"
    minimum_norm: ClassVar[bool] = True

    steps: int = 100
    restarts: int = 1
    n_targets: int = 9
    targeted: bool = False
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    def validate(self) -> None:
        super().validate()
        check_int("steps", self.steps, 1)
        check_int("restarts", self.restarts, 1)
        check_int("n_targets", self.n_targets, 1)
        if not isinstance(self.targeted, bool):
            raise ValueError(f"targeted must be a bool, got {self.targeted!r}")
        check_scalar("alpha_max", self.alpha_max, maximum=1.0)
        check_scalar("eta", self.eta, allow_zero=False)
        if float(self.eta) < 1:
            raise ValueError(f"eta (overshoot) must be >= 1, got {self.eta}")
        check_scalar("beta", self.beta, allow_zero=False, maximum=1.0)

    @property
    def label(self) -> str:
        return f"FAB{'-T' if self.targeted else ''} {self.geometry.label}"

    def run(self, data, logits_fn, x, y, keys):
        xw = widened(x)
        fn = logits_in(logits_fn, xw.dtype)
        best, best_dist, target, queries = _fab_core(self, fn, xw, y, keys)
        best, best_dist = narrowed(logits_fn, x, y, best, best_dist, norm=self.geometry)
        return finish_min_norm(
            logits_fn,
            x,
            y,
            best,
            best_dist,
            norm=self.geometry,
            eps=self.eps,
            queries=queries,
            aux={"target": target},
        )


registry.register("fab-t", targeted=True)(FABConfig)


def __getattr__(name: str):
    # DeepFool lives in qadv.attacks.deepfool (imported after FAB, so the registry lists
    # fab, fab-t, deepfool in that order); its config stays importable from here
    if name == "DeepFoolConfig":
        from qadv.attacks.deepfool import DeepFoolConfig

        return DeepFoolConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
