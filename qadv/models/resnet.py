"""Residual networks for 32×32 images.

* :class:`ResNet` — the common CIFAR adaptation of He et al.'s ImageNet ResNets (3×3 stem,
  no max-pool, stages 64-128-256-512, projection shortcuts with 1×1 conv + BatchNorm):
  ``resnet18`` (BasicBlock [2, 2, 2, 2], 11,173,962 parameters for 10 classes) and
  ``resnet50`` (Bottleneck [3, 4, 6, 3], 23,520,842).
* :class:`CifarResNet` — He et al.'s CIFAR ResNet-(6n+2) (stages 16-32-64). Default
  ``shortcut="A"``: parameter-free shortcuts (stride-2 subsampling, zero-padded channels),
  as in He et al.'s CIFAR experiments and consistent with the BOPS of 004 Table 2:
  ``resnet20`` 269,722 parameters, ``resnet56`` 853,018. ``shortcut="B"`` uses 1×1 conv +
  BatchNorm projections where the shape changes (the often quoted 272,474 / 855,770).

Counts are trainable parameters under the ``ref`` policy: conv kernels (no conv biases),
BatchNorm scale and bias, and the final dense kernel and bias (BatchNorm running
statistics excluded).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qadv.models.layers import QConv, QDense, activation, batch_norm, normalize
from qadv.quant import QuantPolicy

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "ResNet"]


class BasicBlock(nn.Module):
    """Two 3×3 convs; projection shortcut when the shape changes."""

    features: int
    policy: QuantPolicy
    strides: int = 1
    expansion = 1

    @nn.compact
    def __call__(self, x, *, train=False, anneal=1.0):
        p, act = self.policy, activation(self.policy)
        kw = {"train": train, "anneal": anneal}
        h = QConv(self.features, 3, policy=p, strides=self.strides)(x, **kw)
        h = act(batch_norm(p, train=train)(h))
        h = QConv(self.features, 3, policy=p)(h, **kw)
        h = batch_norm(p, train=train)(h)
        return act(h + _shortcut(x, self.features, self.strides, p, **kw))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4); projection shortcut when the shape changes."""

    features: int
    policy: QuantPolicy
    strides: int = 1
    expansion = 4

    @nn.compact
    def __call__(self, x, *, train=False, anneal=1.0):
        p, act = self.policy, activation(self.policy)
        kw = {"train": train, "anneal": anneal}
        h = act(batch_norm(p, train=train)(QConv(self.features, 1, policy=p)(x, **kw)))
        h = QConv(self.features, 3, policy=p, strides=self.strides)(h, **kw)
        h = act(batch_norm(p, train=train)(h))
        out = self.features * self.expansion
        h = batch_norm(p, train=train)(QConv(out, 1, policy=p)(h, **kw))
        return act(h + _shortcut(x, out, self.strides, p, **kw))


def _shortcut(x, features, strides, policy, *, train, anneal):
    if strides == 1 and x.shape[-1] == features:
        return x
    s = QConv(features, 1, policy=policy, strides=strides)(x, train=train, anneal=anneal)
    return batch_norm(policy, train=train)(s)


class ResNet(nn.Module):
    """CIFAR ResNet with ImageNet-style stages (ResNet-18/34/50/...).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = ResNet(num_classes=10, policy=get_policy("ref"), stage_sizes=(1,), width=4)
        >>> v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> jax.eval_shape(m.apply, v, jnp.zeros((1, 8, 8, 3))).shape
        (1, 10)
    """

    num_classes: int
    policy: QuantPolicy
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"unknown block {self.block!r}; choose one of: basic, bottleneck")
        p, act = self.policy, activation(self.policy)
        kw = {"train": train, "anneal": anneal}
        block = BasicBlock if self.block == "basic" else Bottleneck
        h = normalize(x, self.mean, self.std)
        h = QConv(self.width, 3, policy=p, role="first")(h, **kw)
        h = act(batch_norm(p, train=train)(h))
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                strides = 2 if i > 0 and j == 0 else 1
                h = block(self.width * 2**i, policy=p, strides=strides)(h, **kw)
        h = jnp.mean(h, axis=(1, 2))
        return QDense(self.num_classes, policy=p, role="last")(h, **kw)


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet-(6n+2) with option-A (identity/zero-pad) shortcuts.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = CifarResNet(num_classes=10, policy=get_policy("xnor"), depth=8, width=4)
        >>> v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> jax.eval_shape(m.apply, v, jnp.zeros((1, 8, 8, 3))).shape
        (1, 10)
    """

    num_classes: int
    policy: QuantPolicy
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    depth: int = 20
    width: int = 16
    shortcut: str = "A"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"invalid depth {self.depth}; choose 6n+2 with n >= 1 (20, 56, ...)")
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"unknown shortcut {self.shortcut!r}; choose one of: A, B")
        n = (self.depth - 2) // 6
        p, act = self.policy, activation(self.policy)
        kw = {"train": train, "anneal": anneal}
        h = normalize(x, self.mean, self.std)
        h = QConv(self.width, 3, policy=p, role="first")(h, **kw)
        h = act(batch_norm(p, train=train)(h))
        for i in range(3):
            features = self.width * 2**i
            for j in range(n):
                strides = 2 if i > 0 and j == 0 else 1
                r = QConv(features, 3, policy=p, strides=strides)(h, **kw)
                r = act(batch_norm(p, train=train)(r))
                r = batch_norm(p, train=train)(QConv(features, 3, policy=p)(r, **kw))
                if self.shortcut == "A":
                    h = act(r + _option_a(h, features, strides))
                else:
                    h = act(r + _shortcut(h, features, strides, p, **kw))
        h = jnp.mean(h, axis=(1, 2))
        return QDense(self.num_classes, policy=p, role="last")(h, **kw)


def _option_a(x: jax.Array, features: int, strides: int) -> jax.Array:
    """Parameter-free shortcut: subsample by ``strides`` and zero-pad channels."""
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x
