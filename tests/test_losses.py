"""Per-example attack losses and the temperature modifier."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv import losses


@pytest.fixture
def logits_labels():
    z = jax.random.normal(jax.random.key(1), (6, 5), jnp.float32) * 3.0
    y = jnp.array([0, 1, 2, 3, 4, 0], jnp.int32)
    return z, y


def test_cross_entropy_matches_log_softmax(strict_dtypes, logits_labels):
    z, y = logits_labels
    expected = -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(losses.cross_entropy(z, y), expected, rtol=1e-6, atol=1e-6)


def test_cw_and_dlr_match_numpy(strict_dtypes, logits_labels):
    z, y = logits_labels
    zn, yn = np.asarray(z), np.asarray(y)
    for i in range(zn.shape[0]):
        others = np.delete(zn[i], yn[i])
        margin = others.max() - zn[i, yn[i]]
        srt = np.sort(zn[i])[::-1]
        assert np.isclose(losses.cw_margin(z, y)[i], margin, atol=1e-5)
        assert np.isclose(losses.dlr(z, y)[i], margin / (srt[0] - srt[2] + 1e-12), atol=1e-5)


def test_dlr_scale_invariant_and_needs_three_classes(strict_dtypes, logits_labels):
    z, y = logits_labels
    np.testing.assert_allclose(losses.dlr(7.0 * z, y), losses.dlr(z, y), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least 3 classes"):
        losses.dlr(jnp.zeros((1, 2)), jnp.array([0]))


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_temperature_scaled_composes(strict_dtypes, logits_labels, name):
    z, y = logits_labels
    fn = losses.get_loss(name)
    beta = jnp.linspace(0.1, 3.0, z.shape[0], dtype=jnp.float32)
    np.testing.assert_allclose(
        losses.temperature_scaled(fn, beta)(z, y), fn(beta[:, None] * z, y), rtol=1e-6
    )
    np.testing.assert_allclose(losses.temperature_scaled(fn, 2.0)(z, y), fn(2.0 * z, y), rtol=1e-6)


def test_higher_is_more_adversarial(strict_dtypes):
    y = jnp.array([0], jnp.int32)
    good, bad = jnp.array([[5.0, 0.0, -1.0]]), jnp.array([[0.0, 5.0, -1.0]])
    for name in losses.LOSS_NAMES:
        fn = losses.get_loss(name)
        assert float(fn(bad, y)[0]) > float(fn(good, y)[0])


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'mse'; choose one of: ce, dlr, cw"):
        losses.get_loss("mse")
