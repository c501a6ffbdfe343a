"""Tests for qadv.quant: straight-through quantizers, policies and BOPS."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv import quant
from qadv.quant import (
    LayerCost,
    QuantPolicy,
    binarize_weights,
    bops,
    dorefa_weights,
    get_policy,
    mbn_activation_bases,
    mbn_activations,
    mbn_weight_bases,
    mbn_weights,
    pact_activation,
    sign_ste,
    xnor_weights,
)

pytestmark = pytest.mark.usefixtures("strict_dtypes")

X = jnp.array([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], jnp.float32)
STE_MASK = (np.abs(np.asarray(X)) <= 1).astype(np.float32)


# ----------------------------------------------------------------------------- sign_ste


def test_sign_ste_values():
    np.testing.assert_array_equal(sign_ste(X), [-1, -1, -1, 1, 1, 1, 1])
    assert sign_ste(X).dtype == jnp.float32


@pytest.mark.parametrize(
    "mode",
    ["grad", "jacrev", "jacfwd", "jvp", "vjp"],
)
def test_sign_ste_derivative_all_modes(mode):
    f = sign_ste
    if mode == "grad":
        d = jax.grad(lambda x: f(x).sum())(X)
    elif mode == "jacrev":
        d = jnp.diagonal(jax.jacrev(f)(X))
    elif mode == "jacfwd":
        d = jnp.diagonal(jax.jacfwd(f)(X))
    elif mode == "jvp":
        d = jax.jvp(f, (X,), (jnp.ones_like(X),))[1]
    else:
        d = jax.vjp(f, X)[1](jnp.ones_like(X))[0]
    np.testing.assert_array_equal(d, STE_MASK)


def test_sign_ste_hessian_is_zero_and_jacobian_diagonal():
    h = jax.hessian(lambda x: sign_ste(x).sum())(X)
    np.testing.assert_array_equal(h, np.zeros((7, 7)))
    j = jax.jacfwd(sign_ste)(X)
    np.testing.assert_array_equal(j, np.diag(STE_MASK))


def test_sign_ste_jit_vmap():
    np.testing.assert_array_equal(jax.jit(jax.vmap(sign_ste))(X), sign_ste(X))


# ----------------------------------------------------------------------------- binarize


W = jnp.array([-1.5, -0.2, 0.0, 0.4, 2.0], jnp.float32)


@pytest.mark.parametrize("method", quant.WQ_METHODS)
def test_binarize_hard_is_exactly_pm1(method):
    b = binarize_weights(W, method=method, beta=0.7, hard=True)
    np.testing.assert_array_equal(b, [-1, -1, 1, 1, 1])
    b = jax.jit(lambda w: binarize_weights(w, method=method, hard=True))(W)
    np.testing.assert_array_equal(b, [-1, -1, 1, 1, 1])


def test_binarize_soft_forward_and_gradients():
    beta = 3.0
    t = np.tanh(beta * np.asarray(W))
    for method in ("gd_tanh", "md_tanh_s"):
        np.testing.assert_allclose(binarize_weights(W, method=method, beta=beta), t, rtol=1e-6)
    # BinaryConnect: sign forward, hardtanh STE backward.
    np.testing.assert_array_equal(binarize_weights(W, method="bc"), [-1, -1, 1, 1, 1])
    g_bc = jax.grad(lambda w: binarize_weights(w, method="bc").sum())(W)
    np.testing.assert_array_equal(g_bc, (np.abs(np.asarray(W)) <= 1).astype(np.float32))
    # GD-tanh: full chain rule.
    g_gd = jax.grad(lambda w: binarize_weights(w, method="gd_tanh", beta=beta).sum())(W)
    np.testing.assert_allclose(g_gd, beta * (1 - t**2), rtol=1e-5, atol=1e-5)
    # MD-tanh-S: identity (gradient w.r.t. x = tanh(beta w) applied to latent w).
    v = jnp.array([0.3, -1.0, 2.0, 0.5, -0.1], jnp.float32)
    g_md = jax.grad(lambda w: jnp.vdot(binarize_weights(w, method="md_tanh_s", beta=beta), v))(W)
    np.testing.assert_allclose(g_md, v)
    # forward mode agrees
    jv = jax.jvp(lambda w: binarize_weights(w, method="md_tanh_s", beta=beta), (W,), (v,))[1]
    np.testing.assert_allclose(jv, v)


def test_binarize_unknown_method():
    with pytest.raises(ValueError, match=r"unknown weight binarization method 'sgd'.*bc"):
        binarize_weights(W, method="sgd")


# ----------------------------------------------------------------------------- xnor / pact


def test_xnor_weights_per_output_channel():
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
    q = np.asarray(xnor_weights(w))
    alpha = np.abs(np.asarray(w)).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(np.abs(q), np.broadcast_to(alpha, q.shape), rtol=1e-6)
    np.testing.assert_array_equal(np.sign(q), np.where(np.asarray(w) >= 0, 1, -1))


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_pact_levels_and_gradients(bits):
    x = jnp.linspace(-1.0, 4.0, 41, dtype=jnp.float32)
    alpha = jnp.array(2.5, jnp.float32)
    y = np.asarray(pact_activation(x, alpha, bits=bits))
    n = 2**bits - 1
    levels = np.arange(n + 1) * 2.5 / n
    assert np.all(np.min(np.abs(y[:, None] - levels[None, :]), axis=1) < 1e-5)
    assert y.min() == 0.0 and np.isclose(y.max(), 2.5)
    gx, ga = jax.grad(lambda x, a: pact_activation(x, a, bits=bits).sum(), argnums=(0, 1))(x, alpha)
    xn = np.asarray(x)
    np.testing.assert_array_equal(gx, ((xn >= 0) & (xn <= 2.5)).astype(np.float32))
    assert 2.5 in xn  # the tie x == alpha counts for both: dy/dx = 1{0<=x<=a}, dy/da = 1{x>=a}
    assert float(ga) == float(np.sum(xn >= 2.5))


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_dorefa_levels(bits):
    w = jax.random.normal(jax.random.key(2), (64,))
    q = np.asarray(dorefa_weights(w, bits=bits))
    n = 2**bits - 1
    levels = 2 * np.arange(n + 1) / n - 1
    assert np.all(np.min(np.abs(q[:, None] - levels[None, :]), axis=1) < 1e-6)
    g = jax.grad(lambda w: dorefa_weights(w, bits=bits).sum())(w)
    assert np.all(np.isfinite(g))


def test_bits_validation():
    with pytest.raises(ValueError, match="invalid bits 0"):
        dorefa_weights(W, bits=0)


# ----------------------------------------------------------------------------- MBN


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_mbn_weight_bases_least_squares(m):
    w = jax.random.normal(jax.random.key(3), (3, 3, 2, 4))
    bases, alphas = mbn_weight_bases(w, m_bases=m)
    assert bases.shape == (m, 3, 3, 2, 4) and alphas.shape == (m,)
    assert set(np.unique(np.asarray(bases)).tolist()) <= {-1.0, 1.0}
    # shifted, standardised construction
    wn = np.asarray(w)
    u = np.asarray(quant.mbn_shifts(m))
    expect = np.where(wn[None] - wn.mean() + u.reshape(-1, 1, 1, 1, 1) * wn.std() >= 0, 1, -1)
    np.testing.assert_array_equal(bases, expect)
    # alphas solve the least-squares problem
    ref = np.linalg.lstsq(expect.reshape(m, -1).T.astype(np.float64), wn.ravel(), rcond=None)[0]
    np.testing.assert_allclose(alphas, ref, rtol=1e-4, atol=1e-5)
    eff = mbn_weights(w, m_bases=m)
    np.testing.assert_allclose(eff, np.tensordot(ref, expect, axes=1), rtol=1e-4, atol=1e-5)
    # odd M includes the u=0 base of M=1, so it never approximates worse
    if m in (3, 5):
        err_m = np.linalg.norm(np.asarray(eff) - wn)
        err_1 = np.linalg.norm(np.asarray(mbn_weights(w, m_bases=1)) - wn)
        assert err_m <= err_1 + 1e-5


def test_mbn_gradients_follow_eq3():
    w = jax.random.normal(jax.random.key(4), (8,)) * 0.3
    _, alphas = mbn_weight_bases(w, m_bases=3)
    g = jax.grad(lambda w: mbn_weights(w, m_bases=3).sum())(w)
    # every |shifted weight| <= 1 here, so each base passes its alpha straight through
    np.testing.assert_allclose(g, np.full(8, float(np.sum(alphas))), rtol=1e-5)
    x = jnp.array([-0.5, 0.1, 0.7], jnp.float32)
    shifts = jnp.array([-0.3, 0.2], jnp.float32)
    scales = jnp.array([0.5, 1.5], jnp.float32)
    a = mbn_activations(x, shifts, scales)
    b = mbn_activation_bases(x, shifts)
    np.testing.assert_allclose(a, 0.5 * b[0] + 1.5 * b[1])
    gx, gv, gb = jax.grad(lambda x, v, s: mbn_activations(x, v, s).sum(), argnums=(0, 1, 2))(
        x, shifts, scales
    )
    np.testing.assert_allclose(gx, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(gb, np.asarray(b).sum(axis=1))
    np.testing.assert_allclose(gv, [-0.5 * 3, -1.5 * 3])


@pytest.mark.parametrize(
    "fn",
    [
        lambda w: binarize_weights(w, method="bc"),
        lambda w: binarize_weights(w, method="gd_tanh", beta=2.0),
        lambda w: binarize_weights(w, method="md_tanh_s", beta=2.0),
        xnor_weights,
        lambda w: dorefa_weights(w, bits=2),
        lambda w: mbn_weights(w, m_bases=3),
        lambda w: pact_activation(w, jnp.array(1.0, jnp.float32), bits=2),
    ],
)
def test_quantizers_all_autodiff_modes(fn):
    w = jnp.array([[-0.7, 0.2, 0.4], [0.9, -0.1, 0.05]], jnp.float32)
    f = lambda w: jnp.sum(fn(w) ** 2)  # noqa: E731
    v = jnp.ones_like(w)

    @jax.jit
    def derivatives(w):
        return jax.grad(f)(w), jax.jvp(f, (w,), (v,))[1], jax.hessian(f)(w), jax.vmap(fn)(w[None])

    g, jv, h, batched = derivatives(w)
    np.testing.assert_allclose(jv, jnp.vdot(g, v), rtol=1e-5)
    assert np.all(np.isfinite(h))  # forward-over-reverse
    np.testing.assert_allclose(batched[0], fn(w), rtol=1e-6)


# ----------------------------------------------------------------------------- policies


def test_get_policy_and_shorthands():
    assert get_policy("ref") == QuantPolicy()
    p = get_policy("mbn3x1")
    assert (p.kind, p.m_bases, p.n_bases, p.name) == ("mbn", 3, 1, "mbn3x1")
    assert get_policy("pact2").bits == 2 and get_policy("pact2").name == "pact2"
    p = get_policy("bnn_wq", wq_method="bc", float_first=True)
    assert p.is_float_layer("first") and not p.is_float_layer("last")
    assert not p.bn_affine and get_policy("bnn_waq").binary_activations
    hash(p)
    assert QuantPolicy(**p.to_dict()) == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.kind = "ref"


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("bnn", {}, "unknown quantization policy 'bnn'; choose one of: ref, bnn_wq"),
        ("pact", {"bits": 9}, "invalid bits 9"),
        ("mbn", {"m_bases": 0}, "invalid m_bases 0"),
        ("bnn_wq", {"wq_method": "adam"}, "unknown wq_method 'adam'"),
        ("bnn_wq", {"lr": 1}, "unknown policy option 'lr'"),
        ("ref", {"float_last": "yes"}, "invalid float_last 'yes'"),
    ],
)
def test_get_policy_errors(name, opts, match):
    with pytest.raises(ValueError, match=match):
        get_policy(name, **opts)


# ----------------------------------------------------------------------------- BOPS


def test_bops_formula():
    layers = [LayerCost(10, "first"), {"macs": 100, "role": "hidden"}, LayerCost(1, "last")]
    assert bops(layers, get_policy("ref")) == 111 * 64
    assert bops(layers, get_policy("mbn3x1")) == 11 * 64 + 300
    assert bops(layers, get_policy("xnor")) == 11 * 64 + 100
    with pytest.raises(ValueError, match="unknown layer role 'middle'"):
        bops([LayerCost(1, "middle")], get_policy("ref"))
