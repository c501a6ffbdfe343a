"""A new quantization policy is one class and its registration.

The ternary policy below lives only in this file. Registered, it builds models, trains
through ``qadv.training.train``, is checkpointed and reloaded, is attacked, and reports
BOPS through ``qadv.info``, with nothing outside ``qadv/quant`` knowing its name.
"""

import contextlib
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import write_idx

import qadv.quant as quant
from qadv import attacks, checkpoint, training
from qadv.info import model_info
from qadv.models import get_model, init_variables
from qadv.quant import QuantPolicy, get_policy, register_policy, straight_through
from qadv.verify.network import extract_network


@dataclasses.dataclass(frozen=True)
class TernaryPolicy(QuantPolicy):
    """Ternary weights ``{-a, 0, +a}`` (TWN): zero below ``0.7 mean|w|``, ``a`` the mean
    ``|w|`` of the kept weights, identity straight-through derivative; float ReLU inputs;
    2-bit weights and 8-bit activations in BOPS."""

    kind: str = "ternary"

    options = ("float_first", "float_last")
    hidden_bits = (2, 8)

    def weights(self, w, *, train, anneal=1.0):
        absw = jnp.abs(w)
        keep = absw > 0.7 * jnp.mean(absw)
        a = jnp.sum(jnp.where(keep, absw, 0.0)) / jnp.maximum(jnp.sum(keep), 1)
        return straight_through(w, jnp.where(keep, jnp.sign(w) * a, jnp.zeros_like(w)))


@contextlib.contextmanager
def _registered(cls):
    register_policy(cls)
    try:
        yield cls
    finally:
        quant.unregister_policy(cls.__dataclass_fields__["kind"].default)


@pytest.fixture
def ternary():
    with _registered(TernaryPolicy) as cls:
        yield cls


def test_registration_is_undone_after_the_test():
    assert "ternary" not in quant.policy_kinds()
    with _registered(TernaryPolicy):
        assert quant.policy_kinds()[-1] == "ternary"
        assert isinstance(QuantPolicy(kind="ternary"), TernaryPolicy)
    assert quant.policy_kinds() == quant.POLICY_KINDS
    with pytest.raises(ValueError, match="unknown quantization policy 'ternary'; choose one of"):
        get_policy("ternary")


def test_the_policy_answers_through_the_generic_api(ternary):
    p = get_policy("ternary", float_last=True)
    assert type(p) is ternary and QuantPolicy(**p.to_dict()) == p
    assert p.name == "ternary" and p.label == "ternary" and not p.anneals
    assert p.layer_bits("hidden") == (2, 8) and p.layer_bits("last") == (8, 8)
    w = jnp.array([[0.9, -0.1, 0.05], [-1.2, 0.02, 0.6]], jnp.float32)
    q = p.quantize_kernel(w, role="hidden", train=True)
    a = float(jnp.max(jnp.abs(q)))
    assert set(np.unique(np.abs(np.asarray(q)))) == {0.0, a} and a == pytest.approx(0.9)
    grad = jax.grad(lambda v: jnp.sum(p.quantize_kernel(v, role="hidden", train=True)))(w)
    np.testing.assert_array_equal(grad, jnp.ones_like(w))  # straight through
    assert p.quantize_kernel(w, role="last", train=True) is w  # float_last
    with pytest.raises(ValueError, match="registered twice"):
        register_policy(ternary)
    with pytest.raises(ValueError, match="bits=3 does not apply to policy 'ternary'"):
        training.TrainConfig(arch="mlp", policy="ternary", policy_opts={"bits": 3})
    m = get_model("mlp", num_classes=3, policy=p, widths=(4,))
    v = init_variables(m, key=jax.random.key(0), input_shape=(2, 2, 1))
    with pytest.raises(ValueError, match="supports policies bnn_waq, bnn_wq, ref, not 'ternary'"):
        extract_network(m, v)


def _synthetic(n, *, seed, classes=10):
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(1234).uniform(0, 255, size=(classes, 28, 28))
    y = rng.integers(0, classes, size=n)
    x = 0.7 * patterns[y] + rng.uniform(0, 0.3 * 255, size=(n, 28, 28))
    return x.astype(np.uint8), y.astype(np.int32)


def test_a_registered_policy_trains_is_attacked_and_reports_bops(ternary, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for prefix, n, seed in (("train", 128, 0), ("t10k", 32, 1)):
        x, y = _synthetic(n, seed=seed)
        write_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz", y)
    widths = (16, 16)
    config = training.TrainConfig(
        dataset="fashion_mnist",
        source="idx",
        arch="mlp",
        arch_opts={"widths": widths},
        policy="ternary",
        epochs=3,
        batch_size=32,
        lr=1e-2,
        schedule="constant",
        eval_batch_size=32,
    )
    summary = training.train(config, tmp_path / "run", data_dir=data_dir, progress=False)

    # it trains: the loss falls and the test accuracy is well above chance (0.1)
    records = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_loss"] < records[0]["train_loss"], records
    assert summary["clean_accuracy"] >= 0.3, summary["clean_accuracy"]

    # its checkpoint stores the usual policy dict and reloads into the same class
    loaded = checkpoint.load_checkpoint(tmp_path / "run")
    assert loaded.metadata["policy"] == get_policy("ternary").to_dict()
    assert type(loaded.model.policy) is ternary

    # it is attacked: PGD stays in the ball and costs accuracy
    x, y = _synthetic(32, seed=1)
    images = jnp.asarray(x[..., None], jnp.float32) / 255.0
    labels = jnp.asarray(y)
    eps = 0.1
    adv = attacks.pgd(
        loaded.logits_fn, images, labels, key=jax.random.key(0), eps=eps, step_size=eps / 4, steps=5
    )
    assert float(jnp.max(jnp.abs(adv - images))) <= eps + 1e-6
    clean = float(jnp.mean(jnp.argmax(loaded.logits_fn(images), -1) == labels))
    robust = float(jnp.mean(jnp.argmax(loaded.logits_fn(adv), -1) == labels))
    assert clean == pytest.approx(summary["clean_accuracy"])
    assert robust < clean, (robust, clean)

    # BOPS through the normal path: the hidden 16x16 layer at 2x8 bits, the rest at 8x8
    info = model_info("mlp", dataset="fashion_mnist", quant="ternary", arch_opts={"widths": widths})
    first, last = 784 * 16, 16 * 10
    assert [x["bits"] for x in info["layers"]] == [[8, 8], [2, 8], [8, 8]]
    assert info["bops"] == (first + last) * 64 + 16 * 16 * 16
    assert info["policy"] == "ternary" and info["fp_bops"] > info["bops"]
