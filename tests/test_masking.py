"""The gradient-masking report: verdicts fire on deliberately masked models and stay
quiet on a smooth one."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import relu_mlp

import qadv.evaluate.masking as masking
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


def test_checks_run_in_report_order():
    """Gradient checks first, then the attack comparisons; ``Verdict`` is the old name of
    a check's outcome."""
    assert list(CHECKS) == [
        "zero-gradients",
        "softmax-output",
        "randomness",
        "gradient-fidelity",
        "temperature",
        "iterations",
        "epsilon",
        "step-size",
        "transfer",
        "black-box",
    ]
    assert masking.Verdict is masking.CheckOutcome
    assert set(masking.__all__) <= set(dir(masking))


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

    monkeypatch.setattr(core, "_attack_batches", boom)
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


def _with_fake_fgsm(monkeypatch, flip):
    """Serve FGSM as PGD-``max_steps``'s record with ``flip(robust)`` examples broken."""
    import qadv.evaluate.core as core

    real = core.cached_attack
    seen = {}

    def fake(path, logits_fn, images, labels, config, **kwargs):
        if config.label.startswith("FGSM"):
            rec = dict(seen["long"])
            robust = np.asarray(rec["examples"]["robust"], bool).copy()
            robust[flip(robust)] = False
            rec["examples"] = {**rec["examples"], "robust": robust.tolist()}
            rec["robust_accuracy"] = 100.0 * robust.mean()
            return rec
        rec = real(path, logits_fn, images, labels, config, **kwargs)
        if getattr(config, "steps", None) == CFG.max_steps:
            seen["long"] = rec
        return rec

    monkeypatch.setattr(core, "cached_attack", fake)


def test_worst_case_counts_every_attack_run_at_eps(monkeypatch):
    """An example only FGSM breaks leaves the worst case: every attack of every check feeds
    it (FGSM, the PGD-max_steps run of the iterations curve, the step-size sweep)."""
    x, y = data(smooth)
    checks = ["iterations", "step-size"]
    r0 = masking_report(smooth, x, y, config=CFG, checks=checks, progress=False)
    acc = r0["robust_accuracy"]
    assert {"PGD", "FGSM", f"PGD-{CFG.max_steps}", "PGD (η = 0.1)", "Square"} <= set(acc)
    assert acc["worst case over all"] == min(acc.values())
    _with_fake_fgsm(monkeypatch, lambda robust: np.flatnonzero(robust))  # FGSM breaks all
    r = masking_report(smooth, x, y, config=CFG, checks=checks, progress=False)
    assert r["robust_accuracy"]["FGSM"] == 0.0
    assert r["robust_accuracy"]["worst case over all"] == 0.0 < acc["worst case over all"]


def test_fgsm_beats_pgd_only_by_the_paired_sign_test(monkeypatch):
    x, y = data(smooth)
    # two examples broken only by FGSM: 4.2 points on 48 examples, above the tolerance,
    # but a sign test of 2 against 0 gives p = 0.25: not evidence
    _with_fake_fgsm(monkeypatch, lambda robust: np.flatnonzero(robust)[:2])
    r = masking_report(smooth, x, y, config=CFG, checks=["iterations"], progress=False)
    d = r["checks"][0]["data"]
    assert d["pgd_max_steps"] - d["fgsm"] > CFG.tolerance
    assert d["fgsm_test"]["broken_only_by_other"] == 2 and d["fgsm_test"]["p_value"] == 0.25
    assert statuses(r) == {"iterations": "pass"}
    # eight examples broken only by FGSM: p = 2**-8, masking suspected, with its test
    _with_fake_fgsm(monkeypatch, lambda robust: np.flatnonzero(robust)[:8])
    r = masking_report(smooth, x, y, config=CFG, checks=["iterations"], progress=False)
    assert statuses(r) == {"iterations": "masking suspected"}
    assert "sign test p = 0.0039" in r["checks"][0]["reason"]


def _mlp(quant, *, compute="float32"):
    from qadv.models import get_model, init_variables, make_logits_fn, with_compute_dtype
    from qadv.quant import get_policy

    m = get_model("mlp", num_classes=D, policy=get_policy(quant), widths=(32, 32))
    v = init_variables(m, key=jax.random.key(0), input_shape=(4, 4, 1))
    return with_compute_dtype(make_logits_fn(m, v), compute)


def fidelity(f, n=64):
    x, y = data(f, n=n)
    r = masking_report(f, x, y, config=CFG, checks=["gradient-fidelity"], progress=False)
    return r["checks"][0]


def test_fidelity_holds_for_a_linear_model_with_large_logits():
    """Logits of 1e3-1e4 (a large weight every class shares) on a margin whose gradient
    is O(1): at step 1e-4 float32 rounding of the logits alone is O(10) in the finite
    difference, which must not read as a bad gradient."""
    f = lambda x: x.reshape(x.shape[0], -1) @ (W + 600.0)  # noqa: E731
    x, _ = data(smooth)
    z = np.abs(np.asarray(f(jnp.asarray(x))))
    assert 1e3 < z.min() and z.max() < 1e4
    v = fidelity(f)
    assert v["status"] == "pass", v["reason"]
    assert v["data"]["disagree_fraction"] == 0.0


def test_fidelity_holds_for_a_bfloat16_mlp():
    v = fidelity(_mlp("ref", compute="bfloat16"))
    assert v["status"] == "pass", v["reason"]
    assert v["data"]["compute_epsilon"] == 2.0**-7
    # the same network in float32: resolved at the smallest step, and agreeing
    v32 = fidelity(_mlp("ref"))
    assert v32["status"] == "pass" and v32["data"]["compute_epsilon"] == 2.0**-23
    assert v32["data"]["unresolved_fraction"] == 0.0


def test_fidelity_flags_a_straight_through_sign_network():
    v = fidelity(_mlp("bnn_waq"))
    assert v["status"] == "masking suspected", v["reason"]
    assert v["data"]["disagree_fraction"] > 0.9
