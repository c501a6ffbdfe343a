"""Tests for qadv.training and qadv.checkpoint on tiny synthetic data."""

import importlib
import json
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import TRAIN_POLICIES, write_idx

from qadv import checkpoint, training
from qadv.models import get_model
from qadv.quant import get_policy
from qadv.training import loop

N_TRAIN, N_TEST, BATCH = 96, 40, 32  # 3 steps per epoch


def _synthetic(n, *, seed, shape=(28, 28, 1), classes=10):
    """Learnable images: a class-specific random pattern plus noise, uint8."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(1234).uniform(0, 255, size=(classes, *shape))
    y = rng.integers(0, classes, size=n)
    x = 0.7 * patterns[y] + rng.uniform(0, 0.3 * 255, size=(n, *shape))
    return x.astype(np.uint8), y.astype(np.int32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    for prefix, n, seed in (("train", N_TRAIN, 0), ("t10k", N_TEST, 1)):
        x, y = _synthetic(n, seed=seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x[..., 0])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return folder


def _config(**kw):
    base = dict(
        dataset="fashion_mnist",
        arch="mlp",
        arch_opts={"widths": (16,)},
        epochs=2,
        batch_size=BATCH,
        lr=3e-3,
        eval_batch_size=16,
        source="idx",
    )
    return training.TrainConfig(**{**base, **kw})


def _params(run_dir):
    loaded = checkpoint.load_checkpoint(run_dir)
    return loaded.variables


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"arch": "alexnet"}, "unknown arch 'alexnet'; choose one of: "),
        ({"policy": "ternary"}, "unknown quantization policy 'ternary'"),
        ({"dataset": "svhn"}, "unknown dataset 'svhn'; choose one of: "),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; choose one of: adam, sgd"),
        ({"schedule": "linear"}, "unknown schedule 'linear'; choose one of: cosine, step"),
        ({"epochs": 0}, "invalid epochs 0; choose a positive integer"),
        ({"batch_size": -1}, "invalid batch_size -1"),
        ({"lr": 0.0}, "invalid lr 0.0; choose a positive number"),
        ({"wq_method": "ste"}, "unknown wq_method 'ste'"),
        ({"momentum": 1.0}, "invalid momentum"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match) as info:
        training.TrainConfig(**kw)
    assert "\n" not in str(info.value)


def test_config_round_trip():
    c = _config(policy="pact2", policy_opts={"float_last": True}, lr_milestones=(0.25, 0.5))
    assert training.TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert training.make_policy(c).bits == 2
    with pytest.raises(ValueError, match="unknown TrainConfig field 'lrate'"):
        training.TrainConfig.from_dict({"lrate": 1.0})


def test_schedules_and_anneal():
    c = _config(epochs=4, lr=1.0, schedule="cosine")
    s = training.make_schedule(c, 10)
    assert float(s(0)) == 1.0 and float(s(40)) == pytest.approx(0.0, abs=1e-6)
    assert float(training.make_schedule(_config(schedule="constant", lr=0.5), 10)(99)) == 0.5
    c = _config(anneal_start=2.0, anneal_growth=1.5, anneal_max=4.0)
    assert [training.anneal_value(c, e) for e in range(4)] == [2.0, 3.0, 4.0, 4.0]


def test_clip_latent_weights_only_kernels():
    p = {"a": {"kernel": jnp.array([[-2.0, 0.5]]), "bias": jnp.array([5.0])}}
    out = training.clip_latent_weights(p)
    np.testing.assert_array_equal(out["a"]["kernel"], [[-1.0, 0.5]])
    np.testing.assert_array_equal(out["a"]["bias"], [5.0])


# ----------------------------------------------------------------------------- train steps

POLICIES = TRAIN_POLICIES


@pytest.mark.parametrize(("name", "opts"), POLICIES, ids=lambda v: v if isinstance(v, str) else "")
def test_train_steps_reduce_loss(name, opts):
    policy = get_policy(name, **opts)
    model = get_model("mlp", num_classes=4, policy=policy, mean=(0.5,), std=(0.25,), widths=(16,))
    x, y = _synthetic(32, seed=0, shape=(8, 8, 1), classes=4)
    x = x.astype(np.float32) / 255.0
    c = _config(lr=1e-2, schedule="constant")
    tx = training.make_optimizer(c, steps_per_epoch=10)
    state = training.init_train_state(model, tx, key=jax.random.key(0), input_shape=(1, 8, 8, 1))
    project = training.binary_connect_projection(policy)
    step = training.make_train_step(model, tx, key=jax.random.key(1), project=project)
    losses = []
    for _ in range(15):
        before = float(state.metrics["loss"])
        state = step(state, x, y, jnp.float32(2.0))
        losses.append(float(state.metrics["loss"]) - before)
    assert int(state.step) == 15
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
    if project is not None:
        kernels = [
            leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]
            if getattr(path[-1], "key", None) == "kernel"
        ]
        assert kernels and all(float(jnp.max(jnp.abs(k))) <= 1.0 for k in kernels)


def test_evaluate_clean_pads_and_traces_once():
    traces = []

    def logits_fn(x):
        traces.append(x.shape)
        return jnp.stack([x[:, 0, 0, 0], 1.0 - x[:, 0, 0, 0]], axis=-1)

    x = np.zeros((7, 2, 2, 1), np.uint8)
    x[:3] = 255  # first three predict class 0
    y = np.array([0, 0, 0, 1, 1, 1, 0], np.int32)
    acc = training.evaluate_clean(logits_fn, x, y, batch_size=3)
    assert acc == pytest.approx(6 / 7)
    assert traces == [(3, 2, 2, 1)]
    with pytest.raises(ValueError, match="invalid batch_size 0"):
        training.evaluate_clean(logits_fn, x, y, batch_size=0)


# ----------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("full")
    summary = training.train(_config(), out, data_dir=data_dir, progress=False)
    return out, summary


def test_run_outputs_and_metadata(full_run, data_dir):
    out, summary = full_run
    assert summary["steps"] == 2 * N_TRAIN // BATCH
    assert json.loads((out / "summary.json").read_text()) == summary
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert set(lines[0]) >= {"epoch", "step", "train_loss", "train_acc", "test_acc", "lr"}
    assert {"anneal", "wall_time_s"} <= set(lines[0])
    assert lines[-1]["test_acc"] == summary["clean_accuracy"]
    assert summary["config"]["model"]["arch"] == "mlp" and summary["environment"]["git_commit"]

    loaded = checkpoint.load_checkpoint(out)
    meta = loaded.metadata
    assert meta["arch"] == "mlp" and meta["dataset"] == "fashion_mnist"
    assert meta["policy"]["kind"] == "ref" and meta["num_classes"] == 10
    assert meta["mean"] == [0.2860] and meta["std"] == [0.3530]
    assert meta["image_shape"] == [28, 28, 1]
    assert meta["clean_accuracy"] == summary["clean_accuracy"]
    assert meta["config"] == _config().to_dict()
    assert meta["qadv_version"] and meta["step"] == summary["steps"]
    # the restored model reproduces the recorded accuracy
    from qadv.data import load_split

    x, y = load_split("fashion_mnist", "test", data_dir=data_dir)
    acc = training.evaluate_clean(loaded.logits_fn, x, y, batch_size=16)
    assert acc == pytest.approx(summary["clean_accuracy"])


def test_a_finished_run_invoked_again_keeps_its_training_time(full_run, data_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full_run[0], out)
    summary = full_run[1]
    again = training.train(_config(), out, data_dir=data_dir, progress=False)
    assert again["wall_time_s"] == summary["wall_time_s"]  # nothing was trained
    assert again["clean_accuracy"] == summary["clean_accuracy"]
    assert again["resumed_from_step"] == summary["steps"]
    # every path form works
    step_dir = out / "checkpoints" / str(summary["steps"])
    assert checkpoint.read_metadata(step_dir)["step"] == summary["steps"]
    assert checkpoint.read_metadata(out / "checkpoints")["step"] == summary["steps"]


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize(("every", "resume_step"), [(2, 4), (None, 3)])
def test_kill_and_resume_matches_uninterrupted(
    full_run, data_dir, tmp_path, monkeypatch, every, resume_step
):
    """Killed in epoch 1 (after its 2nd batch): resume from the mid-epoch save at step 4,
    or from the epoch-0 save at step 3; either way the result equals an uninterrupted run."""
    out_full, summary_full = full_run
    out = tmp_path / "run"
    config = _config(checkpoint_every_steps=every)
    real_iterate = loop.iterate_batches

    def crashing(*args, epoch, **kwargs):  # dies during epoch 1 after two more batches
        for i, batch in enumerate(real_iterate(*args, epoch=epoch, **kwargs)):
            if epoch == 1 and i == 2:
                raise _Crash
            yield batch

    monkeypatch.setattr(loop, "iterate_batches", crashing)
    with pytest.raises(_Crash):
        training.train(config, out, data_dir=data_dir, progress=False)
    assert checkpoint.complete_steps(out / "checkpoints")[-1] == resume_step
    monkeypatch.setattr(loop, "iterate_batches", real_iterate)

    summary = training.train(config, out, data_dir=data_dir, progress=False)
    assert summary["resumed_from_step"] == resume_step
    assert summary["steps"] == summary_full["steps"]
    jax.tree.map(np.testing.assert_array_equal, _params(out), _params(out_full))
    assert summary["clean_accuracy"] == summary_full["clean_accuracy"]
    assert summary["train_loss"] == pytest.approx(summary_full["train_loss"], rel=1e-6)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]


def test_finished_run_resume_is_a_no_op(full_run, data_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full_run[0], out)
    summary = training.train(_config(), out, data_dir=data_dir, progress=False)
    assert summary["resumed_from_step"] == summary["steps"] == full_run[1]["steps"]
    assert summary["clean_accuracy"] == full_run[1]["clean_accuracy"]


def test_interrupted_save_leaves_previous_usable(full_run, data_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full_run[0], out)
    ckpt = out / "checkpoints"
    last = full_run[1]["steps"]
    # a save killed before orbax's rename, and a step folder without commit marker
    tmp = ckpt / f"{last + 1}.orbax-checkpoint-tmp-1234567"
    (tmp / "variables").mkdir(parents=True)
    (tmp / "variables" / "garbage").write_bytes(b"\x00" * 10)
    (ckpt / str(last + 2) / "variables").mkdir(parents=True)
    loaded = checkpoint.load_checkpoint(out)
    assert loaded.metadata["step"] == last
    summary = training.train(_config(), out, data_dir=data_dir, progress=False)
    assert summary["resumed_from_step"] == last
    assert not (ckpt / str(last + 2)).exists() and not tmp.exists()


def test_corrupt_checkpoint_is_a_clear_error(full_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full_run[0], out)
    step_dir = out / "checkpoints" / str(full_run[1]["steps"])
    for f in (step_dir / "variables").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(ValueError, match="corrupt") as info:
        checkpoint.load_checkpoint(out)
    assert "\n" not in str(info.value)
    (step_dir / "metadata" / "metadata").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt or incomplete checkpoint") as info:
        checkpoint.load_checkpoint(out)
    assert "\n" not in str(info.value)


def test_checksums_name_the_damaged_file(full_run, tmp_path):
    """``checksums.json`` refuses damage that keeps a file's size, and names the file;
    a load reads only the items it restores, and a step without checksums still loads."""
    out = tmp_path / "copy"
    shutil.copytree(full_run[0], out)
    step_dir = out / "checkpoints" / str(full_run[1]["steps"])
    saved = json.loads((step_dir / "checksums.json").read_text())["sha256"]
    on_disk = {
        p.relative_to(step_dir).as_posix()
        for p in step_dir.rglob("*")
        if p.is_file() and p.name != "checksums.json"
    }
    assert set(saved) == on_disk
    ref = checkpoint.load_checkpoint(out)
    # a damaged optimizer-state file does not stop a model load (it never reads it);
    # a training resume, which reads it, is refused
    train_file = sorted(f for f in saved if f.startswith("train/"))[0]
    size = saved[train_file][0]
    (step_dir / train_file).write_bytes(b"")
    checkpoint.load_checkpoint(out)
    with pytest.raises(ValueError, match=re.escape(f"{train_file}: 0 bytes, saved {size}")):
        checkpoint._verify_checksums(step_dir, ("variables", "train", "metadata"))
    # the same size, other bytes
    name = max((f for f in saved if f.startswith("variables/")), key=lambda f: saved[f][0])
    data = bytearray((step_dir / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (step_dir / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(f"{name}: contents differ")) as info:
        checkpoint.load_checkpoint(out)
    assert "\n" not in str(info.value)
    (step_dir / name).unlink()
    with pytest.raises(ValueError, match=re.escape(f"{name}: missing")):
        checkpoint.load_checkpoint(out)
    # without checksums (older qadv, or a kill just after orbax's commit) orbax alone reads
    shutil.rmtree(out)
    shutil.copytree(full_run[0], out)
    (step_dir / "checksums.json").unlink()
    loaded = checkpoint.load_checkpoint(out)
    jax.tree.map(np.testing.assert_array_equal, loaded.variables, ref.variables)


def test_other_architecture_is_a_clear_error(full_run, data_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full_run[0], out)
    with pytest.raises(
        ValueError, match=r"holds a run with model.arch='mlp'.*model.arch='cnn'"
    ) as info:
        training.train(_config(arch="cnn"), out, data_dir=data_dir, progress=False)
    assert "\n" not in str(info.value)
    # metadata that names another architecture than the stored arrays
    meta_path = out / "checkpoints" / str(full_run[1]["steps"]) / "metadata" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["arch"] = "cnn"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match architecture 'cnn'") as info:
        checkpoint.load_checkpoint(out)
    assert "\n" not in str(info.value)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint at"):
        checkpoint.load_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="no finished checkpoint"):
        checkpoint.load_checkpoint(tmp_path)


def test_tfds_mock_cifar_one_epoch(tmp_path):
    config = training.TrainConfig(
        dataset="cifar10",
        arch="mlp",
        arch_opts={"widths": (8,)},
        epochs=1,
        batch_size=4,
        eval_batch_size=4,
        source="tfds",
    )
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        summary = training.train(config, tmp_path, progress=False)
    assert summary["steps"] == 2 and 0.0 <= summary["clean_accuracy"] <= 1.0
    assert config.use_augment


def test_anneal_end_grows_per_step_to_the_end_value():
    cfg = _config(anneal_start=1.0, anneal_end=100.0)
    assert training.anneal_value(cfg, 0, step=0, total_steps=11) == pytest.approx(1.0)
    assert training.anneal_value(cfg, 0, step=5, total_steps=11) == pytest.approx(10.0)
    assert training.anneal_value(cfg, 1, step=10, total_steps=11) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="anneal_end"):
        _config(anneal_start=2.0, anneal_end=1.0)


def test_importing_qadv_train_warns():
    sys.modules.pop("qadv.train", None)
    with pytest.warns(DeprecationWarning, match="import from qadv.training"):
        module = importlib.import_module("qadv.train")
    sys.modules.pop("qadv.train", None)
    assert module.TrainConfig is training.TrainConfig and module.train is training.train


def test_a_run_killed_before_its_first_checkpoint_restarts_its_metrics(tmp_path, data_dir):
    """metrics.jsonl lines without a finished checkpoint are redone, not kept beside the
    new ones (which doubled epoch 1 and its train time in the summary)."""
    config = _config(epochs=1)
    training.train(config, tmp_path, data_dir=data_dir, progress=False)
    shutil.rmtree(tmp_path / "checkpoints")  # as if killed after the line, before the save
    summary = training.train(config, tmp_path, data_dir=data_dir, progress=False)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1]
    assert summary["train_time_s"] == pytest.approx(lines[0]["wall_time_s"])
