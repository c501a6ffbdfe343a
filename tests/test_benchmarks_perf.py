"""Smoke tests of the performance benchmarks in ``benchmarks/perf/`` at tiny sizes.

Each runs a script's ``main`` with tiny options (random-init models, a few images,
1-2 attack steps, one timed repeat) and checks the JSON record it writes. They check
that the scripts work and record what they should, not any number.
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import sys
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[1] / "benchmarks" / "perf"
if str(PERF) not in sys.path:
    sys.path.insert(0, str(PERF))

PROVENANCE = {"benchmark", "command", "git", "machine", "wall_time_s", "load_average_1min"}
MACHINE = {"cpu_model", "cpu_count", "devices", "device_count", "jax_version", "backend"}
TIMING = {"median_s", "min_s", "times_s", "first_call_s", "compiles_second_call"}


def _run(part: str, tmp_path: Path, *args: str) -> dict:
    module = importlib.import_module(part)
    out = tmp_path / f"{part}.json"
    returned = module.main([*args, "--out", str(out)])
    record = json.loads(out.read_text())
    assert PROVENANCE <= set(record), sorted(PROVENANCE - set(record))
    assert MACHINE <= set(record["machine"])
    assert set(record["git"]) == {"commit", "dirty"}
    assert set(record["load_average_1min"]) == {"before", "after"}
    assert record["benchmark"] == part
    assert record["command"].startswith(f"python benchmarks/perf/{part}.py ")
    assert "hostname" not in json.dumps(record["machine"]).lower()
    assert json.loads(json.dumps(returned, default=str)).keys() == record.keys()
    return record


def test_common_doctests():
    common = importlib.import_module("common")
    result = doctest.testmod(common, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0


def test_foolbox_missing_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "foolbox", None)  # import foolbox -> ImportError
    rec = _run("foolbox_pgd", tmp_path, "--batch", "4")
    assert "pip install 'qadv[foolbox]'" in rec["skipped"]
    assert "pip install 'qadv[foolbox]'" in capsys.readouterr().out


@pytest.mark.slow  # the default run smoke-tests the benchmark scripts with memory.py
@pytest.mark.needs_devices(2)
def test_scaling_tiny(tmp_path):
    rec = _run(
        "scaling", tmp_path, "--devices", "1", "2", "--n", "8", "--batch", "4", "--steps", "1",
        "--repeats", "1",
    )  # fmt: skip
    assert [r["devices"] for r in rec["rows"]] == [1, 2]
    assert rec["all_identical"] is True
    assert TIMING <= set(rec["rows"][0])
    assert all(r["compiles_later_calls"] == 0 for r in rec["rows"])


def test_memory_stream_tiny(tmp_path):
    rec = _run(
        "memory", tmp_path, "--parts", "stream", "--n", "12", "--batch", "4", "--every", "4",
        "--steps", "1",
    )  # fmt: skip
    s = rec["stream"]
    assert [r["attacked_images"] for r in s["rss_at"]] == [4, 8, 12]
    assert s["rss_peak_bytes"] >= s["rss_start_bytes"] > 0
    assert "device_memory_after" in s


@pytest.mark.slow
def test_memory_hns_tiny(tmp_path):
    rec = _run(
        "memory", tmp_path, "--parts", "hns", "--classes", "10", "--hns-batch", "2",
        "--top-k", "3",
    )  # fmt: skip
    rows = rec["hns"]["rows"]
    assert [r["top_k"] for r in rows] == [None, 3]
    full = rows[0]
    assert full["memory_analysis"] is None or full["memory_analysis"]["temp_size_in_bytes"] >= 0
    assert full["rss_peak_increase_bytes"] >= 0


@pytest.mark.slow
def test_throughput_tiny(tmp_path):
    rec = _run(
        "throughput", tmp_path, "--arch", "cnn", "--batch", "4", "--steps", "1",
        "--repeats", "1", "--calib", "4",
    )  # fmt: skip
    (case,) = rec["cases"]
    assert set(case["attacks"]) == {"pgd", "pgd++ njs", "pgd++ hns"}
    assert TIMING | {"images_per_s", "success_rate"} <= set(case["attacks"]["pgd"])
    assert case["ratio_hns_over_pgd"] > 0
    assert rec["compiles_second_call"] == 0


@pytest.mark.slow
def test_hns_search_tiny(tmp_path):
    rec = _run(
        "hns_search", tmp_path, "--arch", "cnn", "--batch", "4", "--naive-examples", "1",
        "--repeats", "1",
    )  # fmt: skip
    (case,) = rec["cases"]
    assert case["n_input"] == 784 and case["betas_compared"] == 2
    assert case["all_betas_agree"] is True
    assert case["speedup_per_example"] > 0


@pytest.mark.slow
def test_foolbox_tiny(tmp_path):
    pytest.importorskip("foolbox")
    rec = _run("foolbox_pgd", tmp_path, "--batch", "4", "--steps", "2", "--repeats", "1")
    (case,) = rec["cases"]
    assert 0.0 <= case["qadv"]["robust_accuracy"] <= 1.0
    assert 0.0 <= case["foolbox"]["robust_accuracy"] <= 1.0
    assert case["speed_ratio_qadv_over_foolbox"] > 0


@pytest.mark.slow
def test_d1000_tiny(tmp_path):
    rec = _run(
        "d1000", tmp_path, "--classes", "20", "--batch", "2", "--top-k", "4", "--steps", "1",
        "--repeats", "1",
    )  # fmt: skip
    (case,) = rec["cases"]
    assert {"pgd", "pgd++ hns", "search hns"} <= set(case["rows"])
    if "hns top-4" in case["skipped"]:
        assert "top_k" in case["skipped"]["hns top-4"]
    else:
        agree = case["top_k_against_all_classes"]["hns top-4"]
        assert 0.0 <= agree["same_beta_fraction"] <= 1.0


def test_torch_missing_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    rec = _run("torch_pgd", tmp_path, "--batch", "4")
    assert "pip install 'qadv[peers]'" in rec["skipped"]
    assert "pip install 'qadv[peers]'" in capsys.readouterr().out


@pytest.mark.slow
def test_torch_pgd_tiny(tmp_path):
    pytest.importorskip("torch")
    rec = _run("torch_pgd", tmp_path, "--batch", "4", "--steps", "2", "--repeats", "1")
    assert rec["max_logit_difference"] < 1e-3  # the same network in both frameworks
    (case,) = rec["cases"]
    for side in ("qadv", "pytorch"):
        assert 0.0 <= case["attacks"][side]["robust_accuracy"] <= 1.0
        assert case["attacks"][side]["linf"] <= case["eps"] + 1e-6
    assert case["speed_qadv_over_pytorch"] > 0


def test_authors_fgsm_torch_missing_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    rec = _run("authors_fgsm", tmp_path, "--release", str(tmp_path), "--n", "1")
    assert "pip install 'qadv[peers]'" in rec["skipped"]
    assert "pip install 'qadv[peers]'" in capsys.readouterr().out


@pytest.mark.parametrize("release", [None, "not-a-checkout"])
def test_authors_fgsm_without_release_is_skipped(tmp_path, monkeypatch, capsys, release):
    import types

    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # torch "installed"
    args = ["--n", "1"]
    if release is not None:
        (tmp_path / release).mkdir()
        args += ["--release", str(tmp_path / release)]
    rec = _run("authors_fgsm", tmp_path, *args)
    assert "--release" in rec["skipped"] and "attack-bnn" in rec["skipped"]
    if release is not None:
        assert "quant_adversarial/fgsm_attack.py" in rec["skipped"]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and rec["skipped"] in out


@pytest.mark.slow
def test_authors_fgsm_tiny(tmp_path):
    """Needs PyTorch and a work tree of kartikgupta-at-anu/attack-bnn in
    ``$QADV_ATTACK_BNN_RELEASE``."""
    pytest.importorskip("torch")
    release = os.environ.get("QADV_ATTACK_BNN_RELEASE")
    if not release:
        pytest.skip("set QADV_ATTACK_BNN_RELEASE to a checkout of the authors' release")
    rec = _run(
        "authors_fgsm", tmp_path, "--release", release, "--n", "1", "--calib", "2",
        "--repeats", "1",
    )  # fmt: skip
    assert "skipped" not in rec
    assert rec["max_logit_difference"] < 1e-3  # the same network in both frameworks
    assert rec["njs"]["release_sp_scalar"] == pytest.approx(
        rec["njs"]["qadv_mean_singular_value"], rel=1e-3
    )
    assert set(rec["attacks"]) == {"fgsm", "fgsm++njs", "fgsm++hns"}
    for name, sides in rec["attacks"].items():
        for side in ("qadv", "release"):
            assert sides[side]["per_example_s"] > 0
            assert sides[side]["linf"] <= rec["eps"] + 1e-6
        assert sides["qadv"]["compiles_second_call"] == 0
        assert rec["release_over_qadv"][name] > 0
    assert rec["patches"]
