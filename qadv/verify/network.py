"""A framework-free description of a small MLP: the exact eval-mode function as numpy arrays.

:func:`extract_network` reads an ``mlp`` / ``mlp5x100`` model (``qadv.models.MLP``) and its
variables and returns a :class:`Network`: a list of affine layers, each followed by one
activation, that computes exactly what ``model.apply(variables, x, train=False)`` computes:

* the input normalisation ``(x - mean) / std`` is folded into the first layer;
* weights are what evaluation uses: hard ``sign`` (``sign(0) = +1``) for BNN layers, the
  float kernel for ``ref`` and for ``float_first`` / ``float_last`` layers;
* BatchNorm in eval mode, ``(z - mu) * scale / sqrt(var + 1e-5) + bias`` (no scale or bias
  for BNN-WQ), is folded into the layer's weights and bias. A negative scale flips the
  direction of the neuron: folding into the affine map keeps that exact, since the sign
  unit and the big-M encoding act on the folded pre-activation itself;
* activations: ``"sign"`` (BNN-WAQ: the hardtanh of the model followed by the next layer's
  ``sign`` input quantizer, ``sign(hardtanh(a)) = sign(a)``), ``"hardtanh"`` (BNN-WAQ with
  ``float_last``: the float classifier sees ``clip(a, -1, 1)``), ``"relu"`` (BNN-WQ, ref)
  and ``"none"`` for the logits.

Everything is float64. The only difference to the float32 JAX model is rounding, which
matters only at exact ties; see :mod:`qadv.verify.milp` for how counterexamples are
always confirmed on the JAX model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["ACTIVATIONS", "Layer", "Network", "extract_network"]

ACTIVATIONS = ("sign", "relu", "hardtanh", "none")
_BN_EPS = 1e-5  # qadv.models.layers.batch_norm


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """One affine map ``a = h @ weight + bias`` followed by ``activation``.

    Attributes:
        weight: ``(n_in, n_out)`` float64.
        bias: ``(n_out,)`` float64.
        activation: one of :data:`ACTIVATIONS`; ``"sign"`` maps ``a >= 0`` to +1, else -1.
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: str

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose one of: " + ", ".join(ACTIVATIONS)
            )
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[1],):
            raise ValueError(
                f"layer weight {self.weight.shape} and bias {self.bias.shape} do not fit"
            )

    @property
    def width(self) -> int:
        return int(self.weight.shape[1])


def apply_activation(a: np.ndarray, kind: str) -> np.ndarray:
    """The activation ``kind`` of :data:`ACTIVATIONS` on pre-activations ``a``."""
    if kind == "sign":
        return np.where(a >= 0, 1.0, -1.0)
    if kind == "relu":
        return np.maximum(a, 0.0)
    if kind == "hardtanh":
        return np.clip(a, -1.0, 1.0)
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """A feed-forward network on flattened ``[0, 1]`` images.

    Attributes:
        layers: hidden layers then the logits layer (activation ``"none"``).
        image_shape: ``(H, W, C)`` of one image; inputs are flattened in that (row-major)
            order, as the MLP does.
        policy: the quantization kind it came from (``"bnn_waq"``, ``"bnn_wq"``, ``"ref"``).
    """

    layers: tuple[Layer, ...]
    image_shape: tuple[int, ...]
    policy: str = "ref"

    @property
    def num_inputs(self) -> int:
        return int(np.prod(self.image_shape))

    @property
    def num_classes(self) -> int:
        return self.layers[-1].width

    @property
    def hidden_activations(self) -> tuple[str, ...]:
        return tuple(layer.activation for layer in self.layers[:-1])

    def preactivations(self, x: np.ndarray) -> list[np.ndarray]:
        """Pre-activations ``(B, n_l)`` of every layer (the last one: the logits).

        ``x`` is ``(B, H, W, C)`` or already flat ``(B, n_in)``.
        """
        h = np.asarray(x, np.float64).reshape(len(x), -1)
        out = []
        for layer in self.layers:
            a = h @ layer.weight + layer.bias
            out.append(a)
            h = apply_activation(a, layer.activation)
        return out

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(B, d)`` in float64 (the model's function, up to rounding).

        Example:
            >>> net = Network((Layer(np.eye(2), np.zeros(2), "none"),), (2, 1, 1))
            >>> net.logits(np.array([[0.2, 0.7]])).tolist()
            [[0.2, 0.7]]
        """
        return self.preactivations(x)[-1]


def _np(a: Any) -> np.ndarray:
    return np.asarray(a, np.float64)


def _exact_kinds() -> list[str]:
    from qadv.quant import policy_class, policy_kinds

    return sorted(k for k in policy_kinds() if policy_class(k).exact_activation is not None)


def extract_network(
    model: Any, variables: Mapping | None = None, *, image_shape: tuple[int, ...] | None = None
) -> Network:
    """The :class:`Network` that ``model`` computes in eval mode with ``variables``.

    Args:
        model: a ``qadv.models.MLP`` (archs ``mlp``, ``mlp5x100``), or a
            :class:`~qadv.checkpoint.LoadedModel` (then ``variables`` is taken from it).
        variables: ``{"params", "batch_stats"}`` of the model.
        image_shape: ``(H, W, C)``; default the checkpoint's, else a square guess from the
            first layer's fan-in and the number of normalisation channels.

    Raises:
        ValueError: not an MLP, or a policy without an exact description (its
            ``exact_activation`` is ``None``; the built-in ones are ``bnn_waq``,
            ``bnn_wq`` and ``ref``).

    Example:
        >>> import jax
        >>> from qadv.models import get_model, init_variables
        >>> from qadv.quant import get_policy
        >>> m = get_model("mlp", num_classes=3, policy=get_policy("bnn_waq"), widths=(4,))
        >>> v = init_variables(m, key=jax.random.key(0), input_shape=(2, 2, 1))
        >>> net = extract_network(m, v)
        >>> [(layer.width, layer.activation) for layer in net.layers]
        [(4, 'sign'), (3, 'none')]
    """
    from qadv.models import MLP

    if variables is None and hasattr(model, "variables") and hasattr(model, "model"):
        if image_shape is None and "image_shape" in getattr(model, "metadata", {}):
            image_shape = tuple(int(d) for d in model.metadata["image_shape"])
        model, variables = model.model, model.variables
    if not isinstance(model, MLP):
        raise ValueError(
            f"exact verification supports the MLP architectures (mlp, mlp5x100), "
            f"not {type(model).__name__}"
        )
    if variables is None:
        raise ValueError("variables are required with a bare model")
    policy = model.policy
    hidden_act = policy.exact_activation
    if hidden_act is None:
        raise ValueError(
            f"exact verification supports policies {', '.join(_exact_kinds())}, not {policy.name!r}"
        )
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    widths = tuple(int(w) for w in model.widths)
    if image_shape is None:
        image_shape = _image_shape(params, model)
    image_shape = tuple(int(d) for d in image_shape)
    n_in = int(np.prod(image_shape))
    if n_in != int(np.shape(params["QDense_0"]["kernel"])[0]):
        raise ValueError(f"image_shape {image_shape} does not fit the first layer's fan-in")
    channels = image_shape[-1]

    def per_input(values) -> np.ndarray:
        v = _np(values)
        return np.tile(v, n_in // channels) if v.size == channels else np.full(n_in, v[0])

    mean, std = per_input(model.mean), per_input(model.std)
    layers: list[Layer] = []
    for i in range(len(widths) + 1):
        last = i == len(widths)
        role = "last" if last and widths else ("first" if i == 0 else "hidden")
        p = params[f"QDense_{i}"]
        # the policy's own eval-mode quantizers: ±1 for binary layers, else the kernel
        w = _np(policy.quantize_kernel(p["kernel"], role=role, train=False))
        b = np.zeros(w.shape[1])
        if "bias" in p:
            b = _np(policy.quantize_bias(p["bias"], role=role, train=False))
        if i == 0:  # fold (x - mean) / std
            b = b - (mean / std) @ w
            w = w / std[:, None]
        if not last and model.use_batch_norm:
            bn_stats = stats[f"BatchNorm_{i}"]
            mu, var = _np(bn_stats["mean"]), _np(bn_stats["var"])
            bn = params.get(f"BatchNorm_{i}", {})
            scale = _np(bn["scale"]) if "scale" in bn else np.ones_like(mu)
            shift = _np(bn["bias"]) if "bias" in bn else np.zeros_like(mu)
            g = scale / np.sqrt(var + _BN_EPS)
            w = w * g[None, :]
            b = (b - mu) * g + shift
        if last:
            act = "none"
        elif hidden_act == "sign" and i == len(widths) - 1 and policy.is_float_layer("last"):
            act = "hardtanh"  # the float classifier sees clip(a, -1, 1), not its sign
        else:
            act = hidden_act
        layers.append(Layer(w, b, act))
    return Network(tuple(layers), image_shape, policy.kind)


def _image_shape(params: Mapping, model: Any) -> tuple[int, ...]:
    n_in = int(np.shape(params["QDense_0"]["kernel"])[0])
    channels = max(len(model.mean), len(model.std))
    if channels > 1:
        side = round(float(np.sqrt(n_in // channels)))
        if side * side * channels == n_in:
            return (side, side, channels)
        return (1, n_in // channels, channels)
    side = round(float(np.sqrt(n_in)))
    return (side, side, 1) if side * side == n_in else (1, n_in, 1)
