"""Invariants every registered attack must keep (the attack protocol), on small models.

Each test runs over every attack in the registry, so a newly registered attack is
checked here without a line of new test code.
"""

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadv import attacks
from qadv.attacks import registry
from qadv.attacks.protocol import AttackContext, example_keys, execute, prepare
from qadv.models import get_model, init_variables, make_logits_fn
from qadv.quant import get_policy

D, SHAPE = 5, (4, 4, 1)
B = 7  # one compiled batch shape shared by most tests (the chunk size below)
N = int(np.prod(SHAPE))
W1 = jax.random.normal(jax.random.key(1), (N, 12), jnp.float32)
W2 = jax.random.normal(jax.random.key(2), (12, D), jnp.float32)


def model(x):
    return 3.0 * jnp.maximum(x.reshape(x.shape[0], -1) @ W1 - 1.0, 0.0) @ W2 / 4.0


def _data(n, seed=0):
    x = jax.random.uniform(jax.random.key(seed), (n, *SHAPE), jnp.float32)
    y = jnp.argmax(model(x), -1).astype(jnp.int32)
    return x, y


# every attack, cheap settings (only the options each attack has)
FAST = dict(steps=3, queries=40, n_targets=2, restarts=1)
NAMES = [n for n in registry.attack_names() if not n.startswith("test-")]

#: Attacks whose whole-run invariants (jit against op by op, batch independence) stay in
#: the default run, one per kind of loop: gradient steps, APGD's step-size schedule,
#: FAB's projections, Square's random search. The others run under ``make test-all``.
REPRESENTATIVES = ("pgd", "apgd-ce", "fab", "square")
EVERY_ATTACK = [
    n if n in REPRESENTATIVES else pytest.param(n, marks=pytest.mark.slow) for n in NAMES
]


def _config(name, norm="linf"):
    eps = 0.1 if norm == "linf" else 0.5
    opts = {k: v for k, v in FAST.items() if k in registry.option_names(name)}
    return registry.make(name, norm=norm, eps=eps, **opts)


CONTEXT = AttackContext(surrogate=lambda x: model(x) + 0.1 * x.reshape(x.shape[0], -1)[:, :D])


def _run(cfg, x, y, keys, fn=model):
    data = prepare(cfg, fn, AttackContext(calib_images=x, surrogate=CONTEXT.surrogate))
    return execute(cfg, data, fn, x, y, keys)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", NAMES)
def test_result_shapes_ball_and_success_flags(name, norm):
    cfg = _config(name, norm)
    x, y = _data(B)
    res = _run(cfg, x, y, example_keys(jax.random.key(0), B))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    for field in (res.success, res.margin, res.distance, res.queries):
        assert field.shape == (B,)
    assert np.all(cfg.geometry.in_ball(res.x_adv, x, cfg.eps))
    pred = np.asarray(jnp.argmax(model(res.x_adv), -1))
    np.testing.assert_array_equal(np.asarray(res.success), pred != np.asarray(y))
    dist = np.asarray(res.distance)
    measured = np.asarray(cfg.geometry.distance(res.x_adv, x))
    succ = np.asarray(res.success)
    # a success reports a finite norm no larger than what it returned; no success, no norm
    # within eps (minimum-norm attacks may report a larger one they found)
    assert np.all(dist[succ] <= measured[succ] * (1 + 1e-5) + 1e-6)
    assert np.all(~succ <= ((dist > cfg.eps * (1 - 1e-5)) | ~np.isfinite(dist)))
    assert np.all(np.asarray(res.queries) >= 1)
    assert cfg.label and isinstance(cfg.label, str)


@pytest.mark.parametrize("name", EVERY_ATTACK)
def test_per_example_results_identical_at_batch_sizes_7_and_64(name):
    cfg = _config(name)
    x, y = _data(64, seed=3)
    key = jax.random.key(7)
    big = _run(cfg, x, y, example_keys(key, 64))
    parts = []
    for s in range(0, 64, 7):
        idx = np.arange(s, min(s + 7, 64))
        pad = np.concatenate([idx, np.full(7 - len(idx), idx[-1])])
        res = _run(cfg, x[pad], y[pad], example_keys(key, pad))
        parts.append(jax.tree_util.tree_map(lambda a, n=len(idx): np.asarray(a)[:n], res))
    small = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)
    np.testing.assert_array_equal(small.success, np.asarray(big.success))
    np.testing.assert_allclose(small.x_adv, np.asarray(big.x_adv), atol=1e-6)
    np.testing.assert_array_equal(small.queries, np.asarray(big.queries))


@pytest.mark.parametrize("name", EVERY_ATTACK)
def test_jit_equals_no_jit_and_no_retrace(name):
    cfg = _config(name)
    x, y = _data(B, seed=4)
    keys = example_keys(jax.random.key(1), B)
    data = prepare(cfg, model, AttackContext(calib_images=x, surrogate=CONTEXT.surrogate))
    jitted = execute(cfg, data, model, x, y, keys)
    with jax.disable_jit():
        eager = cfg.run(data, model, x, y, keys)
    np.testing.assert_array_equal(np.asarray(eager.success), np.asarray(jitted.success))
    np.testing.assert_allclose(np.asarray(eager.x_adv), np.asarray(jitted.x_adv), atol=1e-5)

    chex.clear_trace_counter()
    run = jax.jit(chex.assert_max_traces(lambda x, y, k: cfg.run(data, model, x, y, k), n=1))
    run(x, y, keys)
    x2, y2 = _data(B, seed=5)
    run(x2, y2, example_keys(jax.random.key(2), B))  # new values, same shapes: no retrace


def test_execute_compiles_once_per_model_and_shape():
    traces = []

    def f(x):
        traces.append(1)
        return model(x)

    cfg = registry.make("pgd", eps=0.1, steps=2)
    x, y = _data(8)
    data = prepare(cfg, f)
    execute(cfg, data, f, x, y, example_keys(jax.random.key(0), 8))
    n = len(traces)
    x2, y2 = _data(8, seed=9)
    execute(cfg, data, f, x2, y2, example_keys(jax.random.key(1), 8))
    assert len(traces) == n


def test_two_logits_fns_of_one_model_share_the_compiled_attack():
    m = get_model("mlp", num_classes=3, policy=get_policy("bnn_wq"), widths=(8,))
    v = init_variables(m, key=jax.random.key(0), input_shape=SHAPE)
    x = jnp.full((4, *SHAPE), 0.5)
    y = jnp.zeros((4,), jnp.int32)
    cfg = registry.make("pgd", eps=0.1, steps=2)
    from qadv.attacks import protocol

    attacks.attack(cfg, make_logits_fn(m, v), x, y, key=jax.random.key(0))
    size = protocol._execute._cache_size()
    attacks.attack(cfg, make_logits_fn(m, v), x, y, key=jax.random.key(0))
    assert protocol._execute._cache_size() == size


@pytest.mark.parametrize(
    ("norm", "dtype"),
    [
        ("linf", jnp.bfloat16),
        ("l2", jnp.float16),
        pytest.param("l2", jnp.bfloat16, marks=pytest.mark.slow),
        pytest.param("linf", jnp.float16, marks=pytest.mark.slow),
    ],
)
def test_half_precision_images_stay_in_the_ball(norm, dtype):
    """Steps taken in bfloat16/float16 round: the point returned is still in the ball
    (rounded towards the clean image), and its success and distance are its own."""
    x = _data(B)[0].astype(dtype)
    y = jnp.argmax(model(x.astype(jnp.float32)), -1).astype(jnp.int32)
    keys = example_keys(jax.random.key(0), B)
    fn = lambda z: model(z.astype(jnp.float32))  # noqa: E731
    for name in (*REPRESENTATIVES, "fgsm"):
        cfg = _config(name, norm)
        res = _run(cfg, x, y, keys, fn=fn)
        assert res.x_adv.dtype == dtype, name
        dist = cfg.geometry.distance(res.x_adv.astype(jnp.float32), x.astype(jnp.float32))
        assert np.all(np.asarray(dist) <= np.float32(cfg.eps) * (1 + 1e-6)), (name, dist)
        assert np.all((np.asarray(res.x_adv) >= 0) & (np.asarray(res.x_adv) <= 1)), name
        again = np.asarray(jnp.argmax(fn(res.x_adv), -1)) != np.asarray(y)
        np.testing.assert_array_equal(np.asarray(res.success), again, err_msg=name)


@pytest.mark.parametrize("name", EVERY_ATTACK)
def test_every_attack_can_be_differentiated_through(name):
    """Reverse mode through the whole attack (APGD's restarts and Square's queries stop
    early in a bounded loop, not a ``while_loop``): finite gradients of a loss of
    ``x_adv`` with respect to the images."""
    x, y = _data(B)
    cfg = _config(name)

    def loss(z):
        return jnp.sum(_run(cfg, z, y, example_keys(jax.random.key(0), B)).x_adv ** 2)

    g = jax.grad(loss)(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g))), name
    assert float(jnp.max(jnp.abs(g))) > 0.0, name


@pytest.mark.parametrize("name", ["fab", "deepfool"])
def test_minimum_norm_attacks_take_float64_logits_of_float32_images(name):
    def f64(z):
        return model(z).astype(jnp.float64)

    x, y = _data(B)
    with jax.enable_x64(True):
        res = _run(_config(name), x, y, example_keys(jax.random.key(0), B), fn=f64)
    ref = _run(_config(name), x, y, example_keys(jax.random.key(0), B))
    np.testing.assert_array_equal(np.asarray(res.success), np.asarray(ref.success))


def test_half_precision_logits_give_the_temperature_of_their_float32_values():
    """NJS and HNS read float16 logits in float32: a top-2 gap below float16's step at
    large β no longer sends HNS's grid to ``inf`` (and β to its fallback 1)."""
    w = jnp.array([[1.0, 1.0, -1.0], [0.0, 0.01, 0.0]])
    x = jnp.array([[0.5, 0.2], [0.5, 0.05], [0.3, 0.9]]).reshape(3, 2, 1, 1)
    y = jnp.array([1, 1, 1])

    def f16(z):
        return (z.reshape(z.shape[0], -1) @ w).astype(jnp.float16)

    def f32(z):
        return f16(z).astype(jnp.float32)

    kw = dict(key=None, random_init=False, eps=0.0, step_size=0.0, steps=1, return_info=True)
    for temp in (attacks.hns(), attacks.njs(f32, x)):
        b16 = attacks.pgd(f16, x, y, temperature=temp, **kw)[1]
        b32 = attacks.pgd(f32, x, y, temperature=temp, **kw)[1]
        np.testing.assert_allclose(np.asarray(b16.beta, np.float32), np.asarray(b32.beta), 1e-3)
        np.testing.assert_array_equal(np.asarray(b16.fallback), np.asarray(b32.fallback))


def test_integer_logits_are_refused_with_one_line():
    x, y = _data(B)
    with pytest.raises(ValueError, match="floating-point logits, got dtype int32"):
        attacks.fgsm(lambda z: model(z).astype(jnp.int32), x, y, eps=0.1)


class _Linear:
    """A model object whose weights a user replaces between calls."""

    def __init__(self, w):
        self.w = w

    def __call__(self, x):
        return x.reshape(x.shape[0], -1) @ self.w


_W = jnp.zeros((int(np.prod(SHAPE)), 3))


def _reads_global(x):
    return jax.vmap(lambda xi: xi.reshape(-1) @ _W)(x)  # read in an inner function only


class _Slotted:
    """No ``__dict__``: its weights live in a slot, five dict levels down."""

    __slots__ = ("v",)

    def __init__(self, w):
        self.v = {"params": {"block": {"dense": {"kernel": w}}}}

    def __call__(self, x):
        return x.reshape(x.shape[0], -1) @ self.v["params"]["block"]["dense"]["kernel"]


class _ClassLevel:
    w = jnp.zeros((int(np.prod(SHAPE)), 3))

    def __call__(self, x):
        return x.reshape(x.shape[0], -1) @ type(self).w


def test_a_model_whose_weights_change_is_attacked_with_its_new_weights():
    """The same function object, reading new weights (an attribute set on its object, a
    rebound global read in an inner function, a NumPy array changed in place, a slot
    five dicts deep, a class attribute, a ``Partial``'s closure), is attacked with those
    weights and fingerprinted by them; with its weights unchanged the compiled attack is
    reused."""
    from qadv.attacks import protocol
    from qadv.evaluate.fingerprint import model_fingerprint

    global _W
    n = int(np.prod(SHAPE))
    w1 = jax.random.normal(jax.random.key(1), (n, 3))
    x, _ = _data(4)
    y = jnp.argmax(x.reshape(4, -1) @ w1, -1).astype(jnp.int32)
    cfg, k = registry.make("fgsm", eps=0.05), jax.random.key(0)
    wnp = np.asarray(w1).copy()
    box = {"w": w1}
    models = {
        "attribute": (_Linear(w1), lambda m, w: setattr(m, "w", w)),
        "global": (_reads_global, lambda m, w: globals().__setitem__("_W", w)),
        "numpy in place": (_Linear(wnp), lambda m, w: m.w.__setitem__(..., np.asarray(w))),
        "slot, nested dicts": (
            _Slotted(w1),
            lambda m, w: m.v["params"]["block"]["dense"].__setitem__("kernel", w),
        ),
        "class attribute": (_ClassLevel(), lambda m, w: setattr(_ClassLevel, "w", w)),
        "Partial over a closure": (
            jax.tree_util.Partial(lambda z: z.reshape(z.shape[0], -1) @ box["w"]),
            lambda m, w: box.__setitem__("w", w),
        ),
    }
    for name, (m, set_w) in models.items():
        set_w(m, w1)
        first = attacks.attack(cfg, m, x, y, key=k).x_adv
        fp = model_fingerprint(m, np.asarray(x))
        size = protocol._execute._cache_size()
        assert np.array_equal(attacks.attack(cfg, m, x, y, key=k).x_adv, first), name
        assert protocol._execute._cache_size() == size, name  # same weights: reused
        set_w(m, -w1)
        again = attacks.attack(cfg, m, x, y, key=k).x_adv  # the gradient's sign flips
        fresh = attacks.attack(cfg, lambda z, w=-w1: z.reshape(4, -1) @ w, x, y, key=k).x_adv
        np.testing.assert_array_equal(again, fresh, err_msg=name)
        assert not np.array_equal(again, first), name
        assert model_fingerprint(m, np.asarray(x)) != fp, name
    _W = jnp.zeros((n, 3))


@settings(max_examples=3, deadline=None)
@given(
    x=hnp.arrays(np.float32, (B, *SHAPE), elements=st.floats(0, 1, width=32)),
    norm=st.sampled_from(["linf", "l2"]),
)
def test_attacks_stay_in_the_ball_for_any_images(x, norm):
    y = jnp.argmax(model(jnp.asarray(x)), -1).astype(jnp.int32)
    keys = example_keys(jax.random.key(0), B)
    for name in NAMES:
        cfg = _config(name, norm)
        res = _run(cfg, jnp.asarray(x), y, keys)
        assert np.all(cfg.geometry.in_ball(res.x_adv, x, cfg.eps)), name


# ----------------------------------------------------------------------- norm geometry


def test_l2_step_moves_under_1e30_gradients():
    g = jnp.full((2, *SHAPE), 1e-30, jnp.float32).at[1].set(0.0)
    u = attacks.L2.normalize(g)
    np.testing.assert_allclose(float(jnp.linalg.norm(u[0])), 1.0, rtol=1e-6)
    assert float(jnp.abs(u[1]).max()) == 0.0

    def tiny(x):  # input gradients of about 1e-30: their squares underflow in float32
        return 1e-30 * model(x)

    x = jnp.full((3, *SHAPE), 0.5)
    y = jnp.zeros((3,), jnp.int32)
    kw = dict(eps=0.5, step_size=0.1, steps=2, norm="l2", random_init=False, key=None)
    adv = attacks.pgd(tiny, x, y, **kw)
    assert float(jnp.abs(adv - x).max()) > 1e-3


@pytest.mark.parametrize(
    "norm, eps, steps, step",
    [("linf", 8, 20, 2), ("linf", 4, 10, 1), ("l2", 120, 20, 15), ("l2", 60, 10, 15)],
)
def test_default_steps_are_the_papers_table_6(norm, eps, steps, step):
    cfg = registry.make("pgd", norm=norm, eps=eps / 255, steps=steps)
    assert cfg.step_size * 255 == pytest.approx(step)


def test_norm_distance_and_ball():
    x = jnp.zeros((2, 2, 2, 1))
    x_adv = x.at[0, 0, 0, 0].set(0.3).at[1].set(0.1)
    np.testing.assert_allclose(attacks.LINF.distance(x_adv, x), [0.3, 0.1], rtol=1e-6)
    np.testing.assert_allclose(attacks.L2.distance(x_adv, x), [0.3, 0.2], rtol=1e-6)
    assert attacks.LINF.in_ball(x_adv, x, 0.2).tolist() == [False, True]
    assert attacks.L2.in_ball(x_adv - 1.0, x - 1.0, 1.0).tolist() == [False, False]  # box


def test_registry_round_trip_for_every_attack():
    for name in NAMES:
        cfg = _config(name)
        assert registry.from_dict(registry.to_dict(cfg)) == cfg


def test_presets_build():
    std = registry.preset("standard", eps=8 / 255)
    assert [c.label for c in std] == ["APGD-CE L∞", "APGD-T L∞", "FAB-T L∞", "Square L∞"]
    plus = registry.preset("plus-temperature", norm="l2", eps=0.5)
    assert {c.label for c in plus} >= {"PGD++ (NJS) L2", "PGD++ (HNS) L2", "APGD-CE++ (HNS) L2"}
