"""bfloat16 model compute with float32 logits (``qadv.models.precision``)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv import attacks, checkpoint
from qadv.apps import cli
from qadv.attacks import protocol
from qadv.models import (
    COMPUTE_DTYPES,
    check_compute_dtype,
    get_model,
    init_variables,
    make_logits_fn,
    with_compute_dtype,
)
from qadv.models.precision import cast_floating
from qadv.quant import get_policy

SHAPE = (8, 8, 1)
EPS = 8 / 255


def _model(arch="cnn", quant="bnn_wq", **opts):
    opts = opts or ({"widths": (8,)} if arch == "cnn" else {"widths": (32,)})
    m = get_model(arch, num_classes=10, policy=get_policy(quant), **opts)
    init = jax.jit(lambda key: init_variables(m, key=key, input_shape=SHAPE))
    return m, init(jax.random.key(0))


def _images(n=16, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, *SHAPE), jnp.float32)


def _eqns(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in it (jit, custom_vjp)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def _matmul_input_dtypes(fn, x):
    eqns = _eqns(jax.make_jaxpr(fn)(x).jaxpr)
    return [
        {str(v.aval.dtype) for v in e.invars}
        for e in eqns
        if e.primitive.name in ("dot_general", "conv_general_dilated")
    ]


def test_dtype_names():
    assert COMPUTE_DTYPES == ("float32", "bfloat16")
    assert check_compute_dtype(jnp.bfloat16) == "bfloat16"
    assert check_compute_dtype(np.dtype("float32")) == "float32"
    for bad in ("float16", "bf16", None, 3):
        with pytest.raises(ValueError, match=r"unknown compute dtype .*float32, bfloat16"):
            check_compute_dtype(bad)
    with pytest.raises(ValueError, match="'float16'"):
        with_compute_dtype(lambda x: x, "float16")


def test_float32_returns_the_function_unchanged():
    f = jax.tree_util.Partial(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.ones((64, 3)))
    assert with_compute_dtype(f, "float32") is f
    assert with_compute_dtype(f, jnp.float32) is f


@pytest.mark.parametrize("arch, quant", [("cnn", "bnn_wq"), ("mlp", "bnn_waq"), ("mlp", "ref")])
def test_bf16_compute_float32_logits(arch, quant, strict_dtypes):
    m, v = _model(arch, quant)
    f = make_logits_fn(m, v)
    g = with_compute_dtype(f, "bfloat16")
    x = _images(64)
    out = jax.jit(g)(x)
    assert out.dtype == jnp.float32 and out.shape == (64, 10)
    # the model itself runs in bfloat16: every matmul/convolution takes bf16 operands
    bf16, f32 = _matmul_input_dtypes(g, x), _matmul_input_dtypes(f, x)
    assert bf16 and all(d == {"bfloat16"} for d in bf16), bf16
    assert f32 and all(d == {"float32"} for d in f32), f32
    # the model applied by hand to bf16 weights and images, up to XLA's fusion of bf16
    # ops (a fused chain is rounded once): within a few bf16 steps on every example
    manual = jax.jit(lambda v, x: m.apply(v, x.astype(jnp.bfloat16), train=False))(
        cast_floating(v, jnp.bfloat16), x
    )
    manual = np.asarray(manual.astype(jnp.float32))
    steps = np.abs(np.asarray(out) - manual) / (2.0**-7 * np.abs(manual).max())
    assert np.mean(steps.max(axis=1) <= 4) >= 0.9, steps.max(axis=1)
    # and close to float32 on most examples (bf16 keeps 8 significant bits; a binary
    # activation whose input rounds across 0 flips and moves a few logits by 2)
    ref = np.asarray(jax.jit(f)(x))
    close = np.abs(np.asarray(out) - ref) <= 0.05 * np.abs(ref).max() + 1e-3
    assert close.all(axis=1).mean() >= 0.8
    assert np.mean(np.argmax(out, 1) == np.argmax(ref, 1)) >= 0.9
    # gradients reach the float32 input through the casts
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jax.nn.log_softmax(g(x))[:, 0])))(x[:4])
    assert grad.dtype == jnp.float32 and np.all(np.isfinite(grad))


def test_plain_callable_is_wrapped_hashably():
    w = jnp.ones((64, 3))

    def f(x):
        return x.reshape(x.shape[0], -1) @ w.astype(x.dtype)

    g = with_compute_dtype(f, "bfloat16")
    again = with_compute_dtype(f, jnp.bfloat16)
    assert g == again and hash(g) == hash(again)
    assert g(_images(2)).dtype == jnp.float32
    assert _matmul_input_dtypes(g, _images(2)) == [{"bfloat16"}]
    assert with_compute_dtype(g, "bfloat16") == g  # no nesting


def test_multi_bit_model_in_bfloat16():
    # ABC-Net's least-squares weight scales are fitted in float32 and cast back
    m, v = _model("mlp", "mbn:3x3", widths=(16,))
    out = jax.jit(with_compute_dtype(make_logits_fn(m, v), "bfloat16"))(_images(4))
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))


@pytest.fixture
def run(trained_mlp):
    """``(run_dir, data_dir)`` of the suite's trained BNN-WQ MLP (``qadv train``, see
    conftest.py)."""
    return trained_mlp


def _test_set(data_dir):
    from qadv import data

    x, y = data.load_split("mnist", "test", data_dir=data_dir)
    return jnp.asarray(x.astype(np.float32) / np.float32(255.0)), jnp.asarray(y, jnp.int32)


def test_loaded_model_in_bfloat16(run):
    out, data_dir = run
    loaded = checkpoint.load_checkpoint(out, compute_dtype="bfloat16")
    assert loaded.compute_dtype == "bfloat16"
    assert checkpoint.load_checkpoint(out).compute_dtype == "float32"
    # the stored variables stay float32; only the logits function computes in bf16
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(loaded.variables))
    f32 = loaded.with_compute_dtype("float32")
    assert f32.logits_fn.func == make_logits_fn(f32.model, f32.variables).func
    x, y = _test_set(data_dir)
    p16 = np.argmax(jax.jit(loaded.logits_fn)(x), 1)
    p32 = np.argmax(jax.jit(f32.logits_fn)(x), 1)
    assert (p16 == p32).mean() >= 0.9
    assert abs((p16 == np.asarray(y)).mean() - (p32 == np.asarray(y)).mean()) <= 0.1
    with pytest.raises(ValueError, match="unknown compute dtype 'half'"):
        loaded.with_compute_dtype("half")
    with pytest.raises(ValueError, match="unknown compute dtype 'int8'"):
        checkpoint.load_checkpoint(out, compute_dtype="int8")


@pytest.mark.parametrize("temperature", ["hns", "njs"])
def test_attacks_on_a_bfloat16_model(run, temperature, strict_dtypes):
    out, data_dir = run
    loaded = checkpoint.load_checkpoint(out, compute_dtype="bfloat16")
    x, y = _test_set(data_dir)
    x, y = x[:8], y[:8]
    fn = loaded.logits_fn
    temp = attacks.hns(grid_size=5) if temperature == "hns" else attacks.njs(fn, x, rho=0.01)
    kw = dict(eps=EPS, step_size=2 / 255, steps=3, temperature=temp)
    x_adv = attacks.pgd(fn, x, y, key=jax.random.key(0), **kw)
    assert x_adv.dtype == jnp.float32
    tol = 2 * float(jnp.finfo(jnp.float32).eps)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= EPS + tol
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float(jnp.max(jnp.abs(x_adv - x))) > 0  # the input gradient got through

    # a second call, with a fresh logits function of the same model: no new compile
    size = protocol._execute._cache_size()
    x2 = jnp.clip(x + 0.01, 0, 1)
    attacks.pgd(loaded.logits_fn, x2, y, key=jax.random.key(1), **kw)
    assert protocol._execute._cache_size() == size


def test_cli_dtype(run, capsys, tmp_path):
    out, data_dir = run
    common = ["--checkpoint", str(out), "--data-dir", str(data_dir)]
    assert cli.main(["eval", *common, "--dtype", "bfloat16"]) == 0
    assert "clean accuracy" in capsys.readouterr().out
    res = tmp_path / "r.json"
    argv = ["attack", *common, "--attack", "pgd", "--temperature", "hns", "--steps", "2"]
    argv += ["--n", "16", "--batch-size", "16", "--out", str(res), "--no-progress"]
    assert cli.main([*argv, "--dtype", "bfloat16"]) == 0
    rec = json.loads(res.read_text())
    assert rec["compute_dtype"] == "bfloat16"
    assert 0 <= rec["robust_accuracy"] <= rec["clean_accuracy"]
    ens = tmp_path / "e.json"
    argv = ["evaluate", *common, "--attacks", "fgsm", "--n", "16"]
    argv += ["--batch-size", "16", "--out", str(ens), "--no-progress", "--dtype", "bfloat16"]
    assert cli.main(argv) == 0
    assert json.loads(ens.read_text())["compute_dtype"] == "bfloat16"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["attack", *common, "--out", str(res), "--dtype", "float16"])
    assert e.value.code == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err
