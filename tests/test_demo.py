"""The demo main job end to end on tiny synthetic data: verdict, tables, plots, resume."""

import json

import pytest
from synthetic import write_mnist_like

from qadv.apps import demo
from qadv.evaluate.masking import CHECKS, MaskingConfig
from qadv.training import TrainConfig


def _settings(root, *, small):
    """``run_demo`` keywords. ``small`` (the default run) keeps every stage and the
    resume at the least work each allows: the binarised model alone (no float reference:
    its transfer check is skipped), one budget, 2 PGD steps, 8 images. The full tiny
    setting (marked slow) compares it with a float model at two budgets."""
    base = dict(
        dataset="mnist",
        arch="mlp",
        arch_opts={"widths": (8,) if small else (16,)},
        epochs=1,
        batch_size=32,
        source="idx",
    )
    models = {"bnn_wq": TrainConfig(policy="bnn_wq", **base)}
    if not small:
        models = {"float": TrainConfig(policy="ref", **base), **models}
    masking = MaskingConfig(
        eps=0.1,
        steps=2 if small else 20,
        max_steps=2 if small else 4,
        eps_factors=(8 / 25.5, 1.0),
        eps_cap=0.2 if small else None,
        step_factors=(0.25,),
        temperatures=("njs",),
        margin_loss=False,
        square_queries=10 if small else 20,
        batch_size=8 if small else 16,
    )
    eps = {"paper's CIFAR-10 budget": 8 / 255}
    if not small:
        eps["Fashion-MNIST budget"] = 0.1
    return dict(
        n=8 if small else 20,
        data_dir=root / "data",
        batch_size=8 if small else 16,
        progress=False,
        models=models,
        masking=masking,
        ensemble={"steps": 1 if small else 3, "queries": 10 if small else 20, "n_targets": 1},
        eps=eps,
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    (root / "data").mkdir()
    write_mnist_like(root / "data", n_train=128, n_test=24, learnable=True)
    return root


@pytest.fixture(
    params=[
        pytest.param(True, id="small"),
        pytest.param(False, id="full", marks=pytest.mark.slow),
    ]
)
def tiny(data_root, request, tmp_path):
    return tmp_path, _settings(data_root, small=request.param)


def test_demo_writes_verdict_report_plots_and_resumes(tiny, monkeypatch):
    root, kw = tiny
    out = root / "out"
    result = demo.run_demo(out, **kw)
    # the verdict is a paragraph about the binarised model (beside the float one)
    assert "bnn_wq" in result["verdict"]
    assert ("float model" in result["verdict"]) is ("float" in kw["models"])
    text = (out / "report.md").read_text()
    assert text.splitlines()[2] == result["verdict"]
    for needle in (
        "Masking checks",
        "8/255 (paper's CIFAR-10 budget)",
        "0.1",
        "git commit",
        "lead > 88",
    ):
        assert needle in text, needle
    for c in CHECKS:
        assert f"| {c} |" in text
    for png in ("accuracy_vs_eps.png", "accuracy_vs_iterations.png", "hessian_norm_vs_beta.png"):
        assert (out / png).stat().st_size > 1000
    for name in kw["models"]:
        assert (out / "masking" / name / "masking.md").exists()
    saved = json.loads((out / "demo.json").read_text())
    assert saved["verdict"] == result["verdict"]
    assert len(saved["table"]) == len(kw["models"]) * len(kw["eps"])
    # transfer from the float model runs for the binarised one only
    st = {k: {v["name"]: v["status"] for v in r["checks"]} for k, r in result["masking"].items()}
    if "float" in kw["models"]:
        assert st["float"]["transfer"] == "skipped" and st["bnn_wq"]["transfer"] != "skipped"
    else:
        assert st["bnn_wq"]["transfer"] == "skipped"

    # A second run reuses the trained models and every finished attack.
    import qadv.evaluate.core as core

    def boom(*a, **k):
        raise AssertionError("finished attacks must not run again")

    monkeypatch.setattr(core, "evaluate_attack", boom)
    again = demo.run_demo(out, **kw)
    assert again["table"] == result["table"] and again["verdict"] == result["verdict"]


def test_demo_bad_n(data_root):
    kw = _settings(data_root, small=True)
    with pytest.raises(ValueError, match="bad n 999; the test set has 24 images"):
        demo.run_demo(data_root / "bad", **{**kw, "n": 999})
