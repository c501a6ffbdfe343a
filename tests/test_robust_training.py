"""Tests of robust training (qadv.training): the input-gradient regularisers against
their defining equation, adversarial training of every quantization policy, every
training mode end to end, bitwise resumption with an adversary and a regulariser on,
the one-line config errors and config files, and the cyclic schedule.

Everything is tiny (MLPs of width 8-16, batches of 4-16, a few steps) to run on CPU.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from synthetic import TRAIN_POLICIES, write_idx
from test_train import _synthetic

from qadv import attacks, checkpoint
from qadv.training import (
    TrainConfig,
    binary_connect_projection,
    igr_exact,
    igr_fd,
    init_train_state,
    load_config_file,
    loop,
    make_model,
    make_objective,
    make_optimizer,
    make_schedule,
    make_train_step,
    train,
)

# ----------------------------------------------------------------------------- regularisers

NORMS = ("linf", "l2")


def _smooth_problem():
    """A tiny smooth classifier (tanh hidden layer) in float64: ``(params, x, y, loss)``
    with ``loss(params, x, y) -> (B,)`` per-example cross-entropy."""
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(16, 8)) / 4.0),
        "b1": jnp.asarray(rng.normal(size=(8,)) * 0.1),
        "w2": jnp.asarray(rng.normal(size=(8, 3))),
    }
    x = jnp.asarray(rng.uniform(size=(5, 4, 4, 1)))
    y = jnp.array([0, 1, 2, 0, 1])

    def loss(p, z, labels):
        h = jnp.tanh(z.reshape(z.shape[0], -1) @ p["w1"] + p["b1"][None, :])
        return optax.softmax_cross_entropy_with_integer_labels(h @ p["w2"], labels)

    return params, x, y, loss


def _reference_penalty(p, x, y, loss, norm):
    """``||grad_x l_i||_*^2`` from the equation, one example at a time (differentiable):
    the l1 norm of the input gradient for linf, its l2 norm for l2."""
    out = []
    for i in range(x.shape[0]):
        g = jax.grad(lambda z, i=i: loss(p, z[None], y[i : i + 1])[0])(x[i]).ravel()
        dual = jnp.sum(jnp.abs(g)) if norm == "linf" else jnp.sqrt(jnp.sum(g * g))
        out.append(dual**2)
    return jnp.stack(out)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("norm", NORMS)
def test_igr_fd_converges_to_exact_penalty(norm):
    p, x, y, loss = _smooth_problem()
    f = lambda z: loss(p, z, y)  # noqa: E731
    exact = np.asarray(igr_exact(f, x, norm=norm))
    np.testing.assert_allclose(exact, _reference_penalty(p, x, y, loss, norm), rtol=1e-10)
    assert exact.min() > 1e-3  # a non-trivial penalty on every example

    errors = [
        float(np.max(np.abs(np.asarray(igr_fd(f, x, h=h, norm=norm)) - exact) / exact))
        for h in (1e-1, 1e-2, 1e-3)
    ]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.01, errors
    # first order in h: each tenfold smaller step cuts the error about tenfold
    assert errors[1] / errors[2] > 5, errors

    # with has_aux, both return the losses (and aux) of the shared forward pass
    f_aux = lambda z: (loss(p, z, y), "aux")  # noqa: E731
    for penalty_fn in (igr_exact, lambda *a, **k: igr_fd(*a, h=1e-3, **k)):
        penalty, losses, aux = penalty_fn(f_aux, x, norm=norm, has_aux=True)
        np.testing.assert_allclose(losses, f(x), rtol=1e-12)
        assert aux == "aux" and penalty.shape == (x.shape[0],)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("norm", NORMS)
def test_igr_exact_parameter_gradient_is_double_backprop(norm):
    p, x, y, loss = _smooth_problem()
    total = lambda q: jnp.sum(igr_exact(lambda z: loss(q, z, y), x, norm=norm))  # noqa: E731
    grads = jax.grad(total)(p)
    expected = jax.grad(lambda q: jnp.sum(_reference_penalty(q, x, y, loss, norm)))(p)
    for name in p:
        assert float(jnp.max(jnp.abs(grads[name]))) > 1e-3, name  # the penalty moves them
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-9, atol=1e-12)
    # and against central differences on a few weights
    for name, index in (("w1", (3, 2)), ("b1", (5,)), ("w2", (1, 0))):
        e = 1e-6

        def shifted(delta, name=name, index=index):
            return total({**p, name: p[name].at[index].add(delta)})

        fd = (float(shifted(e)) - float(shifted(-e))) / (2 * e)
        assert float(grads[name][index]) == pytest.approx(fd, rel=1e-5, abs=1e-8)


# ----------------------------------------------------------------------------- adversarial steps

POLICIES = TRAIN_POLICIES
ANNEAL = 2.0
EPS = 0.1


@dataclasses.dataclass(frozen=True)
class _TrainModeApply:
    """Logits of the network as the train step sees it: training mode (BatchNorm on the
    batch's own statistics, not updated), soft tanh weights at ``ANNEAL``."""

    model: object

    def __call__(self, variables, z):
        out, _ = self.model.apply(variables, z, train=True, anneal=ANNEAL, mutable=["batch_stats"])
        return out


def _adversarial_loss(model, state, x, y) -> float:
    """Mean cross-entropy under a fixed-key PGD-5 attack (eps 0.1), in training mode.

    Training mode, not evaluation mode: early on, the BatchNorm running statistics are
    still near their initial values and MD-tanh-S evaluates hard signs while it trains
    on ``tanh(beta w)``, so evaluation-mode losses would mostly measure those."""
    fn = jax.tree_util.Partial(_TrainModeApply(model), state.variables)
    x_adv = attacks.pgd(fn, x, y, key=jax.random.key(7), eps=EPS, step_size=EPS / 4, steps=5)
    return float(optax.softmax_cross_entropy_with_integer_labels(fn(x_adv), y).mean())


@pytest.fixture(scope="module")
def fmnist_batch():
    x, y = _synthetic(16, seed=0)
    return jnp.asarray(x, jnp.float32) / 255.0, jnp.asarray(y)


# The default run keeps two cases: PGD on BinaryConnect (the latent-weight projection)
# and FastAT on MD-tanh-S (the annealed soft weights). The step is the same program for
# every policy; each policy's own forward pass is trained in test_train.py.
_DEFAULT_ADVERSARIAL = {("bnn_wq-bc", "pgd"), ("bnn_wq-md_tanh_s", "fastat")}
_ADVERSARIAL = [
    pytest.param(
        policy,
        opts,
        adv,
        id=f"{policy}-{opts.get('wq_method', '')}-{adv}",
        marks=()
        if (f"{policy}-{opts.get('wq_method', '')}".rstrip("-"), adv) in _DEFAULT_ADVERSARIAL
        else pytest.mark.slow,
    )
    for adv in ("pgd", "fastat")
    for policy, opts in POLICIES
]


@pytest.mark.parametrize(("policy", "opts", "adv"), _ADVERSARIAL)
def test_adversarial_steps_reduce_adversarial_loss(policy, opts, adv, fmnist_batch):
    x, y = fmnist_batch
    config = TrainConfig(
        arch="mlp",
        arch_opts={"widths": (16,)},
        dataset="fashion_mnist",
        policy=policy,
        adv=adv,
        adv_eps=EPS,
        adv_steps=2 if adv == "pgd" else None,
        lr=1e-2,
        schedule="constant",
        **opts,
    )
    model = make_model(config)
    tx = make_optimizer(config, steps_per_epoch=10)
    state = init_train_state(model, tx, key=jax.random.key(0), input_shape=(1, 28, 28, 1))
    step = make_train_step(
        model,
        tx,
        key=jax.random.key(1),
        project=binary_connect_projection(config.quant.make_policy()),
        objective=make_objective(config.adversary, config.regularizer),
    )
    before = _adversarial_loss(model, state, x, y)
    clean = optax.softmax_cross_entropy_with_integer_labels(
        _TrainModeApply(model)(state.variables, x), y
    ).mean()
    state = step(state, x, y, jnp.float32(ANNEAL))
    assert state.summary()["loss"] > float(clean)  # the first step trained on attacked images
    for _ in range(9):
        state = step(state, x, y, jnp.float32(ANNEAL))
    after = _adversarial_loss(model, state, x, y)

    assert int(state.step) == 10
    summary = state.summary()
    assert np.isfinite([summary["loss"], summary["accuracy"]]).all(), summary
    assert summary["penalty"] == 0.0
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))
    assert after < 0.5 * before, (before, after)
    assert after < np.log(10), (before, after)  # better than chance under attack


# ----------------------------------------------------------------------------- every mode

MODES = {
    "clean": {},
    "pgd": {"adv": "pgd", "adv_steps": 2},
    "fastat": {"adv": "fastat", "schedule": "cyclic"},
    "igr_fd": {"igr": "fd", "igr_lambda": 1.0},
    "igr_exact": {"igr": "exact", "igr_lambda": 1.0},
    "md_tanh_s": {"policy": "bnn_wq", "wq_method": "md_tanh_s", "anneal_end": 4.0},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_trains_end_to_end(mode, tmp_path):
    kw = MODES[mode]
    config = TrainConfig(
        dataset="cifar10",
        source="tfds",
        arch="mlp",
        arch_opts={"widths": (8,)},
        epochs=1,
        batch_size=4,
        eval_batch_size=4,
        robust_steps=2,
        **kw,
    )
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        summary = train(config, tmp_path, progress=False)
    robust = "adv" in kw or "igr" in kw
    assert summary["steps"] == summary["total_steps"] == 2
    assert np.isfinite(summary["train_loss"])
    assert 0.0 <= summary["clean_accuracy"] <= 1.0
    assert summary["adversary"] == kw.get("adv", "none")
    assert summary["regularizer"] == kw.get("igr", "none")
    if robust:
        assert 0.0 <= summary["robust_accuracy"] <= summary["clean_accuracy"]
        assert summary["robust_eps"] == pytest.approx(8 / 255)  # the default threat model
    else:
        assert summary["robust_accuracy"] is None and summary["robust_eps"] is None
    if "igr" in kw:
        assert summary["train_penalty"] > 0
    else:
        assert summary["train_penalty"] is None
    assert summary["recalibrated"] is (mode == "md_tanh_s")
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert ("robust_acc" in record) is robust
    assert ("test_acc_before_recalibration" in record) is (mode == "md_tanh_s")


# ----------------------------------------------------------------------------- resumption


class _Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def small_idx(tmp_path_factory):
    """Fashion-MNIST-shaped IDX files: 24 training images (3 batches of 8), 8 test."""
    folder = tmp_path_factory.mktemp("idx")
    for prefix, n, seed in (("train", 24, 0), ("t10k", 8, 1)):
        x, y = _synthetic(n, seed=seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x[..., 0])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return folder


def test_kill_and_resume_with_adversary_and_regulariser_is_bitwise(
    small_idx, tmp_path, monkeypatch
):
    """Killed in epoch 1 after its 1st batch (step 4): resumes from the mid-epoch save at
    step 4 and ends with the parameters of an uninterrupted run, bit for bit."""
    config = TrainConfig(
        dataset="fashion_mnist",
        source="idx",
        arch="mlp",
        arch_opts={"widths": (16,)},
        epochs=2,
        batch_size=8,
        eval_batch_size=8,
        lr=1e-2,
        adv="pgd",
        adv_steps=2,
        adv_eps=EPS,
        igr="fd",
        checkpoint_every_steps=2,
        robust_steps=2,
    )
    full = train(config, tmp_path / "full", data_dir=small_idx, progress=False)

    real_iterate = loop.iterate_batches

    def crashing(*args, epoch, **kwargs):
        for i, batch in enumerate(real_iterate(*args, epoch=epoch, **kwargs)):
            if epoch == 1 and i == 1:
                raise _Crash
            yield batch

    out = tmp_path / "resumed"
    monkeypatch.setattr(loop, "iterate_batches", crashing)
    with pytest.raises(_Crash):
        train(config, out, data_dir=small_idx, progress=False)
    assert checkpoint.complete_steps(out / "checkpoints")[-1] == 4
    monkeypatch.setattr(loop, "iterate_batches", real_iterate)

    resumed = train(config, out, data_dir=small_idx, progress=False)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == full["steps"] == 6
    jax.tree.map(
        np.testing.assert_array_equal,
        checkpoint.load_checkpoint(out).variables,
        checkpoint.load_checkpoint(tmp_path / "full").variables,
    )
    for name in ("train_loss", "train_penalty", "clean_accuracy", "robust_accuracy"):
        assert resumed[name] == full[name], name
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"adv": "trades"}, "unknown adversary 'trades'; choose one of: none, pgd, fastat"),
        ({"igr": "jacobian"}, "unknown regulariser 'jacobian'; choose one of: none, fd, exact"),
        ({"igr": "fd", "igr_lambda": -0.1}, "invalid igr lambda -0.1"),
        ({"igr": "fd", "igr_h": 0.0}, "invalid igr h 0.0; choose a positive number"),
        ({"igr": "fd", "igr_h": -0.01}, "invalid igr h -0.01"),
        ({"adv": "fastat", "adv_steps": 3}, "invalid adversary steps 3 for fastat"),
        (
            {"policy": "bnn_wq", "wq_method": "bc", "hard_fraction": 0.2},
            "invalid hard_fraction 0.2 with wq_method 'bc'",
        ),
        (
            {"policy": "ref", "recalibrate_bn": True},
            "invalid recalibrate_bn True with policy 'ref'",
        ),
        (
            {"adv": "pgd", "igr": "fd", "adversary.norm": "l2"},
            "adversary norm 'l2' and regulariser norm 'linf' differ",
        ),
    ],
)
def test_bad_robust_config_is_one_line(kw, match):
    with pytest.raises(ValueError, match=match) as info:
        TrainConfig(arch="mlp", **kw)
    assert "\n" not in str(info.value)


def _config_file(tmp_path, body: str, name="cfg.py"):
    path = tmp_path / name
    path.write_text(f'"""qadv train --config {name}"""\n\n{body}\n')
    return path


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            'def get_config():\n    return {"arch": "mlp", "lrate": 1}',
            "unknown TrainConfig field 'lrate'",
        ),
        ("CONFIG = {}", r"defines no get_config\(\) function"),
        ("def get_config(:\n    pass", "SyntaxError"),
        ('def get_config():\n    return {"adversary": {"name": "trades"}}', "unknown adversary"),
    ],
)
def test_bad_config_file_is_one_line_naming_the_file(tmp_path, body, match):
    path = _config_file(tmp_path, body)
    with pytest.raises(ValueError, match=match) as info:
        load_config_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config_file(tmp_path / "nope.py")


def test_nested_config_file_round_trips_and_takes_overrides(tmp_path):
    path = _config_file(
        tmp_path,
        "def get_config():\n"
        "    return {\n"
        '        "seed": 3,\n'
        '        "model": {"arch": "mlp", "arch_opts": {"widths": [16]}},\n'
        '        "quant": {"policy": "bnn_wq", "wq_method": "md_tanh_s", "anneal_end": 8.0},\n'
        '        "optim": {"lr": 0.01, "schedule": "cyclic", "epochs": 3},\n'
        '        "adversary": {"name": "pgd", "eps": 0.1, "steps": 3},\n'
        '        "regularizer": {"igr": "fd", "lam": 0.5},\n'
        "    }",
    )
    c = load_config_file(path)
    assert (c.seed, c.arch, c.arch_opts, c.policy, c.anneal_end) == (
        3,
        "mlp",
        {"widths": (16,)},
        "bnn_wq",
        8.0,
    )
    assert (c.lr, c.schedule, c.epochs) == (0.01, "cyclic", 3)
    assert (c.adversary.name, c.adversary.eps, c.adversary.resolved_steps) == ("pgd", 0.1, 3)
    assert (c.regularizer.igr, c.regularizer.lam, c.regularizer.h) == ("fd", 0.5, 0.01)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c

    o = load_config_file(path, {"optim.lr": 0.5, "adv_eps": 0.2})
    assert (o.lr, o.adversary.eps) == (0.5, 0.2)
    assert o == c.replace(lr=0.5, adv_eps=0.2) and o != c
    with pytest.raises(ValueError, match=r"unknown TrainConfig field 'optim\.lrate'") as info:
        load_config_file(path, {"optim.lrate": 0.5})
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("peak", "epochs", "steps_per_epoch"), [(0.4, 1, 10), (0.25, 2, 10), (0.5, 3, 7)]
)
def test_cyclic_schedule_peaks_at_cycle_peak_and_ends_at_zero(peak, epochs, steps_per_epoch):
    config = TrainConfig(arch="mlp", lr=0.2, schedule="cyclic", cycle_peak=peak, epochs=epochs)
    schedule = make_schedule(config, steps_per_epoch)
    total = epochs * steps_per_epoch
    lrs = np.array([float(schedule(i)) for i in range(total + 1)])
    top = round(peak * total)
    assert lrs[0] == 0.0 and lrs[-1] == pytest.approx(0.0, abs=1e-7)
    assert int(np.argmax(lrs)) == top and lrs[top] == pytest.approx(0.2)
    assert (np.diff(lrs[: top + 1]) > 0).all() and (np.diff(lrs[top:]) < 0).all()
