"""Training configuration, nested by concern.

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
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from qadv.attacks import registry
from qadv.attacks.norms import NORMS
from qadv.checkpoint import json_tuples
from qadv.data import DATASETS
from qadv.models import MODEL_NAMES
from qadv.quant import (
    WQ_METHODS,
    QuantPolicy,
    get_policy,
    option_kinds,
    parse_policy,
    policy_class,
    policy_kinds,
)

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

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant", "cyclic")
SOURCES = ("auto", "idx", "tfds")
THREAT_NORMS = tuple(NORMS)


# ----------------------------------------------------------------------------- validation


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"invalid {name} {value!r}; choose a positive integer")


def _number(name: str, value: Any, *, low: float = 0.0, strict: bool = True, allow_none=False):
    if allow_none and value is None:
        return
    ok = isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
    if not ok or not (value > low if strict else value >= low) or not np.isfinite(value):
        what = (
            ("a positive number" if low == 0 else f"a number > {low:g}")
            if strict
            else f"a number >= {low:g}"
        )
        raise ValueError(f"invalid {name} {value!r}; choose {what}")


def _choice(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def _bool(name: str, value: Any, *, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name} {value!r}; choose true or false")


def _registered(table: str) -> tuple[str, ...]:
    """Names registered in :mod:`qadv.training.objectives` (imported late: it imports us)."""
    from qadv.training import objectives

    return tuple(getattr(objectives, table))


@dataclasses.dataclass(frozen=True)
class Alias:
    """A short name of one field of a config group.

    ``TrainConfig(lr=0.1)``, ``config.replace(lr=0.1)`` and ``config.lr`` use it. With a
    ``help`` text it is also a flag of ``qadv train`` (``--lr``), parsed by the field's type.

    Attributes:
        name: the short name, unique over every group.
        field: the field of the declaring group it stands for.
        help: help text of the ``qadv train`` flag; ``None``: no flag.
        flag: the flag's name when it is not ``name`` (``quant`` for ``policy``: ``--quant``).
    """

    name: str
    field: str
    help: str | None = None
    flag: str | None = None


class _Group:
    """Mixin of the config groups: validation hook, JSON round trip."""

    group: ClassVar[str] = ""
    aliases: ClassVar[tuple[Alias, ...]] = ()

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        if isinstance(d, cls):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"invalid {cls.group} config {d!r}; expected a mapping of fields")
        fields = [f.name for f in dataclasses.fields(cls)]
        bad = sorted(set(d) - set(fields))
        if bad:
            raise ValueError(
                f"unknown {cls.group} option {bad[0]!r}; choose from: {', '.join(fields)}"
            )
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Group):
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
        _choice("dataset", self.dataset, tuple(DATASETS))
        _choice("data source", self.source, SOURCES)
        for name in ("train_examples", "test_examples"):
            _positive_int(name, getattr(self, name), allow_none=True)
        _bool("augment", self.augment, allow_none=True)

    @property
    def use_augment(self) -> bool:
        return self.dataset.startswith("cifar") if self.augment is None else self.augment


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Group):
    """Architecture: one of :data:`qadv.models.MODEL_NAMES` and its keyword options."""

    group: ClassVar[str] = "model"
    aliases: ClassVar[tuple[Alias, ...]] = (
        Alias("arch", "arch", "cnn (default), mlp, resnet20, resnet18, ..."),
        Alias("arch_opts", "arch_opts"),
    )
    arch: str = "cnn"
    arch_opts: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _choice("arch", self.arch, tuple(MODEL_NAMES))
        if not isinstance(self.arch_opts, Mapping):
            raise ValueError(f"invalid arch_opts {self.arch_opts!r}; expected a mapping")
        object.__setattr__(self, "arch_opts", json_tuples(dict(self.arch_opts)))


@dataclasses.dataclass(frozen=True)
class QuantConfig(_Group):
    """Quantization policy and how binary weights are trained.

    Attributes:
        policy: ``ref``, ``bnn_wq``, ``bnn_waq``, ``mbn``, ``pact``, ``xnor``, or the
            shorthands ``pact<k>`` and ``mbn<M>x<N>`` (:func:`qadv.quant.get_policy`).
        policy_opts: other :class:`qadv.quant.QuantPolicy` fields, e.g. ``float_last``.
        wq_method: BNN weight method ``bc``/``gd_tanh``/``md_tanh_s`` (``None``: the
            policy default, BinaryConnect).
        anneal_start: tanh sharpness ``beta`` at the start (tanh methods).
        anneal_growth: per-epoch growth of ``beta`` (when ``anneal_end`` is unset).
        anneal_max: optional cap on the per-epoch ``beta``.
        anneal_end: ``beta`` grows geometrically at every step from ``anneal_start`` to
            ``anneal_end``; the last ``hard_fraction`` of the steps then train the hard
            ``sign`` network itself (``beta = inf``), so that training ends at hard signs.
        hard_fraction: fraction of the steps, at the end, trained with hard signs (tanh
            methods with ``anneal_end``; straight-through gradient). ``None``: 0.25 for the
            tanh methods with ``anneal_end``, else 0 (on the Fashion-MNIST CNN, 3
            epochs: 0.25 with ``anneal_end=1000`` comes within 1 point of
            BinaryConnect; 0.1 with 100 is 6 points behind, no hard phase 20).
        recalibrate_bn: re-estimate BatchNorm statistics on the hard-binarised network
            over the training images when training ends (``None``: on for the tanh
            methods, whose training-time network differs from the evaluated one).
    """

    group: ClassVar[str] = "quant"
    aliases: ClassVar[tuple[Alias, ...]] = (
        Alias(
            "policy",
            "policy",
            "ref (default), bnn_wq, bnn_waq, xnor, mbn:MxN (e.g. mbn:3x1), pact:K (e.g. pact:4)",
            flag="quant",
        ),
        Alias("policy_opts", "policy_opts"),
        Alias(
            "wq_method",
            "wq_method",
            "BNN weight binarizer: bc (default), gd_tanh, md_tanh_s (use with --anneal-end)",
        ),
        Alias("anneal_start", "anneal_start"),
        Alias("anneal_growth", "anneal_growth"),
        Alias("anneal_max", "anneal_max"),
        Alias(
            "anneal_end",
            "anneal_end",
            "gd_tanh/md_tanh_s: grow the tanh β per step up to this value (e.g. 100), then "
            "train hard signs for the last --hard-fraction (default 0.25) of the steps",
        ),
        Alias("hard_fraction", "hard_fraction", "fraction of the steps trained with hard signs"),
        Alias(
            "recalibrate_bn",
            "recalibrate_bn",
            "re-estimate BatchNorm statistics of the hard-binarised network at the end "
            "(default: on for gd_tanh/md_tanh_s)",
        ),
    )
    policy: str = "ref"
    policy_opts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    wq_method: str | None = None
    anneal_start: float = 1.0
    anneal_growth: float = 1.2
    anneal_max: float | None = None
    anneal_end: float | None = None
    hard_fraction: float | None = None
    recalibrate_bn: bool | None = None

    def __post_init__(self):
        if self.wq_method is not None:
            _choice("wq_method", self.wq_method, WQ_METHODS)
        for name in ("anneal_start", "anneal_growth"):
            _number(name, getattr(self, name))
        _number("anneal_max", self.anneal_max, allow_none=True)
        if self.anneal_end is not None and not (
            isinstance(self.anneal_end, int | float) and self.anneal_end >= self.anneal_start
        ):
            raise ValueError(
                f"invalid anneal_end {self.anneal_end!r}; choose a number >= anneal_start"
            )
        if self.hard_fraction is not None and not (
            isinstance(self.hard_fraction, int | float) and 0 <= self.hard_fraction < 1
        ):
            raise ValueError(
                f"invalid hard_fraction {self.hard_fraction!r}; choose a number in [0, 1)"
            )
        _bool("recalibrate_bn", self.recalibrate_bn, allow_none=True)
        if not isinstance(self.policy_opts, Mapping):
            raise ValueError(f"invalid policy_opts {self.policy_opts!r}; expected a mapping")
        object.__setattr__(self, "policy_opts", json_tuples(dict(self.policy_opts)))
        policy = self.make_policy()  # unknown policy names/options raise here
        self._check_options(policy)

    def _check_options(self, policy: QuantPolicy) -> None:
        given = dict(self.policy_opts)
        if self.wq_method is not None:
            given["wq_method"] = self.wq_method
        for name, value in given.items():
            if name not in policy.options and value not in (None, False):
                raise ValueError(
                    f"policy option {name}={value!r} does not apply to policy "
                    f"{self.policy!r}; it applies to: {', '.join(option_kinds(name))}"
                )
        _, implied = parse_policy(self.policy)  # what the name alone says (mbn3x1, pact4)
        for name, value in implied.items():
            if name in given and given[name] != value:
                raise ValueError(
                    f"policy {self.policy!r} already sets {name}={value}, "
                    f"but {name}={given[name]!r} was given; use one of them"
                )

    def make_policy(self) -> QuantPolicy:
        opts = dict(self.policy_opts)
        if self.wq_method is not None:
            opts["wq_method"] = self.wq_method
        return get_policy(self.policy, **opts)

    @property
    def tanh_weights(self) -> bool:
        """Whether binary weights train through ``tanh(beta w)`` (GD-tanh, MD-tanh-S)."""
        return self.make_policy().anneals

    @property
    def resolved_hard_fraction(self) -> float:
        if self.hard_fraction is not None:
            return float(self.hard_fraction)
        return 0.25 if self.tanh_weights and self.anneal_end is not None else 0.0

    @property
    def use_recalibration(self) -> bool:
        return self.tanh_weights if self.recalibrate_bn is None else self.recalibrate_bn


@dataclasses.dataclass(frozen=True)
class OptimConfig(_Group):
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
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _number("lr", self.lr)
        _number("lr_gamma", self.lr_gamma)
        _number("weight_decay", self.weight_decay, strict=False)
        if not (isinstance(self.momentum, int | float) and 0 <= self.momentum < 1):
            raise ValueError(f"invalid momentum {self.momentum!r}; choose a number in [0, 1)")
        if not (isinstance(self.cycle_peak, int | float) and 0 < self.cycle_peak < 1):
            raise ValueError(f"invalid cycle_peak {self.cycle_peak!r}; choose a number in (0, 1)")
        _bool("nesterov", self.nesterov)
        try:
            milestones = tuple(float(m) for m in self.lr_milestones)
        except (TypeError, ValueError):
            milestones = ()
        if (not milestones and self.lr_milestones) or any(not 0 < m < 1 for m in milestones):
            raise ValueError(
                f"invalid lr_milestones {self.lr_milestones!r}; choose fractions in (0, 1)"
            )
        object.__setattr__(self, "lr_milestones", milestones)


def _temperature_config(value: Any) -> str | registry.TemperatureConfig:
    """A temperature in its canonical stored form: its registry name where every option
    has its default (how earlier configs stored it, so they hash the same), else the
    registry's temperature config. ``value`` is a name, a config, or a mapping in the
    form of :func:`qadv.attacks.registry.to_dict` (``{"kind": "prop1", "rho": 0.05}``)."""
    if isinstance(value, Mapping):
        options = {k: v for k, v in value.items() if k != "kind"}
        built = registry.make_temperature(value.get("kind"), **options)
    else:
        built = registry.make_temperature(value)
    return built.kind if built == registry.make_temperature(built.kind) else built


@dataclasses.dataclass(frozen=True)
class AdversaryConfig(_Group):
    """Adversarial training: the training batch is replaced by an attack on it.

    The attack is a registered attack config (:attr:`attack`, built by
    :func:`qadv.attacks.registry.make`), run inside the jitted train step on the network in
    training mode (batch statistics of the batch, no running-statistics update), from a
    random start in the ball. Its temperature calibrates on the training batch itself
    (NJS: on the batch's first ``calib_size`` real rows).

    Attributes:
        name: ``none``, ``pgd`` (Madry et al.: ``steps`` steps of ``step_size``),
            ``fastat`` (Wong et al. 2020: one FGSM step of ``1.25 eps`` from a random
            start; pair it with ``optim.schedule="cyclic"``), or any other registered
            gradient attack (one with a temperature: ``fgsm``, ``apgd-ce``, ...; its own
            defaults apply where ``steps``/``step_size`` are ``None``).
        eps: radius in ``[0, 1]`` pixel units (default 8/255; Fashion-MNIST papers use 0.1).
        step_size: ``None``: ``eps / 4`` for ``pgd`` (2/255 at 8/255), ``1.25 eps`` for
            ``fastat``.
        steps: PGD steps (``None``: 7 for ``pgd``; ``fastat`` always takes 1).
        norm: threat model ``linf`` or ``l2``.
        temperature: a registered temperature (``none``, ``fixed``, ``njs``, ``hns``,
            ``prop1``): its name (default options) or its options as a mapping, e.g.
            ``{"kind": "prop1", "rho": 0.05}``; PGD++ training with that logit scaling.

    Example:
        >>> a = AdversaryConfig(name="pgd", temperature={"kind": "fixed", "beta": 0.5})
        >>> a.attack.label, a.attack.steps
        ('PGD (β=0.5) L∞', 7)
        >>> AdversaryConfig(name="pgd", temperature={"kind": "hns"}).temperature
        'hns'
    """

    group: ClassVar[str] = "adversary"
    aliases: ClassVar[tuple[Alias, ...]] = (
        Alias(
            "adv",
            "name",
            "none (default), pgd (Madry), fastat (Wong) or a gradient attack (fgsm, apgd-ce, ...)",
        ),
        Alias("eps", "eps"),
        Alias("adv_eps", "eps", "default 8/255"),
        Alias("steps", "steps"),
        Alias("adv_steps", "steps", "PGD: 7"),
        Alias("step_size", "step_size"),
        Alias("adv_step_size", "step_size", "default eps/4 (pgd), 1.25 eps (fastat)"),
        Alias("adv_norm", "norm", "linf (default) or l2"),
        Alias("temperature", "temperature"),
        Alias("adv_temperature", "temperature", "none (default), fixed, njs, hns or prop1"),
    )
    name: str = "none"
    eps: float = 8 / 255
    step_size: float | None = None
    steps: int | None = None
    norm: str = "linf"
    temperature: str | registry.TemperatureConfig = "none"

    def __post_init__(self):
        _choice("adversary", self.name, _adversary_names())
        _number("adversary eps", self.eps)
        _number("adversary step_size", self.step_size, allow_none=True)
        _positive_int("adversary steps", self.steps, allow_none=True)
        _choice("adversary norm", self.norm, THREAT_NORMS)
        object.__setattr__(self, "temperature", _temperature_config(self.temperature))
        if self.name == "fastat" and self.steps not in (None, 1):
            raise ValueError(
                f"invalid adversary steps {self.steps!r} for fastat; FastAT takes one FGSM "
                "step (use adversary pgd for more)"
            )
        object.__setattr__(self, "_attack", self._build_attack())

    def _build_attack(self) -> registry.AttackConfig | None:
        if not self.enabled:
            return None
        from qadv.training import objectives

        options = dict(norm=self.norm, eps=self.eps, temperature=self.temperature)
        if self.name in objectives.TRAINING_MODES:  # pgd, fastat: their own step rules
            attack, fixed = objectives.TRAINING_MODES[self.name]
            options.update(steps=self.resolved_steps, step_size=self.resolved_step_size)
            return registry.make(attack, **options, **fixed)
        options.update(steps=self.steps, step_size=self.step_size)  # None: its defaults
        return registry.make(self.name, **options)

    @property
    def attack(self) -> registry.AttackConfig | None:
        """The registered attack config the batch is attacked with (``None``: clean)."""
        return self._attack

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.temperature, registry.TemperatureConfig):
            out["temperature"] = registry.to_dict(self.temperature)
        return json.loads(json.dumps(out))

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    @property
    def resolved_steps(self) -> int:
        return 1 if self.name == "fastat" else (self.steps or 7)

    @property
    def resolved_step_size(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        return 1.25 * self.eps if self.name == "fastat" else self.eps / 4


def _adversary_names() -> tuple[str, ...]:
    """Names registered in :mod:`qadv.training.objectives` (imported late: it imports us)."""
    from qadv.training import objectives

    return objectives.adversary_names()


@dataclasses.dataclass(frozen=True)
class RegularizerConfig(_Group):
    """Input-gradient regularisation ``L + lam/2 * ||grad_x l||_*^2`` (Finlay & Oberman).

    Attributes:
        igr: ``none``, ``fd`` (finite differences along the steepest-ascent direction
            of the threat norm: 2 forward and 2 backward passes) or ``exact`` (double
            backprop).
        lam: ``lambda`` (default 0.1, as in the paper's CIFAR-10 rows).
        h: finite-difference step in ``[0, 1]`` pixel units.
        norm: threat model; the penalty uses its dual norm (``linf`` -> ``l1``,
            ``l2`` -> ``l2``).
    """

    group: ClassVar[str] = "regularizer"
    aliases: ClassVar[tuple[Alias, ...]] = (
        Alias("igr", "igr", "none (default), fd or exact (double backprop)"),
        Alias("lam", "lam"),
        Alias("igr_lambda", "lam", "λ (default 0.1)"),
        Alias("h", "h"),
        Alias("igr_h", "h", "finite-difference step (0.01)"),
        Alias("igr_norm", "norm", "threat norm: linf (dual l1) or l2"),
    )
    igr: str = "none"
    lam: float = 0.1
    h: float = 0.01
    norm: str = "linf"

    def __post_init__(self):
        _choice("regulariser", self.igr, _registered("REGULARIZER_BUILDERS"))
        _number("igr lambda", self.lam, strict=False)
        _number("igr h", self.h)
        _choice("regulariser norm", self.norm, THREAT_NORMS)

    @property
    def enabled(self) -> bool:
        return self.igr != "none"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(_Group):
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
        _positive_int("checkpoint every_epochs", self.every_epochs)
        _positive_int("checkpoint every_steps", self.every_steps, allow_none=True)
        _positive_int("max_to_keep", self.max_to_keep, allow_none=True)


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Group):
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
        _positive_int("eval batch_size", self.batch_size)
        if self.robust_examples is not None and (
            not isinstance(self.robust_examples, int) or self.robust_examples < 0
        ):
            raise ValueError(
                f"invalid robust_examples {self.robust_examples!r}; choose an integer >= 0"
            )
        _positive_int("robust_steps", self.robust_steps)
        _number("robust_eps", self.robust_eps, allow_none=True)


GROUPS: dict[str, type[_Group]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "quant": QuantConfig,
    "optim": OptimConfig,
    "adversary": AdversaryConfig,
    "regularizer": RegularizerConfig,
    "checkpoint": CheckpointConfig,
    "eval": EvalConfig,
}


def alias_table(groups: Mapping[str, type[_Group]]) -> dict[str, str]:
    """Short name -> ``"group.field"`` from the groups' declared :class:`Alias` es.

    Raises:
        ValueError: an alias names no field of its group, or a short name or flag is
            declared twice (or is a group name or ``seed``).
    """
    table: dict[str, str] = {}
    flags: dict[str, str] = {}
    for g, cls in groups.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        for a in cls.aliases:
            if a.field not in fields:
                raise ValueError(f"alias {a.name!r} names no field {a.field!r} of group {g!r}")
            taken = table.get(a.name) or ("a group" if a.name in (*groups, "seed") else None)
            if taken:
                raise ValueError(f"alias {a.name!r} of {g}.{a.field} is already {taken}")
            table[a.name] = f"{g}.{a.field}"
            if a.help is not None:
                flag = a.flag or a.name
                if flag in flags or flag == "seed":
                    raise ValueError(f"flag --{flag} of {g}.{a.field} is declared twice")
                flags[flag] = table[a.name]
    return table


ALIASES: dict[str, str] = alias_table(GROUPS)
"""Every short name -> ``"group.field"`` (e.g. ``"lr": "optim.lr"``)."""

# Settings that may change when a run resumes (they do not change the trained weights,
# except optim.epochs, which extends or shortens the schedule).
RESUMABLE = frozenset(
    {"optim.epochs"}
    | {f"checkpoint.{f.name}" for f in dataclasses.fields(CheckpointConfig)}
    | {f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)}
)


def _route(key: str) -> tuple[str, str]:
    if "." in key:
        group, _, field = key.partition(".")
        if group in GROUPS and field in {f.name for f in dataclasses.fields(GROUPS[group])}:
            return group, field
    elif key in ALIASES:
        return _route(ALIASES[key])
    names = sorted(set(ALIASES) | {"seed"} | set(GROUPS))
    close = difflib.get_close_matches(key.rpartition(".")[2], names, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise ValueError(
        f"unknown TrainConfig field {key!r}{hint}; use a group ({', '.join(GROUPS)}), "
        "'group.field' or a short name such as arch, policy, lr, epochs"
    )


@dataclasses.dataclass(frozen=True, init=False)
class TrainConfig:
    """Everything that determines a training run (stored in the checkpoint metadata).

    Args:
        seed: seed of initialization, data order, augmentation and step keys.
        data, model, quant, optim, adversary, regularizer, checkpoint, eval: the groups
            (a group config or a dict of its fields; omitted groups take defaults).
        **flat: flat shorthands routed into the groups: ``"group.field"`` names or the
            short names of :data:`ALIASES` (e.g. ``arch``, ``policy``, ``lr``, ``epochs``).

    Example:
        >>> c = TrainConfig(arch="mlp", epochs=1, adv="fastat", schedule="cyclic")
        >>> c.model.arch, c.optim.epochs, c.adversary.name, c.epochs
        ('mlp', 1, 'fastat', 1)
        >>> TrainConfig(optimizer="rmsprop")
        Traceback (most recent call last):
        ...
        ValueError: unknown optimizer 'rmsprop'; choose one of: adam, sgd
    """

    seed: int
    data: DataConfig
    model: ModelConfig
    quant: QuantConfig
    optim: OptimConfig
    adversary: AdversaryConfig
    regularizer: RegularizerConfig
    checkpoint: CheckpointConfig
    eval: EvalConfig

    def __init__(self, seed: int = 0, **kw):
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"invalid seed {seed!r}; choose an integer >= 0")
        groups: dict[str, dict] = {g: {} for g in GROUPS}
        given: dict[str, Any] = {}
        for key, value in kw.items():
            if key in GROUPS:
                given[key] = value
                continue
            group, field = _route(key)
            groups[group][field] = value
        object.__setattr__(self, "seed", int(seed))
        for g, cls in GROUPS.items():
            base = given.get(g)
            if base is None:
                obj = cls.from_dict(groups[g])
            else:
                obj = cls.from_dict(base)
                if groups[g]:
                    obj = dataclasses.replace(obj, **groups[g])
            object.__setattr__(self, g, obj)
        self._check_combination()

    def _check_combination(self) -> None:
        policy = self.quant.make_policy()
        if self.quant.recalibrate_bn and policy.is_float:
            quantized = [k for k in policy_kinds() if not policy_class(k).is_float]
            raise ValueError(
                f"invalid recalibrate_bn True with policy {self.quant.policy!r}; BatchNorm "
                f"re-estimation applies to binarised networks ({', '.join(quantized)})"
            )
        if (self.quant.hard_fraction or 0) > 0 and (
            not self.quant.tanh_weights or self.quant.anneal_end is None
        ):
            raise ValueError(
                f"invalid hard_fraction {self.quant.hard_fraction!r} with wq_method "
                f"{policy.wq_method!r}; it needs a tanh method (gd_tanh, md_tanh_s) and "
                "anneal_end"
            )
        if (
            self.adversary.enabled
            and self.regularizer.enabled
            and self.adversary.norm != self.regularizer.norm
        ):
            raise ValueError(
                f"adversary norm {self.adversary.norm!r} and regulariser norm "
                f"{self.regularizer.norm!r} differ; use one threat model"
            )

    # ------------------------------------------------------------------ access

    def __getattr__(self, name: str):
        # only called when normal lookup fails: flat shorthands read through
        if name.startswith("_") or name not in ALIASES:
            raise AttributeError(name)
        group, field = _route(name)
        return getattr(object.__getattribute__(self, group), field)

    def replace(self, **kw) -> TrainConfig:
        """A copy with fields changed (flat, dotted or whole groups, as the constructor).

        Example:
            >>> TrainConfig(arch="mlp").replace(**{"optim.lr": 0.1}).lr
            0.1
        """
        groups = {g: getattr(self, g) for g in GROUPS}
        flat: dict[str, Any] = {}
        for key, value in kw.items():
            if key in GROUPS:
                groups[key] = value
            elif key != "seed":
                flat[".".join(_route(key))] = value
        merged: dict[str, dict] = {g: GROUPS[g].from_dict(v).to_dict() for g, v in groups.items()}
        for dotted, value in flat.items():
            g, f = dotted.split(".")
            merged[g][f] = value
        return TrainConfig(seed=kw.get("seed", self.seed), **merged)

    @property
    def use_augment(self) -> bool:
        """Whether training batches are augmented."""
        return self.data.use_augment

    def to_dict(self) -> dict:
        """Nested JSON-ready dict; inverse of :meth:`from_dict`."""
        return {"seed": self.seed, **{g: getattr(self, g).to_dict() for g in GROUPS}}

    def flat_dict(self) -> dict:
        """``{"seed": ..., "group.field": value}``, e.g. for comparing two runs."""
        out = {"seed": self.seed}
        for g in GROUPS:
            for k, v in getattr(self, g).to_dict().items():
                out[f"{g}.{k}"] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Builds a config from :meth:`to_dict` output, a flat dict of shorthands (as
        earlier qadv versions stored), or a mix. Unknown keys raise ``ValueError``.

        Example:
            >>> c = TrainConfig(arch="mlp", lr_milestones=(0.3,))
            >>> TrainConfig.from_dict(c.to_dict()) == c
            True
        """
        if isinstance(d, TrainConfig):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"invalid train config {d!r}; expected a mapping")
        return cls(**dict(d))


def load_config_file(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Reads a Python config file: ``get_config()`` returns a :class:`TrainConfig` or a dict.

    Its module docstring should hold the command that launches it, e.g.
    ``qadv train --config experiments/configs/fmnist_pgd_at.py --out runs/x``.
    ``overrides`` (dotted or short names) are applied on top.

    Raises:
        ValueError: a missing file, no ``get_config``, or unknown keys (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} not found")
    spec = importlib.util.spec_from_file_location(f"_qadv_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ValueError(f"config file {path}: {type(e).__name__}: {e}") from None
    get = getattr(module, "get_config", None)
    if not callable(get):
        raise ValueError(f"config file {path} defines no get_config() function")
    try:
        config = TrainConfig.from_dict(get())
        return config.replace(**dict(overrides)) if overrides else config
    except ValueError as e:
        raise ValueError(f"config file {path}: {e}") from None


class TrainFlag(NamedTuple):
    """A flag of ``qadv train``: ``--{name}`` (``_`` written ``-``) sets ``key``.

    Attributes:
        name: the flag without ``--``, e.g. ``"adv_eps"``.
        key: the dotted config key it sets, e.g. ``"adversary.eps"`` (or ``"seed"``).
        annotation: the field's type annotation, e.g. ``"float | None"``.
        help: the flag's help text.
        section: the help section of its group (``None``: the command's own options).
    """

    name: str
    key: str
    annotation: str
    help: str
    section: str | None


FLAG_SECTIONS: dict[str, str] = {
    "adversary": "adversarial training",
    "regularizer": "input-gradient regularisation (L + λ/2 ||∇x L||*²)",
    "eval": "per-epoch evaluation",
}


def train_flags() -> tuple[TrainFlag, ...]:
    """The flags of ``qadv train``: every :class:`Alias` with a help text, then ``seed``.

    Example:
        >>> flags = {f.name: f for f in train_flags()}
        >>> flags["quant"].key, flags["adv_eps"].key, flags["adv_eps"].annotation
        ('quant.policy', 'adversary.eps', 'float')
    """
    out = []
    for g, cls in GROUPS.items():
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        for a in cls.aliases:
            if a.help is not None:
                key = f"{g}.{a.field}"
                out.append(
                    TrainFlag(a.flag or a.name, key, types[a.field], a.help, FLAG_SECTIONS.get(g))
                )
    seed_help = "seed of initialization, data order, augmentation and step keys (default 0)"
    out.append(TrainFlag("seed", "seed", "int", seed_help, None))
    return tuple(out)


def build_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    policy_opts: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """A run's config: ``config_file``'s (:func:`load_config_file`) or the defaults, with
    ``overrides`` (dotted or short names, ``seed``) on top, and ``policy_opts`` (options of
    :func:`qadv.quant.get_policy`, e.g. ``float_last``) merged into ``quant.policy_opts``.

    Example:
        >>> overrides = {"arch": "mlp", "policy": "bnn_wq", "optim.lr": 0.1, "seed": 3}
        >>> c = build_config(overrides, policy_opts={"float_last": True})
        >>> c.model.arch, c.optim.lr, c.seed, dict(c.quant.policy_opts)
        ('mlp', 0.1, 3, {'float_last': True})

    Raises:
        ValueError: an unknown key, a bad value or a bad config file (one line).
    """
    overrides = dict(overrides or {})
    base = TrainConfig() if config_file is None else load_config_file(config_file)
    if policy_opts:
        overrides["quant.policy_opts"] = {**base.quant.policy_opts, **policy_opts}
    return base.replace(**overrides) if overrides else base
