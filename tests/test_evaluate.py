"""Tests for qadv.evaluate: verified, resumable attack evaluation and diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv import attacks, evaluate
from qadv.evaluate import AttackSpec

D, SHAPE = 4, (6, 6, 1)


def _model(scale=1.0):
    w = jax.random.normal(jax.random.key(1), (int(np.prod(SHAPE)), D))

    def logits_fn(x):
        h = x.reshape(x.shape[0], -1)
        return scale * jnp.tanh(h - 0.5) @ w

    return logits_fn


def _data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, *SHAPE)).astype(np.float32)
    y = np.asarray(jnp.argmax(_model()(jnp.asarray(x)), -1)).astype(np.int32)
    y[:3] = (y[:3] + 1) % D  # a few misclassified clean images
    return x, y


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(eps=-1.0), "eps"),
        (dict(steps=0), "steps"),
        (dict(norm="l3"), "norm"),
        (dict(loss="mse"), "loss"),
        (dict(temperature="magic"), "temperature"),
        (dict(restarts=0), "restarts"),
        (dict(attack="cw"), "attack"),
    ],
)
def test_spec_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        AttackSpec(**kw)


def test_fgsm_spec_is_one_step_of_eps():
    spec = AttackSpec(attack="fgsm", eps=0.1, step_size=0.5, steps=7)
    assert spec.steps == 1 and spec.step_size == 0.1
    assert spec.label == "FGSM linf"
    assert AttackSpec(temperature="hns").label == "PGD++ (HNS) linf"


@pytest.mark.parametrize("temperature", ["none", "njs", "hns", "fixed"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_record_matches_rerun_of_the_model(temperature, norm, tmp_path):
    f = _model()
    x, y = _data()
    spec = AttackSpec(
        norm=norm, eps=0.1, step_size=0.03, steps=3, temperature=temperature, beta=0.5
    )
    rec = evaluate.evaluate_attack(
        f, x, y, spec, batch_size=8, out=tmp_path / "r.json", progress=False
    )
    assert rec["n"] == len(x)
    clean = 100 * np.mean(np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)) == y)
    assert rec["clean_accuracy"] == pytest.approx(clean)
    assert rec["adversarial_accuracy"] <= rec["clean_accuracy"] + 1e-9
    # recompute by hand: same keys per batch (fold_in of the seed key)
    temp = evaluate.make_temperature(spec, f, x)
    hits = []
    for b, s in enumerate(range(0, len(x), 8)):
        xb, m = evaluate._pad(x[s : s + 8], 8)
        yb, _ = evaluate._pad(y[s : s + 8], 8)
        adv = attacks.pgd(
            f,
            xb,
            yb,
            key=jax.random.fold_in(jax.random.key(0), b),
            eps=spec.eps,
            step_size=spec.step_size,
            steps=spec.steps,
            norm=norm,
            temperature=temp,
        )
        hits.append((np.asarray(jnp.argmax(f(adv), -1)) == yb)[:m])
    assert rec["adversarial_accuracy"] == pytest.approx(100 * np.mean(np.concatenate(hits)))
    assert (tmp_path / "r.json").exists() and not (tmp_path / "r.json.partial.npz").exists()
    assert set(rec["beta"]) == {"mean", "median", "min", "max"}
    assert rec["environment"]["git_commit"]


def test_resume_skips_finished_batches(tmp_path, monkeypatch):
    f = _model()
    x, y = _data()
    spec = AttackSpec(eps=0.1, step_size=0.03, steps=2)
    out = tmp_path / "r.json"
    full = evaluate.evaluate_attack(f, x, y, spec, batch_size=5, progress=False)

    real = attacks.pgd
    calls = []

    def dies_on_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(attacks, "pgd", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_attack(f, x, y, spec, batch_size=5, out=out, progress=False)
    assert (tmp_path / "r.json.partial.npz").exists() and not out.exists()

    calls.clear()
    monkeypatch.setattr(attacks, "pgd", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    resumed = evaluate.evaluate_attack(f, x, y, spec, batch_size=5, out=out, progress=False)
    assert len(calls) == 2  # only the two unfinished batches ran
    assert resumed["adversarial_accuracy"] == full["adversarial_accuracy"]


def test_a_changed_spec_does_not_reuse_partial_results(tmp_path, monkeypatch):
    f = _model()
    x, y = _data()
    out = tmp_path / "r.json"
    evaluate.evaluate_attack(
        f, x, y, AttackSpec(eps=0.1, steps=1), batch_size=10, out=out, progress=False
    )
    evaluate._save_partial(
        tmp_path / "r.json.partial.npz",
        {
            "adv_correct": np.zeros(20, bool),
            "clean_correct": np.zeros(20, bool),
            "beta": np.ones(20, np.float32),
            "fallback": np.zeros(20, bool),
            "done": np.ones(2, bool),
            "seconds": np.zeros(()),
        },
        "stale-key",
    )
    rec = evaluate.evaluate_attack(
        f, x, y, AttackSpec(eps=0.1, steps=2), batch_size=10, out=out, progress=False
    )
    assert rec["clean_accuracy"] > 0  # recomputed, not read from the stale partial file


def test_an_attack_leaving_the_ball_is_caught(monkeypatch):
    f = _model()
    x, y = _data()
    monkeypatch.setattr(
        attacks, "pgd", lambda logits_fn, x, y, **kw: (np.clip(x + 0.5, 0, 1), _info(len(x)))
    )
    with pytest.raises(RuntimeError, match="exceeds eps"):
        evaluate.evaluate_attack(f, x, y, AttackSpec(eps=0.1), batch_size=10, progress=False)


def _info(b):
    z = jnp.zeros((b,), bool)
    return attacks.AttackInfo(jnp.ones((b,)), z, z, z, jnp.zeros((b,)), jnp.zeros((b,), jnp.int32))


def test_accuracy_curve_ends_at_the_attack_result():
    f = _model(scale=3.0)
    x, y = _data()
    spec = AttackSpec(eps=0.2, step_size=0.05, steps=4, temperature="hns")
    curve = evaluate.accuracy_curve(f, x, y, spec, batch_size=10)
    rec = evaluate.evaluate_attack(f, x, y, spec, batch_size=10, progress=False)
    assert curve.shape == (5,)
    assert curve[-1] == pytest.approx(rec["adversarial_accuracy"])
    assert curve[-1] <= curve[0] + 20  # a sanity bound: attacking does not add accuracy wholesale


def test_diagnose_counts_saturated_examples():
    x, y = _data()
    y = np.asarray(jnp.argmax(_model()(jnp.asarray(x)), -1)).astype(np.int32)
    soft = evaluate.diagnose(_model(), x, y, batch_size=8, jacobian_examples=5)
    hard = evaluate.diagnose(_model(scale=1e4), x, y, batch_size=8, jacobian_examples=5)
    assert soft["zero_gradient_fraction"] < hard["zero_gradient_fraction"]
    assert hard["logit_gap_median"] > 88
    assert hard["psi_norm_mean"] < soft["psi_norm_mean"]
    assert soft["jsv_examples"] == 5 and np.isfinite(soft["jsv_mean"])


def test_sharded_evaluation_equals_single_device():
    devices = jax.devices()
    assert len(devices) == 8, "tests run with 8 host devices (tests/conftest.py)"
    f = _model(scale=3.0)
    x, y = _data(n=20)
    spec = AttackSpec(eps=0.1, step_size=0.03, steps=3, temperature="hns")
    one = evaluate.evaluate_attack(f, x, y, spec, batch_size=16, progress=False)
    many = evaluate.evaluate_attack(f, x, y, spec, batch_size=16, progress=False, devices=devices)
    for k in ("clean_accuracy", "adversarial_accuracy", "beta", "fallback_count"):
        assert many[k] == one[k]
    with pytest.raises(ValueError, match="multiple of 8"):
        evaluate.evaluate_attack(f, x, y, spec, batch_size=10, progress=False, devices=devices)


def test_njs_normalized_space_scales_beta_by_std():
    f = _model(scale=3.0)
    x, _ = _data()
    pix = evaluate.make_temperature(AttackSpec(temperature="njs"), f, x)
    spec = AttackSpec(temperature="njs", njs_space="normalized")
    nrm = evaluate.make_temperature(spec, f, x, input_std=(0.25,))
    assert float(nrm.beta1) == pytest.approx(float(pix.beta1) / 0.25, rel=1e-4)
    with pytest.raises(ValueError, match="input std"):
        evaluate.make_temperature(spec, f, x)
    with pytest.raises(ValueError, match="NJS Jacobian space"):
        AttackSpec(njs_space="logit")
