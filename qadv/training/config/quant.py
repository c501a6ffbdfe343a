"""The quantization group, :class:`QuantConfig`: the policy, the BNN weight method, tanh
annealing and BatchNorm re-estimation of the hard-binarised network."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from qadv.checkpoint import json_tuples
from qadv.quant import WQ_METHODS, QuantPolicy, get_policy, option_kinds, parse_policy
from qadv.training.config.base import Alias, Group
from qadv.validation import (
    check_bool,
    check_choice,
    check_interval,
    check_mapping,
    check_number,
    is_real,
)

__all__ = ["QuantConfig"]


@dataclasses.dataclass(frozen=True)
class QuantConfig(Group):
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
            check_choice("wq_method", self.wq_method, WQ_METHODS)
        for name in ("anneal_start", "anneal_growth"):
            check_number(name, getattr(self, name))
        check_number("anneal_max", self.anneal_max, allow_none=True)
        if self.anneal_end is not None and not (
            is_real(self.anneal_end) and self.anneal_end >= self.anneal_start
        ):
            raise ValueError(
                f"invalid anneal_end {self.anneal_end!r}; choose a number >= anneal_start"
            )
        check_interval("hard_fraction", self.hard_fraction, 0, 1, allow_none=True)
        check_bool("recalibrate_bn", self.recalibrate_bn, allow_none=True)
        check_mapping("policy_opts", self.policy_opts)
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
