"""``bnn_waq``: BinaryNet, binary weights and activations (real image into the first
layer, affine BatchNorm, real biases and logits; BOPS: 1 × 1 bit)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from qadv.quant.binary import BinaryWeightPolicy
from qadv.quant.policy import ParamFn, register_policy
from qadv.quant.primitives import sign_ste

__all__ = ["BNNWAQPolicy"]


@register_policy
@dataclasses.dataclass(frozen=True)
class BNNWAQPolicy(BinaryWeightPolicy):
    """BNN-WAQ: every quantized layer binarises its input with :func:`sign_ste`.

    Example:
        >>> import jax.numpy as jnp
        >>> BNNWAQPolicy().quantize_input(jnp.array([-0.5, 0.0]), role="hidden",
        ...                               param=None).tolist()
        [-1.0, 1.0]
    """

    kind: str = "bnn_waq"

    options: ClassVar[tuple[str, ...]] = ("wq_method", "float_first", "float_last")
    binary_activations: ClassVar[bool] = True
    exact_activation: ClassVar[str | None] = "sign"

    def inputs(self, x: jax.Array, *, param: ParamFn) -> jax.Array:
        return sign_ste(x)

    @property
    def hidden_bits(self) -> tuple[int, int]:
        return 1, 1
