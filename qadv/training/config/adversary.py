"""The loss-transformation groups: :class:`AdversaryConfig` (adversarial training with a
registered attack config) and :class:`RegularizerConfig` (input-gradient regularisation).

Their names are checked against the training modes registered in
:mod:`qadv.training.objectives`, which builds them (and reads them without importing this
module).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from qadv.attacks import registry
from qadv.attacks.norms import NORMS
from qadv.training import objectives
from qadv.training.config.base import Alias, Group
from qadv.validation import check_choice, check_count, check_number

__all__ = ["THREAT_NORMS", "AdversaryConfig", "RegularizerConfig"]

THREAT_NORMS = tuple(NORMS)


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
class AdversaryConfig(Group):
    """Adversarial training: the training batch is replaced by an attack on it.

    The attack is a registered attack config (:attr:`attack`, built by
    :func:`qadv.attacks.registry.make`), run inside the jitted train step on the network in
    training mode (batch statistics of the batch, no running-statistics update), from a
    random start in the ball. Its temperature calibrates on the training batch itself
    (NJS: on the batch's first ``calib_size`` real rows).

    Attributes:
        name: ``none``, ``pgd`` (Madry et al.: ``steps`` steps of ``step_size``),
            ``fastat`` (Wong et al. 2020: one FGSM step of ``1.25 eps`` from a random
            start, with ``optim.schedule="cyclic"`` unless a schedule is given), or any
            other registered
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
        check_choice("adversary", self.name, objectives.adversary_names())
        check_number("adversary eps", self.eps)
        check_number("adversary step_size", self.step_size, allow_none=True)
        check_count("adversary steps", self.steps, allow_none=True)
        check_choice("adversary norm", self.norm, THREAT_NORMS)
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


@dataclasses.dataclass(frozen=True)
class RegularizerConfig(Group):
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
        check_choice("regulariser", self.igr, tuple(objectives.REGULARIZER_BUILDERS))
        check_number("igr lambda", self.lam, strict=False)
        check_number("igr h", self.h)
        check_choice("regulariser norm", self.norm, THREAT_NORMS)

    @property
    def enabled(self) -> bool:
        return self.igr != "none"
