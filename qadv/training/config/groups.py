"""The plain config groups: :class:`DataConfig`, :class:`ModelConfig`,
:class:`OptimConfig`, :class:`CheckpointConfig` and :class:`EvalConfig` (the quantization
group is in :mod:`~qadv.training.config.quant`, the adversary and regulariser in
:mod:`~qadv.training.config.adversary`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from qadv.checkpoint import json_tuples
from qadv.data import DATASETS
from qadv.models import MODEL_NAMES
from qadv.training.config.base import Alias, Group
from qadv.validation import (
    check_bool,
    check_choice,
    check_count,
    check_interval,
    check_mapping,
    check_number,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SOURCES",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
]

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant", "cyclic")
SOURCES = ("auto", "idx", "tfds")


@dataclasses.dataclass(frozen=True)
class DataConfig(Group):
    """Training data.

    Attributes:
        dataset: one of :data:`qadv.data.DATASETS`.
        source: ``auto``, ``idx`` or ``tfds`` (see :func:`qadv.data.load_split`).
        train_examples: use only the first this many training examples.
        test_examples: use only the first this many test examples.
        augment: random crop + flip; ``None`` means on for CIFAR, off otherwise.
    """

    group: ClassVar[str] = "data"
    aliases: ClassVar[tuple[Alias, ...]] = (
        Alias("dataset", "dataset", "fashion_mnist (default), mnist, cifar10, ..."),
        Alias("source", "source"),
        Alias("train_examples", "train_examples", "use the first N training images"),
        Alias("test_examples", "test_examples", "use the first N test images"),
        Alias("augment", "augment"),
    )
    dataset: str = "fashion_mnist"
    source: str = "auto"
    train_examples: int | None = None
    test_examples: int | None = None
    augment: bool | None = None

    def __post_init__(self):
        check_choice("dataset", self.dataset, tuple(DATASETS))
        check_choice("data source", self.source, SOURCES)
        for name in ("train_examples", "test_examples"):
            check_count(name, getattr(self, name), allow_none=True)
        check_bool("augment", self.augment, allow_none=True)

    @property
    def use_augment(self) -> bool:
        return self.dataset.startswith("cifar") if self.augment is None else self.augment


@dataclasses.dataclass(frozen=True)
class ModelConfig(Group):
    """Architecture: one of :data:`qadv.models.MODEL_NAMES` and its keyword options."""

    group: ClassVar[str] = "model"
    aliases: ClassVar[tuple[Alias, ...]] = (
        Alias("arch", "arch", "cnn (default), mlp, resnet20, resnet18, ..."),
        Alias("arch_opts", "arch_opts"),
    )
    arch: str = "cnn"
    arch_opts: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_choice("arch", self.arch, tuple(MODEL_NAMES))
        check_mapping("arch_opts", self.arch_opts)
        object.__setattr__(self, "arch_opts", json_tuples(dict(self.arch_opts)))


@dataclasses.dataclass(frozen=True)
class OptimConfig(Group):
    """Optimisation.

    Attributes:
        epochs: number of epochs.
        batch_size: training batch size (the last incomplete batch of an epoch is
            dropped, on any number of devices; sharded over several devices, a batch
            that does not divide by their count is padded and masked instead).
        optimizer: ``adam`` or ``sgd`` (with ``momentum``/``nesterov``).
        lr: peak learning rate.
        schedule: ``cosine`` (to 0 over all steps), ``step`` (times ``lr_gamma`` at each
            fraction in ``lr_milestones``), ``constant``, or ``cyclic`` (FastAT's one
            cycle: linear from 0 to ``lr`` at ``cycle_peak`` of training, then to 0).
        lr_milestones: fractions of training at which ``step`` decays.
        lr_gamma: decay factor of ``step``.
        cycle_peak: where ``cyclic`` peaks, as a fraction of training.
        weight_decay: decoupled for Adam (AdamW), L2 added to the gradient for SGD;
            kernels only.
        momentum: SGD momentum (0 disables it).
        nesterov: SGD Nesterov momentum.
    """

    group: ClassVar[str] = "optim"
    aliases: ClassVar[tuple[Alias, ...]] = (
        Alias("epochs", "epochs", "default 10"),
        Alias("batch_size", "batch_size", "training batch size (default 128)"),
        Alias("optimizer", "optimizer", "adam (default) or sgd"),
        Alias("lr", "lr", "peak learning rate (default 1e-3)"),
        Alias("schedule", "schedule", "cosine (default), step, constant, cyclic"),
        Alias("lr_milestones", "lr_milestones"),
        Alias("lr_gamma", "lr_gamma"),
        Alias("cycle_peak", "cycle_peak"),
        Alias("weight_decay", "weight_decay", "kernels only (default 0)"),
        Alias("momentum", "momentum"),
        Alias("nesterov", "nesterov"),
    )
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "cosine"
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    cycle_peak: float = 0.4
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self):
        check_count("epochs", self.epochs)
        check_count("batch_size", self.batch_size)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_number("lr", self.lr)
        check_number("lr_gamma", self.lr_gamma)
        check_number("weight_decay", self.weight_decay, strict=False)
        check_interval("momentum", self.momentum, 0, 1)
        check_interval("cycle_peak", self.cycle_peak, 0, 1, closed="neither")
        check_bool("nesterov", self.nesterov)
        try:
            milestones = tuple(float(m) for m in self.lr_milestones)
        except (TypeError, ValueError):
            milestones = ()
        if (not milestones and self.lr_milestones) or any(not 0 < m < 1 for m in milestones):
            raise ValueError(
                f"invalid lr_milestones {self.lr_milestones!r}; choose fractions in (0, 1)"
            )
        object.__setattr__(self, "lr_milestones", milestones)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Group):
    """Checkpointing: every ``every_epochs`` epochs (the last is always saved), also every
    ``every_steps`` steps mid-epoch when set; keep ``max_to_keep`` (``None``: all)."""

    group: ClassVar[str] = "checkpoint"
    aliases: ClassVar[tuple[Alias, ...]] = (
        Alias("every_epochs", "every_epochs"),
        Alias("checkpoint_every_epochs", "every_epochs"),
        Alias("every_steps", "every_steps"),
        Alias("checkpoint_every_steps", "every_steps", "also save every N steps mid-epoch"),
        Alias("max_to_keep", "max_to_keep"),
    )
    every_epochs: int = 1
    every_steps: int | None = None
    max_to_keep: int | None = 3

    def __post_init__(self):
        check_count("checkpoint every_epochs", self.every_epochs)
        check_count("checkpoint every_steps", self.every_steps, allow_none=True)
        check_count("max_to_keep", self.max_to_keep, allow_none=True)


@dataclasses.dataclass(frozen=True)
class EvalConfig(Group):
    """Per-epoch evaluation: clean accuracy on the test split, and PGD accuracy on a
    held-out slice (its first ``robust_examples`` images).

    Attributes:
        batch_size: evaluation batch size.
        robust_examples: images of the robust evaluation (``None``: 500 when an
            adversary or regulariser is on, else none; 0 disables it).
        robust_steps: PGD steps of the robust evaluation (step ``2.5 eps / steps``).
        robust_eps: its radius (``None``: the adversary's, else the regulariser's
            threat model at 8/255).
    """

    group: ClassVar[str] = "eval"
    aliases: ClassVar[tuple[Alias, ...]] = (
        Alias("eval_batch_size", "batch_size"),
        Alias("robust_examples", "robust_examples", "PGD eval images (500)"),
        Alias("robust_steps", "robust_steps"),
        Alias("robust_eps", "robust_eps", "PGD eval radius (default: the adversary's, or 8/255)"),
    )
    batch_size: int = 500
    robust_examples: int | None = None
    robust_steps: int = 10
    robust_eps: float | None = None

    def __post_init__(self):
        check_count("eval batch_size", self.batch_size)
        check_count("robust_examples", self.robust_examples, minimum=0, allow_none=True)
        check_count("robust_steps", self.robust_steps)
        check_number("robust_eps", self.robust_eps, allow_none=True)
