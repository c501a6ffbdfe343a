"""qadv models as foolbox models (optional dependency): wrapping, and a cross-check of
qadv's PGD against foolbox's on the same tiny model.

Tests that need foolbox skip cleanly where it is not installed (the default CI run).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv import attacks
from qadv.interop.foolbox import FOOLBOX_MISSING, run_foolbox_attack, to_foolbox

H, W, C, D = 6, 6, 1, 4


def make_mlp(key):
    """A 2-layer ReLU MLP on 6x6x1 images: 36 -> 16 -> 4."""
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (H * W * C, 16), jnp.float32) / 6.0
    w2 = jax.random.normal(k2, (16, D), jnp.float32) / 4.0

    def logits_fn(x):
        return jax.nn.relu(x.reshape(x.shape[0], -1) @ w1) @ w2

    return logits_fn


@pytest.fixture(scope="module")
def fb():
    return pytest.importorskip("foolbox")


@pytest.fixture(scope="module")
def problem():
    """The MLP and 200 uniform images labelled by its own predictions (clean acc 100%)."""
    f = make_mlp(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (200, H, W, C), jnp.float32)
    return f, x, jnp.argmax(f(x), axis=-1).astype(jnp.int32)


def test_missing_foolbox_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "foolbox", None)  # `import foolbox` now fails
    f = make_mlp(jax.random.key(0))
    x, y = jnp.zeros((2, H, W, C)), jnp.zeros((2,), jnp.int32)
    for call in (lambda: to_foolbox(f), lambda: run_foolbox_attack(f, None, x, y, 0.1)):
        with pytest.raises(ImportError) as e:
            call()
        assert str(e.value) == FOOLBOX_MISSING
        assert "\n" not in str(e.value) and "pip install 'qadv[foolbox]'" in str(e.value)


@pytest.mark.parametrize(
    ("model", "bounds", "match"),
    [
        (3, (0, 1), "logits function"),
        (None, (0, 1), "logits function"),
        (lambda x: x, (1, 0), "low < high"),
        (lambda x: x, (0,), "pair"),
        (lambda x: x, (0, float("inf")), "finite"),
    ],
)
def test_bad_arguments_raise_one_line(model, bounds, match):
    with pytest.raises(ValueError, match=match):
        to_foolbox(model, bounds=bounds)


@pytest.mark.parametrize("jit", [True, False])
def test_wrapped_loaded_model_outputs_equal_qadv_outputs(fb, jit):
    from qadv.checkpoint import LoadedModel
    from qadv.models import get_model, init_variables
    from qadv.quant import get_policy

    model = get_model("mlp", num_classes=D, policy=get_policy("ref"), widths=(8,))
    variables = init_variables(model, key=jax.random.key(0), input_shape=(H, W, C))
    loaded = LoadedModel(model, variables, {})
    x = jax.random.uniform(jax.random.key(2), (5, H, W, C), jnp.float32)
    want = np.asarray(loaded.logits_fn(x))
    for wrapped in (to_foolbox(loaded, jit=jit), to_foolbox(loaded.logits_fn, jit=jit)):
        assert isinstance(wrapped, fb.models.Model)
        assert wrapped.bounds == (0.0, 1.0) and wrapped.data_format == "channels_last"
        np.testing.assert_allclose(np.asarray(wrapped(x)), want, rtol=1e-6, atol=1e-6)
    assert fb.accuracy(to_foolbox(loaded), x, jnp.argmax(jnp.asarray(want), -1)) == 1.0


def test_bounds_rescale_to_unit_interval(fb, problem):
    f, x, _ = problem
    fmodel = to_foolbox(f, bounds=(0, 255))
    assert fmodel.bounds == (0.0, 255.0)
    np.testing.assert_allclose(
        np.asarray(fmodel(x[:8] * 255.0)), np.asarray(f(x[:8])), rtol=1e-5, atol=1e-5
    )


def test_foolbox_linf_pgd_agrees_with_qadv_pgd(fb, problem, strict_dtypes):
    """Same model, images, eps, steps and step size: robust accuracy within 3 points."""
    f, x, y = problem
    eps, steps = 0.04, 20
    res = run_foolbox_attack(
        f, fb.attacks.LinfPGD(steps=steps, rel_stepsize=0.25), x, y, eps, seed=0
    )
    assert res.x_adv.dtype == np.float32 and res.success.dtype == np.bool_
    assert res.x_adv.shape == x.shape and res.success.shape == y.shape
    x_np = np.asarray(x)
    assert np.abs(res.x_adv - x_np).max() <= eps + 1e-6
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    pred = np.asarray(jnp.argmax(f(jnp.asarray(res.x_adv)), -1))
    np.testing.assert_array_equal(res.success, pred != np.asarray(y))

    adv = attacks.pgd(f, x, y, key=jax.random.key(1), eps=eps, step_size=eps / 4, steps=steps)
    ours = float(jnp.mean(jnp.argmax(f(adv), -1) == y))
    theirs = float(np.mean(~res.success))
    assert 0.2 < theirs < 0.6  # the comparison is informative: neither 0 nor 1
    assert abs(ours - theirs) <= 0.03, (ours, theirs)


def test_seed_makes_runs_reproducible(fb, problem):
    f, x, y = problem
    fmodel = to_foolbox(f)
    atk = fb.attacks.LinfPGD(steps=2)
    a = run_foolbox_attack(fmodel, atk, x, y, 0.05, seed=3)
    b = run_foolbox_attack(fmodel, atk, x, y, 0.05, seed=3)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    with pytest.raises(ValueError, match="integer labels"):
        run_foolbox_attack(fmodel, atk, x[:4], y[:3], 0.05)
