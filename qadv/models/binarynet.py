"""Widened BinaryNet networks (Hubara/Courbariaux et al.) used for BNN-WAQ.

The reference evaluates BNN-WAQ on BinaryNet-style "ResNet-18" and "VGG-16", which are
not the standard networks:

* :class:`BinaryNetResNet` — a CIFAR ResNet-(6n+2) with widths 80/160/320 (16·5), depth 18
  (two blocks per stage), BatchNorm + hardtanh *after* each residual addition (except the
  last block), projection shortcuts (QConv1x1 + BatchNorm), global average pooling,
  BatchNorm + activation, QDense, and a BatchNorm on the logits.
* :class:`BinaryNetVGG` — six 3×3 convs of widths 128·r, 128·r, 256·r, 256·r, 512·r, 512
  (``infl_ratio`` r = 3) with max-pool *before* BatchNorm, then FC 8192 → 1024 → 1024 →
  classes with BatchNorm between, and a BatchNorm without affine on the logits.

Both use the policy's nonlinearity (hardtanh for BNN-WAQ); the image entering the first
layer stays real and logits stay real.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from qadv.models.layers import QConv, QDense, activation, batch_norm, max_pool_2x2, normalize
from qadv.quant import QuantPolicy

__all__ = ["BinaryNetResNet", "BinaryNetVGG"]


class BinaryNetResNet(nn.Module):
    """BinaryNet CIFAR ResNet (``binarynet_resnet18``: depth 18, widths 80/160/320).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = BinaryNetResNet(num_classes=10, policy=get_policy("bnn_waq"), depth=8, width=4)
        >>> v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
        >>> jax.eval_shape(m.apply, v, jnp.zeros((2, 8, 8, 3))).shape
        (2, 10)
    """

    num_classes: int
    policy: QuantPolicy
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    depth: int = 18
    width: int = 80

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        if self.depth < 8:
            raise ValueError(f"invalid depth {self.depth}; choose 6n+2 style depth >= 8 (18)")
        n = (self.depth - 2) // 6
        p, act = self.policy, activation(self.policy)
        kw = {"train": train, "anneal": anneal}
        bn = lambda: batch_norm(p, train=train)  # noqa: E731
        h = normalize(x, self.mean, self.std)
        h = act(bn()(QConv(self.width, 3, policy=p, role="first")(h, **kw)))
        for i in range(3):
            features = self.width * 2**i
            for j in range(n):
                strides = 2 if i > 0 and j == 0 else 1
                r = act(bn()(QConv(features, 3, policy=p, strides=strides)(h, **kw)))
                r = QConv(features, 3, policy=p)(r, **kw)
                if strides != 1 or h.shape[-1] != features:
                    h = bn()(QConv(features, 1, policy=p, strides=strides)(h, **kw))
                h = r + h
                if not (i == 2 and j == n - 1):
                    h = act(bn()(h))
        h = jnp.mean(h, axis=(1, 2))
        h = act(bn()(h))
        h = QDense(self.num_classes, policy=p, role="last")(h, **kw)
        return bn()(h)


class BinaryNetVGG(nn.Module):
    """BinaryNet CIFAR VGG (``binarynet_vgg16``: infl_ratio 3, FC 8192 → 1024 → 1024).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = BinaryNetVGG(num_classes=10, policy=get_policy("bnn_waq"), infl_ratio=1,
        ...                  base=2, fc=8)
        >>> v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
        >>> jax.eval_shape(m.apply, v, jnp.zeros((2, 8, 8, 3))).shape
        (2, 10)
    """

    num_classes: int
    policy: QuantPolicy
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    infl_ratio: int = 3
    base: int = 128
    fc: int = 1024

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        p, act = self.policy, activation(self.policy)
        kw = {"train": train, "anneal": anneal}
        bn = lambda: batch_norm(p, train=train)  # noqa: E731
        r, b = self.infl_ratio, self.base
        widths = (b * r, b * r, 2 * b * r, 2 * b * r, 4 * b * r, 4 * b)
        h = normalize(x, self.mean, self.std)
        for i, w in enumerate(widths):
            role = "first" if i == 0 else "hidden"
            h = QConv(w, 3, policy=p, role=role, use_bias=True)(h, **kw)
            if i % 2 == 1:
                h = max_pool_2x2(h)
            h = act(bn()(h))
        h = h.reshape(h.shape[0], -1)
        for _ in range(2):
            h = act(bn()(QDense(self.fc, policy=p)(h, **kw)))
        h = QDense(self.num_classes, policy=p, role="last")(h, **kw)
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            use_scale=False,
            use_bias=False,
        )(h)
