""":class:`TrainConfig`: a seed plus one config group per concern, built nested or flat."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from qadv.attacks.norms import get_norm
from qadv.quant import policy_class, policy_kinds
from qadv.training.config.adversary import AdversaryConfig, RegularizerConfig
from qadv.training.config.aliases import ALIASES, GROUPS, route
from qadv.training.config.groups import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
)
from qadv.training.config.quant import QuantConfig
from qadv.validation import check_count

__all__ = ["TrainConfig"]


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
        check_count("seed", seed, minimum=0)
        groups: dict[str, dict] = {g: {} for g in GROUPS}
        given: dict[str, Any] = {}
        for key, value in kw.items():
            if key in GROUPS:
                given[key] = value
                continue
            group, field = route(key)
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
        if self.adversary.name == "fastat" and not _sets_schedule(groups, given):
            # FastAT is one FGSM step *with* a cyclic learning rate (Wong et al. 2020)
            object.__setattr__(self, "optim", dataclasses.replace(self.optim, schedule="cyclic"))
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
        if self.eval.robust_eps is not None:  # the robust evaluation's threat model
            norm = self.adversary.norm if self.adversary.enabled else self.regularizer.norm
            try:
                get_norm(norm).check_eps(self.eval.robust_eps)
            except ValueError as e:
                raise ValueError(f"invalid robust_{e}") from None

    # ------------------------------------------------------------------ access

    def __getattr__(self, name: str):
        # only called when normal lookup fails: flat shorthands read through
        if name.startswith("_") or name not in ALIASES:
            raise AttributeError(name)
        group, field = route(name)
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
                flat[".".join(route(key))] = value
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


def _sets_schedule(groups: Mapping[str, dict], given: Mapping[str, Any]) -> bool:
    """Whether the learning-rate schedule was chosen: a flat ``schedule``, an ``optim``
    dict naming it, or an ``optim`` group config (which carries its own)."""
    if "schedule" in groups["optim"]:
        return True
    optim = given.get("optim")
    return optim is not None and (not isinstance(optim, Mapping) or "schedule" in optim)
