"""Square Attack: gradient-free, per-example, within budget, the reference's schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadv import attacks
from qadv.attacks import example_keys, execute, registry, square

SHAPE = (6, 6, 1)
D = 4
Q = 120  # query budget in these tests


def _mlp_params(shape, seed=0, hidden=10, d=D):
    n = math.prod(shape)
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (n, hidden), jnp.float32) * float(2 / math.sqrt(n))
    w2 = jax.random.normal(k2, (hidden, d), jnp.float32) * float(2 / math.sqrt(hidden))
    return w1, w2


W1, W2 = _mlp_params(SHAPE)


@jax.custom_jvp
def mlp(x):
    """A ReLU MLP that raises if anything differentiates it: every attack run below
    proves that Square takes no gradient."""
    return jax.nn.relu(x.reshape(x.shape[0], -1) @ W1) @ W2


@mlp.defjvp
def _mlp_jvp(primals, tangents):
    raise AssertionError("the model was differentiated")


def _data(n, seed=1, f=mlp, shape=SHAPE):
    x = jax.random.uniform(jax.random.key(seed), (n, *shape), jnp.float32)
    return x, jnp.argmax(f(x), axis=1).astype(jnp.int32)


X, Y = _data(64)
KEY = jax.random.key(3)
CFG = {
    "linf": registry.make("square", norm="linf", eps=0.1, queries=Q),
    "l2": registry.make("square", norm="l2", eps=0.6, queries=Q),
}


def _run(cfg, f, x, y, indices):
    """``cfg`` on examples ``indices`` of an evaluated set, keys by index."""
    idx = np.asarray(indices)
    return execute(cfg, (), f, x[idx], y[idx], example_keys(KEY, idx))


# ------------------------------------------------------------------ gradient masking

ODD = (5, 7, 2)  # non-square, several channels
W1_ODD, W2_ODD = _mlp_params(ODD, seed=2)


def stepped(x):
    """An MLP with logits floored to multiples of 0.05: its input gradient is 0
    everywhere, by construction."""
    z = jax.nn.relu(x.reshape(x.shape[0], -1) @ W1_ODD) @ W2_ODD
    return jnp.floor(z * 20.0) / 20.0


STEPPED_CFG = {
    "linf": registry.make("square", norm="linf", eps=0.1, queries=Q),
    "l2": registry.make("square", norm="l2", eps=1.0, queries=Q, loss="ce"),
}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_breaks_a_model_with_zero_gradient_where_pgd_cannot_move(strict_dtypes, norm):
    x, _ = _data(8, seed=4, f=stepped, shape=ODD)
    y = jnp.argmax(stepped(x), axis=1).astype(jnp.int32)
    weights = jnp.arange(D, dtype=jnp.float32)[None]
    grad = jax.grad(lambda z: jnp.sum(stepped(z) * weights))(x)
    assert not bool(jnp.any(grad != 0))

    cfg = STEPPED_CFG[norm]
    pgd = attacks.pgd(
        stepped,
        x,
        y,
        key=KEY,
        eps=cfg.eps,
        steps=10,
        norm=norm,
        step_size=cfg.eps / 4,
        random_init=False,
    )
    assert bool(jnp.all(pgd == x))  # zero gradient: PGD never leaves the clean point

    res = execute(cfg, (), stepped, x, y, example_keys(KEY, 8))
    assert float(res.success.mean()) >= 0.5
    assert attacks.get_norm(norm).in_ball(res.x_adv, x, cfg.eps).all()


def test_no_gradient_is_taken_under_jit(strict_dtypes):
    with pytest.raises(AssertionError, match="differentiated"):
        jax.grad(lambda z: mlp(z).sum())(X[:2])
    for cfg in CFG.values():  # execute is jitted; the model raises if differentiated
        res = _run(cfg, mlp, X, Y, range(7))
        assert res.x_adv.shape == X[:7].shape


# ---------------------------------------------------------------- per-example results


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_example_results_do_not_depend_on_the_batch(strict_dtypes, norm):
    whole = _run(CFG[norm], mlp, X, Y, range(64))
    # Chunks of 7: 0-6, ..., 56-62, and 57-63 for the last example.
    parts = [_run(CFG[norm], mlp, X, Y, range(i, i + 7)) for i in range(0, 63, 7)]
    last = _run(CFG[norm], mlp, X, Y, range(57, 64))
    for field in ("x_adv", "success", "margin", "queries"):
        got = [np.asarray(getattr(p, field)) for p in parts] + [
            np.asarray(getattr(last, field))[-1:]
        ]
        np.testing.assert_array_equal(
            np.asarray(getattr(whole, field)), np.concatenate(got), err_msg=field
        )
    assert 0 < int(whole.success.sum()) < 64  # a mix of broken and robust examples


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_query_counts(strict_dtypes, norm):
    y = Y[:7].at[0].set((Y[0] + 1) % D)  # example 0 is misclassified before the attack
    res = _run(CFG[norm], mlp, X, y, range(7))
    q = np.asarray(res.queries)
    assert q.dtype == np.int32 and q[0] == 1
    np.testing.assert_array_equal(res.x_adv[0], X[0])  # returned as it is
    assert bool(res.success[0])
    assert (q >= 1).all() and (q <= Q).all()
    # The ones still robust spent the whole budget; broken ones stopped when they broke.
    np.testing.assert_array_equal(q[~np.asarray(res.success)], Q)
    assert np.asarray(res.success).any() and (q[np.asarray(res.success)] < Q).any()


def test_restarts_only_attack_the_robust_examples(strict_dtypes):
    one = _run(CFG["linf"], mlp, X, Y, range(7))
    cfg2 = registry.make("square", norm="linf", eps=0.1, queries=Q, restarts=2)
    two = _run(cfg2, mlp, X, Y, range(7))
    s1, s2 = np.asarray(one.success), np.asarray(two.success)
    assert (s2 >= s1).all()
    np.testing.assert_array_equal(np.asarray(two.queries)[s1], np.asarray(one.queries)[s1])
    np.testing.assert_array_equal(np.asarray(two.queries)[~s2], 1 + 2 * (Q - 1))


# ----------------------------------------------------------------------- invariants

# ----------------------------------------------------------------------- invariants


@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    low=st.sampled_from([0.0, 0.45, 0.9]),
    norm=st.sampled_from(["linf", "l2"]),
)
def test_stays_in_the_ball_and_the_box(seed, low, norm):
    cfg = CFG[norm]  # batch of 7 as elsewhere: compiled once
    x = jax.random.uniform(jax.random.key(seed), (7, *SHAPE), jnp.float32, low, low + 0.1)
    y = jnp.asarray(np.arange(7) % D, jnp.int32)
    with jax.numpy_dtype_promotion("strict"):
        res = execute(cfg, (), mlp, x, y, example_keys(jax.random.key(seed), 7))
    assert res.x_adv.dtype == jnp.float32
    assert attacks.get_norm(norm).in_ball(res.x_adv, x, cfg.eps).all()
    np.testing.assert_array_equal(np.isfinite(np.asarray(res.distance)), np.asarray(res.success))


# ------------------------------------------------------------------------- schedule


def test_p_schedule_matches_the_reference():
    # AutoAttack's p_selection: iteration rescaled to 10,000 queries, p_init halved after
    # 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.
    expected_5000 = {
        0: 0.8,
        5: 0.8,
        6: 0.4,
        25: 0.4,
        26: 0.2,
        100: 0.2,
        101: 0.1,
        250: 0.1,
        251: 0.05,
        500: 0.05,
        501: 0.025,
        1001: 0.0125,
        2001: 0.00625,
        3001: 0.003125,
        4001: 0.0015625,
        4999: 0.0015625,
    }
    for it, p in expected_5000.items():
        assert square.p_selection(it, queries=5000, p_init=0.8) == pytest.approx(p, rel=1e-12)
    # A 100-query budget: iteration i counts as 100 i.
    expected_100 = {0: 0.3, 1: 0.075, 2: 0.075, 3: 0.0375, 6: 0.01875, 99: 0.3 / 512}
    for it, p in expected_100.items():
        assert square.p_selection(it, queries=100, p_init=0.3) == pytest.approx(p, rel=1e-12)


def _reference_p(it, n_queries, p_init, rescale):
    """AutoAttack's ``SquareAttack.p_selection``, written out as the reference does."""
    if rescale:
        it = int(it / n_queries * 10000)
    if 10 < it <= 50:
        return p_init / 2
    if 50 < it <= 200:
        return p_init / 4
    if 200 < it <= 500:
        return p_init / 8
    if 500 < it <= 1000:
        return p_init / 16
    if 1000 < it <= 2000:
        return p_init / 32
    if 2000 < it <= 4000:
        return p_init / 64
    if 4000 < it <= 6000:
        return p_init / 128
    if 6000 < it <= 8000:
        return p_init / 256
    if 8000 < it:
        return p_init / 512
    return p_init


def test_p_schedule_on_the_real_budget():
    # resc_schedule=False (AutoAttack standard, 5,000 queries): the bounds count real
    # iterations, so p halves after 10, 50, 200, 500, 1000, 2000 and 4000 only.
    expected_5000 = {
        0: 0.8,
        10: 0.8,
        11: 0.4,
        50: 0.4,
        51: 0.2,
        200: 0.2,
        201: 0.1,
        500: 0.1,
        501: 0.05,
        1000: 0.05,
        1001: 0.025,
        2000: 0.025,
        2001: 0.0125,
        4000: 0.0125,
        4001: 0.00625,
        4999: 0.00625,
    }
    for it, p in expected_5000.items():
        got = square.p_selection(it, queries=5000, p_init=0.8, rescale=False)
        assert got == pytest.approx(p, rel=1e-12), it
    # the two settings against the reference rule, over whole budgets
    for queries in (100, 5000, 10000, 12000):
        for rescale in (True, False):
            ours = [square.p_selection(i, queries=queries, rescale=rescale) for i in range(queries)]
            ref = [_reference_p(i, queries, 0.8, rescale) for i in range(queries)]
            np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # at 10,000 queries the two settings coincide; at 5,000 rescaling halves twice as fast
    assert square.p_selection(26, queries=5000) == 0.2
    assert square.p_selection(26, queries=5000, rescale=False) == 0.4
    sides = square.window_sides(
        "linf", (28, 28, 1), queries=5000, p_init=0.8, iterations=5000, rescale=False
    )
    assert sides[10] == 25 and sides[11] == 18 and sides[-1] == round(math.sqrt(0.00625 * 784))


def test_rescale_schedule_option_changes_the_attack():
    fixed = registry.make("square", norm="linf", eps=0.1, queries=Q, rescale_schedule=False)
    assert fixed != CFG["linf"] and registry.from_dict(registry.to_dict(fixed)) == fixed
    assert registry.to_dict(fixed)["rescale_schedule"] is False
    a = _run(fixed, mlp, X, Y, range(16))
    b = _run(CFG["linf"], mlp, X, Y, range(16))
    # different windows from iteration 6 on, so different points where the search ran
    assert not np.array_equal(np.asarray(a.x_adv), np.asarray(b.x_adv))


def test_standard_preset_builds_autoattacks_square():
    for name in ("standard", "plus-temperature"):
        sq = [c for c in registry.preset(name, eps=8 / 255) if c.kind == "square"]
        assert len(sq) == 1 and sq[0].queries == 5000 and sq[0].rescale_schedule is False
    # a single Square keeps the reference class's default
    assert registry.make("square").rescale_schedule is True


def test_window_sides():
    linf = square.window_sides("linf", (32, 32, 3), queries=5000, p_init=0.8, iterations=30)
    assert linf[0] == 29 and linf[6] == 20 and linf[26] == 14  # round(sqrt(p * 1024))
    l2 = square.window_sides("l2", (28, 28, 1), queries=5000, p_init=0.8, iterations=5000)
    assert l2[0] == 25 and l2[6] == 19  # sqrt(0.4 * 784) = 17.7 -> 18 -> odd 19
    assert (l2 % 2 == 1).all() and l2.min() == 3
    tiny = square.window_sides("linf", (4, 6, 1), queries=100, p_init=1.0, iterations=100)
    assert tiny[0] == 4 and tiny.min() == 1


def _slow_rectangle(rows, cols):
    """Nested rectangles, accumulated loop by loop as the reference writes them."""
    out = np.zeros((rows, cols))
    ci, cj = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        out[max(ci - k, 0) : ci + k + 1, max(cj - k, 0) : cj + k + 1] += 1.0 / (k + 1) ** 2
    return out / np.sqrt((out**2).sum()) if rows else out


@pytest.mark.parametrize("s", [1, 2, 3, 4, 7, 10])
def test_window_pattern_is_the_reference_pseudo_gaussian(s):
    top, bottom = _slow_rectangle(s // 2, s), _slow_rectangle(s - s // 2, s)
    eta = np.concatenate([top, -bottom])
    np.testing.assert_allclose(square.window_pattern(s), eta / np.linalg.norm(eta), atol=1e-12)


# ---------------------------------------------------------------------- config


def test_config_label_and_round_trip():
    cfg = registry.make("square")
    assert (cfg.queries, cfg.p_init, cfg.restarts, cfg.loss) == (5000, 0.8, 1, "margin")
    assert cfg.rescale_schedule is True
    assert cfg.label == "Square L∞"
    assert registry.make("square", norm="l2", eps=0.5).label == "Square L2"
    assert registry.make("square", loss="ce").label == "Square-CE L∞"
    assert registry.from_dict(registry.to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"queries": 0}, "queries must be an integer >= 1, got 0"),
        ({"queries": 10.0}, "queries must be an integer"),
        ({"p_init": 0.0}, "p_init must be finite and > 0"),
        ({"p_init": 1.5}, r"p_init must be <= 1.0"),
        ({"loss": "dlr"}, "unknown loss 'dlr'; choose one of: margin, ce"),
        ({"norm": "l1"}, "unknown norm 'l1'; choose one of: linf, l2"),
        ({"restarts": 0}, "restarts must be an integer >= 1"),
        ({"rescale_schedule": "no"}, "rescale_schedule must be a bool, got 'no'"),
    ],
)
def test_bad_options_raise(option, match):
    with pytest.raises(ValueError, match=match):
        registry.make("square", **option)


def test_schedule_benchmark_compares_paired_on_the_same_images():
    """``benchmarks/square_schedule.py`` at a tiny size: both schedules, paired counts."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "square_schedule.py"
    spec = importlib.util.spec_from_file_location("square_schedule", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x, y = np.asarray(X[:12]), np.asarray(Y[:12])
    r = bench.compare(mlp, x, y, eps=0.1, queries=40, batch_size=12, seed=0, progress=False)
    rows = list(r["schedules"].values())
    assert [row["rescale_schedule"] for row in rows] == [True, False]
    only = list(r["broken_only_by"].values())
    robust = [round(row["robust_accuracy"] * 12 / 100) for row in rows]
    assert robust[0] - robust[1] == only[1] - only[0]
    assert r["robust_under_both"] <= min(robust)
