"""Small models for 28×28 grey images (MNIST, Fashion-MNIST): MLPs and a compact CNN."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from qadv.models.layers import QConv, QDense, activation, batch_norm, max_pool_2x2, normalize
from qadv.quant import QuantPolicy

__all__ = ["CNN", "MLP"]


class MLP(nn.Module):
    """Multi-layer perceptron: flatten, ``[QDense -> BatchNorm -> act] * len(widths)``, QDense.

    ``mlp5x100`` is ``widths=(100,) * 5`` (the IPROP comparison of the paper).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = MLP(num_classes=10, policy=get_policy("bnn_waq"), widths=(8,))
        >>> v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((2, 4, 4, 1)))
        >>> jax.eval_shape(m.apply, v, jnp.zeros((2, 4, 4, 1))).shape
        (2, 10)
    """

    num_classes: int
    policy: QuantPolicy
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    widths: Sequence[int] = (256, 256)
    use_batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        p = self.policy
        act = activation(p)
        h = normalize(x, self.mean, self.std)
        h = h.reshape(h.shape[0], -1)
        for i, w in enumerate(self.widths):
            role = "first" if i == 0 else "hidden"
            h = QDense(w, policy=p, role=role, use_bias=not self.use_batch_norm)(
                h, train=train, anneal=anneal
            )
            if self.use_batch_norm:
                h = batch_norm(p, train=train)(h)
            h = act(h)
        role = "last" if self.widths else "first"
        return QDense(self.num_classes, policy=p, role=role)(h, train=train, anneal=anneal)


class CNN(nn.Module):
    """Compact CNN for 28×28 images, cheap enough for CPU training.

    ``[QConv3x3 -> BatchNorm -> act -> maxpool2] * len(widths)`` (28 → 14 → 7 → 3 for three
    stages), flatten, QDense to the classes. Default widths (32, 64, 128): about 7.5 M
    multiply-accumulates per 28×28 image. Measured on Fashion-MNIST (Adam, cosine learning
    rate, batch 128, BinaryConnect weights for the BNNs; 75-170 s per epoch on 2 shared CPU
    cores): ``ref`` 90.9% test accuracy after 3 epochs, ``bnn_wq`` 86.7% after 3,
    ``bnn_waq`` 83.0% after 5.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = CNN(num_classes=10, policy=get_policy("ref"), widths=(4, 8))
        >>> v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
        >>> jax.eval_shape(m.apply, v, jnp.zeros((1, 28, 28, 1))).shape
        (1, 10)
    """

    num_classes: int
    policy: QuantPolicy
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    widths: Sequence[int] = (32, 64, 128)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        p = self.policy
        act = activation(p)
        h = normalize(x, self.mean, self.std)
        for i, w in enumerate(self.widths):
            role = "first" if i == 0 else "hidden"
            h = QConv(w, 3, policy=p, role=role)(h, train=train, anneal=anneal)
            h = batch_norm(p, train=train)(h)
            h = max_pool_2x2(act(h))
        h = h.reshape(h.shape[0], -1)
        return QDense(self.num_classes, policy=p, role="last")(h, train=train, anneal=anneal)
