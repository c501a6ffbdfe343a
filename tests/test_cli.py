"""End-to-end tests of the ``qadv`` command line on tiny synthetic IDX data."""

import json

import pytest

from qadv.apps import cli


@pytest.fixture
def run(trained_mlp):
    """``(run_dir, data_dir)`` of the suite's trained BNN-WQ MLP (``qadv train``, see
    conftest.py)."""
    return trained_mlp


def test_train_eval_attack_diagnose(run, capsys, tmp_path):
    out, data_dir = run
    assert cli.main(["eval", "--checkpoint", str(out), "--data-dir", str(data_dir)]) == 0
    assert "clean accuracy" in capsys.readouterr().out
    res = tmp_path / "r.json"
    code = cli.main(
        [
            "attack",
            "--checkpoint",
            str(out),
            "--attack",
            "pgd",
            "--temperature",
            "hns",
            "--norm",
            "linf",
            "--eps",
            "8/255",
            "--step",
            "2/255",
            "--steps",
            "3",
            "--n",
            "30",
            "--batch-size",
            "16",
            "--out",
            str(res),
            "--data-dir",
            str(data_dir),
            "--no-progress",
        ]
    )
    assert code == 0
    rec = json.loads(res.read_text())
    assert rec["n"] == 30 and rec["config"]["eps"] == pytest.approx(8 / 255)
    assert rec["config"]["temperature"]["kind"] == "hns" and rec["model"]["arch"] == "mlp"
    assert 0 <= rec["robust_accuracy"] <= rec["clean_accuracy"]
    assert len(rec["examples"]["robust"]) == 30
    diag = tmp_path / "d.json"
    assert (
        cli.main(
            [
                "diagnose",
                "--checkpoint",
                str(out),
                "--n",
                "20",
                "--out",
                str(diag),
                "--data-dir",
                str(data_dir),
            ]
        )
        == 0
    )
    assert "zero_gradient_fraction" in json.loads(diag.read_text())
    capsys.readouterr()
    assert cli.main(["table", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "PGD++ (HNS) L∞" in table and str(out) in table
    assert cli.main(["table", str(tmp_path / "empty")]) == 2


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["attack", "--norm", "l3"], "unknown norm 'l3'"),
        (["attack", "--temperature", "magic"], "unknown temperature 'magic'"),
        (["attack", "--loss", "mse"], "unknown loss 'mse'"),
        (["attack", "--attack", "cw-l0"], "unknown attack 'cw-l0'"),
        (["attack", "--eps", "-1"], "eps must be finite and > 0"),
        (
            ["attack", "--temperature", "hns", "--grid-size", "2"],
            "grid_size must be an integer >= 3",
        ),
        (["attack", "--grid-size", "50"], "it belongs to temperature hns"),
        (["attack", "--attack", "fgsm", "--queries", "9"], "attack 'fgsm' has no option 'queries'"),
        (["attack", "--attack", "transfer"], "needs a surrogate model"),
        (["evaluate", "--preset", "strongest"], "unknown preset 'strongest'"),
        (["evaluate"], "give exactly one of --preset"),
        (["evaluate", "--attacks", "pgd,warp"], "unknown attack 'warp'"),
    ],
)
def test_bad_attack_arguments_are_one_line(run, capsys, tmp_path, argv, needle):
    out, data_dir = run
    code = cli.main(
        [
            *argv,
            "--checkpoint",
            str(out),
            "--out",
            str(tmp_path / "x.json"),
            "--data-dir",
            str(data_dir),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--arch", "resnet1000"], "unknown arch 'resnet1000'"),
        (["train", "--quant", "ternary"], "unknown quantization policy 'ternary'"),
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["eval", "--checkpoint", "/nonexistent/run"], "no checkpoint"),
    ],
)
def test_bad_names_are_one_line(capsys, tmp_path, argv, needle):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "r")]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_evaluate_ensemble_end_to_end(run, capsys, tmp_path):
    out, data_dir = run
    res = tmp_path / "ens.json"
    argv = [
        "evaluate",
        "--checkpoint",
        str(out),
        "--attacks",
        "fgsm,pgd++hns,transfer",
        "--surrogate",
        str(out),
        "--steps",
        "2",
        "--eps",
        "16/255",
        "--n",
        "24",
        "--batch-size",
        "16",
        "--out",
        str(res),
        "--data-dir",
        str(data_dir),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    rec = json.loads(res.read_text())
    assert [m["attack"] for m in rec["attacks"]] == [
        "FGSM L∞",
        "PGD++ (HNS) L∞",
        "Transfer from PGD L∞",
    ]
    assert rec["attacks"][1]["config"]["steps"] == 2
    assert len(rec["examples"]["broken_by"]) == 24
    assert 0 <= rec["robust_accuracy"] <= rec["clean_accuracy"]
    assert "robust" in capsys.readouterr().out
    assert cli.main(["attacks"]) == 0 and "standard" in capsys.readouterr().out


def test_bad_numbers_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["attack", "--checkpoint", "x", "--out", "y", "--eps", "1/0"])
    assert e.value.code == 2
    assert "bad eps '1/0'" in capsys.readouterr().err
    assert cli.main(["attack", "--checkpoint", "x", "--out", "y", "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "qadv attack: error: steps must be an integer >= 1, got 0"
    )


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["masking", "--checks", "zero-gradients,vibes"], "unknown masking check 'vibes'"),
        (["masking", "--norm", "l3"], "unknown norm 'l3'"),
        (["masking", "--tolerance", "-1"], "invalid tolerance -1"),
        (["signal", "--rhos", "0.5,2"], "bad rho 2.0"),
        (["signal", "--min-norm-attack", "cw"], "unknown minimum-norm attack 'cw'"),
        (["signal", "--norm", "l7"], "l7"),
    ],
)
def test_bad_masking_and_signal_arguments_are_one_line(run, capsys, tmp_path, argv, needle):
    out, data_dir = run
    code = cli.main(
        [*argv, "--checkpoint", str(out), "--out", str(tmp_path / "r"), "--data-dir", str(data_dir)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_masking_report_end_to_end(run, capsys, tmp_path):
    out, data_dir = run
    argv = ["masking", "--checkpoint", str(out), "--surrogate", str(out), "--n", "16"]
    argv += ["--checks", "zero-gradients,black-box,transfer", "--queries", "20"]
    argv += ["--out", str(tmp_path / "m"), "--data-dir", str(data_dir), "--no-progress"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "zero-gradients" in text and "black-box" in text and "masking.md" in text
    saved = json.loads((tmp_path / "m" / "masking.json").read_text())
    assert [c["name"] for c in saved["checks"]] == ["zero-gradients", "black-box", "transfer"]
    assert saved["eps"] == 0.1  # the (Fashion-)MNIST default budget
