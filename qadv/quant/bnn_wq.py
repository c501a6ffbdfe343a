"""``bnn_wq``: binary weights (and biases), real ReLU activations, BatchNorm without
affine parameters, no scaling factor (BOPS: 1-bit weights × 8-bit activations)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from qadv.quant.binary import BinaryWeightPolicy
from qadv.quant.policy import register_policy

__all__ = ["BNNWQPolicy"]


@register_policy
@dataclasses.dataclass(frozen=True)
class BNNWQPolicy(BinaryWeightPolicy):
    """BNN-WQ: biases are binarised like the weights unless ``float_bias``.

    Example:
        >>> import jax.numpy as jnp
        >>> p = BNNWQPolicy()
        >>> p.quantize_bias(jnp.array([0.3, -0.2]), role="hidden", train=False).tolist()
        [1.0, -1.0]
        >>> p.label, p.clipped_params
        ('bnn_wq (bc)', ('kernel', 'bias'))
    """

    kind: str = "bnn_wq"

    options: ClassVar[tuple[str, ...]] = ("wq_method", "float_bias", "float_first", "float_last")
    bn_affine: ClassVar[bool] = False
    exact_activation: ClassVar[str | None] = "relu"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.wq_method})"

    def quantize_bias(self, bias: jax.Array, *, role: str, train: bool, anneal=1.0) -> jax.Array:
        if self.float_bias or self.is_float_layer(role):
            return bias
        return self.weights(bias, train=train, anneal=anneal)

    @property
    def hidden_bits(self) -> tuple[int, int]:
        return 1, 8

    @property
    def clipped_params(self) -> tuple[str, ...]:
        kernel = super().clipped_params
        return (*kernel, "bias") if kernel and not self.float_bias else kernel
