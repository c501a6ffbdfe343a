"""End-to-end tests of the ``qadv`` command line on tiny synthetic IDX data."""

import json

import pytest
from synthetic import write_mnist_like

from qadv import cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data_dir = root / "data"
    data_dir.mkdir()
    write_mnist_like(data_dir, n_train=256, n_test=40, learnable=True)
    out = root / "run"
    code = cli.main(
        [
            "train",
            "--dataset",
            "mnist",
            "--arch",
            "mlp",
            "--quant",
            "bnn_wq",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--no-progress",
        ]
    )
    assert code == 0
    return out, data_dir


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
    assert rec["config"]["temperature"] == "hns" and rec["model"]["arch"] == "mlp"
    assert 0 <= rec["adversarial_accuracy"] <= rec["clean_accuracy"]
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
    assert "PGD++ (HNS) linf" in table and str(out) in table
    assert cli.main(["table", str(tmp_path / "empty")]) == 2


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["attack", "--norm", "l3"], "unknown norm 'l3'"),
        (["attack", "--temperature", "magic"], "unknown temperature 'magic'"),
        (["attack", "--loss", "mse"], "unknown loss 'mse'"),
        (["attack", "--attack", "deepfool"], "unknown attack 'deepfool'"),
        (["attack", "--eps", "-1"], "bad eps"),
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


def test_bad_numbers_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["attack", "--checkpoint", "x", "--out", "y", "--steps", "0"])
    assert e.value.code == 2
    assert "bad steps '0'" in capsys.readouterr().err
