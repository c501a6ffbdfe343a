"""The gradient-masking report: verdicts fire on deliberately masked models and stay
quiet on a smooth one."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import relu_mlp

from qadv.evaluate.masking import CHECKS, MaskingConfig, masking_report

N_IN, D = 16, 4
RNG = np.random.default_rng(0)
W = (RNG.normal(size=(N_IN, D)) / np.sqrt(N_IN)).astype(np.float32)
B = (RNG.normal(size=(D,)) * 0.1).astype(np.float32)


def smooth(x):
    """A linear model: gradients exist everywhere and describe it exactly."""
    return x.reshape(x.shape[0], -1) @ W + B[None, :]


def data(f, n=48, seed=1):
    x = np.random.default_rng(seed).uniform(size=(n, 4, 4, 1)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1), np.int32)
    return x, y


CFG = MaskingConfig(
    eps=0.1,
    max_steps=10,
    eps_factors=(1.0, 10.0),
    step_factors=(0.25, 1.0),
    temperatures=("hns",),
    square_queries=100,
    batch_size=64,
)


def statuses(report):
    return {v["name"]: v["status"] for v in report["checks"]}


def test_quiet_on_a_smooth_model(tmp_path):
    x, y = data(smooth)
    r = masking_report(smooth, x, y, config=CFG, surrogate=smooth, out_dir=tmp_path, progress=False)
    st = statuses(r)
    assert set(st) == set(CHECKS)
    assert all(s == "pass" for s in st.values()), [
        (v["name"], v["reason"]) for v in r["checks"] if v["status"] != "pass"
    ]
    assert r["verdict"] == "no masking detected"
    # the files exist and the JSON is the report
    saved = json.loads((tmp_path / "masking.json").read_text())
    assert saved["verdict"] == r["verdict"]
    md = (tmp_path / "masking.md").read_text()
    assert "No gradient masking detected" in md and "![Accuracy against ε](epsilon.png)" in md
    for png in ("epsilon.png", "iterations.png", "step_size.png", "logit_gap.png"):
        assert (tmp_path / png).stat().st_size > 0
    # PGD on a linear model reaches 0% as ε grows
    eps = next(v for v in r["checks"] if v["name"] == "epsilon")["data"]
    assert eps["curves"]["PGD"][-1] == 0.0


def test_stop_gradient_model_is_flagged():
    f = lambda x: smooth(jax.lax.stop_gradient(x))  # noqa: E731
    x, y = data(smooth)
    r = masking_report(
        f,
        x,
        y,
        config=CFG,
        surrogate=smooth,
        checks=["zero-gradients", "black-box", "transfer", "epsilon"],
        progress=False,
    )
    st = statuses(r)
    assert st == dict.fromkeys(st, "masking suspected"), r["checks"]
    zero = r["checks"][0]["data"]
    assert zero["zero_gradient_pct"] == 100.0
    assert r["verdict"] == "masking suspected"
    assert r["robust_accuracy"]["worst case over all"] < r["robust_accuracy"]["PGD"]


def test_huge_logits_are_flagged_and_temperature_fixes_them():
    f = lambda x: 1e4 * smooth(x)  # noqa: E731
    x, y = data(smooth)
    r = masking_report(
        f, x, y, config=CFG, checks=["zero-gradients", "temperature", "step-size"], progress=False
    )
    st = statuses(r)
    assert st == dict.fromkeys(st, "masking suspected"), r["checks"]
    assert r["checks"][0]["data"]["saturated_pct"] > 90


def test_random_across_passes_model_is_flagged():
    rng = np.random.default_rng(0)

    def f(x):
        noise = jax.pure_callback(
            lambda: rng.normal(size=(x.shape[0], D)).astype(np.float32),
            jax.ShapeDtypeStruct((x.shape[0], D), jnp.float32),
        )
        return smooth(x) + jax.lax.stop_gradient(noise)

    x, y = data(smooth)
    r = masking_report(f, x, y, config=CFG, checks=["randomness"], progress=False)
    assert statuses(r) == {"randomness": "masking suspected"}
    assert r["checks"][0]["data"]["max_abs_difference"] > 0


def test_random_output_model_is_flagged():
    """Logits that oscillate faster than any attack step: a random function of the input."""
    f = lambda x: 10 * jnp.sin(1e4 * smooth(x))  # noqa: E731
    x, y = data(f)
    r = masking_report(f, x, y, config=CFG, checks=["gradient-fidelity"], progress=False)
    assert statuses(r) == {"gradient-fidelity": "masking suspected"}
    # the same check passes a smooth ReLU network
    g = relu_mlp(0, n_in=N_IN, d=D)
    x, y = data(g)
    r = masking_report(g, x, y, config=CFG, checks=["gradient-fidelity"], progress=False)
    assert statuses(r) == {"gradient-fidelity": "pass"}


def test_probability_output_is_flagged():
    f = lambda x: jax.nn.softmax(smooth(x))  # noqa: E731
    x, y = data(smooth)
    r = masking_report(f, x, y, config=CFG, checks=["softmax-output"], progress=False)
    assert statuses(r) == {"softmax-output": "masking suspected"}


def test_resume_reuses_attacks_and_facts(tmp_path, monkeypatch):
    x, y = data(smooth)
    checks = ["zero-gradients", "black-box"]
    r1 = masking_report(smooth, x, y, config=CFG, checks=checks, out_dir=tmp_path, progress=False)
    import qadv.evaluate.core as core

    def boom(*a, **k):
        raise AssertionError("recomputed a finished attack")

    monkeypatch.setattr(core, "evaluate_attack", boom)
    r2 = masking_report(smooth, x, y, config=CFG, checks=checks, out_dir=tmp_path, progress=False)
    assert r2["robust_accuracy"] == r1["robust_accuracy"]
    # other data is not served from the cache
    with pytest.raises(AssertionError, match="recomputed"):
        masking_report(
            smooth, x[:40], y[:40], config=CFG, checks=checks, out_dir=tmp_path, progress=False
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(config=MaskingConfig(eps=-1)), "invalid eps -1"),
        (dict(config=MaskingConfig(norm="l1")), "l1"),
        (dict(config=MaskingConfig(temperatures=("hot",))), "hot"),
        (dict(config=MaskingConfig(max_steps=1)), "invalid max_steps 1"),
        (dict(checks=["nope"]), "unknown masking check 'nope'"),
    ],
)
def test_bad_input(kwargs, match):
    x, y = data(smooth, n=4)
    with pytest.raises(ValueError, match=match):
        masking_report(smooth, x, y, progress=False, **kwargs)
