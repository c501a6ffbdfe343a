"""Training configuration, nested by concern, one module per concept.

A :class:`TrainConfig` is a seed plus one small frozen dataclass per concern, each
validating itself:

* :class:`DataConfig` — dataset, source, subsets, augmentation;
* :class:`ModelConfig` — architecture and its options;
* :class:`QuantConfig` — quantization policy, BNN weight method, tanh annealing and
  BatchNorm re-estimation of the hard-binarised network;
* :class:`OptimConfig` — epochs, batch size, optimizer, learning-rate schedule;
* :class:`AdversaryConfig` — adversarial training (``none``, ``pgd``, ``fastat`` or any
  registered gradient attack, with any registered temperature);
* :class:`RegularizerConfig` — input-gradient regularisation (``none``, ``fd``, ``exact``);
* :class:`CheckpointConfig` — when to save and how many to keep;
* :class:`EvalConfig` — the per-epoch clean and robust evaluation.

Configs are built nested or flat; flat keywords are routed to their group, either by a
dotted name (``"optim.lr"``) or by a unique short name (``lr``, ``policy``, ...)::

    TrainConfig(arch="cnn", policy="bnn_wq", lr=1e-3)          # flat shorthands
    TrainConfig(model=ModelConfig(arch="cnn"), optim={"lr": 1e-3})   # nested
    config.replace(**{"adversary.name": "pgd"})

Short names are declared by each group next to its fields (``aliases``, a tuple of
:class:`Alias`); a name declared twice is an error when this module is imported. They are
also readable as attributes (``config.lr is config.optim.lr``), and those with a help text
are the flags of ``qadv train`` (:func:`train_flags`).
:func:`load_config_file` reads a Python config file (big_vision style): a module with
``get_config()`` returning a :class:`TrainConfig` or a (nested or flat) dict; its
docstring carries the command that launches it.

Modules: :mod:`~qadv.training.config.base` (:class:`Alias`, the group base),
:mod:`~qadv.training.config.groups` (data, model, optim, checkpoint, eval),
:mod:`~qadv.training.config.quant`, :mod:`~qadv.training.config.adversary` (adversary,
regulariser), :mod:`~qadv.training.config.aliases` (the alias table and the flags),
:mod:`~qadv.training.config.train_config` (:class:`TrainConfig`) and
:mod:`~qadv.training.config.files` (config files, :func:`build_config`). Every name is
importable from here.
"""

from qadv.training.config.adversary import THREAT_NORMS as THREAT_NORMS
from qadv.training.config.adversary import AdversaryConfig, RegularizerConfig
from qadv.training.config.aliases import (
    ALIASES,
    TrainFlag,
    alias_table,
    train_flags,
)
from qadv.training.config.aliases import (
    FLAG_SECTIONS as FLAG_SECTIONS,
)
from qadv.training.config.aliases import (
    GROUPS as GROUPS,
)
from qadv.training.config.aliases import (
    RESUMABLE as RESUMABLE,
)
from qadv.training.config.aliases import (
    route as route,
)
from qadv.training.config.base import Alias
from qadv.training.config.base import Group as Group
from qadv.training.config.files import build_config, load_config_file
from qadv.training.config.groups import (
    OPTIMIZERS as OPTIMIZERS,
)
from qadv.training.config.groups import (
    SCHEDULES as SCHEDULES,
)
from qadv.training.config.groups import (
    SOURCES as SOURCES,
)
from qadv.training.config.groups import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
)
from qadv.training.config.quant import QuantConfig
from qadv.training.config.train_config import TrainConfig

__all__ = [
    "ALIASES",
    "AdversaryConfig",
    "Alias",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "QuantConfig",
    "RegularizerConfig",
    "TrainConfig",
    "TrainFlag",
    "alias_table",
    "build_config",
    "load_config_file",
    "train_flags",
]
