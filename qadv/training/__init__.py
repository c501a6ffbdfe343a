"""Training: quantization-aware, adversarial and input-gradient-regularised, resumable.

- :mod:`qadv.training.config` — :class:`TrainConfig`, nested by concern (a package, one
  module per concept), and Python config files (:func:`load_config_file`,
  ``qadv train --config FILE``);
- :mod:`qadv.training.objectives` — the loss transformations (adversaries: ``pgd``,
  ``fastat``; regularisers: input-gradient ``fd`` and ``exact``), one registered
  function each;
- :mod:`qadv.training.step` — :class:`TrainState`, schedule, optimizer, annealing,
  projection and the jitted train step;
- :mod:`qadv.training.loop` — :func:`train`, the resumable loop.

``qadv.train`` is this package under its earlier name (deprecated).
"""

from qadv.checkpoint import LoadedModel, load_checkpoint
from qadv.training.config import (
    AdversaryConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    QuantConfig,
    RegularizerConfig,
    TrainConfig,
    load_config_file,
)
from qadv.training.loop import evaluate_clean, robust_accuracy, train
from qadv.training.objectives import Objective, igr_exact, igr_fd, make_objective
from qadv.training.step import (
    TrainState,
    anneal_value,
    binary_connect_projection,
    build_train_step,
    clip_latent_weights,
    init_train_state,
    make_model,
    make_optimizer,
    make_policy,
    make_schedule,
    make_train_step,
)

__all__ = [
    "AdversaryConfig",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "LoadedModel",
    "ModelConfig",
    "Objective",
    "OptimConfig",
    "QuantConfig",
    "RegularizerConfig",
    "TrainConfig",
    "TrainState",
    "anneal_value",
    "binary_connect_projection",
    "build_train_step",
    "clip_latent_weights",
    "evaluate_clean",
    "igr_exact",
    "igr_fd",
    "init_train_state",
    "load_checkpoint",
    "load_config_file",
    "make_model",
    "make_objective",
    "make_optimizer",
    "make_policy",
    "make_schedule",
    "make_train_step",
    "robust_accuracy",
    "train",
]
