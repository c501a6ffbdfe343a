"""Tests of data parallelism (qadv.parallel): padding and masking, BatchNorm statistics
over the real rows, sharded train steps against the single-device step on 8 emulated
CPU devices (tests/conftest.py), ``qadv train --shard`` and ``--distributed``.

Batches of 13 rows do not divide by 8 (or 2, 4): every sharded step here is padded.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import mnist_like_dir, relu_mlp

from qadv import checkpoint, parallel
from qadv.apps import cli
from qadv.attacks import AttackContext, registry
from qadv.training import TrainConfig, build_train_step

B = 13  # not a multiple of 2, 4 or 8
RTOL, ATOL = 1e-5, 1e-5


def _batch(seed=0, n=B):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 28, 28, 1)).astype(np.float32)
    return x, rng.integers(0, 10, size=n).astype(np.int32)


def _host(state):
    """What a step must reproduce: parameters, batch statistics, optimizer state, metrics."""
    return jax.tree.map(
        lambda a: np.asarray(a, np.float64),
        jax.device_get((state.params, state.model_state, state.opt_state, state.metrics)),
    )


def _assert_close(a, b):
    leaves_a, tree_a = jax.tree.flatten(_host(a))
    leaves_b, tree_b = jax.tree.flatten(_host(b))
    assert tree_a == tree_b
    for u, v in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(u, v, rtol=RTOL, atol=ATOL * max(1.0, np.abs(v).max()))


def _mlp_config(**kw):
    # an MLP with BatchNorm (bnn_wq: binary weights, BatchNorm after every layer)
    # (SGD: Adam's first step, g / (|g| + 1e-8), would amplify the rounding of tiny gradients)
    return TrainConfig(
        arch="mlp", arch_opts={"widths": (16,)}, policy="bnn_wq", optimizer="sgd", lr=0.1, **kw
    )


def _run_steps(step, state, batches):
    for x, y in batches:
        state = step(state, x, y, jnp.float32(1.0))
    return state


# ----------------------------------------------------------------------------- helpers


def test_pad_to_multiple_repeats_the_last_row_and_masks_it():
    x = np.arange(13 * 2).reshape(13, 2)
    padded, mask = parallel.pad_to_multiple(x, 8)
    assert padded.shape == (16, 2) and padded.dtype == x.dtype
    np.testing.assert_array_equal(padded[:13], x)
    np.testing.assert_array_equal(padded[13:], np.repeat(x[-1:], 3, axis=0))
    assert mask.dtype == np.float32 and mask.tolist() == [1.0] * 13 + [0.0] * 3
    same, ones = parallel.pad_to_multiple(x, 1)
    assert same.shape == x.shape and ones.sum() == 13
    assert [parallel.round_up(n, 8) for n in (1, 8, 9, 16)] == [8, 8, 16, 16]
    with pytest.raises(ValueError, match="empty"):
        parallel.pad_to_multiple(np.zeros((0, 2)), 8)


@pytest.mark.needs_devices(8)
def test_mesh_and_placement_shard_the_batch_and_replicate_the_rest():
    mesh = parallel.make_mesh()
    assert mesh.size == len(jax.devices()) == 8 and mesh.axis_names == ("batch",)
    x = parallel.place(np.arange(16.0), parallel.batch_sharding(mesh))
    assert len(x.addressable_shards) == 8 and x.addressable_shards[0].data.shape == (2,)
    tree = parallel.replicate({"w": jnp.ones(3)}, mesh)
    assert tree["w"].sharding.is_fully_replicated and len(tree["w"].devices()) == 8
    np.testing.assert_array_equal(parallel.to_host(x), np.arange(16.0))


def test_masked_batch_norm_ignores_padding_rows():
    """Training-mode BatchNorm on real rows + garbage padding, masked, equals BatchNorm on
    the real rows alone: outputs of the real rows and updated running statistics."""
    rng = np.random.default_rng(0)
    real = jnp.asarray(rng.normal(size=(5, 3, 3, 4)), jnp.float32)
    pad = jnp.full((3, 3, 3, 4), 1e3, jnp.float32)
    bn = nn.BatchNorm(use_running_average=False, momentum=0.5)
    v = bn.init(jax.random.key(0), real)
    want, want_stats = bn.apply(v, real, mutable=["batch_stats"])
    mask = jnp.arange(8) < 5
    with parallel.masked_batch_norm(mask):
        got, got_stats = bn.apply(v, jnp.concatenate([real, pad]), mutable=["batch_stats"])
    np.testing.assert_allclose(got[:5], want, rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(
            got_stats["batch_stats"][k], want_stats["batch_stats"][k], rtol=1e-5, atol=1e-6
        )
    with parallel.masked_batch_norm(None):  # no mask: unchanged
        same, _ = bn.apply(v, real, mutable=["batch_stats"])
    np.testing.assert_array_equal(same, want)


# ----------------------------------------------------------------------------- train steps


@pytest.mark.needs_devices(8)
def test_sharded_adversarial_step_equals_single_device_step():
    """The small CNN with BatchNorm, BNN-WQ, PGD-2 adversarial training: one step on a
    batch of 13 sharded over 8 devices (padded to 16) equals the single-device step. The
    PGD random start of example i comes from fold_in(key, i), so the keys of the real rows
    do not depend on the padding."""
    config = TrainConfig(
        arch="cnn",
        arch_opts={"widths": (4,)},
        policy="bnn_wq",
        adv="pgd",
        adv_steps=2,
        adv_eps=0.1,
        optimizer="sgd",
        lr=0.1,
    )
    x, y = _batch()
    _, state, step = build_train_step(config, steps_per_epoch=1)
    want = step(state, x, y, jnp.float32(1.0))
    mesh = parallel.make_mesh(jax.devices())
    _, state8, step8 = build_train_step(config, steps_per_epoch=1, mesh=mesh)
    got = step8(state8, x, y, jnp.float32(1.0))
    assert got.params["QConv_0"]["kernel"].sharding.is_fully_replicated
    assert float(got.metrics["count"]) == B  # the 3 padding rows are not counted
    _assert_close(got, want)


def test_mask_of_ones_gives_the_unmasked_step():
    x, y = _batch()
    _, state, step = build_train_step(_mlp_config(), steps_per_epoch=1)
    want = step(jax.tree.map(jnp.copy, state), x, y, jnp.float32(1.0))
    _assert_close(step(state, x, y, jnp.float32(1.0), jnp.ones(B, jnp.float32)), want)


def test_padded_masked_batch_gives_the_unpadded_step():
    """A batch with 3 padding rows (other images and labels) and its mask trains like the
    unpadded batch: losses, the regulariser's penalty, BatchNorm statistics and all
    gradients (of the parameters, of PGD, of the regulariser) see the real rows only."""
    config = _mlp_config(adv="pgd", adv_steps=1, adv_eps=0.1, igr="fd")
    x, y = _batch()
    _, state, step = build_train_step(config, steps_per_epoch=1)
    want = step(jax.tree.map(jnp.copy, state), x, y, jnp.float32(1.0))
    xp = np.concatenate([x, np.ones((3, 28, 28, 1), np.float32)])
    yp = np.concatenate([y, np.zeros(3, np.int32)])
    mask = (np.arange(B + 3) < B).astype(np.float32)
    _assert_close(step(state, xp, yp, jnp.float32(1.0), jnp.asarray(mask)), want)


def test_njs_training_temperature_calibrates_on_the_real_rows():
    """PGD++ training with NJS: beta1 (1 / mean Jacobian singular value over the batch)
    of a padded batch with its mask equals that of the unpadded batch."""
    f = relu_mlp(0, n_in=28 * 28)
    x, _ = _batch()
    xp, mask = parallel.pad_to_multiple(np.concatenate([x, np.zeros_like(x[:1])]), 8)
    mask[B] = 0.0  # a zero image, then copies of it: padding
    njs = registry.make_temperature("njs")  # as the training adversary builds it

    def beta1(z, m=None):
        return njs.build(f, AttackContext(calib_images=z, calib_mask=m)).beta1

    want = beta1(jnp.asarray(x))
    got = jax.jit(beta1)(xp, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    unmasked = beta1(jnp.asarray(xp))
    assert abs(float(unmasked) / float(want) - 1) > 1e-3  # the padding would change it


@pytest.mark.needs_devices(8)
def test_device_count_does_not_change_the_result():
    """Two steps with batch 13 on meshes of 1, 2, 4 and 8 devices equal the unsharded steps."""
    config = _mlp_config()
    batches = [_batch(0), _batch(1)]
    _, state, step = build_train_step(config, steps_per_epoch=2)
    want = _run_steps(step, state, batches)
    for k in (1, 2, 4, 8):
        mesh = parallel.make_mesh(jax.devices()[:k])
        _, state, step = build_train_step(config, steps_per_epoch=2, mesh=mesh)
        got = _run_steps(step, state, batches)
        assert float(got.metrics["count"]) == 2 * B
        _assert_close(got, want)


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``qadv train`` with and without ``--shard`` (batch 13: 4 steps, each padded to 16)."""
    root, data_dir = mnist_like_dir(tmp_path_factory, "parallel", n_train=52, n_test=16)
    argv = [
        "train",
        "--dataset",
        "mnist",
        "--arch",
        "mlp",
        "--set",
        'model.arch_opts={"widths": [16]}',
        "--quant",
        "bnn_wq",
        "--epochs",
        "1",
        "--batch-size",
        str(B),
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--data-dir",
        str(data_dir),
        "--no-progress",
    ]
    out = {}
    for name, extra in (("single", []), ("shard", ["--shard"])):
        out[name] = root / name
        assert cli.main([*argv, "--out", str(out[name]), *extra]) == 0
    return out, data_dir


def test_train_shard_matches_single_device_run(runs):
    out, _ = runs
    single = json.loads((out["single"] / "summary.json").read_text())
    shard = json.loads((out["shard"] / "summary.json").read_text())
    assert shard["steps"] == single["steps"] == 52 // B
    np.testing.assert_allclose(shard["train_loss"], single["train_loss"], rtol=1e-5)
    assert shard["config"] == single["config"]  # sharding is not part of the run's config
    a, b = (checkpoint.load_checkpoint(out[k]).variables for k in ("single", "shard"))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=RTOL, atol=1e-5)


def test_distributed_flag_initializes_jax_first(runs, monkeypatch, tmp_path):
    """``--distributed`` calls ``jax.distributed.initialize`` before the command (mocked:
    one process), then shards over every device; the result equals ``--shard``'s."""
    out, data_dir = runs
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    argv = ["attack", "--checkpoint", str(out["single"]), "--steps", "2", "--n", "11"]
    argv += ["--batch-size", "11", "--data-dir", str(data_dir), "--no-progress"]
    for flag in ("--distributed", "--shard"):
        assert cli.main([*argv, flag, "--out", str(tmp_path / f"{flag[2:]}.json")]) == 0
    assert len(calls) == 1
    a, b = (json.loads((tmp_path / f"{f}.json").read_text()) for f in ("distributed", "shard"))
    assert a["examples"] == b["examples"] and a["robust_accuracy"] == b["robust_accuracy"]


def test_initialize_errors_are_one_line(monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("jax.distributed.initialize() must be called before\nany JAX calls")

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", fail)
    with pytest.raises(ValueError, match=r"^cannot start the distributed system: jax\S+ must"):
        parallel.initialize()


def test_initialize_on_a_single_process_is_a_no_op():
    """A real call in a fresh process without a cluster: nothing starts, JAX still works."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_"))}
    code = (
        "from qadv import parallel; import jax; "
        "print(parallel.initialize(), jax.process_count(), parallel.is_main_process())"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "1", "True"]
