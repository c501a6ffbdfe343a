"""Quantized building blocks shared by every architecture.

:class:`QConv` and :class:`QDense` hold float (latent) weights and apply the
:class:`~qadv.quant.QuantPolicy` in the forward pass:

* the weight quantizer of the policy (:func:`quantize_kernel`, :func:`quantize_bias`);
* the input (activation) quantizer of the policy, for every layer except the first,
  whose input is the (normalised) image: ``sign`` for BNN-WAQ and XNOR, PACT k-bit,
  or ABC-Net activation bases for MBN;
* ``float_first`` / ``float_last`` keep the whole first / last layer (weights and input)
  in float.

The effective tensors are exposed through Flax ``sow`` in the collection ``"quantized"``
(``"kernel"``, ``"bias"``, ``"input"``): run ``model.apply(variables, x,
mutable=["quantized"])`` to inspect what the convolution really sees. Sowing costs nothing
when the collection is not mutable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qadv.quant import PACT_ALPHA_INIT, QuantPolicy

__all__ = [
    "PACT_ALPHA_INIT",
    "QConv",
    "QDense",
    "activation",
    "batch_norm",
    "normalize",
    "quantize_bias",
    "quantize_kernel",
]

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.lecun_normal()


def quantize_kernel(
    kernel: jax.Array, policy: QuantPolicy, *, role: str, train: bool, anneal=1.0
) -> jax.Array:
    """Effective weights of a layer with ``role`` ("first", "hidden", "last"):
    :meth:`QuantPolicy.quantize_kernel <qadv.quant.QuantPolicy.quantize_kernel>`.

    BNN kinds use :func:`~qadv.quant.binarize_weights` with ``policy.wq_method`` and
    ``beta=anneal`` in training and hard ±1 weights in evaluation; XNOR scales ``sign(W)``
    per output channel; PACT uses DoReFa k-bit weights; MBN uses ABC-Net weight bases.

    Example:
        >>> import jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> w = jnp.array([[0.3, -0.2]])
        >>> quantize_kernel(w, get_policy("bnn_wq"), role="hidden", train=False).tolist()
        [[1.0, -1.0]]
    """
    return policy.quantize_kernel(kernel, role=role, train=train, anneal=anneal)


def quantize_bias(
    bias: jax.Array, policy: QuantPolicy, *, role: str, train: bool, anneal=1.0
) -> jax.Array:
    """Effective bias: binarised like the weights for BNN-WQ unless ``float_bias``.

    Every other kind keeps biases in float (BinaryNet keeps its biases real).
    """
    return policy.quantize_bias(bias, role=role, train=train, anneal=anneal)


def activation(policy: QuantPolicy) -> Callable[[jax.Array], jax.Array]:
    """The architecture's nonlinearity under ``policy``.

    ReLU for float, BNN-WQ and PACT (PACT's clip is applied by the next layer's input
    quantizer); hardtanh for the binary-activation kinds (BNN-WAQ, XNOR, MBN), whose next
    layer binarises its input (``sign(hardtanh(x)) = sign(x)``, same STE derivative).
    """
    if policy.binary_activations:
        return lambda x: jnp.clip(x, -1.0, 1.0)
    return nn.relu


def batch_norm(policy: QuantPolicy, *, train: bool, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm (momentum 0.9, eps 1e-5); without affine parameters for BNN-WQ."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        use_scale=policy.bn_affine,
        use_bias=policy.bn_affine,
        name=name,
    )


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 (``VALID``), equal to ``nn.max_pool(x, (2, 2),
    strides=(2, 2))`` in value and in gradient, without XLA's ``select_and_scatter``.

    The gradient goes to the first maximum of each window in row-major order, as
    ``select_and_scatter`` (with ``ge``) routes it, so ties, which are everywhere after a
    sign activation, are broken the same way. On a CPU ``select_and_scatter`` costs about
    50 times the pooling itself and dominated every attack step of a pooled CNN; here the
    backward pass is one select.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([1.0, 3.0, 3.0, 2.0]).reshape(1, 2, 2, 1)
        >>> float(max_pool_2x2(x)[0, 0, 0, 0])
        3.0
        >>> jax.grad(lambda v: max_pool_2x2(v).sum())(x).reshape(-1).tolist()
        [0.0, 1.0, 0.0, 0.0]
    """
    b, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    x = x[:, : 2 * ho, : 2 * wo, :]
    win = x.reshape(b, ho, 2, wo, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, ho, wo, c, 4)
    first = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(win), axis=-1), 4, dtype=jnp.bool_)
    return jnp.sum(jnp.where(first, win, jnp.zeros_like(win)), axis=-1)


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """``(x - mean) / std`` per channel (NHWC); ``mean``/``std`` of length 1 or C.

    Example:
        >>> import jax.numpy as jnp
        >>> normalize(jnp.ones((1, 2, 2, 1)), (0.5,), (0.25,)).ravel().tolist()
        [2.0, 2.0, 2.0, 2.0]
    """
    if x.ndim != 4:
        raise ValueError(f"expected images of rank 4 (B, H, W, C), got shape {tuple(x.shape)}")
    c = x.shape[-1]
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise ValueError(
            f"mean/std of lengths {len(mean)}/{len(std)} do not fit {c} channels; use 1 or {c}"
        )
    m = jnp.asarray(mean, x.dtype).reshape(1, 1, 1, -1)
    s = jnp.asarray(std, x.dtype).reshape(1, 1, 1, -1)
    return (x - m) / s


class _QuantInput(nn.Module):
    """Input quantizer of a quantized layer (holds PACT/MBN parameters)."""

    policy: QuantPolicy
    role: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.policy.quantize_input(x, role=self.role, param=self.param)


class QConv(nn.Module):
    """2-D convolution (NHWC, HWIO kernel) under a quantization policy.

    Attributes:
        features: output channels.
        kernel_size: square kernel size.
        policy: the :class:`~qadv.quant.QuantPolicy`.
        role: "first", "hidden" or "last".
        strides: stride.
        padding: symmetric zero padding per side (PyTorch style); default ``kernel_size // 2``.
        use_bias: add a bias.
        groups: feature groups (``groups == in_channels`` for depthwise).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> conv = QConv(4, 3, policy=get_policy("bnn_wq"), role="first")
        >>> v = conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> conv.apply(v, jnp.zeros((1, 8, 8, 3))).shape
        (1, 8, 8, 4)
    """

    features: int
    kernel_size: int
    policy: QuantPolicy
    role: str = "hidden"
    strides: int = 1
    padding: int | None = None
    use_bias: bool = False
    groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        in_ch = x.shape[-1]
        if in_ch % self.groups:
            raise ValueError(f"{in_ch} input channels not divisible by groups={self.groups}")
        k = self.kernel_size
        shape = (k, k, in_ch // self.groups, self.features)
        kernel = self.param("kernel", conv_init, shape)
        xq = _QuantInput(self.policy, self.role, name="act_q")(x)
        wq = quantize_kernel(kernel, self.policy, role=self.role, train=train, anneal=anneal)
        self.sow("quantized", "input", xq)
        self.sow("quantized", "kernel", wq)
        pad = k // 2 if self.padding is None else self.padding
        y = jax.lax.conv_general_dilated(
            xq,
            wq.astype(xq.dtype),
            window_strides=(self.strides, self.strides),
            padding=((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            bq = quantize_bias(bias, self.policy, role=self.role, train=train, anneal=anneal)
            self.sow("quantized", "bias", bq)
            y = y + bq.reshape(1, 1, 1, -1)
        return y


class QDense(nn.Module):
    """Fully connected layer under a quantization policy (input ``(B, F)``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> d = QDense(3, policy=get_policy("xnor"), role="last")
        >>> v = d.init(jax.random.key(0), jnp.zeros((2, 5)))
        >>> d.apply(v, jnp.ones((2, 5))).shape
        (2, 3)
    """

    features: int
    policy: QuantPolicy
    role: str = "hidden"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, anneal=1.0) -> jax.Array:
        if x.ndim != 2:
            raise ValueError(f"QDense expects (B, F) inputs, got shape {tuple(x.shape)}")
        kernel = self.param("kernel", dense_init, (x.shape[-1], self.features))
        xq = _QuantInput(self.policy, self.role, name="act_q")(x)
        wq = quantize_kernel(kernel, self.policy, role=self.role, train=train, anneal=anneal)
        self.sow("quantized", "input", xq)
        self.sow("quantized", "kernel", wq)
        y = xq @ wq.astype(xq.dtype)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            bq = quantize_bias(bias, self.policy, role=self.role, train=train, anneal=anneal)
            self.sow("quantized", "bias", bq)
            y = y + bq.reshape(1, -1)
        return y
