"""MobileNetV2 for 32×32 images (the common CIFAR variant: stride-1 stem and first stages)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qadv.models.layers import QConv, QDense, activation, batch_norm, normalize
from qadv.quant import QuantPolicy

__all__ = ["MOBILENETV2_CFG", "MobileNetV2"]

# (expansion, out_channels, num_blocks, stride)
MOBILENETV2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2 with inverted residual blocks (depthwise convs are QConv with groups).

    Block: QConv1x1 expand-BN-act, depthwise QConv3x3-BN-act, QConv1x1 project-BN; stride-1
    blocks add a shortcut (identity, or QConv1x1-BN when the channels change). Stem
    QConv3x3(32), head QConv1x1(1280)-BN-act, global average pool, QDense.
    2,296,922 trainable parameters for 10 classes under ``ref``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = MobileNetV2(num_classes=10, policy=get_policy("ref"), cfg=((2, 8, 1, 2),),
        ...                 stem=4, head=16)
        >>> v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> jax.eval_shape(m.apply, v, jnp.zeros((1, 8, 8, 3))).shape
        (1, 10)
    """

    num_classes: int
    policy: QuantPolicy
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    cfg: Sequence[tuple[int, int, int, int]] = MOBILENETV2_CFG
    stem: int = 32
    head: int = 1280

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        p, act = self.policy, activation(self.policy)
        kw = {"train": train, "anneal": anneal}
        h = normalize(x, self.mean, self.std)
        h = act(batch_norm(p, train=train)(QConv(self.stem, 3, policy=p, role="first")(h, **kw)))
        for expansion, out, n, stride in self.cfg:
            for j in range(n):
                s = stride if j == 0 else 1
                c_in, c_mid = h.shape[-1], expansion * h.shape[-1]
                y = act(batch_norm(p, train=train)(QConv(c_mid, 1, policy=p)(h, **kw)))
                y = QConv(c_mid, 3, policy=p, strides=s, groups=c_mid)(y, **kw)
                y = act(batch_norm(p, train=train)(y))
                y = batch_norm(p, train=train)(QConv(out, 1, policy=p)(y, **kw))
                if s == 1:
                    if c_in != out:
                        h = batch_norm(p, train=train)(QConv(out, 1, policy=p)(h, **kw))
                    y = y + h
                h = y
        h = act(batch_norm(p, train=train)(QConv(self.head, 1, policy=p)(h, **kw)))
        h = jnp.mean(h, axis=(1, 2))
        return QDense(self.num_classes, policy=p, role="last")(h, **kw)
