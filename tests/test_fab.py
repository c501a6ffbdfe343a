"""Minimum-norm attacks: FAB / FAB-T, DeepFool and the box-constrained hyperplane projections."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog
from synthetic import relu_mlp

from qadv.attacks import attack, example_keys, execute, fab, prepare, registry

SHAPE = (4, 4, 1)
N = 16
DUAL = {"linf": 1, "l2": 2}
NORMS = ("linf", "l2")


def _norm(v, norm):
    v = np.asarray(v, np.float64).reshape(v.shape[0], -1)
    return np.abs(v).max(1) if norm == "linf" else np.sqrt((v * v).sum(1))


# ------------------------------------------------------------------------------ models


def _linear_problem(seed=0, b=8, radii=(0.02, 0.03), spread=(1.0, 1.0, 1.0)):
    """An affine model, points near the middle of [0, 1] and their exact minimal distances.

    Class ``j`` has weights ``base + spread[j] * noise``; class 0 leads at the centre by
    ``radii[j-1] * ||w_0 - w_j||_1`` (L∞ distance ``radii``) and the examples jitter
    around it. Returns ``f, x, y, {norm: (b, d) exact distance to each class}``.
    """
    rng = np.random.default_rng(seed)
    d = len(spread)
    w = rng.normal(size=(N, 1)) + rng.normal(size=(N, d)) * np.asarray(spread)[None, :]
    centre = np.full(N, 0.5)
    margins = np.array([0.0, *radii]) * np.abs(w[:, :1] - w).sum(0)
    c = -(centre @ w) - margins
    x = centre + rng.uniform(-0.02, 0.02, (b, N))
    w32, c32, x32 = (a.astype(np.float32) for a in (w, c, x))
    logits = x32.astype(np.float64) @ w32.astype(np.float64) + c32.astype(np.float64)
    y = logits.argmax(1)
    exact = {}
    for norm in NORMS:
        per = np.full((b, d), np.inf)
        for i in range(b):
            for j in range(d):
                if j != y[i]:
                    dw = w32[:, j].astype(np.float64) - w32[:, y[i]]
                    gap = logits[i, y[i]] - logits[i, j]
                    per[i, j] = gap / np.linalg.norm(dw, ord=DUAL[norm])
                    # the unconstrained minimiser stays inside the box
                    step = gap * (
                        np.sign(dw) / np.abs(dw).sum() if norm == "linf" else dw / (dw @ dw)
                    )
                    assert np.all((x32[i] + step >= 0) & (x32[i] + step <= 1))
        exact[norm] = per

    def f(z):
        return z.reshape(z.shape[0], -1) @ jnp.asarray(w32) + jnp.asarray(c32)[None, :]

    return f, jnp.asarray(x32.reshape(b, *SHAPE)), jnp.asarray(y, jnp.int32), exact


LIN_F, LIN_X, LIN_Y, LIN_EXACT = _linear_problem()


mlp = relu_mlp(0, n_in=N)


MLP_X = jax.random.uniform(jax.random.key(1), (64, *SHAPE), jnp.float32)
MLP_Y = jnp.argmax(mlp(MLP_X), axis=1).astype(jnp.int32).at[3].add(1) % 5  # one wrong label
KEY = jax.random.key(7)


# ----------------------------------------------------------- (1), (2) exact on a linear model


@pytest.mark.parametrize("norm", NORMS)
def test_exact_minimal_distance_on_linear_model(norm, strict_dtypes):
    exact = LIN_EXACT[norm].min(1)
    eps = float(np.median(exact))
    for cfg in (
        registry.make("fab", norm=norm, eps=eps, steps=10),
        registry.make("deepfool", norm=norm, eps=eps, steps=5),
    ):
        res = attack(cfg, LIN_F, LIN_X, LIN_Y, key=KEY)
        dist = np.asarray(res.distance, np.float64)
        # no attack beats the exact minimum; the points it reports are truly adversarial
        assert np.all(dist >= exact * (1 - 1e-5)), cfg.label
        if cfg.kind == "deepfool":  # one exact step, then the overshoot
            np.testing.assert_allclose(dist, 1.02 * exact, rtol=1e-4)
        else:  # eta = 1.05 with the step back settles within 0.6% of the boundary
            np.testing.assert_allclose(dist, exact, rtol=6e-3)
        # x_adv: the minimal point where it lies within eps, else the clean image
        inside = dist <= eps
        assert inside.any() and (~inside).any()
        np.testing.assert_array_equal(np.asarray(res.success), inside)
        moved = _norm(res.x_adv - LIN_X, norm)
        np.testing.assert_allclose(moved[inside], dist[inside], rtol=1e-5)
        assert np.all(moved[inside] <= eps * (1 + 1e-6))
        np.testing.assert_array_equal(moved[~inside], 0.0)


def test_fab_t_attacks_the_top_non_true_classes(strict_dtypes, norm="l2"):
    # class 1 is the runner-up (smaller logit gap) but the farther boundary (its weights
    # differ little from class 0's): FAB-T with one target must stop there, with every
    # target it finds the exact closest boundary
    f, x, y, exact = _linear_problem(seed=3, radii=(0.04, 0.015), spread=(1.0, 0.6, 2.0))
    logits = np.asarray(f(x), np.float64)
    top = np.asarray(fab.fab_targets(jnp.asarray(logits), y, 2))
    masked = np.where(np.eye(3)[np.asarray(y)] > 0, -np.inf, logits)
    np.testing.assert_array_equal(top[:, 0], masked.argmax(1))
    np.testing.assert_array_equal(top[:, 1], masked.argsort(1)[:, 1])
    assert (exact[norm].argmin(1) != top[:, 0]).sum() >= 4  # the two runs really differ
    rows = np.arange(len(y))
    eps = float(np.median(exact[norm].min(1)))
    one = attack(
        registry.make("fab-t", norm=norm, eps=eps, n_targets=1, steps=10), f, x, y, key=KEY
    )
    np.testing.assert_allclose(one.distance, exact[norm][rows, top[:, 0]], rtol=6e-3)
    np.testing.assert_array_equal(one.aux["target"], top[:, 0])
    both = attack(registry.make("fab-t", norm=norm, eps=eps, steps=10), f, x, y, key=KEY)
    dist = np.asarray(both.distance, np.float64)  # 9 targets -> the 2 there are
    assert np.all(dist >= exact[norm].min(1) * (1 - 1e-5))
    np.testing.assert_allclose(dist, exact[norm].min(1), rtol=6e-3)
    np.testing.assert_array_equal(both.aux["target"], exact[norm].argmin(1))
    assert both.queries.tolist() == [1 + 2 * 10 * 2] * len(y)
    np.testing.assert_array_equal(both.success, dist <= eps)


def test_fab_targets():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0], [5.0, 5.0, 1.0, 0.0]])
    y = jnp.array([1, 0], jnp.int32)
    np.testing.assert_array_equal(fab.fab_targets(logits, y, 3), [[3, 2, 0], [1, 2, 3]])


# --------------------------------------------------------------------- (4) projections


def _lp_linf(t, w, b):
    """min ||d||_inf s.t. w.(t + d) = b, 0 <= t + d <= 1 by linprog; None if infeasible."""
    n = len(t)
    cost = np.r_[np.zeros(n), 1.0]
    eye = np.eye(n)
    a_ub = np.block([[eye, -np.ones((n, 1))], [-eye, -np.ones((n, 1))]])
    bounds = [(-ti, 1 - ti) for ti in t] + [(0, None)]
    out = linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.zeros(2 * n),
        A_eq=np.r_[w, 0.0][None, :],
        b_eq=[b - w @ t],
        bounds=bounds,
        method="highs",
    )
    return out.fun if out.status == 0 else None


def _kkt_l2(t, w, b):
    """min ||d||_2 on the same set: d = clip(mu w, -t, 1 - t), mu by float64 bisection."""
    lo_b, hi_b = -t, 1 - t

    def h(mu):
        return w @ np.clip(mu * w, lo_b, hi_b)

    need = b - w @ t
    big = 1e6 / max(np.abs(w).max(), 1e-30) ** 2
    if not h(-big) <= need <= h(big):
        return None
    lo, hi = -big, big
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if h(mid) < need else (lo, mid)
    return np.clip(0.5 * (lo + hi) * w, lo_b, hi_b)


def _instances(seed, b=24, n=7):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (b, n))
    t[rng.uniform(size=(b, n)) < 0.15] = 1.0  # some coordinates on the box faces
    t[rng.uniform(size=(b, n)) < 0.15] = 0.0
    w = rng.normal(size=(b, n)) * rng.choice([1e-3, 1.0, 50.0], size=(b, 1))
    w[rng.uniform(size=(b, n)) < 0.2] = 0.0
    # offsets from inside the box-inactive regime to unreachable
    b_ = (w * t).sum(1) + rng.normal(size=b) * np.abs(w).sum(1) * rng.choice([0.02, 0.3, 2.0], b)
    return t, w, b_


def _full_move(t, w, b):
    towards = np.sign(w) * np.sign(b - (w * t).sum(1))[:, None]
    return np.where(towards > 0, 1 - t, np.where(towards < 0, -t, 0.0))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_matches_lp_and_qp(norm, seed, strict_dtypes):
    t, w, b = _instances(seed)
    d = np.asarray(
        fab.project_to_hyperplane(
            jnp.asarray(t, jnp.float32),
            jnp.asarray(w, jnp.float32),
            jnp.asarray(b, jnp.float32),
            norm=norm,
        ),
        np.float64,
    )
    t32, w32, b32 = (np.asarray(a, np.float32).astype(np.float64) for a in (t, w, b))
    solved = 0
    for i in range(len(b)):
        scale = np.abs(w32[i]).sum() + 1e-30
        if norm == "linf":
            best = _lp_linf(t32[i], w32[i], b32[i])
        else:
            best_d = _kkt_l2(t32[i], w32[i], b32[i])
            best = None if best_d is None else np.linalg.norm(best_d)
        if best is None:  # unreachable: as far towards the hyperplane as the box allows
            np.testing.assert_allclose(d[i], _full_move(t32, w32, b32)[i], atol=1e-6)
            continue
        solved += 1
        got = np.abs(d[i]).max() if norm == "linf" else np.linalg.norm(d[i])
        assert abs(w32[i] @ (t32[i] + d[i]) - b32[i]) <= 1e-5 * scale  # on the hyperplane
        assert np.all(t32[i] + d[i] >= -1e-6) and np.all(t32[i] + d[i] <= 1 + 1e-6)
        np.testing.assert_allclose(got, best, rtol=1e-4, atol=1e-6)
        if norm == "l2":  # the L2 minimiser is unique
            np.testing.assert_allclose(d[i], best_d, atol=1e-5)
        np.testing.assert_array_equal(d[i][w32[i] == 0], 0.0)
    assert solved >= 8


def test_projection_rejects_other_norms():
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        fab.project_to_hyperplane(jnp.zeros((1, 2)), jnp.ones((1, 2)), jnp.ones(1), norm="l1")


def test_projection_edge_cases(strict_dtypes):
    t = jnp.full((3, 4), 0.5)
    w = jnp.array([[0.0] * 4, [1e-30, 0.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
    b = jnp.array([1.0, 0.7e-30, 0.0])  # w = 0; w whose squares underflow; already on it
    for norm in NORMS:
        d = fab.project_to_hyperplane(t, w, b, norm=norm)
        assert bool(jnp.all(jnp.isfinite(d)))
        np.testing.assert_array_equal(d[0], 0.0)
        np.testing.assert_allclose(d[1], [0.2, 0.0, 0.0, 0.0], atol=1e-6)  # scale-free
        np.testing.assert_array_equal(d[2], 0.0)


# ------------------------------------------- (3), (5) threat model and batch independence


@pytest.mark.parametrize(
    "name, opts",
    [
        ("fab", dict(norm="l2", eps=0.3, steps=6, restarts=2)),
        ("fab-t", dict(norm="linf", eps=0.05, steps=6, n_targets=3, restarts=2)),
        ("deepfool", dict(norm="l2", eps=0.3, steps=6)),
        ("deepfool", dict(norm="linf", eps=0.05, steps=6)),
    ],
)
def test_threat_model_and_batch_independence(name, opts, strict_dtypes):
    cfg = registry.make(name, **opts)
    data = prepare(cfg, mlp)
    keys = example_keys(KEY, jnp.arange(64))
    full = execute(cfg, data, mlp, MLP_X, MLP_Y, keys)
    # per-example results do not depend on the batch size or on the other examples
    small = execute(cfg, data, mlp, MLP_X[:7], MLP_Y[:7], keys[:7])
    for a, b in zip(jax.tree_util.tree_leaves(small), jax.tree_util.tree_leaves(full), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b)[:7], rtol=1e-6, atol=1e-7)
    # x_adv in the eps-ball and [0, 1]; success exactly where the smallest perturbation
    # found lies within eps, and then x_adv is that point
    eps = cfg.eps
    assert cfg.geometry.in_ball(full.x_adv, MLP_X, eps).all()
    dist = np.asarray(full.distance)
    # The attack finds a boundary for most examples (here 50 of 64 for DeepFool after
    # 6 steps, all for FAB). The exact count is not a property of the attack: an example
    # that crosses the boundary at the last step can fall either side of it by a rounding
    # error on another CPU (47 on one). A majority is the check; the count may vary.
    assert not np.isnan(dist).any() and np.isfinite(dist).sum() > len(dist) // 2
    np.testing.assert_array_equal(np.asarray(full.success), dist <= eps)
    assert 0 < (dist <= eps).sum() < 64
    moved = _norm(full.x_adv - MLP_X, cfg.norm)
    np.testing.assert_allclose(moved[dist <= eps], dist[dist <= eps], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(moved[dist > eps], 0.0)
    # a wrongly labelled example: the clean image, distance 0
    assert dist[3] == 0 and bool(full.success[3])
    np.testing.assert_array_equal(full.x_adv[3], MLP_X[3])


# ------------------------------------------------------------------ (7) config and errors


def test_labels_and_registry():
    assert registry.make("fab").label == "FAB L∞"
    assert registry.make("fab-t", norm="l2").label == "FAB-T L2"
    assert registry.make("deepfool").label == "DeepFool L∞"
    assert registry.make("deepfool", norm="l2").label == "DeepFool L2"
    cfg = registry.make("fab-t", norm="l2", eps=0.5, steps=3)
    assert cfg.targeted and (cfg.restarts, cfg.n_targets) == (1, 9)
    assert registry.from_dict(registry.to_dict(cfg)) == cfg
    assert registry.from_dict(registry.to_dict(registry.make("deepfool"))).kind == "deepfool"


@pytest.mark.parametrize(
    "name, opts, match",
    [
        ("fab", dict(steps=0), "steps must be an integer >= 1"),
        ("fab", dict(restarts=1.5), "restarts must be an integer"),
        ("fab-t", dict(n_targets=0), "n_targets must be an integer >= 1"),
        ("fab", dict(targeted="yes"), "targeted must be a bool"),
        ("fab", dict(alpha_max=1.5), "alpha_max must be <= 1"),
        ("fab", dict(eta=0.9), "eta .* must be >= 1"),
        ("fab", dict(beta=0.0), "beta must be finite and > 0"),
        ("fab", dict(beta=1.2), "beta must be <= 1"),
        ("fab", dict(norm="l1"), "unknown norm 'l1'"),
        ("fab", dict(eps=-1.0), "eps must be finite"),
        ("fab", dict(temperature="hns"), "has no option 'temperature'"),
        ("deepfool", dict(overshoot=-0.1), "overshoot must be finite and >= 0"),
        ("deepfool", dict(steps=2.0), "steps must be an integer"),
        ("deepfool", dict(norm="linf2"), "unknown norm"),
    ],
)
def test_bad_options(name, opts, match):
    with pytest.raises(ValueError, match=match):
        registry.make(name, **opts)
