"""``pact``: PACT k-bit activations with a learned clip ``alpha`` per layer and DoReFa
k-bit weights (BOPS: k × k bits). Names: ``"pact"``, ``"pact4"``, ``"pact:4"``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax

from qadv.quant.policy import ParamFn, QuantPolicy, register_policy
from qadv.quant.primitives import dorefa_weights, pact_activation

__all__ = ["PACT_ALPHA_INIT", "PACTPolicy"]

PACT_ALPHA_INIT = 6.0
"""Initial PACT clip level ``alpha`` (learned per layer)."""


@register_policy
@dataclasses.dataclass(frozen=True)
class PACTPolicy(QuantPolicy):
    """PACT activations (parameter ``pact_alpha``) and DoReFa weights, ``bits`` each.

    Example:
        >>> p = PACTPolicy(bits=2)
        >>> p.name, p.layer_bits("hidden"), PACTPolicy.parse_suffix("4")
        ('pact2', (2, 2), {'bits': 4})
    """

    kind: str = "pact"

    options: ClassVar[tuple[str, ...]] = ("bits", "float_first", "float_last")
    forms: ClassVar[tuple[str, ...]] = ("pact:<k>",)

    @property
    def name(self) -> str:
        return f"pact{self.bits}"

    @classmethod
    def parse_suffix(cls, suffix: str) -> dict[str, Any] | None:
        return {"bits": int(suffix)} if suffix.isdigit() else None

    def weights(self, w: jax.Array, *, train: bool, anneal=1.0) -> jax.Array:
        return dorefa_weights(w, bits=self.bits)

    def inputs(self, x: jax.Array, *, param: ParamFn) -> jax.Array:
        alpha = param("pact_alpha", jax.nn.initializers.constant(PACT_ALPHA_INIT), ())
        return pact_activation(x, alpha, bits=self.bits)

    @property
    def hidden_bits(self) -> tuple[int, int]:
        return self.bits, self.bits
