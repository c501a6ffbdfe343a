"""DenseNet-BC for 32×32 images (the common CIFAR DenseNet-121: growth 32, 3×3 stem)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qadv.models.layers import QConv, QDense, activation, batch_norm, normalize
from qadv.quant import QuantPolicy

__all__ = ["DenseNet"]


class DenseNet(nn.Module):
    """DenseNet-BC with pre-activation bottleneck layers and compression transitions.

    Stem: QConv3x3(2·growth). Each dense layer: BN-act-QConv1x1(4·growth)-BN-act-
    QConv3x3(growth), concatenated. Transition: BN-act-QConv1x1(⌊reduction·C⌋)-avgpool2.
    Head: BN-act-global average pool-QDense. ``densenet121``: blocks (6, 12, 24, 16),
    6,956,298 trainable parameters for 10 classes under ``ref``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = DenseNet(num_classes=10, policy=get_policy("ref"), blocks=(1, 1), growth=4)
        >>> v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> jax.eval_shape(m.apply, v, jnp.zeros((1, 8, 8, 3))).shape
        (1, 10)
    """

    num_classes: int
    policy: QuantPolicy
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    blocks: Sequence[int] = (6, 12, 24, 16)
    growth: int = 32
    reduction: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        p, act = self.policy, activation(self.policy)
        kw = {"train": train, "anneal": anneal}
        g = self.growth
        h = normalize(x, self.mean, self.std)
        h = QConv(2 * g, 3, policy=p, role="first")(h, **kw)
        for i, n in enumerate(self.blocks):
            for _ in range(n):
                y = QConv(4 * g, 1, policy=p)(act(batch_norm(p, train=train)(h)), **kw)
                y = QConv(g, 3, policy=p)(act(batch_norm(p, train=train)(y)), **kw)
                h = jnp.concatenate([y, h], axis=-1)
            if i < len(self.blocks) - 1:
                out = math.floor(h.shape[-1] * self.reduction)
                h = QConv(out, 1, policy=p)(act(batch_norm(p, train=train)(h)), **kw)
                h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = act(batch_norm(p, train=train)(h))
        h = jnp.mean(h, axis=(1, 2))
        return QDense(self.num_classes, policy=p, role="last")(h, **kw)
