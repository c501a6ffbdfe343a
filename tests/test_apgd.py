"""APGD (Auto-PGD): schedule, invariants, targets, per-example randomness, temperature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import relu_mlp

from qadv.attacks import apgd, attack, example_keys, execute, get_norm, prepare, registry

SHAPE = (4, 4, 1)
N = 16
D = 5


mlp = relu_mlp(0, n_in=N)


def _data(b, seed=1, f=mlp):
    x = jax.random.uniform(jax.random.key(seed), (b, *SHAPE), jnp.float32)
    x = jnp.where(x < 0.15, jnp.zeros_like(x), jnp.where(x > 0.85, jnp.ones_like(x), x))
    return x, jnp.argmax(f(x), axis=1).astype(jnp.int32)


KEY = jax.random.key(7)


# ---------------------------------------------------------------- a narrow adversarial band

EPS = 0.1
BAND = EPS / 40  # misclassified iff the mean pixel is within BAND of 0.5


def narrow_band(x):
    """Class 1 wins only in a thin slab around mean(x) = 0.5: a fixed step overshoots it."""
    s = jnp.mean(x.reshape(x.shape[0], -1), axis=1)
    z1 = 1.0 - jnp.abs(s - 0.5) / BAND
    return jnp.stack([jnp.zeros_like(z1), z1], axis=1)


def _band_data(b=48):
    k1, k2 = jax.random.split(jax.random.key(3))
    u = jax.random.uniform(k1, (b, 1, 1, 1), jnp.float32, minval=0.3, maxval=0.9)
    noise = jax.random.uniform(k2, (b, *SHAPE), jnp.float32, minval=-0.05, maxval=0.05)
    noise = noise - jnp.mean(noise, axis=(1, 2, 3), keepdims=True)
    return 0.5 - u * EPS + noise, jnp.zeros((b,), jnp.int32)


def test_apgd_beats_oscillating_fixed_step_pgd(strict_dtypes):
    x, y = _band_data()
    assert not bool(jnp.any(jnp.argmax(narrow_band(x), 1) != y))
    steps = 20
    pgd = attack(registry.make("pgd", eps=EPS, steps=steps), narrow_band, x, y, key=KEY)
    ours = attack(registry.make("apgd-ce", eps=EPS, steps=steps), narrow_band, x, y, key=KEY)
    n_pgd, n_apgd = int(pgd.success.sum()), int(ours.success.sum())
    assert n_apgd >= n_pgd
    assert n_apgd >= 0.9 * x.shape[0] > 2 * n_pgd  # the halved steps land in the band
    assert get_norm("linf").in_ball(ours.x_adv, x, EPS).all()
    np.testing.assert_array_equal(np.asarray(ours.queries), 1 + (steps + 1))


# ------------------------------------------------------------------------------ invariants


STEPS = 12
RESTARTS = 2


def _cfg(norm, loss):
    """Shared by several tests (same config and shapes: compiled once)."""
    eps = 0.1 if norm == "linf" else 0.4
    return registry.make("apgd", norm=norm, eps=eps, loss=loss, steps=STEPS, restarts=RESTARTS)


@pytest.mark.parametrize(
    "norm,loss",
    [
        ("linf", "ce"),
        ("linf", "dlr"),
        ("linf", "dlr-targeted"),
        ("l2", "ce"),
        # the protocol test checks every attack's ball at both norms
        pytest.param("l2", "dlr", marks=pytest.mark.slow),
        pytest.param("l2", "dlr-targeted", marks=pytest.mark.slow),
    ],
)
def test_stays_in_ball_and_box(strict_dtypes, norm, loss):
    x, y = _data(12)
    cfg = _cfg(norm, loss)
    res = attack(cfg, mlp, x, y, key=KEY)
    adv = np.asarray(res.x_adv, np.float64)
    assert res.x_adv.dtype == x.dtype and np.isfinite(adv).all()
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert get_norm(norm).in_ball(res.x_adv, x, cfg.eps, rtol=1e-6, atol=1e-7).all()
    np.testing.assert_array_equal(
        np.asarray(res.success), np.asarray(jnp.argmax(mlp(res.x_adv), 1) != y)
    )
    assert res.success.any() and not res.success.all()  # the bound is exercised both ways
    runs = RESTARTS * (D - 1 if loss == "dlr-targeted" else 1)  # n_targets=9 capped at d-1
    q = np.asarray(res.queries)
    assert q.min() >= 1 + STEPS + 1 and q.max() == 1 + runs * (STEPS + 1)
    assert np.all((q - 1) % (STEPS + 1) == 0)


def test_clean_misclassified_returns_x(strict_dtypes):
    x, y = _data(12)
    y = (y + 1) % D  # every example is misclassified
    res = attack(_cfg("linf", "ce"), mlp, x, y, key=KEY)
    np.testing.assert_array_equal(np.asarray(res.x_adv), np.asarray(x))
    assert res.success.all()
    np.testing.assert_array_equal(np.asarray(res.queries), 1)


# -------------------------------------------------------------------------------- schedule


def _reference_checkpoints(n):
    """The authors' rule (autopgd_base.py): windows int(.22n), -int(.03n), >= int(.06n)."""
    k, k_min, decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
    out, counter = [], 0
    for i in range(n):
        counter += 1
        if counter == k:
            out.append(i + 1)
            k, counter = max(k - decr, k_min), 0
    return tuple(out)


def test_checkpoints_match_reference():
    assert apgd.checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert apgd.checkpoints(100) == _reference_checkpoints(100)
    for n in (200, 500, 1000):
        assert apgd.checkpoints(n) == _reference_checkpoints(n)
    for n in range(1, 60):
        w = apgd.checkpoints(n)
        assert all(0 <= a < b <= n for a, b in zip((0, *w), w, strict=False))


def _reference_run(f, x0, x, y, eps, steps, rho=0.75, momentum=0.75):
    """One L-inf APGD-CE run written straight from the paper, in NumPy, from ``x0``."""

    def ce(z):
        logits = f(z)
        return jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(len(y)), y]

    value_grad = jax.jit(lambda z: (ce(z), jax.grad(lambda zz: jnp.sum(ce(zz)))(z)))

    def loss_grad(z):
        value, grad = value_grad(z)
        return np.array(value), np.array(grad)

    def proj(z):
        return np.clip(np.clip(z, x - eps, x + eps), 0.0, 1.0)

    b = x.shape[0]
    checks = set(apgd.checkpoints(steps))
    cur, prev = np.array(x0), np.array(x0)
    loss, grad = loss_grad(jnp.asarray(cur))
    best, grad_best, loss_best = cur.copy(), grad.copy(), loss.copy()
    eta = np.full((b,), 2 * eps, np.float32)
    n_up, reduced, loss_check, last = np.zeros(b), np.ones(b, bool), loss_best.copy(), 0
    found = np.argmax(np.asarray(f(jnp.asarray(cur))), 1) != y
    first = cur.copy()
    for t in range(steps):
        a = 1.0 if t == 0 else momentum
        z = proj(cur + eta[:, None, None, None] * np.sign(grad))
        new = proj(cur + a * (z - cur) + (1 - a) * (cur - prev))
        prev = cur
        new_loss, new_grad = loss_grad(jnp.asarray(new))
        n_up += new_loss > loss
        up = new_loss > loss_best
        best[up], grad_best[up], loss_best[up] = new[up], new_grad[up], new_loss[up]
        cur, grad, loss = new, new_grad, new_loss
        missed = np.argmax(np.asarray(f(jnp.asarray(new))), 1) != y
        first[missed & ~found], found = new[missed & ~found], found | missed
        if (t + 1) in checks:
            window, last = t + 1 - last, t + 1
            halve = (n_up <= rho * window) | (~reduced & (loss_check >= loss_best))
            eta[halve] /= 2
            cur[halve], grad[halve] = best[halve], grad_best[halve]
            reduced, loss_check, n_up = halve, loss_best.copy(), np.zeros(b)
    return eta, loss_best, best, cur, found, first


def test_one_run_follows_the_paper(strict_dtypes):
    x, y = _data(8, seed=4)
    steps, eps = 20, 0.08
    cfg = registry.make("apgd-ce", eps=eps, steps=steps)
    keys = example_keys(KEY, 8)
    strategy = prepare(cfg, mlp)

    @jax.jit
    def run(x, y, keys):
        x0 = get_norm("linf").random_start(keys, x, eps)
        return x0, apgd._run_once(cfg, strategy, mlp, apgd.cross_entropy, x, y, keys)

    x0, s = run(x, y, keys)
    x0 = np.asarray(x0)
    with jax.numpy_dtype_promotion("standard"):
        ref = _reference_run(mlp, x0, np.asarray(x), np.asarray(y), eps, steps)
    eta, loss_best, best, last, found, first = ref
    assert len(set(eta.tolist())) > 1  # the rule is exercised: some steps halved, not all alike
    np.testing.assert_allclose(np.asarray(s.step), eta, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.loss_best), loss_best, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.x_best), best, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.x_adv), last, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(s.found), found)
    assert found.any() and not found.all()
    np.testing.assert_allclose(np.asarray(s.x_found)[found], first[found], atol=1e-6)


# --------------------------------------------------------------------------------- targets


def test_target_classes_are_top_non_true():
    logits = jax.random.normal(jax.random.key(5), (20, 7), jnp.float32)
    y = jnp.arange(20, dtype=jnp.int32) % 7
    got = np.asarray(apgd.target_classes(logits, y, 6))
    for z, yi, row in zip(np.asarray(logits), np.asarray(y), got, strict=True):
        expect = [c for c in np.argsort(-z, kind="stable") if c != yi]
        assert row.tolist() == expect
    with pytest.raises(ValueError, match="target classes"):
        apgd.target_classes(logits, y, 7)


def test_apgd_t_runs_one_target_per_top_class(strict_dtypes):
    x, y = _data(12)
    res = attack(_cfg("linf", "dlr-targeted"), mlp, x, y, key=KEY)  # 9 targets, capped at 4
    top = np.asarray(apgd.target_classes(mlp(x), y, D - 1))
    target = np.asarray(res.aux["target"])
    success = np.asarray(res.success)
    runs = (np.asarray(res.queries) - 1) // (STEPS + 1)  # targets outer, restarts inner
    np.testing.assert_array_equal(runs[~success], (D - 1) * RESTARTS)  # every target tried
    assert all(target[i] in top[i] for i in range(len(target)))
    for i in np.flatnonzero(success):  # the success comes from the target of its last run
        assert target[i] == top[i, (runs[i] - 1) // RESTARTS]
    assert success.any() and not success.all()


# -------------------------------------------------------------------- per-example results


def test_results_do_not_depend_on_the_batch(strict_dtypes):
    x, y = _data(64, seed=6)
    cfg = registry.make("apgd-t", eps=0.05, steps=8, restarts=2, n_targets=2)
    data = prepare(cfg, mlp)
    whole = execute(cfg, data, mlp, x, y, example_keys(KEY, 64))
    assert whole.success.any() and not whole.success.all()
    # chunks of 7 (the last one overlaps its neighbour to cover examples 57..63)
    for i in [*range(0, 57, 7), 57]:
        idx = np.arange(i, i + 7)
        part = execute(cfg, data, mlp, x[idx], y[idx], example_keys(KEY, idx))
        for name in ("x_adv", "success", "margin", "queries"):
            np.testing.assert_allclose(
                np.asarray(getattr(part, name)), np.asarray(getattr(whole, name))[idx], atol=1e-6
            )
        for name in ("restart", "target", "beta"):
            np.testing.assert_array_equal(
                np.asarray(part.aux[name]), np.asarray(whole.aux[name])[idx]
            )


# ----------------------------------------------------------------------------- temperature


def test_hns_temperature_runs(strict_dtypes):
    x, y = _data(6, seed=8)
    cfg = registry.make("apgd-ce", eps=0.05, steps=8, temperature="hns", grid_size=10)
    assert cfg.label == "APGD-CE++ (HNS) L∞"
    res = attack(cfg, mlp, x, y, key=KEY)
    assert get_norm("linf").in_ball(res.x_adv, x, 0.05).all()
    beta = np.asarray(res.aux["beta"])
    assert np.isfinite(beta).all() and (beta > 0).all()
    assert np.isfinite(np.asarray(res.margin)).all()


# -------------------------------------------------------------------------- configuration


def test_labels_and_variants():
    assert registry.make("apgd-ce").label == "APGD-CE L∞"
    assert registry.make("apgd-dlr", norm="l2", eps=0.5).label == "APGD-DLR L2"
    assert registry.make("apgd-t").label == "APGD-T L∞"
    cfg = registry.make("apgd-t", steps=30)
    assert (cfg.loss, cfg.steps, cfg.n_targets, cfg.checkpoint_rho, cfg.momentum) == (
        "dlr-targeted",
        30,
        9,
        0.75,
        0.75,
    )
    assert registry.from_dict(registry.to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"loss": "x"}, "unknown loss 'x'; choose one of: ce, dlr, dlr-targeted"),
        ({"norm": "l1"}, "unknown norm 'l1'; choose one of: linf, l2"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"restarts": 1.5}, "restarts must be an integer >= 1"),
        ({"n_targets": 0}, "n_targets must be an integer >= 1"),
        ({"momentum": 0.0}, r"momentum must lie in \(0, 1\]"),
        ({"checkpoint_rho": 0.0}, r"checkpoint_rho must lie in \(0, 1\)"),
        ({"eps": -0.1}, "eps must be finite and > 0"),
    ],
)
def test_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        registry.make("apgd", **options)


def test_too_few_classes_for_the_loss():
    w = jnp.eye(N, 3, dtype=jnp.float32)

    def three(x):
        return x.reshape(x.shape[0], -1) @ w

    x = jnp.full((2, *SHAPE), 0.5, jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match="'dlr-targeted' needs at least 4 classes, got d=3"):
        attack(registry.make("apgd-t", steps=2), three, x, y, key=KEY)
