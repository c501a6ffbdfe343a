"""Studies (qadv.apps.study) and BatchNorm recalibration (qadv.models.calibrate)."""

import dataclasses
import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import write_mnist_like

from qadv.apps import cli
from qadv.apps.study import Cell, EvalSpec, StudyConfig, load_study_config, measure, run_study
from qadv.apps.study.measure import _check_model
from qadv.models import batch_norm_paths, get_model, init_variables, recalibrate_batch_stats
from qadv.quant import get_policy
from qadv.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- recalibration


def _sign(w) -> np.ndarray:
    return np.where(np.asarray(w, np.float64) >= 0, 1.0, -1.0)


def _random_variables(model, shape, seed):
    """Random weights and wrong running statistics for ``model`` (no compiled init: an
    initialisation of a ResNet compiles for seconds)."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(
        lambda: init_variables(model, key=jax.random.key(0), input_shape=shape)
    )

    def fill(path, a):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            low = 0.5 if "var" in name else -1.0
            return jnp.asarray(rng.uniform(low, 3.0, a.shape), a.dtype)
        return jnp.asarray(rng.normal(0.0, 0.3, a.shape), a.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _bn(z, mean, var):
    return (z - mean) / np.sqrt(var + 1e-5)


def test_recalibrated_mlp_stats_equal_hand_computed_hard_network():
    """md_tanh_s trains soft weights; the stats must be those of the sign(w) network."""
    policy = get_policy("bnn_wq", wq_method="md_tanh_s")
    model = get_model("mlp", num_classes=3, policy=policy, widths=(6, 5), mean=(0.3,), std=(0.2,))
    v = _random_variables(model, (4, 4, 1), 0)
    x = np.random.default_rng(0).random((37, 4, 4, 1), dtype=np.float32)
    new = recalibrate_batch_stats(model, v, x, batch_size=8)  # 5 batches, last one padded

    p = v["params"]
    h = (x.reshape(37, -1).astype(np.float64) - 0.3) / 0.2
    z1 = h @ _sign(p["QDense_0"]["kernel"])  # no bias before BatchNorm
    a1 = np.maximum(_bn(z1, z1.mean(0), z1.var(0)), 0.0)
    z2 = a1 @ _sign(p["QDense_1"]["kernel"])
    got = new["batch_stats"]
    for name, z in (("BatchNorm_0", z1), ("BatchNorm_1", z2)):
        np.testing.assert_allclose(got[name]["mean"], z.mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[name]["var"], z.var(0), rtol=1e-4, atol=1e-4)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new["params"], p))
    # the scrambled statistics were far from these
    assert not np.allclose(v["batch_stats"]["BatchNorm_1"]["var"], z2.var(0), rtol=0.1)
    # a uint8 copy of the same images gives the same statistics
    x8 = (np.arange(37 * 16) % 256).astype(np.uint8).reshape(37, 4, 4, 1)
    a = recalibrate_batch_stats(model, v, x8, batch_size=37)["batch_stats"]
    b = recalibrate_batch_stats(model, v, x8.astype(np.float32) / 255, batch_size=5)["batch_stats"]
    jax.tree.map(lambda s, t: np.testing.assert_allclose(s, t, rtol=1e-5, atol=1e-5), a, b)


def test_recalibrated_cnn_stats_reduce_over_batch_and_space_and_keep_float_first():
    policy = get_policy("bnn_wq", wq_method="bc", float_first=True)
    model = get_model("cnn", num_classes=3, policy=policy, widths=(3, 2))
    v = _random_variables(model, (8, 8, 1), 2)
    x = np.random.default_rng(3).random((11, 8, 8, 1), dtype=np.float32)
    new = recalibrate_batch_stats(model, v, x, batch_size=4)["batch_stats"]

    def conv(h, k):
        return np.asarray(
            jax.lax.conv_general_dilated(
                jnp.asarray(h, jnp.float32),
                jnp.asarray(k, jnp.float32),
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST,
            ),
            np.float64,
        )

    p = v["params"]
    z1 = conv(x, p["QConv_0"]["kernel"])  # float first layer: latent weights as they are
    m1, v1 = z1.mean((0, 1, 2)), z1.var((0, 1, 2))
    a1 = np.maximum(_bn(z1, m1, v1), 0.0)
    a1 = a1.reshape(11, 4, 2, 4, 2, 3).max(axis=(2, 4))  # 2x2 max-pool
    z2 = conv(a1, _sign(p["QConv_1"]["kernel"]))
    for name, mean, var in (
        ("BatchNorm_0", m1, v1),
        ("BatchNorm_1", z2.mean((0, 1, 2)), z2.var((0, 1, 2))),
    ):
        np.testing.assert_allclose(new[name]["mean"], mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(new[name]["var"], var, rtol=1e-4, atol=1e-4)


def test_recalibration_is_a_fixed_point_of_the_evaluated_resnet():
    """Every BatchNorm (nested in blocks, shortcuts included) ends up holding the exact
    statistics of the input it receives in evaluation mode."""
    policy = get_policy("bnn_wq", wq_method="md_tanh_s")
    model = get_model("resnet18", num_classes=4, policy=policy, width=4, stage_sizes=(1, 1))
    v = _random_variables(model, (8, 8, 3), 4)
    x = np.random.default_rng(5).random((9, 8, 8, 3), dtype=np.float32)
    paths = batch_norm_paths(model, (8, 8, 3))
    assert any(len(p) > 1 for p in paths)  # nested modules are found
    new = recalibrate_batch_stats(model, v, x, batch_size=4)

    @jax.jit
    def bn_inputs(v, x):
        seen = {}

        def capture(next_fun, args, kwargs, context):
            if isinstance(context.module, nn.BatchNorm):
                seen[tuple(context.module.path)] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(capture):
            model.apply(v, x, train=False)
        return seen

    seen = bn_inputs(new, jnp.asarray(x))
    assert sorted(seen) == sorted(paths)
    for path, h in seen.items():
        h = np.asarray(h, np.float64)
        mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
        stats = new["batch_stats"]
        for k in path:
            stats = stats[k]
        np.testing.assert_allclose(stats["mean"], mean, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(stats["var"], var, rtol=2e-4, atol=2e-4)


def test_recalibration_errors_and_no_batch_norm():
    model = get_model("mlp", num_classes=3, policy=get_policy("bnn_wq"), widths=(4,))
    v = _random_variables(model, (2, 2, 1), 0)
    x = np.zeros((3, 2, 2, 1), np.float32)
    with pytest.raises(ValueError, match="invalid batch_size 0"):
        recalibrate_batch_stats(model, v, x, batch_size=0)
    with pytest.raises(ValueError, match=r"expected images \(N, H, W, C\)"):
        recalibrate_batch_stats(model, v, x[0])
    with pytest.raises(ValueError, match="no batch_stats for the BatchNorm layer BatchNorm_0"):
        recalibrate_batch_stats(model, {**v, "batch_stats": {"Other": {}}}, x)
    plain = get_model("mlp", num_classes=3, policy=get_policy("ref"), widths=(4,))
    plain = plain.clone(use_batch_norm=False)
    pv = _random_variables(plain, (2, 2, 1), 0)
    assert recalibrate_batch_stats(plain, pv, x)["params"] is pv["params"]


# ----------------------------------------------------------------------------- configs


def _tiny(**kw) -> TrainConfig:
    opts = dict(
        arch="mlp",
        arch_opts={"widths": (8,)},
        policy="bnn_wq",
        epochs=1,
        batch_size=16,
        eval_batch_size=16,
    )
    return TrainConfig(**{**opts, **kw})


def _spec(**kw) -> EvalSpec:
    opts = dict(
        n=8,
        eps=("8/255",),
        attacks=("pgd",),
        attack_opts={"pgd": {"steps": 2}},
        ensemble="gradient",
        ensemble_opts={"steps": 2},
        batch_size=8,
    )
    return EvalSpec(**{**opts, **kw})


def _study(*extra: Cell, **kw) -> StudyConfig:
    """Two cells that share every compiled program: one and two epochs of one MLP."""
    cells = (
        Cell("e1", _tiny(), group="MLP", axes={"width": 8}),
        Cell("e2", _tiny(epochs=2), group="MLP", axes={"width": 8}, recalibrate=True),
        *extra,
    )
    return StudyConfig(cells=cells, eval=_spec(), name="tiny study", **kw)


def _without_times(rows, header):
    skip = {header.index("train s"), header.index("eval s")}
    return [[v for i, v in enumerate(r) if i not in skip] for r in rows]


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: StudyConfig.from_dict({"cells": [], "grid": 1}), "unknown StudyConfig key 'grid'"),
        (
            lambda: Cell.from_dict({"name": "x", "train": {"arch": "mlp9"}}),
            "cell 'x': unknown arch 'mlp9'; choose one of: mlp,",
        ),
        (
            lambda: Cell.from_dict({"name": "x", "train": {"epoch": 3}}),
            "cell 'x': unknown TrainConfig field 'epoch'",
        ),
        (
            lambda: Cell.from_dict({"name": "x", "train": {}, "depth": 3}),
            "unknown Cell key 'depth'",
        ),
        (lambda: Cell("a b", _tiny()), "invalid cell name 'a b'"),
        (lambda: Cell("a", _tiny(), axes={"width": "wide"}), "axis 'width' has value 'wide'"),
        (lambda: EvalSpec(attacks=("pgd", "bim")), "unknown attack 'bim'"),
        (lambda: EvalSpec(attacks=("pgd++warm",)), "temperature"),
        (lambda: EvalSpec(attack_opts={"fab": {"steps": 3}}), "attack_opts names 'fab'"),
        (lambda: EvalSpec(attack_opts={"pgd": {"colour": 1}}), "attack 'pgd' has no option"),
        (lambda: EvalSpec(ensemble_opts={"colour": 1}), "unknown option 'colour' for the attacks"),
        (lambda: EvalSpec(ensemble="everything"), "everything"),
        (lambda: EvalSpec(eps=("8/0",)), "bad eps '8/0'"),
        (lambda: EvalSpec(n=0), "invalid n 0"),
        (lambda: EvalSpec.from_dict({"radius": 1}), "unknown EvalSpec key 'radius'"),
        (
            lambda: StudyConfig(cells=(Cell("a", _tiny()), Cell("a", _tiny()))),
            "cell name 'a' is used twice",
        ),
        (lambda: _study().select(["e1", "nope"]), "unknown cell 'nope'; choose from: e1, e2"),
    ],
)
def test_bad_configs_are_one_line_errors(build, match):
    with pytest.raises(ValueError, match=match) as info:
        build()
    assert "\n" not in str(info.value)


def test_round_trip_and_shared_runs():
    s = _study(description="d")
    assert StudyConfig.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.cells[1].axes == {"width": 8.0, "epochs": 2.0}
    same = Cell("other", _tiny(), recalibrate=True)
    assert same.run_name == s.cells[0].run_name != s.cells[1].run_name


def test_bad_architecture_options_fail_before_training(tmp_path):
    cfg = StudyConfig(
        cells=(Cell("r", TrainConfig(arch="resnet20", arch_opts={"depth": 9})),), eval=_spec()
    )
    with pytest.raises(ValueError, match="cell 'r': invalid depth 9"):
        run_study(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "runs").exists()


# ----------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmnist")
    write_mnist_like(d, n_train=64, n_test=16, learnable=True)
    return d


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("study")
    result = run_study(_study(), out, data_dir=data_dir, progress=False)
    return out, result


def test_study_writes_records_table_and_plots(finished):
    out, result = finished
    assert result["complete"] == ["e1", "e2"] and result["missing"] == []
    md = (out / "study.md").read_text()
    assert len([line for line in md.splitlines() if line.startswith(("| e1 ", "| e2 "))]) == 2
    header = result["header"]
    assert header[:4] == ["cell", "epochs", "train acc", "clean"]
    assert header[-4:] == ["pgd @8/255", "gradient @8/255", "worst @8/255", "PGD−ens @8/255"]
    runs = set()
    for k, name in enumerate(("e1", "e2")):
        rec = json.loads((out / "cells" / f"{name}.json").read_text())
        runs.add(rec["run_dir"])
        assert rec["complete"] and rec["training"]["epochs"] == k + 1
        assert 0 <= rec["training"]["train_accuracy"] <= 1
        assert rec["clean"]["n"] == 16
        diag = rec["diagnostics"]
        assert diag["n"] == 8 and 0 <= diag["zero_gradient_fraction"] <= 1
        for key in ("logit_gap_quantiles", "logit_gap_frac_over_88", "psi_norm_mean", "jsv_mean"):
            assert key in diag
        row = result["rows"][k]
        assert row[header.index("zero grad %")] == pytest.approx(
            100 * diag["zero_gradient_fraction"]
        )
        per = rec["attacks"]["8/255"]
        assert set(per) == {"pgd", "gradient", "worst"}
        # the worst case is the per-example AND of every result file
        flags = [
            np.asarray(json.loads((out / per[a]["file"]).read_text())["examples"]["robust"])
            for a in ("pgd", "gradient")
        ]
        worst = 100 * np.mean(np.logical_and.reduce(flags))
        assert per["worst"]["robust_accuracy"] == pytest.approx(worst)
        assert row[header.index("worst @8/255")] == pytest.approx(worst)
        assert worst <= min(per[a]["robust_accuracy"] for a in ("pgd", "gradient"))
        gap = per["pgd"]["robust_accuracy"] - per["gradient"]["robust_accuracy"]
        assert row[header.index("PGD−ens @8/255")] == pytest.approx(gap)
        assert [m["attack"] for m in per["gradient"]["members"]] == [
            "PGD L∞",
            "PGD++ (NJS) L∞",
            "PGD++ (HNS) L∞",
        ]
    assert len(runs) == 2
    e2 = json.loads((out / "cells" / "e2.json").read_text())
    assert e2["recalibration"]["examples"] == 64
    assert "Recalibrated cells:" in md and "`e2`" in md
    assert json.loads((out / "cells" / "e1.json").read_text())["recalibration"] is None
    assert sorted(result["plots"]) == ["pgd_gap_vs_epochs.png", "zero_gradient_vs_epochs.png"]
    assert all((out / "plots" / p).stat().st_size > 0 for p in result["plots"])


def _count_attacks(monkeypatch) -> list[str]:
    """The labels of the attacks the study runs from now on, in order."""
    calls = []
    real = measure.evaluate_attack

    def counting(logits_fn, images, labels, config, **kw):
        calls.append(config.label)
        return real(logits_fn, images, labels, config, **kw)

    monkeypatch.setattr(measure, "evaluate_attack", counting)
    return calls


def test_finished_study_resumes_without_recomputing(finished, data_dir, monkeypatch):
    out, result = finished
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "cells").glob("*.json")}

    def forbidden(*a, **k):
        raise AssertionError("recomputed")

    for name in ("train", "evaluate_attack", "evaluate_ensemble", "diagnose"):
        monkeypatch.setattr(measure, name, forbidden)
    again = run_study(_study(), out, data_dir=data_dir, progress=False)
    assert again["rows"] == result["rows"]
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "cells").glob("*.json")}
    assert after == before


def test_killed_study_resumes_attack_by_attack(finished, data_dir, tmp_path, monkeypatch):
    src, result = finished
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    # as if killed after the diagnostics: PGD and the ensemble are missing
    rec_path = out / "cells" / "e1.json"
    rec = json.loads(rec_path.read_text())
    per = rec["attacks"]["8/255"]
    for name in ("pgd", "gradient"):
        (out / per[name]["file"]).unlink()
        del per[name]
    del per["worst"]
    rec["complete"] = False
    rec_path.write_text(json.dumps(rec))
    e2_before = (out / "cells" / "e2.json").stat().st_mtime_ns

    calls = _count_attacks(monkeypatch)
    monkeypatch.setattr(measure, "train", lambda *a, **k: pytest.fail("retrained"))
    monkeypatch.setattr(measure, "diagnose", lambda *a, **k: pytest.fail("re-diagnosed"))
    again = run_study(_study(), out, data_dir=data_dir, progress=False)
    assert calls == ["PGD L∞"]  # the ensemble's members came back from their own files
    header = result["header"]
    assert _without_times(again["rows"], header) == _without_times(result["rows"], header)
    assert json.loads(rec_path.read_text())["complete"]
    assert (out / "cells" / "e2.json").stat().st_mtime_ns == e2_before


def test_only_runs_the_named_cells(finished, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    monkeypatch.setattr(measure, "train", lambda *a, **k: pytest.fail("trained"))
    cfg = _study(Cell("later", _tiny(epochs=3)))
    res = run_study(cfg, out, only=["e2"], data_dir=data_dir, progress=False)
    assert res["complete"] == ["e1", "e2"] and res["missing"] == ["later"]
    text = (out / "study.md").read_text()
    assert "| later (incomplete) |" in text and "Not finished: later." in text


def _transfer_study(surrogate: str) -> StudyConfig:
    spec = _spec(
        attacks=("pgd", "transfer"),
        attack_opts={"pgd": {"steps": 2}, "transfer": {"source": "pgd", "steps": 2}},
        ensemble=None,
        surrogate=surrogate,
    )
    return dataclasses.replace(_study(), eval=spec)


def test_transfer_attacks_run_on_the_surrogate_cell(finished, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)  # the trained runs are reused
    monkeypatch.setattr(measure, "train", lambda *a, **k: pytest.fail("retrained"))
    res = run_study(_transfer_study("e1"), out, data_dir=data_dir, progress=False)
    assert res["complete"] == ["e1", "e2"]
    recs = {c: json.loads((out / "cells" / f"{c}.json").read_text()) for c in ("e1", "e2")}
    for rec in recs.values():
        per = rec["attacks"]["8/255"]
        result = json.loads((out / per["transfer"]["file"]).read_text())
        assert result["attack"] == "Transfer from PGD L∞"
        assert result["surrogate_fingerprint"] == recs["e1"]["model_fingerprint"]
        assert "surrogate_fingerprint" not in json.loads((out / per["pgd"]["file"]).read_text())
    # on e1 the surrogate is the target: the transfer is PGD itself, example by example
    per = recs["e1"]["attacks"]["8/255"]
    flags = {
        a: json.loads((out / per[a]["file"]).read_text())["examples"]["robust"]
        for a in ("pgd", "transfer")
    }
    assert flags["transfer"] == flags["pgd"]

    # another surrogate: only the transfer attacks run again
    calls = _count_attacks(monkeypatch)
    run_study(_transfer_study("e2"), out, data_dir=data_dir, progress=False)
    assert calls == ["Transfer from PGD L∞"] * 2
    e1 = json.loads((out / "cells" / "e1.json").read_text())["attacks"]["8/255"]
    result = json.loads((out / e1["transfer"]["file"]).read_text())
    assert result["surrogate_fingerprint"] == recs["e2"]["model_fingerprint"]
    calls.clear()
    run_study(_transfer_study("e2"), out, data_dir=data_dir, progress=False)
    assert calls == []


def test_surrogate_errors_and_records_without_one():
    with pytest.raises(ValueError, match="attack 'transfer' needs a surrogate network"):
        _spec(attacks=("transfer",), attack_opts={}, ensemble=None)
    with pytest.raises(ValueError, match="surrogate 'nope' is not a cell of the study"):
        dataclasses.replace(_study(), eval=_spec(surrogate="nope"))
    assert "surrogate" not in _spec().to_dict()  # earlier records keep their keys
    assert _spec(surrogate="e1").to_dict()["surrogate"] == "e1"


# ----------------------------------------------------------------------------- config files, CLI


def test_masking_study_config_file():
    path = REPO / "experiments" / "masking_study.py"
    cpu = load_study_config(path)
    gpu = load_study_config(path, {"size": "gpu"})
    assert 8 <= len(cpu.cells) <= 12
    assert "qadv study --config experiments/masking_study.py" in path.read_text()
    arches = {c.train.arch for c in gpu.cells}
    assert "resnet18" in arches and "resnet18" not in {c.train.arch for c in cpu.cells}
    for s in (cpu, gpu):
        for c in s.cells:
            _check_model(c)  # every network builds
        assert any(c.recalibrate and c.train.wq_method == "md_tanh_s" for c in s.cells)
    with pytest.raises(ValueError, match="size"):
        load_study_config(path, {"size": "huge"})
    with pytest.raises(ValueError, match="takes no option 'colour'"):
        load_study_config(path, {"colour": "red"})


def test_cli_study(tmp_path, data_dir, capsys):
    cfg = tmp_path / "tiny.py"
    cfg.write_text(
        "from qadv.apps.study import StudyConfig\n"
        "def config(width='8'):\n"
        "    return {'name': 't', 'cells': [{'name': 'c', 'train': {'arch': 'mlp',\n"
        "        'arch_opts': {'widths': [int(width)]}, 'policy': 'bnn_wq', 'epochs': 1,\n"
        "        'batch_size': 16, 'eval_batch_size': 16}}],\n"
        "        'eval': {'n': 4, 'eps': ['8/255'], 'attacks': ['pgd'],\n"
        "                 'attack_opts': {'pgd': {'steps': 1}}, 'ensemble': None}}\n"
    )
    base = ["study", "--config", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli.main([*base, "--data-dir", str(data_dir), "--set", "width=4"]) == 0
    assert "t: 1/1 cells done" in capsys.readouterr().out
    assert cli.main([*base, "--set", "colour=red"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qadv study: error:") and "colour" in err and "\n" not in err
    assert cli.main([*base, "--only", "c,zz"]) == 2
    assert "unknown cell 'zz'" in capsys.readouterr().err
    assert cli.main(["study", "--config", str(tmp_path / "none.py"), "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "study config file" in err and "not found" in err
