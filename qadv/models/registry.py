"""Model registry, initialisation and pure evaluation closures."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qadv.models.binarynet import BinaryNetResNet, BinaryNetVGG
from qadv.models.densenet import DenseNet
from qadv.models.layers import QConv, QDense
from qadv.models.mobilenet import MobileNetV2
from qadv.models.resnet import CifarResNet, ResNet
from qadv.models.small import CNN, MLP
from qadv.models.vgg import VGG
from qadv.quant import LayerCost, QuantPolicy

__all__ = [
    "MODEL_NAMES",
    "check_images",
    "get_model",
    "init_variables",
    "layer_costs",
    "make_logits_fn",
]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "mlp5x100": functools.partial(MLP, widths=(100,) * 5),
    "cnn": CNN,
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    "vgg16": VGG,
    "densenet121": functools.partial(DenseNet, blocks=(6, 12, 24, 16), growth=32),
    "mobilenetv2": MobileNetV2,
    "resnet20": functools.partial(CifarResNet, depth=20),
    "resnet56": functools.partial(CifarResNet, depth=56),
    "binarynet_resnet18": functools.partial(BinaryNetResNet, depth=18, width=80),
    "binarynet_vgg16": functools.partial(BinaryNetVGG, infl_ratio=3),
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def get_model(
    name: str,
    *,
    num_classes: int,
    policy: QuantPolicy,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    **opts,
) -> nn.Module:
    """Build an architecture by name.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: number of logits.
        policy: the :class:`~qadv.quant.QuantPolicy`.
        mean: per-channel (or single) mean used to normalise ``[0, 1]`` inputs.
        std: per-channel (or single) standard deviation.
        **opts: architecture options (e.g. ``widths`` for ``mlp``/``cnn``, ``width`` and
            ``depth`` for ResNets).

    Example:
        >>> from qadv.quant import get_policy
        >>> m = get_model("mlp5x100", num_classes=10, policy=get_policy("bnn_wq"))
        >>> m.widths
        (100, 100, 100, 100, 100)
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: " + ", ".join(MODEL_NAMES))
    if not isinstance(policy, QuantPolicy):
        raise ValueError(
            f"policy must be a QuantPolicy (see qadv.quant.get_policy), got {policy!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"invalid num_classes {num_classes!r}; choose an integer >= 2")
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if not std or any(s <= 0 for s in std) or not mean:
        raise ValueError(f"invalid mean/std {mean}/{std}; need non-empty tuples with std > 0")
    for k, v in opts.items():
        if isinstance(v, list):
            opts[k] = tuple(v)
    try:
        return _BUILDERS[name](num_classes=num_classes, policy=policy, mean=mean, std=std, **opts)
    except TypeError as e:
        raise ValueError(f"invalid options {sorted(opts)} for model {name!r}: {e}") from None


def init_variables(model: nn.Module, *, key: jax.Array, input_shape: Sequence[int]) -> dict:
    """Initialise ``{"params", "batch_stats"}`` (eval mode) for images of ``input_shape``.

    Only these two collections are returned (the ``"quantized"`` intermediates sown during
    ``model.init`` are dropped).

    ``input_shape`` is ``(B, H, W, C)`` or ``(H, W, C)`` (a batch of 2 is used then).

    Example:
        >>> import jax
        >>> from qadv.quant import get_policy
        >>> m = get_model("cnn", num_classes=10, policy=get_policy("ref"), widths=(4,))
        >>> v = init_variables(m, key=jax.random.key(0), input_shape=(28, 28, 1))
        >>> sorted(v)
        ['batch_stats', 'params']
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (2, *shape)
    if len(shape) != 4:
        raise ValueError(f"invalid input_shape {tuple(input_shape)}; use (H, W, C) or (B, H, W, C)")
    variables = model.init(key, jnp.zeros(shape, jnp.float32), train=False)
    # drop the "quantized" intermediates sown during init
    return {k: variables[k] for k in ("params", "batch_stats") if k in variables}


def check_images(x, image_shape: Sequence[int] | None = None) -> None:
    """Raise ValueError unless ``x`` is a float batch ``(B, H, W, C)`` in ``[0, 1]``.

    Shape and dtype are checked always; values (NaN, range) only for concrete arrays,
    so this can be called inside ``jit`` / ``grad``.

    Example:
        >>> import numpy as np
        >>> check_images(np.zeros((2, 28, 28, 1), np.float32), (28, 28, 1))
        >>> check_images(np.zeros((28, 28, 1), np.float32))
        Traceback (most recent call last):
        ...
        ValueError: expected images of rank 4 (B, H, W, C), got shape (28, 28, 1)
    """
    shape = tuple(np.shape(x))
    if len(shape) != 4:
        raise ValueError(f"expected images of rank 4 (B, H, W, C), got shape {shape}")
    if image_shape is not None and shape[1:] != tuple(image_shape):
        raise ValueError(
            f"expected images of shape (B, {', '.join(map(str, image_shape))}), got {shape}"
        )
    dtype = np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    if not jnp.issubdtype(dtype, jnp.floating):  # bfloat16 included
        raise ValueError(f"expected float images in [0, 1], got dtype {dtype}")
    if isinstance(x, jax.core.Tracer):
        return
    a = np.asarray(x)
    if np.isnan(a).any():
        raise ValueError("images contain NaN; expected values in [0, 1]")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"image values span [{a.min():.4g}, {a.max():.4g}]; expected [0, 1]")


def make_logits_fn(
    model: nn.Module,
    variables: Mapping,
    *,
    image_shape: Sequence[int] | None = None,
    check_values: bool = True,
) -> Callable[[jax.Array], jax.Array]:
    """Pure evaluation-mode logits function ``x -> model(x, train=False)``.

    The closure is jit-able and differentiable with respect to ``x``. It checks the rank
    (and ``image_shape`` if given) at trace time; with ``check_values`` it also checks that
    concrete (non-traced) inputs are in ``[0, 1]`` and free of NaN.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.quant import get_policy
        >>> m = get_model("mlp", num_classes=3, policy=get_policy("ref"), widths=(4,))
        >>> f = make_logits_fn(m, init_variables(m, key=jax.random.key(0), input_shape=(2, 2, 1)))
        >>> jax.jit(f)(jnp.zeros((5, 2, 2, 1))).shape
        (5, 3)
    """
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    apply = _EvalApply(model, None if image_shape is None else tuple(image_shape), check_values)
    # A Partial is a pytree: jitted attacks receive the weights as arguments instead of
    # baking them into the compiled program as constants. Its function is a hashable
    # value (equal for equal models), so two logits functions of the same model share
    # every compiled attack.
    return jax.tree_util.Partial(apply, variables)


@dataclasses.dataclass(frozen=True)
class _EvalApply:
    model: nn.Module
    image_shape: tuple[int, ...] | None
    check_values: bool

    def __call__(self, variables, x: jax.Array) -> jax.Array:
        if self.check_values:
            check_images(x, self.image_shape)
        elif np.ndim(x) != 4:
            raise ValueError(f"expected images of rank 4 (B, H, W, C), got shape {np.shape(x)}")
        return self.model.apply(variables, x, train=False)


def layer_costs(model: nn.Module, *, input_shape: Sequence[int]) -> list[LayerCost]:
    """Multiply-accumulates of every QConv/QDense for one example, in call order.

    Traced abstractly (``jax.eval_shape``): no FLOPs are spent. Feed the result to
    :func:`qadv.quant.bops`.

    Example:
        >>> from qadv.quant import get_policy
        >>> m = get_model("mlp", num_classes=10, policy=get_policy("ref"), widths=(8,))
        >>> [(c.macs, c.role) for c in layer_costs(m, input_shape=(4, 4, 1))]
        [(128, 'first'), (80, 'last')]
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    records: list[LayerCost] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, QConv | QDense):
            x = args[0]
            if isinstance(mod, QConv):
                k = mod.kernel_size
                fan_in = k * k * x.shape[-1] // mod.groups
            else:
                fan_in = x.shape[-1]
            macs = int(np.prod(out.shape[1:])) * fan_in
            params = fan_in * mod.features + (mod.features if mod.use_bias else 0)
            records.append(
                LayerCost(
                    macs=macs,
                    role=mod.role,
                    name="/".join(str(p) for p in mod.path),
                    params=int(params),
                    kind="conv" if isinstance(mod, QConv) else "dense",
                    out_shape=tuple(int(d) for d in out.shape[1:]),
                )
            )
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False)
        )
    return records
