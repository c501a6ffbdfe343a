"""``xnor``: XNOR-Net, ``sign(W)`` scaled by mean ``|W|`` per output channel and
binarised inputs (BOPS: 1 × 1 bit)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from qadv.quant.policy import ParamFn, QuantPolicy, register_policy
from qadv.quant.primitives import sign_ste, xnor_weights

__all__ = ["XNORPolicy"]


@register_policy
@dataclasses.dataclass(frozen=True)
class XNORPolicy(QuantPolicy):
    """XNOR-Net weights (:func:`~qadv.quant.primitives.xnor_weights`), ``sign`` inputs.

    Example:
        >>> import jax.numpy as jnp
        >>> XNORPolicy().quantize_kernel(jnp.array([[1.0, -0.5], [-3.0, 0.5]]),
        ...                              role="hidden", train=True).tolist()
        [[2.0, -0.5], [-2.0, 0.5]]
    """

    kind: str = "xnor"

    options: ClassVar[tuple[str, ...]] = ("float_first", "float_last")
    binary_activations: ClassVar[bool] = True

    def weights(self, w: jax.Array, *, train: bool, anneal=1.0) -> jax.Array:
        return xnor_weights(w)

    def inputs(self, x: jax.Array, *, param: ParamFn) -> jax.Array:
        return sign_ste(x)

    @property
    def hidden_bits(self) -> tuple[int, int]:
        return 1, 1
