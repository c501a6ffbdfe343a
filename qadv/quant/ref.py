"""``ref``: the float network (every layer in float, counted at 8×8 bits in BOPS)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from qadv.quant.policy import QuantPolicy, check_role, register_policy

__all__ = ["RefPolicy"]


@register_policy
@dataclasses.dataclass(frozen=True)
class RefPolicy(QuantPolicy):
    """Float reference: no quantizer anywhere.

    Example:
        >>> p = RefPolicy()
        >>> p.is_float_layer("hidden"), p.layer_bits("hidden")
        (True, (8, 8))
    """

    kind: str = "ref"

    is_float: ClassVar[bool] = True
    exact_activation: ClassVar[str | None] = "relu"

    def is_float_layer(self, role: str) -> bool:
        check_role(role)
        return True

    def weights(self, w: jax.Array, *, train: bool, anneal=1.0) -> jax.Array:
        return w

    @property
    def hidden_bits(self) -> tuple[int, int]:
        return 8, 8
