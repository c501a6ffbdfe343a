"""Re-estimating BatchNorm statistics on the network that evaluation really runs.

A BNN trained with a tanh weight method (``gd_tanh``, ``md_tanh_s``) keeps BatchNorm
running statistics of the *soft* network ``tanh(beta w)``, while evaluation uses hard ±1
weights (``binarize_weights(hard=True)``). Unless ``beta`` saturated by the end of
training, the hard network's pre-BatchNorm activations have other means and variances,
and its logits are off. :func:`recalibrate_batch_stats` replaces every BatchNorm's
running mean and variance by the exact statistics of its input in the evaluated network
over a set of (training) images.

Why evaluation mode, one layer at a time: ``train=True`` is not the evaluated network.
QConv/QDense binarise with ``hard=not train``, so in training mode a tanh method runs
soft weights; and a BatchNorm in training mode normalises with the statistics of the
current batch, so every later layer would see activations that the evaluated network
(which normalises with running statistics) never produces. Here the network runs with
``train=False`` (hard ±1 weights, running statistics): pass ``k`` over the images measures
the input of the ``k``-th BatchNorm (in call order) with layers ``0..k-1`` already
recalibrated, and stores its population mean and (biased) variance. A BatchNorm's input
depends only on layers called before it, so after the last pass every layer holds the
exact dataset statistics of what it sees at evaluation. Cost: one forward pass over the
images per BatchNorm layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["batch_norm_paths", "recalibrate_batch_stats"]


def _is_bn_call(context) -> bool:
    return isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__"


def batch_norm_paths(model: nn.Module, image_shape) -> list[tuple[str, ...]]:
    """The ``batch_stats`` paths of ``model``'s BatchNorm layers in call order.

    Traced abstractly from ``model.init`` (no FLOPs). ``image_shape`` is ``(H, W, C)``.

    Example:
        >>> import jax
        >>> from qadv.models import get_model, init_variables
        >>> from qadv.quant import get_policy
        >>> m = get_model("mlp", num_classes=3, policy=get_policy("bnn_wq"), widths=(4, 4))
        >>> batch_norm_paths(m, (2, 2, 1))
        [('BatchNorm_0',), ('BatchNorm_1',)]
    """
    paths: list[tuple[str, ...]] = []

    def record(next_fun, args, kwargs, context):
        if _is_bn_call(context):
            paths.append(tuple(context.module.path))
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, *tuple(image_shape)), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return paths


def _model_vars(variables: Mapping) -> dict:
    return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def _make_moments(model: nn.Module) -> Callable:
    """Jitted ``(variables, x, mask) -> [(count, mean, m2) per BatchNorm]`` in eval mode."""

    def moments(variables, x, mask):
        out: list[tuple[jax.Array, jax.Array, jax.Array]] = []

        def record(next_fun, args, kwargs, context):
            if _is_bn_call(context):
                h = args[0]
                if context.module.axis not in (-1, h.ndim - 1):
                    raise ValueError(
                        f"BatchNorm axis {context.module.axis} is not supported; "
                        "recalibration expects channels last (axis=-1)"
                    )
                axes = tuple(range(h.ndim - 1))
                w = mask.reshape((-1,) + (1,) * (h.ndim - 1)).astype(h.dtype)
                per_example = float(np.prod(h.shape[1:-1], dtype=np.int64))
                count = jnp.sum(mask).astype(h.dtype) * per_example
                mean = jnp.sum(h * w, axis=axes) / count
                centred = h - mean.reshape((1,) * (h.ndim - 1) + (-1,))
                m2 = jnp.sum(jnp.square(centred * w), axis=axes)
                out.append((count, mean, m2))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            model.apply(variables, x, train=False)
        return out

    return jax.jit(moments)


def _like(value: np.ndarray, old: Any) -> jax.Array:
    """``value`` with the dtype and placement of ``old`` (a committed array stays
    committed, so compiled functions of the old variables are reused)."""
    new = jnp.asarray(value, jnp.asarray(old).dtype)
    if isinstance(old, jax.Array) and old.committed:
        new = jax.device_put(new, old.sharding)
    return new


def _set_stats(batch_stats: Any, path: tuple[str, ...], mean: np.ndarray, var: np.ndarray):
    """Copy of the nested ``batch_stats`` dict with ``path``'s mean and var replaced."""
    if not path:
        old = batch_stats
        return {**old, "mean": _like(mean, old["mean"]), "var": _like(var, old["var"])}
    head, rest = path[0], path[1:]
    return {**batch_stats, head: _set_stats(batch_stats[head], rest, mean, var)}


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def recalibrate_batch_stats(
    model: nn.Module,
    variables: Mapping,
    images: np.ndarray,
    *,
    batch_size: int = 500,
) -> dict:
    """Replace every BatchNorm's running mean/var by the exact statistics of the evaluated
    (hard ±1) network over ``images``.

    Layers are recalibrated one at a time, in call order, each from a pass in evaluation
    mode with the earlier layers already recalibrated (see the module docstring for why
    not training mode). Statistics are accumulated per batch and combined in float64
    (Chan et al.'s parallel formula); the variance is the biased one, as Flax's BatchNorm
    keeps it. The last batch is padded and masked, so every pass uses one compiled shape.

    Args:
        model: a qadv Flax model (called as ``model.apply(v, x, train=False)``).
        variables: its ``{"params", "batch_stats"}``.
        images: ``uint8`` (scaled by 1/255) or float ``[0, 1]`` images ``(N, H, W, C)``,
            usually training images.
        batch_size: images per forward pass.

    Returns:
        A new variables dict: the same ``params``, recalibrated ``batch_stats``. A model
        without BatchNorm is returned unchanged.

    Example:
        >>> import jax, numpy as np
        >>> from qadv.models import get_model, init_variables
        >>> from qadv.quant import get_policy
        >>> m = get_model("mlp", num_classes=3, policy=get_policy("bnn_wq"), widths=(4,))
        >>> v = init_variables(m, key=jax.random.key(0), input_shape=(2, 2, 1))
        >>> x = np.random.default_rng(0).random((10, 2, 2, 1), dtype=np.float32)
        >>> v2 = recalibrate_batch_stats(m, v, x, batch_size=4)
        >>> h = x.reshape(10, -1) @ np.where(np.asarray(v["params"]["QDense_0"]["kernel"]) >= 0,
        ...                                  1.0, -1.0)
        >>> bool(np.allclose(v2["batch_stats"]["BatchNorm_0"]["mean"], h.mean(0), atol=1e-5))
        True
    """
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected images (N, H, W, C) with N >= 1, got shape {images.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"invalid batch_size {batch_size!r}; choose a positive integer")
    variables = _model_vars(variables)
    paths = batch_norm_paths(model, images.shape[1:])
    if not paths:
        return dict(variables)
    if "batch_stats" not in variables:
        raise ValueError("the model has BatchNorm layers but the variables hold no batch_stats")
    if len(set(paths)) != len(paths):
        raise ValueError("a BatchNorm layer is called more than once; cannot recalibrate it")
    batch_stats = variables["batch_stats"]
    for path in paths:
        try:
            _get(batch_stats, path)["mean"]
        except (KeyError, TypeError):
            raise ValueError(
                f"no batch_stats for the BatchNorm layer {'/'.join(path)}; "
                "are these the model's variables?"
            ) from None
    n = len(images)
    batch_size = min(batch_size, n)
    moments = _make_moments(model)
    for k, path in enumerate(paths):
        total, mean, m2 = 0.0, None, None
        current = {"params": variables["params"], "batch_stats": batch_stats}
        for start in range(0, n, batch_size):
            xb = images[start : start + batch_size]
            m = len(xb)
            if xb.dtype == np.uint8:
                xb = xb.astype(np.float32) / np.float32(255.0)
            xb = np.asarray(xb, np.float32)
            mask = np.zeros(batch_size, np.float32)
            mask[:m] = 1.0
            if m < batch_size:
                xb = np.concatenate([xb, np.repeat(xb[-1:], batch_size - m, axis=0)])
            count_b, mean_b, m2_b = (
                np.asarray(a, np.float64) for a in moments(current, xb, mask)[k]
            )
            if mean is None:
                total, mean, m2 = float(count_b), mean_b, m2_b
                continue
            new_total = total + float(count_b)
            delta = mean_b - mean
            mean = mean + delta * (float(count_b) / new_total)
            m2 = m2 + m2_b + delta**2 * (total * float(count_b) / new_total)
            total = new_total
        batch_stats = _set_stats(batch_stats, path, mean, m2 / total)
    return {"params": variables["params"], "batch_stats": batch_stats}
