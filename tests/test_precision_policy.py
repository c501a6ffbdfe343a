"""The float32 precision policy (``qadv.precision``), and the precision-sensitive
computations at reduced precision on a CPU: the model in bfloat16 compute stands in for a
GPU's TF32 or a TPU's bfloat16 passes, with tolerances derived from the precision."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv import precision, signal
from qadv.apps import cli
from qadv.models import with_compute_dtype

N_IN, D = 12, 5


def _mlp(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (N_IN, 16)) / np.sqrt(N_IN)
    w2 = jax.random.normal(k2, (16, D)) / 4.0
    return jax.tree_util.Partial(
        lambda w1, w2, x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2, w1, w2
    )


def _x(n=6):
    return jax.random.uniform(jax.random.key(3), (n, 2, 2, 3))


def test_default_policy_is_float32_and_scoped_changes_revert():
    assert precision.current() == "float32"
    with precision.scope("tensorfloat32"):
        assert precision.current() == "tensorfloat32"
    assert precision.current() == "float32"
    with pytest.raises(ValueError, match="choose one of: float32, tensorfloat32, bfloat16"):
        precision.set_precision("fp8")
    assert precision.relative_epsilon("float32") < precision.relative_epsilon("bfloat16")


def _policy_in_subprocess(env: dict) -> str:
    code = "import qadv.precision as p, qadv; print(p.current())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_environment_chooses_the_policy():
    assert _policy_in_subprocess({"QADV_PRECISION": "bfloat16"}) == "bfloat16"
    # a precision the user set for JAX before importing qadv is kept
    assert (
        _policy_in_subprocess({"JAX_DEFAULT_MATMUL_PRECISION": "tensorfloat32"}) == "tensorfloat32"
    )


def test_cli_precision_flag_sets_the_policy(capsys):
    previous = precision.current()
    try:
        assert cli.main(["attacks", "--precision", "tensorfloat32"]) == 0
        assert precision.current() == "tensorfloat32"
    finally:
        precision.set_precision(previous)
    capsys.readouterr()


def test_policies_compile_separately_and_agree_on_cpu():
    """The policy is part of the trace context: each compiles its own function (never
    reusing another's), and on a CPU, which has no TF32, all compute float32."""
    f, x = _mlp(), _x()
    g = jax.jit(lambda x: f(x))
    ref = np.asarray(g(x))
    for p in precision.PRECISIONS:
        with precision.scope(p):
            out = np.asarray(g(x))
        if jax.default_backend() == "cpu":
            np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_jacobian_against_jacrev_at_the_compute_precision(dtype):
    f = with_compute_dtype(_mlp(), dtype)
    x = _x()
    jac = np.asarray(signal.jacobian(f, x), np.float64).reshape(len(x), D, -1)
    ref = jax.vmap(jax.jacrev(lambda xi: f(xi[None])[0]))(x)
    ref = np.asarray(ref, np.float64).reshape(len(x), D, -1)
    # a handful of roundings of the compute dtype per entry, relative to the largest entry
    tol = 16 * (precision.relative_epsilon(dtype) if dtype == "bfloat16" else 2.0**-23)
    np.testing.assert_allclose(jac, ref, rtol=0, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize(
    # float32 against jax.hessian is also test_signal's closed-form check
    "dtype",
    [pytest.param("float32", marks=pytest.mark.slow), "bfloat16"],
)
def test_hessian_norm_against_jax_hessian_at_the_compute_precision(dtype):
    f = with_compute_dtype(_mlp(), dtype)
    x, y = _x(3), jnp.array([0, 1, 2])
    betas = jnp.array([0.5, 2.0])
    got = np.asarray(signal.hessian_norm(f, x, y, betas, exact=True), np.float64)

    @jax.jit  # one example and one β at a time; compiled once
    @functools.partial(jax.hessian, argnums=0)
    def hess(z, yi, b):
        return -jax.nn.log_softmax(b * f(z[None]))[0, yi]

    for i in range(len(x)):
        for k, b in enumerate(np.asarray(betas)):
            h = np.asarray(hess(x[i], y[i], jnp.float32(b)), np.float64).reshape(N_IN, N_IN)
            eps = precision.relative_epsilon("bfloat16") if dtype == "bfloat16" else 2.0**-23
            # second derivatives through two backward passes: a few dozen roundings
            np.testing.assert_allclose(got[i, k], np.linalg.norm(h), rtol=64 * eps)
