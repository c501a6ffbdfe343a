"""Signal-propagation diagnostics: Jacobians, the closed-form input Hessian norm, Prop. 1."""

import decimal
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadv import signal
from qadv.quant import sign_ste

SHAPE = (3, 3, 2)  # N = 18
N = 18
D = 4


def _params(seed, hidden=6, d=D, scale=1.0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w1 = jax.random.normal(k1, (N, hidden), jnp.float32) * float(scale / np.sqrt(N))
    b1 = jax.random.normal(k2, (hidden,), jnp.float32) * 0.1
    w2 = jax.random.normal(k3, (hidden, d), jnp.float32) * float(3.0 / np.sqrt(hidden))
    return w1, b1, w2


def make_net(act, seed=0, dtype=jnp.float32, **kw):
    w1, b1, w2 = (a.astype(dtype) for a in _params(seed, **kw))

    def f(x):
        h = x.reshape(x.shape[0], -1) @ w1 + b1[None, :]
        return act(h) @ w2

    return f


def make_cnn(seed=0, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w = (jax.random.normal(k1, (2, 2, SHAPE[-1], 3), jnp.float32) * 0.5).astype(dtype)
    v = (jax.random.normal(k2, (2 * 2 * 3, D), jnp.float32) * 0.5).astype(dtype)

    def f(x):
        h = jax.lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(h)
        return h.reshape(x.shape[0], -1) @ v

    return f


def _images(seed, b=3):
    return jax.random.uniform(jax.random.key(seed), (b, *SHAPE), jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _hessian_fro(f, x, y, beta):
    def loss(xi, yi):
        z = beta * f(xi[None])[0]
        return -jax.nn.log_softmax(z)[yi]

    h = jax.vmap(jax.hessian(loss))(x, y)
    return jnp.sqrt(jnp.sum(h.reshape(x.shape[0], -1) ** 2, axis=1))


def test_jacobian_matches_jacrev(strict_dtypes):
    f = make_cnn()
    x = _images(0)
    jac = jax.jit(signal.jacobian, static_argnums=0)(f, x)
    assert jac.shape == (3, D, *SHAPE)
    full = jax.jit(jax.jacrev(f))(x)  # (B, d, B, H, W, C)
    for i in range(3):
        np.testing.assert_allclose(jac[i], full[i, :, i], rtol=1e-5, atol=1e-6)


def test_singular_values_match_numpy_svd(strict_dtypes):
    f = make_net(jnp.tanh)
    x = _images(1)
    sv = jax.jit(signal.jacobian_singular_values, static_argnums=0)(f, x)
    jac = np.asarray(jax.jit(signal.jacobian, static_argnums=0)(f, x)).reshape(3, D, -1)
    for i in range(3):
        np.testing.assert_allclose(sv[i], np.linalg.svd(jac[i], compute_uv=False), rtol=1e-4)


def test_singular_values_of_rank_deficient_jacobians_match_float64_svd():
    """d = 100 classes of a 35-pixel input (rank 35), and ReLU units that are off: the
    zero singular values come out zero, and the others as accurate as numpy's."""
    w = jax.random.normal(jax.random.key(0), (35, 100))
    x = jax.random.uniform(jax.random.key(1), (2, 5, 7, 1))

    def f(z):
        return jax.nn.relu(z.reshape(z.shape[0], -1) @ w - 1.0)

    sv = np.asarray(signal.jacobian_singular_values(f, x))
    assert sv.shape == (2, 100)
    with jax.enable_x64(True):
        jac = np.asarray(jax.jacobian(lambda z: f(z[None])[0])(x[1]), np.float64)
    on = (np.asarray(f(x[1:]))[0] > 0).sum()
    ref = np.zeros(100)
    ref[: min(35, on)] = np.linalg.svd(jac.reshape(100, -1), compute_uv=False)[: min(35, on)]
    assert 0 < on < 100
    np.testing.assert_allclose(sv[1], ref, rtol=1e-5, atol=1e-5 * ref[0])
    assert np.all(sv[:, 35:] == 0)


_hessian_norm = jax.jit(signal.hessian_norm, static_argnums=0, static_argnames="exact")
BETAS = jnp.array([0.05, 0.3, 1.0, 4.0], jnp.float32)


def _reference(make, x, y):
    """``||jax.hessian||_F`` per example and beta, computed in float64.

    (In float32, autodiff's ``p (1 - p)`` cancels where ``p`` is nearly one-hot; the
    closed form computes ``1 - p_i`` as the sum of the other probabilities and matches
    float64 there, so the reference is float64.)
    """
    with jax.enable_x64(True):
        f64 = make(jnp.float64)
        x64 = x.astype(jnp.float64)
        return np.stack(
            [np.asarray(_hessian_fro(f64, x64, y, jnp.float64(b))) for b in np.asarray(BETAS)], 1
        )


@pytest.mark.parametrize(
    "name,make",
    [
        ("relu", lambda dt: make_net(jax.nn.relu, seed=2, dtype=dt)),
        ("sign_ste", lambda dt: make_net(sign_ste, seed=3, scale=0.5, dtype=dt)),
        ("cnn", lambda dt: make_cnn(seed=4, dtype=dt)),
    ],
)
def test_hessian_norm_closed_form_equals_jax_hessian(strict_dtypes, name, make):
    x, y = _images(5), jnp.array([0, 1, 3], jnp.int32)
    got = _hessian_norm(make(jnp.float32), x, y, BETAS)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, _reference(make, x, y), rtol=2e-4, atol=0, err_msg=name)


def test_hessian_norm_exact_mode_on_tanh(strict_dtypes):
    def make(dt):
        return make_net(jnp.tanh, seed=6, scale=3.0, dtype=dt)

    f = make(jnp.float32)
    x, y = _images(7), jnp.array([2, 0, 1], jnp.int32)
    betas = jnp.broadcast_to(BETAS[None, :], (3, 4))
    exact = _hessian_norm(f, x, y, betas, exact=True)
    approx = _hessian_norm(f, x, y, betas)
    np.testing.assert_allclose(exact, _reference(make, x, y), rtol=5e-4, atol=0)
    # for tanh the curvature term matters: the Gauss-Newton part alone is off
    assert float(jnp.max(jnp.abs(approx - exact) / exact)) > 1e-2


def test_hessian_norm_at_large_beta_matches_float64_below_float32_tiny():
    """At large beta the other classes' probabilities fall below float32's smallest normal
    number (~1e-38) long before the norm does; their products are summed in logs, so
    the norm keeps its digits down to ~1e-19 here (a product of float32 probabilities
    gives 0 at beta = 60), on a linear model where H = beta^2 J^T S J exactly."""
    w = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -1.0]], np.float32)
    x = jnp.array([[[[0.9]], [[0.1]]]], jnp.float32)
    betas = np.array([1.0, 20.0, 40.0, 60.0, 80.0])
    got = np.asarray(signal.hessian_norm(lambda z: z.reshape(1, -1) @ w, x, jnp.array([0]), betas))[
        0
    ]
    a, jac = np.asarray(x, np.float64).reshape(2) @ w.astype(np.float64), w.T.astype(np.float64)
    want = []
    for b in betas:
        z = b * a
        lp = z - np.logaddexp.reduce(z)
        q = np.array([np.exp(np.logaddexp.reduce(np.delete(lp, k))) for k in range(3)])
        p = np.exp(lp)
        s = -np.outer(p, p)
        np.fill_diagonal(s, p * q)
        want.append(np.linalg.norm(b * b * jac.T @ s @ jac))
    assert want[-1] < 1e-25  # far below float32's normal range in p_i p_j
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_hessian_norm_nearly_one_hot_is_finite_and_nonnegative(strict_dtypes):
    f = make_net(jax.nn.relu, seed=8)
    x, y = _images(9), jnp.array([0, 0, 0], jnp.int32)
    hn = _hessian_norm(f, x, y, jnp.array([1e-3, 1.0, 1e2, 1e4, 1e6], jnp.float32))
    assert bool(jnp.all(jnp.isfinite(hn))) and bool(jnp.all(hn >= 0))


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(2, 12),
    rho=st.sampled_from([1e-72, 1e-30, 1e-3, 0.01, 0.3]),
    frac=st.floats(0.0, 0.999),
    scale=st.floats(0.01, 1e3),
)
def test_proposition_1_holds(seed, d, rho, frac, scale):
    if rho >= (d - 1) / d:
        return
    a = np.random.default_rng(seed).normal(size=(5, d)) * scale
    gamma = a.max(1) - a.min(1)
    bound = np.asarray(signal.prop1_beta(jnp.asarray(gamma, jnp.float32), rho, d), np.float64)
    beta = frac * bound * (1 - 1e-5)  # stay clear of float32 rounding of the bound
    z = beta[:, None] * a
    top = z.max(1, keepdims=True)
    lse_all = np.log(np.exp(z - top).sum(1))
    srt = np.argsort(-a, axis=1)
    others = np.take_along_axis(z, srt[:, 1:], axis=1) - top
    lse_others = np.log(np.exp(others).sum(1))
    log_1m_p1 = lse_others - lse_all  # log(1 - softmax(beta a)_1), in float64 log space
    assert np.all(log_1m_p1 > np.log(rho))


def test_prop1_constant_in_log_space():
    c = signal.prop1_log_constant(1e-72, 10)
    assert np.isclose(c, 72 * np.log(10) + np.log(9))
    assert np.isfinite(float(signal.prop1_beta(jnp.float32(1.0), 1e-72, 10)))
    with pytest.raises(ValueError, match="rho must lie in"):
        signal.prop1_log_constant(0.0, 10)
    with pytest.raises(ValueError, match="integer >= 2"):
        signal.prop1_log_constant(0.1, 1)


def test_logit_gap_and_gradient_diagnostics(strict_dtypes):
    np.testing.assert_allclose(
        signal.logit_gap(jnp.array([[1.0, 5.0, 2.0], [0.0, 0.0, -1.0]])), [3.0, 0.0]
    )
    f = make_net(jnp.tanh, seed=10)
    x, y = _images(11), jnp.array([0, 1, 2], jnp.int32)
    g = signal.input_gradient(f, x, y)
    np.testing.assert_allclose(
        signal.input_gradient_norm(f, x, y), jnp.sqrt(jnp.sum(g**2, axis=(1, 2, 3))), rtol=1e-6
    )
    assert bool(jnp.all(signal.sign_gradient_norm(f, x, y) <= np.sqrt(N)))
    np.testing.assert_allclose(
        signal.error_signal_norm(f(x), y),
        jnp.linalg.norm(jax.nn.softmax(f(x)) - jax.nn.one_hot(y, D, dtype=jnp.float32), axis=1),
        rtol=1e-6,
    )

    def saturated(z):
        return 1000.0 * f(z)

    lab = jnp.argmax(saturated(x), axis=1).astype(jnp.int32)
    mask = signal.zero_gradient_mask(saturated, x, lab)
    assert mask.shape == (3,)
    assert signal.zero_gradient_fraction(saturated, x, lab) == float(np.mean(np.asarray(mask)))
    psi_zero = signal.error_signal_norm(saturated(x), lab) == 0
    assert bool(jnp.all(mask[psi_zero]))  # psi exactly 0 implies a zero input gradient
    assert signal.zero_gradient_fraction(f, x, y) == 0.0


# ----------------------------------------------------------------------------- β sweep


def _sweep_reference(make, x, y, betas):
    """Per β and example (an array ``(len(betas), len(x), 5)``), from the equations:
    ‖ψ‖, mean singular value of the softmax Jacobian (numpy SVD of jax.jacobian),
    ‖Hessian‖_F (jax.hessian), ‖∇‖₂ and √#(∇ ≠ 0). The JSV
    and the Hessian in float64 (float32 autodiff cancels in p (1 - p) near one-hot); the
    error signal and the gradients in float32, as an attack computes them."""

    def loss(f, z, yi, b):
        return -jax.nn.log_softmax(b * f(z[None])[0])[yi]

    # jitted once each (β and the example are traced): the same equations, compiled once
    f = make(jnp.float32)
    probs = jax.jit(lambda z, b: jax.nn.softmax(b * f(z[None])[0]))
    grad_fn = jax.jit(jax.grad(lambda z, yi, b: loss(f, z, yi, b)))
    with jax.enable_x64(True):
        f64 = make(jnp.float64)
        jac_fn = jax.jit(jax.jacobian(lambda z, b: jax.nn.softmax(b * f64(z[None])[0])))
        hess_fn = jax.jit(jax.hessian(lambda z, yi, b: loss(f64, z, yi, b)))
    rows = []
    examples = list(zip(np.asarray(x), np.asarray(y).tolist(), strict=True))
    for beta, (xi, yi) in itertools.product(betas, examples):
        p = probs(jnp.asarray(xi), jnp.float32(beta))
        psi = np.asarray(p, np.float64) - np.eye(D)[yi]
        grad = np.asarray(grad_fn(jnp.asarray(xi), yi, jnp.float32(beta)), np.float64)
        with jax.enable_x64(True):
            x64, b64 = jnp.asarray(xi, jnp.float64), jnp.float64(beta)
            jac = jac_fn(x64, b64)
            hess = np.asarray(hess_fn(x64, yi, b64)).reshape(N, N)
        sv = np.linalg.svd(np.asarray(jac).reshape(D, -1), compute_uv=False)
        rows.append(
            [
                np.linalg.norm(psi),
                sv.mean(),
                np.linalg.norm(hess),
                np.linalg.norm(grad),
                np.sqrt(np.count_nonzero(grad)),
            ]
        )
    return np.asarray(rows).reshape(len(betas), len(x), -1)


def test_beta_sweep_matches_the_equations_example_by_example():
    from qadv.evaluate.beta_sweep import QUANTITIES, beta_sweep, format_beta_sweep

    def make(dtype):
        return make_net(jax.nn.relu, seed=2, dtype=dtype)

    f = make(jnp.float32)
    x = np.asarray(_images(6, b=4))
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)).astype(np.int32)
    y[2] = (y[2] + 1) % D  # misclassified: left out
    betas = [0.01, 0.5, 3.0, 40.0]
    s = beta_sweep(f, x, y, betas=betas, max_examples=10)
    assert s["examples"] == [0, 1, 3] and s["betas"] == betas
    refs = _sweep_reference(make, x[s["examples"]], y[s["examples"]], betas)
    for k, (b, ref) in enumerate(zip(betas, refs, strict=True)):
        for j, q in enumerate(QUANTITIES):
            got = np.asarray(s["per_example"][q])[:, k]
            np.testing.assert_allclose(got, ref[:, j], rtol=2e-3, atol=1e-6, err_msg=f"{q} β={b}")
    med = s["median"]["hessian_norm"]
    assert med == pytest.approx(np.median(np.asarray(s["per_example"]["hessian_norm"]), 0).tolist())
    assert beta_sweep(f, x, y, betas=betas, max_examples=2)["examples"] == [0, 1]
    table = format_beta_sweep(s)
    assert table.count("\n") == 5 and "‖ψ(β)‖₂" in table  # header, rule and 4 rows
    with pytest.raises(ValueError, match="invalid betas"):
        beta_sweep(f, x, y, betas=[0.1, -1.0])


def _softmax_jsv_mean_decimal(logits, jac, beta):
    """Mean singular value of ``β (diag(p) − p pᵀ) J`` with ``p`` and the product in 400
    significant digits (``decimal``): float64 cancels ``p_t (1 − p_t)`` once the other
    probabilities are below 1e-16, and 60 digits once they are below 1e-60. The product,
    divided by the second largest probability, is O(1) and goes to numpy's SVD in
    float64."""
    with decimal.localcontext(decimal.Context(prec=400)):  # every operator below
        z = [decimal.Decimal(float(beta)) * decimal.Decimal(float(a)) for a in logits]
        e = [(v - max(z)).exp() for v in z]
        p = [v / sum(e) for v in e]
        s = sorted(p)[-2]
        j = [[decimal.Decimal(float(v)) for v in row] for row in np.asarray(jac, np.float64)]
        m = np.zeros(np.shape(jac))
        for i in range(len(p)):
            for c in range(len(j[0])):
                pj = sum(p[k] * j[k][c] for k in range(len(p)))
                m[i, c] = float((p[i] * j[i][c] - p[i] * pj) / s)
    return float(beta) * float(s) * np.linalg.svd(m, compute_uv=False).mean()


def test_beta_sweep_softmax_jsv_stays_accurate_where_probabilities_underflow():
    """At large β the non-top probabilities fall to 1e-40 … 1e-250: their products
    underflow float32 (and the top row cancels in float64), yet the mean singular value
    is representable in float64 and must match the 400-digit reference."""
    from qadv.evaluate.beta_sweep import beta_sweep

    f = make_net(jax.nn.relu, seed=2)
    x = np.asarray(_images(6, b=4))
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)).astype(np.int32)
    betas = [100.0, 300.0]  # (β = 1 is in the test above)
    s = beta_sweep(f, x, y, betas=betas)
    logits = np.asarray(f(jnp.asarray(x)))
    jac = np.asarray(jax.vmap(jax.jacobian(lambda z: f(z[None])[0]))(jnp.asarray(x)))
    for k, b in enumerate(betas):
        ref = [_softmax_jsv_mean_decimal(logits[i], jac[i].reshape(D, -1), b) for i in range(4)]
        got = np.asarray(s["per_example"]["softmax_jsv_mean"])[:, k]
        assert np.all(np.asarray(ref) > 0) and (b < 300 or np.max(ref) < 1e-38), ref
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=0, err_msg=f"β={b}")


def test_beta_sweep_of_a_saturated_network_vanishes_at_large_beta(tmp_path):
    from qadv.evaluate.beta_sweep import beta_sweep, plot_beta_sweep

    f = make_net(jax.nn.relu, seed=2, scale=400.0)  # logit gaps in the hundreds
    x = np.asarray(_images(6, b=4))
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)).astype(np.int32)
    s = beta_sweep(f, x, y, betas=[1e-4, 1e-2, 1.0, 100.0])
    grad = np.asarray(s["median"]["grad_norm"])
    assert grad[-1] == 0.0 and grad[1] > 0.0  # zero once p rounds to one-hot
    assert s["median"]["sign_grad_norm"][-1] == 0.0
    assert np.argmax(s["median"]["hessian_norm"]) in (1, 2)  # an interior maximum
    assert plot_beta_sweep(tmp_path, s) == ["beta_sweep_signal.png", "beta_sweep_gradients.png"]
    assert all((tmp_path / p).stat().st_size > 0 for p in ("beta_sweep_signal.png",))
    wrong = (y + 1) % D
    empty = beta_sweep(f, x, wrong, betas=[1.0])
    assert empty["examples"] == [] and plot_beta_sweep(tmp_path / "e", empty) == []


def test_exact_hessian_norm_at_zero_jacobian_and_tiny_or_zero_beta():
    """Exact mode divided its curvature terms by beta^2 and the Gram scale: a zero
    Jacobian gave 0 (truth 2.83), a tiny one inf, beta = 1e-20 inf, beta = 0 nan."""

    def f(z):
        s = jnp.sum(z.reshape(z.shape[0], -1) ** 2, 1)
        return jnp.stack([s, jnp.zeros_like(s)], 1)

    y = jnp.array([1])
    cases = [(0.0, 2.0, 2.0 * np.sqrt(2.0)), (1e-12, 2.0, 2.0 * np.sqrt(2.0)), (0.3, 0.0, 0.0)]
    for value, beta, want in cases:
        x = jnp.full((1, 2, 1, 1), value, jnp.float32)
        got = float(signal.hessian_norm(f, x, y, jnp.array([beta]), exact=True)[0, 0])
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # beta -> 0: ||H|| ~ beta * ||sum_k psi_k d2 a_k|| (= beta * sqrt(2) here, psi = (.5, -.5))
    tiny = signal.hessian_norm(f, jnp.full((1, 2, 1, 1), 0.3), y, jnp.array([1e-20]), exact=True)
    np.testing.assert_allclose(float(tiny[0, 0]), 1e-20 * np.sqrt(2.0), rtol=1e-3)


def test_half_precision_logits_are_scaled_in_float32():
    """A float16 beta of 1e5 is inf: the temperature and the norms work in float32."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)

    def f32(z):
        return jnp.tanh(z.reshape(z.shape[0], -1)) @ w

    x, y, betas = jnp.full((2, 2, 2, 1), 0.3), jnp.array([0, 1]), jnp.array([1.0, 1e5])
    half = signal.hessian_norm(lambda z: f32(z).astype(jnp.float16), x, y, betas)
    np.testing.assert_allclose(half, signal.hessian_norm(f32, x, y, betas), rtol=1e-3)
    logits16 = f32(x).astype(jnp.float16)
    assert bool(jnp.all(jnp.isfinite(signal.error_signal_norm(logits16, y, 1e5))))


def test_prop1_integer_gaps_and_jacobian_edge_batches():
    np.testing.assert_allclose(
        signal.prop1_beta(jnp.array([2]), 0.01, 10), signal.prop1_beta(jnp.array([2.0]), 0.01, 10)
    )

    def f(z):
        return jnp.tanh(z.reshape(z.shape[0], 6) @ jnp.ones((6, 4)))

    assert signal.jacobian(f, jnp.zeros((0, 3, 2, 1))).shape == (0, 4, 3, 2, 1)
    ones = jnp.ones((2, 3, 2, 1))
    np.testing.assert_array_equal(
        signal.jacobian(f, ones, chunk=np.int64(1)), signal.jacobian(f, ones, chunk=1)
    )
