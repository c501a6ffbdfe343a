"""Tests for qadv.evaluate: verified, resumable, honest per-example evaluation; ensembles."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv import attacks, evaluate
from qadv.attacks import registry
from qadv.attacks.protocol import AttackContext, finish
from qadv.evaluate import core

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


PGD = dict(eps=0.1, step_size=0.03, steps=3)


# The default run keeps HNS with L∞ and NJS with L2 (both norms, both calibrated
# temperatures); the other pairs run with the slow tests.
_RECORD_CASES = [
    pytest.param(
        norm,
        temperature,
        marks=() if (norm, temperature) in {("linf", "hns"), ("l2", "njs")} else pytest.mark.slow,
        id=f"{norm}-{temperature}",
    )
    for norm in ("linf", "l2")
    for temperature in ("none", "njs", "hns", "fixed")
]


@pytest.mark.parametrize(("norm", "temperature"), _RECORD_CASES)
def test_record_matches_rerun_of_the_model(norm, temperature, tmp_path):
    f = _model()
    x, y = _data()
    opts = dict(beta=0.5) if temperature == "fixed" else {}
    cfg = registry.make("pgd", norm=norm, temperature=temperature, **PGD, **opts)
    rec = evaluate.evaluate_attack(
        f, x, y, cfg, batch_size=8, out=tmp_path / "r.json", progress=False
    )
    assert rec["n"] == len(x)
    clean = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)) == y
    assert rec["clean_accuracy"] == pytest.approx(100 * clean.mean())
    # by hand: the public pgd() with key fold_in(key(0), i) for example i, run on all at once
    temp = cfg.temperature.build(f, AttackContext(calib_images=x))
    keys = attacks.example_keys(jax.random.key(0), len(x))
    kw = dict(step_size=cfg.step_size, steps=cfg.steps, norm=norm, temperature=temp)
    adv = attacks.pgd(f, jnp.asarray(x), jnp.asarray(y), key=keys, eps=cfg.eps, **kw)
    robust = clean & (np.asarray(jnp.argmax(f(adv), -1)) == y)
    assert rec["robust_accuracy"] == pytest.approx(100 * robust.mean())
    assert rec["examples"]["robust"] == robust.tolist()
    assert (tmp_path / "r.json").exists() and not (tmp_path / "r.json.partial.npz").exists()
    assert set(rec["beta"]) == {"mean", "median", "min", "max"}
    assert rec["environment"]["git_commit"] and rec["config"] == registry.to_dict(cfg)


def test_a_misclassified_clean_example_is_never_robust():
    """A saturated model at 0% clean accuracy: its random start can land on the right
    class, but it must still score 0% robust."""
    w = jax.random.normal(jax.random.key(2), (int(np.prod(SHAPE)), D))

    def f(x):
        return 1e4 * (x.reshape(x.shape[0], -1) - 0.5) @ w

    x, _ = _data(n=40)
    pred = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1))
    y = ((pred + 1) % D).astype(np.int32)  # every clean image misclassified
    cfg = registry.make("pgd", eps=0.5, step_size=0.1, steps=2)
    rec = evaluate.evaluate_attack(f, x, y, cfg, batch_size=16, progress=False)
    assert rec["clean_accuracy"] == 0.0 and rec["robust_accuracy"] == 0.0
    assert rec["attacked"] == 0 and not any(rec["examples"]["robust"])
    curve = evaluate.accuracy_curve(f, x, y, cfg, batch_size=16)
    assert np.all(curve == 0.0)
    ens = evaluate.evaluate_ensemble(f, x, y, [cfg], batch_size=16, progress=False)
    assert ens["robust_accuracy"] == 0.0 and ens["examples"]["distance"] == [0.0] * 40


def test_per_example_results_do_not_depend_on_the_batch_size():
    f = _model(scale=3.0)
    x, y = _data(n=64)
    for name, opts in (("pgd", dict(PGD, temperature="hns", restarts=2)), ("fgsm", {})):
        cfg = registry.make(name, **opts)
        big = evaluate.evaluate_attack(f, x, y, cfg, batch_size=64, progress=False)
        small = evaluate.evaluate_attack(f, x, y, cfg, batch_size=7, progress=False)
        assert big["examples"] == small["examples"]


def test_resume_skips_finished_batches(tmp_path, monkeypatch):
    f = _model()
    x, y = _data()
    cfg = registry.make("pgd", eps=0.1, step_size=0.03, steps=2)
    out = tmp_path / "r.json"
    full = evaluate.evaluate_attack(f, x, y, cfg, batch_size=5, progress=False)

    real = core.execute
    calls = []

    def dies_on_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(core, "execute", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_attack(f, x, y, cfg, batch_size=5, out=out, progress=False)
    assert (tmp_path / "r.json.partial.npz").exists() and not out.exists()

    calls.clear()
    resumed = evaluate.evaluate_attack(f, x, y, cfg, batch_size=5, out=out, progress=False)
    attacked = full["attacked"]
    assert len(calls) == -(-attacked // 5) - 2  # only the unfinished batches ran
    assert resumed["examples"] == full["examples"]


def test_a_changed_attack_does_not_reuse_partial_results(tmp_path, monkeypatch):
    f = _model()
    x, y = _data()
    out = tmp_path / "r.json"
    one = registry.make("pgd", eps=0.1, steps=1)
    two = registry.make("pgd", eps=0.1, steps=2)
    monkeypatch.setattr(core, "execute", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_attack(f, x, y, one, batch_size=10, out=out, progress=False)
    monkeypatch.undo()
    rec = evaluate.evaluate_attack(f, x, y, two, batch_size=10, out=out, progress=False)
    ref = evaluate.evaluate_attack(f, x, y, two, batch_size=10, progress=False)
    assert rec["examples"] == ref["examples"]


@dataclasses.dataclass(frozen=True)
class _LeavesBall(registry.AttackConfig):
    """A broken attack for the tests: it returns images outside its ε-ball. Registered
    for one test at a time (``leaves_ball``), so no other test sees it in the registry."""

    kind: ClassVar[str] = "test-leaves-ball"

    def run(self, data, logits_fn, x, y, keys):
        x_adv = jnp.clip(x + 0.5, 0.0, 1.0)
        return finish(logits_fn, x, y, x_adv, norm=self.geometry, queries=1)


@pytest.fixture
def leaves_ball(monkeypatch):
    monkeypatch.setattr(registry, "_ATTACKS", dict(registry._ATTACKS))
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    registry.register("test-leaves-ball")(_LeavesBall)
    return registry.make("test-leaves-ball", eps=0.1)


def test_an_attack_leaving_the_ball_is_caught(leaves_ball):
    f = _model()
    x, y = _data()
    with pytest.raises(RuntimeError, match="outside the L∞ ball"):
        evaluate.evaluate_attack(f, x, y, leaves_ball, progress=False)


def test_accuracy_curve_ends_at_the_attack_result():
    f = _model(scale=3.0)
    x, y = _data()
    cfg = registry.make("pgd", eps=0.2, step_size=0.05, steps=4, temperature="hns")
    curve = evaluate.accuracy_curve(f, x, y, cfg, batch_size=10)
    rec = evaluate.evaluate_attack(f, x, y, cfg, batch_size=7, progress=False)
    assert curve.shape == (5,)
    assert curve[-1] == pytest.approx(rec["robust_accuracy"])
    assert curve[0] <= rec["clean_accuracy"]


@pytest.mark.parametrize("random_init", [False, True])
def test_accuracy_curve_follows_the_attacks_own_random_starts(random_init):
    """The curve traces the run evaluate_attack scores (restart 0's keys), so their ends
    agree on a model where the random start changes the outcome."""
    k1, k2 = jax.random.split(jax.random.key(0))
    w1, w2 = jax.random.normal(k1, (35, 12)) * 0.7, jax.random.normal(k2, (12, 5)) * 0.6

    def f(x):
        return jax.nn.relu(x.reshape(x.shape[0], -1) @ w1) @ w2

    x = np.random.default_rng(0).random((64, 5, 7, 1), dtype=np.float32)
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1))
    cfg = registry.make("pgd", eps=0.08, steps=6, random_init=random_init)
    curve = evaluate.accuracy_curve(f, x, y, cfg, batch_size=16)
    rec = evaluate.evaluate_attack(f, x, y, cfg, batch_size=16, progress=False)
    assert curve[-1] == rec["robust_accuracy"]
    assert curve[-1] < curve[0]  # the attack breaks examples, so the comparison says something


def test_ensemble_is_the_per_example_minimum_of_its_members(tmp_path):
    f = _model(scale=3.0)
    x, y = _data(n=30)
    members = [
        registry.make("fgsm", eps=0.08),
        registry.make("pgd", eps=0.08, steps=2, loss="cw"),
        registry.make("pgd", eps=0.08, steps=4, temperature="hns"),
    ]
    alone = [
        np.asarray(
            evaluate.evaluate_attack(f, x, y, c, batch_size=8, progress=False)["examples"]["robust"]
        )
        for c in members
    ]
    out = tmp_path / "ens.json"
    ens = evaluate.evaluate_ensemble(f, x, y, members, batch_size=8, out=out, progress=False)
    robust = np.asarray(ens["examples"]["robust"])
    np.testing.assert_array_equal(robust, np.logical_and.reduce(alone))
    assert ens["robust_accuracy"] == pytest.approx(100 * robust.mean())
    # who broke what: the first member (in order) that breaks an example gets it
    for i, by in enumerate(ens["examples"]["broken_by"]):
        first = next((k for k in range(3) if not alone[k][i]), None)
        clean_ok = ens["examples"]["clean_correct"][i]
        assert by == (members[first].label if (first is not None and clean_ok) else None)
    after = [m["robust_accuracy_after"] for m in ens["attacks"]]
    assert after == sorted(after, reverse=True) and after[-1] == ens["robust_accuracy"]
    assert out.exists() and len(list((tmp_path / "ens.json.members").glob("*.json"))) == 3


def test_ensemble_resumes_attack_by_attack(tmp_path, monkeypatch):
    f = _model(scale=3.0)
    x, y = _data(n=20)
    members = [registry.make("fgsm", eps=0.08), registry.make("pgd", eps=0.08, steps=3)]
    out = tmp_path / "ens.json"
    first = evaluate.evaluate_ensemble(f, x, y, members, batch_size=8, out=out, progress=False)
    out.unlink()
    ran = []
    real = core.execute
    monkeypatch.setattr(
        core, "execute", lambda *a, **kw: (ran.append(a[0].label), real(*a, **kw))[1]
    )
    again = evaluate.evaluate_ensemble(f, x, y, members, batch_size=8, out=out, progress=False)
    assert ran == [] and again["examples"] == first["examples"]


def test_robust_accuracy_at_radii_from_distances():
    rec = {
        "examples": {
            "clean_correct": [True, True, True, False],
            "distance": [0.05, 0.2, None, 0.0],
        }
    }
    np.testing.assert_allclose(evaluate.robust_accuracy_at(rec, [0.0, 0.1, 0.3]), [75, 50, 25])


def test_diagnose_counts_saturated_examples():
    x, y = _data()
    y = np.asarray(jnp.argmax(_model()(jnp.asarray(x)), -1)).astype(np.int32)
    soft = evaluate.diagnose(_model(), x, y, batch_size=8, jacobian_examples=5)
    hard = evaluate.diagnose(_model(scale=1e4), x, y, batch_size=8, jacobian_examples=5)
    assert soft["zero_gradient_fraction"] < hard["zero_gradient_fraction"]
    assert hard["logit_gap_median"] > 88
    assert hard["psi_norm_mean"] < soft["psi_norm_mean"]
    assert soft["jsv_examples"] == 5 and np.isfinite(soft["jsv_mean"])


def _assert_same_record(got, want):
    """Per-example results, flags and the accuracies counted from them are equal; the β
    statistics are float32 numbers computed on batches of other shapes (each device
    holds 2 rows, not 16), where XLA may vectorise differently: each β can move by a few
    float32 ulps and their float32 mean sums n of them, so they agree to within
    ``4 n eps32`` relative (n = 20 examples: about 1e-5)."""
    for k in ("clean_accuracy", "robust_accuracy", "fallback_count", "examples"):
        assert got[k] == want[k], k
    assert got["beta"].keys() == want["beta"].keys()
    rtol = 4 * got["n"] * float(np.finfo(np.float32).eps)
    for k, v in want["beta"].items():
        assert got["beta"][k] == pytest.approx(v, rel=rtol), k


@pytest.mark.needs_devices(8)
def test_sharded_evaluation_equals_single_device():
    devices = jax.devices()[:8]
    f = _model(scale=3.0)
    x, y = _data(n=20)
    cfg = registry.make("pgd", temperature="hns", **PGD)
    one = evaluate.evaluate_attack(f, x, y, cfg, batch_size=16, progress=False)
    many = evaluate.evaluate_attack(f, x, y, cfg, batch_size=16, progress=False, devices=devices)
    _assert_same_record(many, one)
    # a batch size that does not divide over 8 devices is padded, never dropped
    odd = evaluate.evaluate_attack(f, x, y, cfg, batch_size=10, progress=False, devices=devices)
    _assert_same_record(odd, one)
    assert odd["n"] == len(x)


def test_njs_normalized_space_scales_beta_by_std():
    f = _model(scale=3.0)
    x, _ = _data()
    pix = registry.make_temperature("njs").build(f, AttackContext(calib_images=x))
    spec = registry.make_temperature("njs", njs_space="normalized")
    nrm = spec.build(f, AttackContext(calib_images=x, input_std=(0.25,)))
    assert float(nrm.beta1) == pytest.approx(float(pix.beta1) / 0.25, rel=1e-4)
    with pytest.raises(ValueError, match="input std"):
        spec.build(f, AttackContext(calib_images=x))
    with pytest.raises(ValueError, match="NJS Jacobian space"):
        registry.make_temperature("njs", njs_space="logit")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: registry.make("pgd", eps=-1.0), "eps"),
        (lambda: registry.make("pgd", steps=0), "steps"),
        (lambda: registry.make("pgd", norm="l3"), "unknown norm 'l3'; choose one of: linf, l2"),
        (lambda: registry.make("pgd", loss="mse"), "loss"),
        (lambda: registry.make("pgd", temperature="magic"), "temperature 'magic'; choose"),
        (lambda: registry.make("pgd", restarts=0), "restarts"),
        (lambda: registry.make("cw-l0"), "unknown attack 'cw-l0'; choose one of: pgd"),
        (lambda: registry.make("pgd", queries=10), "has no option 'queries'"),
        (lambda: registry.make("pgd", temperature="fixed", beta=-1.0), "beta"),
        (lambda: registry.preset("strongest"), "unknown preset 'strongest'"),
        (lambda: registry.make("transfer", source="nope"), "unknown attack 'nope'"),
    ],
)
def test_bad_input_gives_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_transfer_needs_a_surrogate_and_crafts_on_it():
    x, y = _data()
    f = _model(scale=1e4)  # saturated: white-box PGD cannot move
    g = _model(scale=1.0)  # its unsaturated twin
    cfg = registry.make("transfer", source="pgd", eps=0.3, steps=5)
    with pytest.raises(ValueError, match="surrogate"):
        evaluate.evaluate_attack(f, x, y, cfg, progress=False)
    white = evaluate.evaluate_attack(
        f, x, y, registry.make("pgd", eps=0.3, steps=5), progress=False
    )
    rec = evaluate.evaluate_attack(f, x, y, cfg, context=AttackContext(surrogate=g), progress=False)
    assert rec["attack"] == "Transfer from PGD L∞"
    assert rec["robust_accuracy"] < white["robust_accuracy"]


def test_loose_calibration_keywords_are_deprecated_and_still_work():
    f = _model()
    x, y = _data(n=8)
    cfg = registry.make("pgd", temperature="njs", **PGD)
    with pytest.warns(DeprecationWarning, match=r"calib_images are deprecated; pass context="):
        loose = evaluate.evaluate_attack(f, x, y, cfg, calib_images=x[:4], progress=False)
    ctx = AttackContext(calib_images=x[:4])
    new = evaluate.evaluate_attack(f, x, y, cfg, context=ctx, progress=False)
    assert loose["examples"] == new["examples"]


def test_results_table_keeps_radii_and_image_sets_apart(tmp_path):
    """One folder, one checkpoint: PGD at two radii gets two columns named by the radius,
    another n its own row, and two different results for one cell are refused, not one
    of them dropped."""
    from qadv import records

    f = _model(scale=3.0)
    x, y = _data(n=12)
    runs = {"a": (0.3, 12), "b": (0.001, 12), "c": (0.001, 5)}
    for name, (eps, n) in runs.items():
        cfg = registry.make("pgd", eps=eps, steps=2)
        rec = evaluate.evaluate_attack(
            f, x[:n], y[:n], cfg, progress=False, extra={"checkpoint": "m"}
        )
        records.atomic_write_json(tmp_path / f"{name}.json", rec)
    table = records.results_table(tmp_path)
    assert "PGD L∞ (eps=0.3, " in table and "PGD L∞ (eps=0.001, " in table  # and its step
    assert len([line for line in table.splitlines() if line.startswith("| m ")]) == 2
    clash = dict(records.read_json(tmp_path / "b.json"), adversarial_accuracy=-1.0)
    records.atomic_write_json(tmp_path / "d.json", clash)
    with pytest.raises(ValueError, match=r"b\.json and d\.json both hold PGD L∞"):
        records.results_table(tmp_path)
