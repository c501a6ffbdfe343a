"""VGG for 32×32 images (the common CIFAR VGG-16 with BatchNorm)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from qadv.models.layers import QConv, QDense, activation, batch_norm, max_pool_2x2, normalize
from qadv.quant import QuantPolicy

__all__ = ["VGG", "VGG16_CFG"]

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG(nn.Module):
    """CIFAR VGG: ``[QConv3x3(bias) -> BatchNorm -> act]`` per number, 2×2 max-pool per "M",
    then a single QDense classifier from the 1×1×512 features.

    With the default configuration (VGG-16) and 10 classes: 14,728,266 trainable
    parameters under ``ref`` (conv kernels and biases, BatchNorm scale and bias, classifier
    kernel and bias).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = VGG(num_classes=10, policy=get_policy("ref"), cfg=(4, "M", 8, "M"))
        >>> v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
        >>> jax.eval_shape(m.apply, v, jnp.zeros((1, 4, 4, 3))).shape
        (1, 10)
    """

    num_classes: int
    policy: QuantPolicy
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    cfg: Sequence[int | str] = VGG16_CFG

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        p, act = self.policy, activation(self.policy)
        h = normalize(x, self.mean, self.std)
        first = True
        for v in self.cfg:
            if v == "M":
                h = max_pool_2x2(h)
                continue
            role = "first" if first else "hidden"
            first = False
            h = QConv(v, 3, policy=p, role=role, use_bias=True)(h, train=train, anneal=anneal)
            h = act(batch_norm(p, train=train)(h))
        h = h.reshape(h.shape[0], -1)
        return QDense(self.num_classes, policy=p, role="last")(h, train=train, anneal=anneal)
