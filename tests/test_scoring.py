"""No number that overstates robustness: records belong to their model, distances are
measured by the evaluation and read with the ball's tolerance, radii in the wrong units
and unwritable outputs are refused before any work."""

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv import evaluate, records
from qadv.apps import cli
from qadv.attacks import AttackContext, registry
from qadv.attacks.protocol import finish, finish_min_norm
from qadv.evaluate import core

D, SHAPE = 4, (6, 6, 1)
EPS = 0.1


def _weights():
    return jax.random.normal(jax.random.key(1), (int(np.prod(SHAPE)), D))


def _model(scale=1.0):
    """``scale`` changes the logits, not one prediction: scale 1e4 saturates the softmax
    (zero gradients), so PGD breaks fewer examples although every clean prediction agrees."""
    w = _weights()

    def logits_fn(x):
        return scale * (jnp.tanh(x.reshape(x.shape[0], -1) - 0.5) @ w)

    return logits_fn


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, *SHAPE)).astype(np.float32)
    y = np.asarray(jnp.argmax(_model()(jnp.asarray(x)), -1)).astype(np.int32)
    return x, y


PGD = dict(eps=EPS, step_size=0.03, steps=5)


def _robust(rec):
    return np.asarray(rec["examples"]["robust"], bool)


# ------------------------------------------------------------------ keyed by the model


def test_model_fingerprint_tells_models_apart_and_is_stable():
    x, _ = _data()
    f, g = _model(), _model(1e4)
    assert core.model_fingerprint(f, x) == core.model_fingerprint(f, x)
    assert core.model_fingerprint(f, x) != core.model_fingerprint(g, x)
    # the same weights bound in a Partial: the weights count too
    w = _weights()
    p1 = jax.tree_util.Partial(lambda w, x: jnp.tanh(x.reshape(x.shape[0], -1) - 0.5) @ w, w)
    p2 = jax.tree_util.Partial(p1.func, w.at[0, 0].add(1e-3))
    assert core.model_fingerprint(p1, x) != core.model_fingerprint(p2, x)


def test_cached_record_of_another_model_is_not_reused(tmp_path):
    f, g = _model(), _model(1e4)
    x, y = _data()
    cfg = registry.make("pgd", **PGD)
    fresh_g = evaluate.evaluate_attack(g, x, y, cfg, batch_size=8, progress=False)
    rec_f = core.cached_attack(tmp_path / "r.json", f, x, y, cfg, batch_size=8, progress=False)
    # same clean predictions, different robustness: reusing f's record for g would lie
    assert rec_f["clean_accuracy"] == fresh_g["clean_accuracy"]
    assert (_robust(rec_f) != _robust(fresh_g)).any()
    rec_g = core.cached_attack(tmp_path / "r.json", g, x, y, cfg, batch_size=8, progress=False)
    assert rec_g["examples"]["robust"] == fresh_g["examples"]["robust"]
    assert rec_g["model_fingerprint"] != rec_f["model_fingerprint"]
    # and the same model is reused, not recomputed
    again = core.cached_attack(
        tmp_path / "r.json", g, x, y, cfg, batch_size=8, progress=False, extra={"probe": 1}
    )
    assert "probe" not in again


def test_ensemble_member_files_of_another_model_are_not_reused(tmp_path):
    f, g = _model(), _model(1e4)
    x, y = _data()
    configs = [registry.make("pgd", **PGD), registry.make("fgsm", eps=EPS)]
    fresh = evaluate.evaluate_ensemble(g, x, y, configs, batch_size=8, progress=False)
    evaluate.evaluate_ensemble(f, x, y, configs, batch_size=8, progress=False, out=tmp_path / "e")
    rec = evaluate.evaluate_ensemble(
        g, x, y, configs, batch_size=8, progress=False, out=tmp_path / "e"
    )
    assert rec["examples"]["robust"] == fresh["examples"]["robust"]


def _killed_after_two_batches(monkeypatch, run, out) -> None:
    """``run()`` interrupted after its second attacked batch, leaving ``<out>.partial.npz``."""
    real, calls = core.execute, []

    def dies_after_two_batches(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "execute", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        run()
    assert Path(str(out) + ".partial.npz").exists()
    monkeypatch.setattr(core, "execute", real)


def _linear(seed):
    w = jax.random.normal(jax.random.key(seed), (int(np.prod(SHAPE)), D)) * 3
    return lambda x: x.reshape(x.shape[0], -1) @ w


def test_records_of_another_surrogate_or_calibration_are_not_reused(tmp_path):
    """What prepare makes of the context (a transfer attack's surrogate, NJS's β from its
    calibration images) keys a record as the model does."""
    f, unrelated = _linear(0), _linear(7)
    x, _ = _data()
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)).astype(np.int32)
    cfg = registry.make("transfer", source="pgd", eps=EPS, steps=5)
    good, bad = AttackContext(surrogate=f), AttackContext(surrogate=unrelated)
    fresh = {
        name: evaluate.evaluate_ensemble(f, x, y, [cfg], context=c, progress=False)
        for name, c in (("good", good), ("bad", bad))
    }
    assert fresh["good"]["robust_accuracy"] < fresh["bad"]["robust_accuracy"]
    out = tmp_path / "ens.json"
    first = evaluate.evaluate_ensemble(f, x, y, [cfg], context=good, out=out, progress=False)
    second = evaluate.evaluate_ensemble(f, x, y, [cfg], context=bad, out=out, progress=False)
    assert first["examples"] == fresh["good"]["examples"]
    assert second["examples"] == fresh["bad"]["examples"]
    # the same context again is read back, not recomputed
    path = tmp_path / "t.json"
    rec = core.cached_attack(path, f, x, y, cfg, context=bad, progress=False)
    again = core.cached_attack(path, f, x, y, cfg, context=bad, progress=False, extra={"p": 1})
    assert "p" not in again and again["context_fingerprint"] == rec["context_fingerprint"]
    # NJS: other calibration images give another β, and another record
    g, (x, y) = _model(), _data()
    njs = registry.make("pgd", temperature="njs", **PGD)
    calib = [AttackContext(calib_images=x[:8]), AttackContext(calib_images=x[8:] * 0.5)]
    recs = [core.cached_attack(path, g, x, y, njs, context=c, progress=False) for c in calib]
    alone = evaluate.evaluate_attack(g, x, y, njs, context=calib[1], progress=False)
    assert recs[0]["beta"] != recs[1]["beta"]
    assert recs[1]["beta"] == alone["beta"]


def test_resume_with_another_surrogate_starts_afresh(tmp_path, monkeypatch):
    f, unrelated = _linear(0), _linear(7)
    x, _ = _data()
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)).astype(np.int32)
    cfg = registry.make("transfer", source="pgd", eps=EPS, steps=5)
    good, bad = AttackContext(surrogate=f), AttackContext(surrogate=unrelated)
    fresh = evaluate.evaluate_attack(f, x, y, cfg, context=bad, batch_size=8, progress=False)
    out = tmp_path / "r.json"
    _killed_after_two_batches(
        monkeypatch,
        lambda: evaluate.evaluate_attack(
            f, x, y, cfg, context=good, batch_size=8, out=out, progress=False
        ),
        out,
    )
    rec = evaluate.evaluate_attack(f, x, y, cfg, context=bad, batch_size=8, out=out, progress=False)
    assert rec["examples"]["robust"] == fresh["examples"]["robust"]


def test_uint8_images_are_read_as_pixels_everywhere():
    """A uint8 array means pixels 0..255 (as the datasets store them), in the evaluation
    as in clean_predictions."""
    f = _model()
    x, _ = _data()
    x8 = np.round(x * 255).astype(np.uint8)
    y = evaluate.clean_predictions(f, x8)
    cfg = registry.make("pgd", **PGD)
    rec8 = evaluate.evaluate_attack(f, x8, y, cfg, batch_size=8, progress=False)
    rec = evaluate.evaluate_attack(f, x8 / np.float32(255), y, cfg, batch_size=8, progress=False)
    assert rec8["clean_accuracy"] == 100.0
    assert rec8["examples"] == rec["examples"]
    ens = evaluate.evaluate_ensemble(f, x8, y, [cfg], batch_size=8, progress=False)
    assert ens["examples"]["robust"] == rec["examples"]["robust"]
    from qadv.evaluate.bounds import lipschitz_bounds

    k = jax.random.key(0)
    b8, bf = (lipschitz_bounds(f, a, y, key=k, radius=0.1, n_samples=4) for a in (x8, x8 / 255))
    np.testing.assert_allclose(b8["slack"], bf["slack"], rtol=1e-6)


def test_resume_on_another_model_starts_afresh(tmp_path, monkeypatch):
    f, g = _model(), _model(1e4)
    x, y = _data()
    cfg = registry.make("pgd", **PGD)
    fresh_g = evaluate.evaluate_attack(g, x, y, cfg, batch_size=8, progress=False)
    out = tmp_path / "r"
    _killed_after_two_batches(
        monkeypatch,
        lambda: evaluate.evaluate_attack(f, x, y, cfg, batch_size=8, progress=False, out=out),
        out,
    )
    rec = evaluate.evaluate_attack(g, x, y, cfg, batch_size=8, progress=False, out=out)
    assert rec["examples"]["robust"] == fresh_g["examples"]["robust"]


# ------------------------------------------------- distances: measured, read with tolerance


def _every_attack():
    small = {
        "pgd": dict(steps=5, step_size=0.03),
        "fgsm": {},
        "apgd": dict(steps=10),
        "apgd-ce": dict(steps=10),
        "apgd-dlr": dict(steps=10),
        "apgd-t": dict(steps=10, n_targets=2),
        "fab": dict(steps=10),
        "fab-t": dict(steps=10, n_targets=2),
        "deepfool": dict(steps=10),
        "square": dict(queries=60),
        "transfer": dict(steps=5, step_size=0.03),
    }
    # qadv's own attacks (other test modules register throwaway ones)
    names = [
        n for n in registry.attack_names() if type(registry.make(n)).__module__.startswith("qadv.")
    ]
    assert set(names) <= set(small), f"add the new attack to this test: {set(names) - set(small)}"
    return [(n, small[n]) for n in names]


@pytest.mark.parametrize("norm", ["linf", pytest.param("l2", marks=pytest.mark.slow)])
def test_robust_accuracy_at_eps_is_the_records_own_for_every_attack(norm):
    f = _model(3.0)
    x, y = _data()
    eps = EPS if norm == "linf" else 0.6
    context = AttackContext(surrogate=_model(2.0))
    for name, opts in _every_attack():
        if name in ("apgd-dlr", "apgd-t", "fab-t") and D < 3:
            continue
        cfg = registry.make(name, norm=norm, eps=eps, **opts)
        rec = evaluate.evaluate_attack(f, x, y, cfg, batch_size=8, progress=False, context=context)
        at_eps, kinds = evaluate.robust_accuracy_at(rec, [eps], with_kind=True)
        assert at_eps[0] == pytest.approx(rec["robust_accuracy"]), name
        assert kinds == ["measured"], name
        # every verified break lies within eps (with the ball's tolerance)
        dist = np.array([np.inf if d is None else d for d in rec["examples"]["distance"]])
        broken = np.asarray(rec["examples"]["clean_correct"]) & ~_robust(rec)
        assert cfg.geometry.within(dist[broken], eps).all(), name


def test_linf_distances_on_the_sphere_count_as_broken_at_eps():
    """A float32 L∞ step of eps lands a hair above eps in float64: still broken at eps."""
    rec = {
        "config": registry.to_dict(registry.make("pgd", eps=8 / 255)),
        "examples": {
            "clean_correct": [True, True],
            "distance": [float(np.float32(8 / 255)) * (1 + 1e-7), None],
        },
    }
    np.testing.assert_allclose(evaluate.robust_accuracy_at(rec, [8 / 255]), [50.0])


def test_bounded_records_refuse_larger_radii_and_mark_smaller_ones():
    f = _model(3.0)
    x, y = _data()
    rec = evaluate.evaluate_attack(
        f, x, y, registry.make("pgd", **PGD), batch_size=8, progress=False
    )
    with pytest.raises(ValueError, match="above eps"):
        evaluate.robust_accuracy_at(rec, [2 * EPS])
    values, kinds = evaluate.robust_accuracy_at(rec, [EPS / 2, EPS], with_kind=True)
    assert kinds == ["upper bound", "measured"]
    assert values[0] >= values[1]
    # a minimum-norm attack answers beyond its eps, from distances it verified
    fab = evaluate.evaluate_attack(
        f, x, y, registry.make("fab", eps=EPS, steps=20), batch_size=8, progress=False
    )
    beyond, kinds = evaluate.robust_accuracy_at(fab, [EPS, 4 * EPS], with_kind=True)
    assert kinds == ["measured", "measured"] and beyond[1] <= beyond[0]


@dataclasses.dataclass(frozen=True)
class _LiarConfig(registry.AttackConfig):
    """Returns the FGSM point but claims a distance of 0 for it."""

    kind: ClassVar[str] = "liar-test"

    def run(self, data, logits_fn, x, y, keys):
        g = jax.grad(lambda z: jnp.sum(jax.nn.log_softmax(logits_fn(z))[:, 0]))(x)
        x_adv = jnp.clip(x - self.eps * jnp.sign(g), 0.0, 1.0)
        res = finish(logits_fn, x, y, x_adv, norm=self.geometry, queries=1)
        return res._replace(distance=jnp.zeros_like(res.distance))


@dataclasses.dataclass(frozen=True)
class _FakeMinNormConfig(registry.AttackConfig):
    """Claims a point at distance 2 eps for every example, which is the clean image."""

    kind: ClassVar[str] = "fake-min-norm-test"
    minimum_norm: ClassVar[bool] = True

    def run(self, data, logits_fn, x, y, keys):
        claimed = jnp.full(y.shape, 2 * self.eps, jnp.float32)
        return finish_min_norm(
            logits_fn, x, y, x, claimed, norm=self.geometry, eps=self.eps, queries=1
        )


def test_distances_are_measured_not_taken_from_the_attack():
    f = _model(3.0)
    x, y = _data()
    rec = evaluate.evaluate_attack(f, x, y, _LiarConfig(eps=EPS), batch_size=8, progress=False)
    dist = np.array([np.inf if d is None else d for d in rec["examples"]["distance"]])
    broken = np.asarray(rec["examples"]["clean_correct"]) & ~_robust(rec)
    assert broken.any()
    assert (dist[broken] > EPS / 2).all()  # FGSM moves every pixel by eps, not 0
    fake = evaluate.evaluate_attack(
        f, x, y, _FakeMinNormConfig(eps=EPS), batch_size=8, progress=False
    )
    assert all(
        d is None
        for d, c in zip(
            fake["examples"]["distance"], fake["examples"]["clean_correct"], strict=True
        )
        if c
    )
    assert fake["robust_accuracy"] == fake["clean_accuracy"]


# ------------------------------------------------------------------- input at the door


def test_eps_in_pixel_units_is_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"did you mean 2/255"):
        registry.make("pgd", eps=2)
    with pytest.raises(ValueError, match=r"did you mean 2/255"):
        registry.preset("standard", eps=2.0)
    f = _model()
    x, y = _data(n=4)
    big_l2 = registry.make("pgd", norm="l2", eps=7.0, steps=1)  # sqrt(36) = 6 < 7
    with pytest.raises(ValueError, match="L2 diameter"):
        evaluate.evaluate_attack(f, x, y, big_l2, progress=False)


def test_unwritable_output_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    f = _model()
    x, y = _data(n=4)

    def no_attack(*a, **k):
        raise AssertionError("the attack ran before the output path was checked")

    monkeypatch.setattr(core, "execute", no_attack)
    with pytest.raises(ValueError, match="not a folder"):
        evaluate.evaluate_attack(
            f, x, y, registry.make("pgd", **PGD), progress=False, out=blocker / "r.json"
        )
    code = cli.main(
        ["attack", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(blocker / "r.json")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a folder" in err[0]
    code = cli.main(["attack", "--checkpoint", str(tmp_path), "--eps", "2", "--out", "r.json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "did you mean 2/255" in err[0]


def test_records_name_precision_device_and_libraries():
    f = _model()
    x, y = _data(n=4)
    rec = evaluate.evaluate_attack(f, x, y, registry.make("fgsm", eps=EPS), progress=False)
    env = rec["environment"]
    for k in ("matmul_precision", "devices", "cpu_features", "libraries", "xla_flags"):
        assert k in env, k
    assert env["matmul_precision"] == "float32"
    assert env["libraries"]["jax"] == jax.__version__
    json.dumps(rec)  # JSON-able as written
    assert records.environment()["matmul_precision"] == "float32"
