"""FGSM/PGD and the NJS/HNS temperature strategies."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qadv.attacks.gradient
import qadv.attacks.norms
import qadv.attacks.temperature
import qadv.losses
import qadv.signal
from qadv import attacks

SHAPE = (4, 4, 1)
N = 16
D = 5
B = 6


def _mlp_params(seed, dtype=jnp.float32, hidden=12, d=D):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w1 = jax.random.normal(k1, (N, hidden), jnp.float32) * float(2.0 / math.sqrt(N))
    b1 = jax.random.normal(k2, (hidden,), jnp.float32) * 0.1
    w2 = jax.random.normal(k3, (hidden, d), jnp.float32) * float(2.0 / math.sqrt(hidden))
    return tuple(a.astype(dtype) for a in (w1, b1, w2))


def mlp_apply(params, x, act=jax.nn.relu):
    w1, b1, w2 = params
    return act(x.reshape(x.shape[0], -1) @ w1 + b1[None, :]) @ w2


PARAMS = _mlp_params(0)


def relu_mlp(x):
    return mlp_apply(PARAMS, x)


def _data(seed=1, b=B, f=relu_mlp):
    x = jax.random.uniform(jax.random.key(seed), (b, *SHAPE), jnp.float32)
    return x, jnp.argmax(f(x), axis=1).astype(jnp.int32)


X, Y = _data()
KEY = jax.random.key(42)
NJS = attacks.njs(relu_mlp, X, rho=0.01)
TEMPS = {"none": None, "fixed": attacks.fixed(0.5), "njs": NJS, "hns": attacks.hns(grid_size=20)}


def _check_ball(adv, x, eps, norm):
    tiny = float(8 * jnp.finfo(x.dtype).eps)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert bool(jnp.all(jnp.isfinite(adv)))
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    delta = np.asarray(adv, np.float64) - np.asarray(x, np.float64)
    if norm == "linf":
        assert np.abs(delta).max() <= eps + tiny
    else:
        norms = np.sqrt((delta.reshape(delta.shape[0], -1) ** 2).sum(1))
        assert norms.max() <= eps * (1 + tiny) + tiny


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("temp", list(TEMPS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball(strict_dtypes, norm, temp):
    eps = 8 / 255 if norm == "linf" else 0.5
    adv, info = attacks.pgd(
        relu_mlp,
        X,
        Y,
        key=KEY,
        eps=eps,
        step_size=eps / 3,
        steps=2,
        norm=norm,
        temperature=TEMPS[temp],
        return_info=True,
    )
    _check_ball(adv, X, eps, norm)
    assert info.beta.shape == (B,) and bool(jnp.all(info.beta > 0))
    assert not bool(jnp.any(info.fallback))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_stays_in_ball(strict_dtypes, norm):
    eps = 8 / 255 if norm == "linf" else 0.5
    temp = TEMPS["hns"] if norm == "linf" else None
    adv = attacks.fgsm(relu_mlp, X, Y, eps=eps, norm=norm, key=KEY, temperature=temp)
    _check_ball(adv, X, eps, norm)
    if norm == "linf":
        # without a random start, L-inf FGSM moves every pixel with a non-zero gradient by eps
        adv = attacks.fgsm(relu_mlp, X, Y, eps=0.01)
        g = qadv.signal.input_gradient(relu_mlp, X, Y)
        moved = np.abs(np.asarray(adv - X))
        interior = (np.asarray(X) > 0.011) & (np.asarray(X) < 0.989) & (np.asarray(g) != 0)
        np.testing.assert_allclose(moved[interior], 0.01, rtol=1e-4)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(0.0, 1.0),
    frac=st.floats(0.0, 2.0),
    norm=st.sampled_from(["linf", "l2"]),
    edge=st.sampled_from([None, 0.0, 1.0]),
)
def test_ball_invariant_hypothesis(seed, eps, frac, norm, edge):
    with jax.numpy_dtype_promotion("strict"):
        x = jax.random.uniform(jax.random.key(seed), (B, *SHAPE), jnp.float32)
        if edge is not None:  # images on the boundary of [0, 1]
            x = x.at[:, :2].set(edge)
        y = jnp.argmax(relu_mlp(x), axis=1).astype(jnp.int32)
        adv = attacks.pgd(
            relu_mlp,
            x,
            y,
            key=jax.random.key(seed),
            eps=eps,
            step_size=frac * eps + 1e-3,
            steps=2,  # statics shared with the tests above: no recompiles
            norm=norm,
        )
        _check_ball(adv, x, eps, norm)


def test_l2_ball_is_total_norm_not_per_channel(strict_dtypes):
    x = jnp.full((1, 4, 4, 3), 0.5, jnp.float32)
    far = attacks.L2.project(x + 0.3, x, jnp.float32(0.2))
    assert abs(float(jnp.linalg.norm(far - x)) - 0.2) < 1e-6
    starts = attacks.L2.random_start(jax.random.key(0), jnp.full((256, 4, 4, 3), 0.5), 0.2)
    r = np.linalg.norm(np.asarray(starts - 0.5).reshape(256, -1), axis=1)
    assert r.max() <= 0.2 + 1e-6 and np.median(r) > 0.2 * 0.5 ** (1 / 48) * 0.95  # uniform in ball


# ------------------------------------------------------------------------------ restarts


def test_restarts_never_weaker_per_example(strict_dtypes):
    x, y = _data(seed=3)
    kw = dict(key=KEY, eps=0.08, step_size=0.03, steps=2)
    a1, i1 = attacks.pgd(relu_mlp, x, y, restarts=1, return_info=True, **kw)
    a4, i4 = attacks.pgd(relu_mlp, x, y, restarts=4, return_info=True, **kw)
    s1, s4 = np.asarray(i1.success), np.asarray(i4.success)
    assert np.all(s4 >= s1)
    both_fail = ~s1 & ~s4
    assert np.all(np.asarray(i4.margin)[both_fail] >= np.asarray(i1.margin)[both_fail])
    # restart 0 of restarts=4 is the restarts=1 run
    keep = np.asarray(i4.restart) == 0
    np.testing.assert_array_equal(np.asarray(a4)[keep], np.asarray(a1)[keep])
    # the reported success is the model's verdict on the returned images
    np.testing.assert_array_equal(np.asarray(jnp.argmax(relu_mlp(a4), 1) != y), s4)
    _check_ball(a4, x, 0.08, "linf")


# ------------------------------------------------------------------------ compilation


def test_jit_equals_no_jit(strict_dtypes):
    kw = dict(key=KEY, eps=0.5, step_size=0.2, steps=2, norm="l2", temperature=TEMPS["fixed"])
    compiled = attacks.pgd(relu_mlp, X, Y, **kw)
    with jax.disable_jit():
        eager = attacks.pgd(relu_mlp, X, Y, **kw)
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    outer = jax.jit(lambda a, b: attacks.pgd(relu_mlp, a, b, **kw))(X, Y)
    np.testing.assert_allclose(compiled, outer, atol=1e-6)


def test_no_retrace_on_second_call(strict_dtypes):
    calls = []

    def f(x):
        calls.append(1)
        return relu_mlp(x)

    kw = dict(step_size=0.01, steps=2, temperature=attacks.hns(grid_size=10))
    attacks.pgd(f, X, Y, key=KEY, eps=0.03, **kw)
    traced = len(calls)
    assert traced > 0
    x2, y2 = _data(seed=7)
    attacks.pgd(f, x2, y2, key=jax.random.key(1), eps=0.05, **kw)  # new values, same shapes
    assert len(calls) == traced


def test_partial_logits_fn_is_a_pytree_argument(strict_dtypes):
    f = jax.tree_util.Partial(mlp_apply, PARAMS)
    a = attacks.pgd(f, X, Y, key=KEY, eps=0.03, step_size=0.01, steps=2)
    np.testing.assert_allclose(
        a, attacks.pgd(relu_mlp, X, Y, key=KEY, eps=0.03, step_size=0.01, steps=2), atol=1e-6
    )
    g = jax.tree_util.Partial(mlp_apply, _mlp_params(5))
    assert not np.allclose(a, attacks.pgd(g, X, Y, key=KEY, eps=0.03, step_size=0.01, steps=2))


def test_vmap_over_batches(strict_dtypes):
    xs = jnp.stack([X, _data(seed=9)[0]])
    ys = jnp.stack([Y, _data(seed=9)[1]])
    kw = dict(key=KEY, eps=0.05, step_size=0.02, steps=2, temperature=TEMPS["njs"])
    batched = jax.vmap(lambda a, b: attacks.pgd(relu_mlp, a, b, **kw))(xs, ys)
    for i in range(2):
        np.testing.assert_allclose(batched[i], attacks.pgd(relu_mlp, xs[i], ys[i], **kw), atol=1e-6)


# -------------------------------------------------------------------------- temperature


@jax.jit
def _betas_for_linear_model(w, x, y):
    def f(z):
        return z.reshape(z.shape[0], -1) @ w

    d = w.shape[1]
    strategies = (
        attacks.fixed(0.01),
        attacks.njs(f, x, rho=0.3 if d > 2 else 0.1),
        attacks.hns(grid_size=15),
    )
    a = f(x)
    return a, jnp.stack([s.beta(s.init(f, x, y), a, y).beta for s in strategies])


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    d=st.sampled_from([2, 3, 10]),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3, 1e5]),
)
def test_temperature_never_changes_prediction(seed, d, scale):
    with jax.numpy_dtype_promotion("strict"):
        w = jax.random.normal(jax.random.key(seed), (N, d), jnp.float32) * float(scale)
        x = jax.random.uniform(jax.random.key(seed + 1), (8, *SHAPE), jnp.float32)
        y = jnp.argmax(x.reshape(8, -1) @ w, 1).astype(jnp.int32).at[6:].set(0)
        a, betas = _betas_for_linear_model(w, x, y)
        assert bool(jnp.all(jnp.isfinite(betas) & (betas > 0)))
        for beta in np.asarray(betas):
            np.testing.assert_array_equal(
                np.argmax(beta[:, None] * np.asarray(a), 1), np.argmax(np.asarray(a), 1)
            )


def test_njs_beta1_is_inverse_mean_singular_value(strict_dtypes):
    w = jax.random.normal(jax.random.key(3), (N, D), jnp.float32)

    def linear(x):
        return x.reshape(x.shape[0], -1) @ w

    sv = np.linalg.svd(np.asarray(w, np.float64).T, compute_uv=False)  # J = W^T for every x
    strat = attacks.njs(linear, X, rho=0.05)
    np.testing.assert_allclose(float(strat.beta1), 1.0 / sv.mean(), rtol=1e-5)
    # w.r.t. normalised inputs z = (x - mean) / std the Jacobian is J * std
    np.testing.assert_allclose(
        float(attacks.njs(linear, X, input_std=0.25).beta1), 4.0 / sv.mean(), rtol=1e-5
    )


def test_njs_rule_follows_algorithm_1(strict_dtypes):
    strat = attacks.njs(relu_mlp, X, rho=0.01)
    b1 = float(strat.beta1)
    a = jnp.array([[600.0, 0.0, -3.0, 1.0, 2.0], [0.1, 0.0, 0.2, 0.0, 0.0]], jnp.float32) / b1
    y = jnp.array([0, 2], jnp.int32)
    info = strat.beta((), a, y)
    gamma = 603.0  # max - min of the beta1-scaled logits of the saturated example
    beta2 = (-math.log(0.01) + math.log(0.99) + math.log(D - 1)) / gamma
    np.testing.assert_allclose(np.asarray(info.beta), [b1 * beta2, b1], rtol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _hess_norm(f, beta, x, y):
    hess = jax.hessian(lambda z: -jax.nn.log_softmax(beta * f(z[None])[0])[y])(x)
    return jnp.sqrt(jnp.sum(hess**2))


def _slow_hns_beta(f, x, y, grid_size):
    """Algorithm 2's grid rule for one example, straight from the equations."""
    a = np.asarray(f(x[None])[0], np.float64)
    d = a.size
    if int(np.argmax(a)) != int(y):
        return 1.0
    top = np.sort(a)[::-1]
    gap = top[0] - top[1]

    def bound(rho):
        return -np.log(rho / ((d - 1) * (1 - rho))) / gap

    grid = np.linspace(bound(1 - 1 / d - 0.01), bound(1e-72), grid_size)

    norms = [float(_hess_norm(f, jnp.float32(b), x, y)) for b in grid]
    k = int(np.argmax(norms))
    return 1.0 if k in (0, grid_size - 1) else float(grid[k])


def _restart_keys(key, x, r):
    """The keys of restart ``r``: example ``i`` uses ``fold_in(fold_in(key, i), r)``."""
    return jax.vmap(lambda k: jax.random.fold_in(k, r))(attacks.example_keys(key, x.shape[0]))


def test_hns_matches_slow_reference(strict_dtypes):
    x, y = _data(seed=11)
    y = y.at[3].set((y[3] + 1) % D)  # one misclassified example -> beta = 1
    x_start = attacks.LINF.random_start(_restart_keys(KEY, x, 0), x, jnp.float32(0.03))
    info = attacks.hns(grid_size=20).init(relu_mlp, x_start, y)
    slow = [_slow_hns_beta(relu_mlp, x_start[i], y[i], 20) for i in range(B)]
    np.testing.assert_allclose(np.asarray(info.beta), slow, rtol=1e-4)
    assert float(info.beta[3]) == 1.0 and bool(info.default[3])
    # the attack chooses beta once, at its random-start point
    _, ainfo = attacks.pgd(
        relu_mlp,
        x,
        y,
        key=KEY,
        eps=0.03,
        step_size=0.01,
        steps=2,
        temperature=TEMPS["hns"],
        return_info=True,
    )
    np.testing.assert_allclose(np.asarray(ainfo.beta), slow, rtol=1e-4)


# ---------------------------------------------------------------------- differentiability


def _tanh_apply(params, x):
    return mlp_apply(params, x, act=jnp.tanh)


def test_grad_through_l2_pgd_matches_finite_differences():
    """d/d(params) and d/dx of a function of the L2-PGD output vs central differences."""
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        params = _mlp_params(2, dtype=jnp.float64)
        x = jax.random.uniform(jax.random.key(4), (3, *SHAPE), jnp.float64) * 0.5 + 0.25
        y = jnp.array([0, 1, 2], jnp.int32)
        key = jax.random.key(5)

        def objective(w1, x):
            # a Partial is a pytree: new weights reuse the compiled attack
            f = jax.tree_util.Partial(_tanh_apply, (w1, *params[1:]))
            adv = attacks.pgd(f, x, y, key=key, eps=0.2, step_size=0.05, steps=3, norm="l2")
            return jnp.sum(jnp.sin(3.0 * adv)) + jnp.sum(f(adv)[:, 0])

        gw, gx = jax.grad(objective, argnums=(0, 1))(params[0], x)
        assert bool(jnp.all(jnp.isfinite(gw))) and bool(jnp.all(jnp.isfinite(gx)))
        for arg, g, direction_key in ((0, gw, 6), (1, gx, 7)):
            base = [params[0], x]
            v = jax.random.normal(jax.random.key(direction_key), base[arg].shape, jnp.float64)
            h = 1e-5

            def at(t, arg=arg, v=v, base=base):
                args = list(base)
                args[arg] = args[arg] + t * v
                return float(objective(*args))

            fd = (at(h) - at(-h)) / (2 * h)
            np.testing.assert_allclose(float(jnp.sum(g * v)), fd, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ saturation, NaN-safety


def test_saturated_model_pgd_stalls_pgdpp_succeeds(strict_dtypes):
    w = jax.random.normal(jax.random.key(12), (N, D), jnp.float32)

    def saturated(x):
        return 1000.0 * (x.reshape(x.shape[0], -1) @ w)

    x = jax.random.uniform(jax.random.key(13), (24, *SHAPE), jnp.float32)
    y = jnp.argmax(saturated(x), 1).astype(jnp.int32)
    zero = qadv.signal.zero_gradient_fraction(saturated, x, y)
    kw = dict(key=KEY, eps=0.15, step_size=0.05, steps=6)
    plain = attacks.pgd(saturated, x, y, **kw)
    start = attacks.LINF.random_start(_restart_keys(KEY, x, 0), x, jnp.float32(0.15))
    never_moved = np.all(np.asarray(plain == start), axis=(1, 2, 3))
    rates = {"pgd": float(jnp.mean(jnp.argmax(saturated(plain), 1) != y))}
    for name, temp in (("njs", attacks.njs(saturated, x)), ("hns", attacks.hns())):
        adv = attacks.pgd(saturated, x, y, temperature=temp, **kw)
        rates[name] = float(jnp.mean(jnp.argmax(saturated(adv), 1) != y))
    assert zero > 0.8  # almost every example has an exactly-zero input gradient
    assert np.mean(never_moved) > 0.7  # ... so PGD never leaves its random start
    assert rates["pgd"] < 0.3, rates
    assert rates["njs"] > 0.8 and rates["hns"] > 0.8, rates


def _pathological(z):
    """d=3 logits: ex 0 top-two tie (gap 0), ex 1 exactly one-hot softmax, ex 2 +inf,
    ex 3 NaN, ex 4 -inf in a wrong class, ex 5 ordinary."""
    s = z.reshape(z.shape[0], -1).mean(1, keepdims=True)
    base = jnp.concatenate([s, -s, 0.5 * s], 1)
    row = jnp.arange(z.shape[0])[:, None]
    tie = jnp.concatenate([s, s, -s], 1)
    one_hot = jnp.concatenate([1e4 + s, -s, s], 1)
    out = jnp.where(row == 0, tie, jnp.where(row == 1, one_hot, base))
    return out.at[2, 0].set(jnp.inf).at[3, 1].set(jnp.nan).at[4, 2].set(-jnp.inf)


def _two_class(z):
    s = z.reshape(z.shape[0], -1).mean(1, keepdims=True)
    return jnp.concatenate([300.0 * s, 300.0 * (1.0 - s)], 1)


def test_nan_safety_ties_one_hot_two_classes_and_inf(strict_dtypes):
    x = jax.random.uniform(jax.random.key(14), (6, *SHAPE), jnp.float32)
    y = jnp.zeros((6,), jnp.int32)
    njs_ref = attacks.njs(relu_mlp, X)
    cases = [
        (_pathological, attacks.hns(grid_size=12), "linf"),
        (_pathological, njs_ref, "l2"),
        (_two_class, attacks.hns(grid_size=12), "l2"),
    ]
    for f, temp, norm in cases:
        adv, info = attacks.pgd(
            f,
            x,
            y,
            key=KEY,
            eps=0.1,
            step_size=0.05,
            steps=2,
            norm=norm,
            temperature=temp,
            return_info=True,
        )
        _check_ball(adv, x, 0.1, norm)
        assert bool(jnp.all(jnp.isfinite(info.beta) & (info.beta > 0)))
        if f is _pathological and temp is not None:
            fb = np.asarray(info.fallback)
            assert fb[2] and fb[3] and not fb[5]  # +inf and NaN logits fall back to beta = 1
            if isinstance(temp, attacks.HNS):
                assert fb[0]  # gap 0: Prop. 1 bound is infinite
            assert np.all(np.asarray(info.beta)[fb] == 1.0)
    # strategies directly on pathological logits
    logits = _pathological(x)
    for strat in (njs_ref, attacks.fixed(2.0)):
        info = strat.beta((), logits, y)
        assert bool(jnp.all(jnp.isfinite(info.beta))) and np.asarray(info.fallback)[[2, 3]].all()


# ----------------------------------------------------------------------------- bad input


BAD = [
    (dict(eps=-0.1), "eps must be finite and >= 0"),
    (dict(eps=float("nan")), "eps must be finite"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(steps=2.5), "steps must be an integer >= 1"),
    (dict(restarts=0), "restarts must be an integer >= 1"),
    (dict(norm="l3"), "unknown norm 'l3'; choose one of: linf, l2"),
    (dict(loss="mse"), "unknown loss 'mse'; choose one of: ce, dlr, cw"),
    (dict(temperature="hns"), "unknown temperature 'hns'"),
    (dict(y=jnp.full((B,), D, jnp.int32)), r"labels must lie in \[0, 5\)"),
    (dict(y=jnp.full((B,), -1, jnp.int32)), r"labels must lie in \[0, 5\)"),
    (dict(y=jnp.zeros((B + 1,), jnp.int32)), "batch sizes differ"),
    (dict(y=jnp.zeros((B,), jnp.float32)), "y must be integer labels"),
    (dict(x=X + 1.0), r"x must lie in \[0, 1\]"),
    (dict(x=X.at[0, 0, 0, 0].set(jnp.nan)), "x contains NaN"),
    (dict(key=None), "key is required"),
    (dict(temperature=attacks.njs(relu_mlp, X, rho=0.9)), r"rho must be < \(d-1\)/d"),
]


@pytest.mark.parametrize("change,match", BAD)
def test_bad_input_raises_one_line_value_error(change, match):
    kw = dict(x=X, y=Y, key=KEY, eps=0.03, step_size=0.01, steps=2)
    kw.update(change)
    with pytest.raises(ValueError, match=match) as err:
        attacks.pgd(relu_mlp, kw.pop("x"), kw.pop("y"), **kw)
    assert "\n" not in str(err.value)


def test_bad_strategy_arguments():
    with pytest.raises(ValueError, match="fixed beta must be finite and > 0"):
        attacks.fixed(0.0)
    with pytest.raises(ValueError, match="njs rho must lie in"):
        attacks.njs(relu_mlp, X, rho=0.0)
    with pytest.raises(ValueError, match="grid_size must be an integer >= 3"):
        attacks.hns(grid_size=2)
    with pytest.raises(ValueError, match="NJS needs > 0"):
        attacks.njs(lambda z: jnp.zeros((z.shape[0], 3), jnp.float32), X)
    with pytest.raises(ValueError, match="dlr loss needs at least 3 classes"):
        attacks.pgd(
            lambda z: jnp.concatenate([z.reshape(z.shape[0], -1)[:, :2]], 1),
            X,
            Y % 2,
            key=KEY,
            eps=0.1,
            step_size=0.1,
            steps=1,
            loss="dlr",
        )


def test_shape_checks_still_run_under_outer_jit():
    @jax.jit
    def bad(x, y):
        return attacks.pgd(relu_mlp, x, y, key=KEY, eps=0.1, step_size=0.1, steps=1)

    with pytest.raises(ValueError, match="batch sizes differ"):
        bad(X, jnp.zeros((B + 1,), jnp.int32))


@pytest.mark.parametrize("loss", ["dlr", "cw"])
def test_other_losses_run_with_temperature(strict_dtypes, loss):
    adv = attacks.pgd(
        relu_mlp,
        X,
        Y,
        key=KEY,
        eps=0.05,
        step_size=0.02,
        steps=2,
        loss=loss,
        temperature=TEMPS["njs"],
    )
    _check_ball(adv, X, 0.05, "linf")


def test_hns_exact_mode_uses_the_full_hessian(strict_dtypes):
    """On a tanh net, exact HNS picks the grid argmax of the exact Hessian norm."""
    x, _ = _data(seed=15, b=3)

    def f(z):
        return _tanh_apply(PARAMS, z)

    y = jnp.argmax(f(x), 1).astype(jnp.int32)
    strat = attacks.hns(grid_size=12, exact=True)
    info = strat.init(f, x, y)
    grid = strat.grid(f(x))
    norms = np.asarray(qadv.signal.hessian_norm(f, x, y, grid, exact=True))
    k = norms.argmax(1)
    expected = np.where((k == 0) | (k == 11), 1.0, np.asarray(grid)[np.arange(3), k])
    np.testing.assert_allclose(np.asarray(info.beta), expected, rtol=1e-5)


def test_prop1_temperature_matches_proposition_1():
    """Table 14's rule: β = (-log ρ + log(1-ρ) + log(d-1)) / (max - min) per correctly
    classified example, 1 otherwise; with it 1 - softmax(βa)_y stays above ρ."""
    rng = np.random.default_rng(3)
    d, b = 10, 16
    w = rng.normal(size=(4, d)).astype(np.float32) * 30
    f = lambda x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
    x = jnp.asarray(rng.uniform(size=(b, 2, 2, 1)).astype(np.float32))
    logits = np.asarray(f(x), np.float64)
    y = jnp.asarray(np.where(np.arange(b) % 4 == 0, (logits.argmax(1) + 1) % d, logits.argmax(1)))
    for rho in (1e-15, 1e-5, 0.2):
        info = attacks.temperature.prop1(rho).init(f, x, y)
        want = (-np.log(rho) + np.log1p(-rho) + np.log(d - 1)) / (logits.max(1) - logits.min(1))
        correct = logits.argmax(1) == np.asarray(y)
        want = np.where(correct, want, 1.0)
        np.testing.assert_allclose(np.asarray(info.beta), want, rtol=1e-5)
        p = jax.nn.softmax(jnp.asarray(want * 0.999)[:, None] * jnp.asarray(logits), axis=-1)
        top = np.asarray(p)[np.arange(b), np.asarray(y)]
        assert np.all((1 - top)[correct] > rho * 0.99)
    with pytest.raises(ValueError, match=r"bad rho 1\.5"):
        attacks.registry.make("pgd", temperature="prop1", rho=1.5)


HALF_PRECISION_CASES = [
    pytest.param("float16", ("fab", "fab-t", "deepfool", "pgd"), id="float16"),
    pytest.param("bfloat16", None, id="bfloat16-every-attack", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("dtype", "names"), HALF_PRECISION_CASES)
def test_attacks_run_on_half_precision_images(dtype, names):
    """Images in float16/bfloat16 (a float32 model promotes them): the attacks (``names``;
    None: every registered one) and NJS run, return images of that dtype in the ball, and
    score them on the model. (FAB and DeepFool iterate in float32 and hand back the
    rounded point; the default run checks those and PGD++ NJS.)"""
    from qadv.attacks import registry

    w = jax.random.normal(jax.random.key(0), (16, 5))

    def f(z):
        return z.reshape(z.shape[0], -1) @ w

    x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1)).astype(dtype)
    y = jnp.argmax(f(x), axis=1)
    surrogate = attacks.AttackContext(surrogate=f)
    for name in names or registry.attack_names():
        opts = {"queries": 10} if name == "square" else {"steps": 3}
        if name == "transfer":
            opts = {"source": "pgd", "steps": 3}
        for temperature in (None, "njs") if name == "pgd" else (None,):
            cfg = registry.make(name, eps=0.1, temperature=temperature, **opts)
            res = attacks.attack(cfg, f, x, y, key=jax.random.key(0), context=surrogate)
            assert res.x_adv.dtype == x.dtype, name
            tol = float(jnp.finfo(dtype).eps)  # one rounding of the image dtype
            x32, adv32 = np.asarray(x, np.float32), np.asarray(res.x_adv, np.float32)
            assert cfg.geometry.in_ball(adv32, x32, 0.1, atol=tol).all(), name
            hits = jnp.argmax(f(res.x_adv), axis=1) != y
            assert bool((res.success == hits).all()), name
    assert np.isfinite(float(attacks.njs(f, x).beta1))
