"""The demo main job end to end on tiny synthetic data: tables, plots, resume."""

import json

import pytest
from synthetic import write_mnist_like

from qadv import demo
from qadv.attacks import registry
from qadv.train import TrainConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    (root / "data").mkdir()
    write_mnist_like(root / "data", n_train=128, n_test=24, learnable=True)
    base = dict(
        dataset="mnist",
        arch="mlp",
        arch_opts={"widths": (16,)},
        epochs=1,
        batch_size=32,
        source="idx",
    )
    models = {
        "ref": TrainConfig(policy="ref", **base),
        "bnn_wq": TrainConfig(policy="bnn_wq", wq_method="md_tanh_s", **base),
    }
    attacks = {
        "fgsm": registry.make("fgsm", eps=8 / 255),
        "pgd_linf++hns": registry.make(
            "pgd", eps=8 / 255, step_size=2 / 255, steps=2, temperature="hns"
        ),
        "pgd_l2++njs": registry.make(
            "pgd", norm="l2", eps=1.0, step_size=0.25, steps=1, temperature="njs"
        ),
    }
    kw = dict(
        n=20,
        data_dir=root / "data",
        batch_size=16,
        progress=False,
        models=models,
        attacks=attacks,
        curve_examples=10,
    )
    return root, kw


def test_demo_writes_report_plots_and_resumes(tiny, monkeypatch):
    root, kw = tiny
    out = root / "out"
    result = demo.run_demo(out, **kw)
    assert "| ref |" in result["table"] and "PGD++ (HNS) L∞" in result["table"]
    text = (out / "report.md").read_text()
    for needle in ("Signal propagation", "zero grad %", "git commit", "PGD++ (NJS) L2"):
        assert needle in text
    for png in ("hessian_norm_vs_beta.png", "accuracy_vs_iterations.png"):
        assert (out / png).stat().st_size > 1000
    rec = json.loads((out / "results" / "bnn_wq" / "pgd_linf++hns.json").read_text())
    assert rec["n"] == 20 and rec["config"]["temperature"]["kind"] == "hns"

    # A second run reuses the trained models and every finished attack.
    def boom(*a, **k):
        raise AssertionError("finished attacks must not run again")

    monkeypatch.setattr(demo, "evaluate_attack", boom)
    again = demo.run_demo(out, **kw)
    assert again["table"] == result["table"]
