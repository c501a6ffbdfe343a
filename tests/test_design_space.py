"""The multi-bit design space: BOPS against 004's Table 2, ``qadv info``, the colon policy
names, natural and FastAT steps of MBN/PACT/XNOR CifarResNets, and ``qadv train --config``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import write_mnist_like

from qadv.apps import cli
from qadv.info import model_info
from qadv.models import init_variables
from qadv.quant import get_policy
from qadv.training import TrainConfig, build_train_step, make_model

# Frickenstein et al., Table 2: ResNet-20 on CIFAR-10, BOPS in units of 1e8
TABLE2 = {
    "ref": 25.95,
    "pact:4": 6.70,
    "pact:2": 1.89,
    "xnor": 0.68,
    "mbn:3x1": 1.49,
    "mbn:1x3": 1.49,
    "mbn:5x1": 2.29,
    "mbn:7x1": 3.09,
}


@pytest.mark.parametrize("quant", list(TABLE2))
def test_resnet20_bops_within_one_percent_of_table2(quant):
    info = model_info("resnet20", dataset="cifar10", quant=quant)
    assert info["bops"] / 1e8 == pytest.approx(TABLE2[quant], rel=0.01)
    # per-layer rows add up, first and last layers at 8 bits
    assert sum(x["bops"] for x in info["layers"]) == info["bops"]
    assert info["layers"][0]["bits"] == [8, 8] and info["layers"][-1]["bits"] == [8, 8]
    assert info["layers"][0]["role"] == "first" and info["layers"][-1]["role"] == "last"


def test_info_counts_parameters_and_macs_by_hand():
    # MLP 784 -> 8 -> 10: MACs 784*8 + 8*10; parameters with biases (and BatchNorm)
    info = model_info("mlp", dataset="fashion_mnist", quant="mbn:3x1", arch_opts={"widths": (8,)})
    assert [x["macs"] for x in info["layers"]] == [784 * 8, 8 * 10]
    # each layer's count equals its own parameters in the initialised model
    model = make_model(TrainConfig(arch="mlp", arch_opts={"widths": (8,)}, policy="mbn:3x1"))
    params = init_variables(model, key=jax.random.key(0), input_shape=(1, 28, 28, 1))["params"]
    for layer in info["layers"]:
        own = params[layer["name"]]
        own = {k: v for k, v in own.items() if k in ("kernel", "bias")}
        assert layer["params"] == sum(int(np.prod(v.shape)) for v in own.values())
    assert [x["params"] for x in info["layers"]] == [784 * 8, 8 * 10 + 10]  # BN follows layer 1
    assert info["params"] >= info["layer_params"]
    assert info["bops"] == 64 * (784 * 8 + 8 * 10)  # both layers are first/last: 8x8


def test_info_cli_table_json_and_errors(capsys):
    assert cli.main(["info", "--arch", "resnet20", "--quant", "mbn:3x1"]) == 0
    out = capsys.readouterr().out
    assert "1.49e8" in out and "QDense" in out
    assert cli.main(["info", "--arch", "resnet20", "--quant", "pact:2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["policy"] == "pact2" and info["bops"] / 1e8 == pytest.approx(1.89, rel=0.01)
    assert cli.main(["info", "--quant", "mbn:3"]) == 2
    err = capsys.readouterr().err
    assert "unknown quantization policy 'mbn:3'" in err and err.count("\n") == 1


def test_colon_policy_names():
    assert get_policy("mbn:3x1") == get_policy("mbn3x1") == get_policy("mbn", m_bases=3)
    assert get_policy("pact:4") == get_policy("pact4")
    with pytest.raises(ValueError, match="unknown quantization policy"):
        get_policy("xnor:2")


def _step_runs(arch, arch_opts, dataset, policy, adv):
    config = TrainConfig(
        arch=arch, arch_opts=arch_opts, dataset=dataset, policy=policy, lr=1e-3, adv=adv
    )
    shape = (4, 32, 32, 3) if dataset == "cifar10" else (4, 28, 28, 1)
    x = jax.random.uniform(jax.random.key(0), shape)
    y = jnp.arange(4) % 10
    _, state, step = build_train_step(config, steps_per_epoch=10)
    new = step(state, x, y, jnp.float32(1.0))
    assert int(new.step) == 1
    assert np.isfinite(float(new.metrics["loss"]))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(new.params))


# The default run keeps one FastAT step (XNOR); each policy's layers are tested in
# test_models.py and its training step on an MLP in test_train.py.
_SMALL = [("xnor", "fastat")] + [
    pytest.param(p, a, marks=pytest.mark.slow)
    for p, a in (
        ("mbn:3x1", "fastat"),
        ("pact:2", "fastat"),
        ("mbn:1x3", "fastat"),
        ("mbn:3x1", "none"),
        ("pact:2", "none"),
        ("xnor", "none"),
    )
]


@pytest.mark.parametrize(("policy", "adv"), _SMALL)
def test_design_space_steps_on_a_small_cifar_resnet(policy, adv):
    _step_runs("resnet20", {"depth": 8}, "fashion_mnist", policy, adv)


@pytest.mark.slow
@pytest.mark.parametrize("adv", ["none", "fastat"])
@pytest.mark.parametrize("policy", ["mbn:3x1", "pact:4", "xnor"])
@pytest.mark.parametrize("arch", ["resnet20", "resnet56", "resnet18"])
def test_design_space_steps_on_the_paper_networks(arch, policy, adv):
    _step_runs(arch, {}, "cifar10", policy, adv)


def test_train_cli_config_file_with_flags_and_set(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_mnist_like(data, n_train=64, n_test=16, learnable=True)
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        '"""qadv train --config cfg.py --out run"""\n'
        "def get_config():\n"
        '    return {"data": {"dataset": "mnist"}, "model": {"arch": "mlp", '
        '"arch_opts": {"widths": [8]}}, "optim": {"epochs": 1, "batch_size": 32}}\n'
    )
    out = tmp_path / "run"
    args = ["train", "--config", str(cfg), "--out", str(out), "--data-dir", str(data)]
    code = cli.main(
        [*args, "--quant", "mbn:3x1", "--adv", "fastat", "--adv-eps", "8/255", "--schedule",
         "cyclic", "--set", "eval.robust_examples=8", "--set", "optim.cycle_peak=0.5",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    c = TrainConfig.from_dict(summary["config"])
    assert c.quant.make_policy().name == "mbn3x1" and c.model.arch_opts == {"widths": (8,)}
    assert c.adversary.name == "fastat" and c.adversary.eps == pytest.approx(8 / 255)
    assert c.optim.schedule == "cyclic" and c.optim.cycle_peak == 0.5
    assert summary["robust_accuracy"] is not None and c.eval.robust_examples == 8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adv", "trades"], "unknown adversary 'trades'"),
        (["--igr", "jacobian"], "unknown regulariser 'jacobian'"),
        (["--igr", "fd", "--igr-lambda", "-1"], "invalid igr lambda -1.0"),
        (["--igr", "fd", "--igr-h", "0"], "invalid igr h 0.0"),
        (["--set", "optim.lrate=1"], "unknown TrainConfig field 'optim.lrate'"),
        (["--set", "lr"], "bad --set 'lr'"),
        (["--config", "/nonexistent/cfg.py"], "config file '/nonexistent/cfg.py' not found"),
        (["--quant", "ref", "--recalibrate-bn"], "invalid recalibrate_bn True"),
        (["--quant", "ref", "--wq-method", "bc"], "wq_method='bc' does not apply to policy 'ref'"),
        (["--quant", "pact:4", "--m-bases", "3"], "m_bases=3 does not apply to policy 'pact:4'"),
        (["--quant", "mbn:3x1", "--m-bases", "5"], "policy 'mbn:3x1' already sets m_bases=3"),
    ],
)
def test_train_cli_bad_input_is_one_line(tmp_path, capsys, extra, message):
    assert cli.main(["train", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
