"""Radii and step sizes are arguments of the compiled attack, not constants in it: a sweep
over them compiles each attack once per shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv import evaluate
from qadv.attacks import protocol, registry

D, SHAPE = 4, (6, 6, 1)
RADII = [1 / 255, 2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255, 0.1, 0.2]


def _model():
    w = jax.random.normal(jax.random.key(1), (int(np.prod(SHAPE)), D))

    def logits_fn(x):
        return 3.0 * jnp.tanh(x.reshape(x.shape[0], -1) - 0.5) @ w

    return logits_fn


def _data(n=16):
    x = np.random.default_rng(0).uniform(0, 1, size=(n, *SHAPE)).astype(np.float32)
    y = np.asarray(jnp.argmax(_model()(jnp.asarray(x)), -1)).astype(np.int32)
    return x, y


@pytest.mark.parametrize(
    "name, opts",
    [
        ("pgd", dict(steps=3)),
        ("fgsm", {}),
        ("pgd", dict(steps=3, temperature="hns")),
        ("apgd-ce", dict(steps=5)),
        ("square", dict(queries=20)),
        ("fab", dict(steps=5)),
    ],
)
def test_sweep_over_eight_radii_compiles_each_attack_once(name, opts):
    f, (x, y) = _model(), _data()
    before = protocol._execute._cache_size()
    accs = []
    for eps in RADII:
        cfg = registry.make(name, eps=eps, **opts)
        rec = evaluate.evaluate_attack(f, x, y, cfg, batch_size=16, progress=False)
        accs.append(rec["robust_accuracy"])
    assert protocol._execute._cache_size() - before == 1
    # and the radius really is used: accuracy falls as it grows
    assert accs[0] > accs[-1]


def test_traced_radius_gives_the_result_of_a_constant_one():
    """The compiled attack with ε as an argument equals the one with ε compiled in."""
    f, (x, y) = _model(), _data()
    cfg = registry.make("pgd", eps=8 / 255, steps=3)
    keys = protocol.example_keys(jax.random.key(0), len(x))
    data = protocol.prepare(cfg, f)
    traced = protocol.execute(cfg, data, f, x, y, keys)
    constant = jax.jit(lambda x, y, k: cfg.run(data, f, x, y, k))(x, y, keys)
    np.testing.assert_allclose(traced.x_adv, constant.x_adv, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(traced.success, constant.success)


def test_shared_contexts_lower_the_same_programs(monkeypatch):
    """The test harness lowers in shared MLIR contexts (``tests/mlir_contexts.py``): the
    programs must be the ones JAX's own fresh contexts give, text for text."""
    from jax._src.interpreters import mlir

    shared = mlir.make_ir_context
    if not getattr(shared, "shared_by_qadv_tests", False):
        pytest.skip("this run lowers in fresh contexts (QADV_TEST_FRESH_MLIR_CONTEXTS)")
    f = _model()
    x, y = _data(7)
    keys = protocol.example_keys(jax.random.key(0), 7)
    cfgs = [
        registry.make("pgd", eps=0.1, steps=3, temperature="hns"),
        registry.make("apgd-ce", eps=0.1, steps=5),
        registry.make("square", eps=0.1, queries=20),
        registry.make("fab", eps=0.1, steps=5),
    ]
    data = [protocol.prepare(c, f, protocol.AttackContext(calib_images=x)) for c in cfgs]

    def programs():  # new functions each time: traced and lowered anew
        return [
            jax.jit(lambda a, b, k, c=c, d=d: c.run(d, f, a, b, k)).lower(x, y, keys).as_text()
            for c, d in zip(cfgs, data, strict=True)
        ]

    in_shared = programs()
    monkeypatch.setattr(mlir, "make_ir_context", shared.fresh)
    assert programs() == in_shared
