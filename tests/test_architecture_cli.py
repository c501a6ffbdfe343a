"""The command line is a thin layer: one module per command, no reach into other modules'
private names, training flags generated from the config's declared aliases."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import ClassVar

import pytest

from qadv.apps import cli
from qadv.apps.cli import train as train_cmd
from qadv.training import config as train_config

CLI_DIR = Path(cli.__file__).parent


def _private_uses(source: str) -> list[str]:
    """``module._name`` and ``from qadv.x import _name`` where the module is a qadv one."""
    tree = ast.parse(source)
    qadv_names: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "qadv":
                    qadv_names.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "qadv":
            for a in node.names:
                if a.name.startswith("_"):
                    found.append(f"from {node.module} import {a.name}")
                qadv_names.add(a.asname or a.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        root, chain = node, []
        while isinstance(root, ast.Attribute):
            chain.append(root.attr)
            root = root.value
        private = [c for c in chain if c.startswith("_") and not c.startswith("__")]
        if isinstance(root, ast.Name) and root.id in qadv_names and private:
            found.append(f"{root.id}.{'.'.join(reversed(chain))} (line {node.lineno})")
    return found


def test_the_private_name_check_finds_private_uses():
    source = (
        "from qadv.attacks import registry\nfrom qadv.report import _helper\nimport qadv\n"
        "def f(x):\n    return registry._lookup(x), qadv.attacks.registry._TEMPERATURES, "
        "x._replace(a=1)\n"
    )
    found = _private_uses(source)
    assert len(found) == 3 and "registry._lookup (line 5)" in found, found


@pytest.mark.parametrize("path", sorted(CLI_DIR.glob("*.py")), ids=lambda p: p.name)
def test_cli_uses_no_private_name_of_another_module(path):
    assert _private_uses(path.read_text()) == []


@pytest.mark.parametrize("path", sorted(CLI_DIR.glob("*.py")), ids=lambda p: p.name)
def test_cli_modules_and_functions_are_short(path):
    source = path.read_text()
    assert len(source.splitlines()) < 600
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno < 100, f"{path.name}:{node.name}"


def test_every_command_is_one_module():
    assert list(cli.COMMANDS) == [cli.COMMANDS[m].NAME for m in cli.COMMANDS]
    for name, module in cli.COMMANDS.items():
        assert module.__name__ == f"qadv.apps.cli.{name}"
        assert callable(module.add_arguments) and callable(module.run) and module.HELP
    files = {p.stem for p in CLI_DIR.glob("*.py")} - {"__init__", "__main__", "options"}
    assert files == set(cli.COMMANDS) == set(cli.COMMAND_MODULES)


# flags of `qadv train` -> the config key they set (the public promise)
TRAIN_FLAGS = {
    "dataset": "data.dataset",
    "train_examples": "data.train_examples",
    "test_examples": "data.test_examples",
    "arch": "model.arch",
    "quant": "quant.policy",
    "wq_method": "quant.wq_method",
    "anneal_end": "quant.anneal_end",
    "hard_fraction": "quant.hard_fraction",
    "recalibrate_bn": "quant.recalibrate_bn",
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "optimizer": "optim.optimizer",
    "lr": "optim.lr",
    "schedule": "optim.schedule",
    "weight_decay": "optim.weight_decay",
    "adv": "adversary.name",
    "adv_eps": "adversary.eps",
    "adv_steps": "adversary.steps",
    "adv_step_size": "adversary.step_size",
    "adv_norm": "adversary.norm",
    "adv_temperature": "adversary.temperature",
    "igr": "regularizer.igr",
    "igr_lambda": "regularizer.lam",
    "igr_h": "regularizer.h",
    "igr_norm": "regularizer.norm",
    "robust_examples": "eval.robust_examples",
    "robust_eps": "eval.robust_eps",
    "checkpoint_every_steps": "checkpoint.every_steps",
    "seed": "seed",
}


def test_train_flags_come_from_the_config_aliases():
    assert {f.name: f.key for f in train_config.train_flags()} == TRAIN_FLAGS
    parser = cli.build_parser()
    argv = ["train", "--out", "x", "--quant", "bnn_wq", "--adv", "pgd", "--adv-eps", "8/255"]
    argv += ["--float-last", "--no-recalibrate-bn", "--seed", "3", "--set", "optim.lr=0.01"]
    args = parser.parse_args(argv)
    c = train_cmd.train_config(args)
    assert c.quant.policy == "bnn_wq" and c.adversary.name == "pgd" and c.seed == 3
    assert c.adversary.eps == pytest.approx(8 / 255) and c.optim.lr == 0.01
    assert c.quant.recalibrate_bn is False and dict(c.quant.policy_opts) == {"float_last": True}


def test_a_duplicate_alias_is_refused():
    @dataclasses.dataclass(frozen=True)
    class A:
        x: int = 0
        aliases: ClassVar = (train_config.Alias("lr", "x"),)

    with pytest.raises(ValueError, match=r"alias 'lr' of a\.x is already optim\.lr"):
        train_config.alias_table({**train_config.GROUPS, "a": A})
    with pytest.raises(ValueError, match="names no field 'y'"):
        train_config.alias_table(
            {"a": type("B", (A,), {"aliases": (train_config.Alias("z", "y"),)})}
        )
    assert train_config.alias_table(train_config.GROUPS) == train_config.ALIASES
