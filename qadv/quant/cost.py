"""Bit-operations (BOPS) of a network under a quantization policy."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from qadv.quant.policy import QuantPolicy

__all__ = ["LayerCost", "bops", "layer_bits"]


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Multiply-accumulate count of one conv/dense layer and its role.

    Attributes:
        macs: multiply-accumulates for one example.
        role: ``"first"``, ``"hidden"`` or ``"last"``.
        name: the layer's module path (e.g. ``"stage1_block0/conv1"``), when known.
        params: its weight and bias count.
        kind: ``"conv"`` or ``"dense"`` (``""`` when unknown).
        out_shape: its output shape for one example.
    """

    macs: int
    role: str
    name: str = ""
    params: int = 0
    kind: str = ""
    out_shape: tuple[int, ...] = ()


def bops(layers: Sequence[LayerCost | Mapping], policy: QuantPolicy) -> int:
    """Bit-operations (BOPS) of one forward pass, in the convention of 004 (Table 2).

    Per layer: ``MACs * b_w * b_a``. Float layers (``ref``) count as 8×8 bits; the first and
    last layers always count as 8×8 bits; PACT uses ``bits × bits``; MBN ``M × N`` binary
    operations; BNN-WQ ``1 × 8`` (binary weights, 8-bit activations); BNN-WAQ and XNOR
    ``1 × 1``. Operations outside conv/dense layers (BatchNorm, pooling, additions,
    scaling by ``alpha``/``beta``) are not counted, as in 004.

    Args:
        layers: per-layer MAC counts (``LayerCost`` or mappings with keys ``macs``, ``role``),
            e.g. from ``qadv.models.layer_costs``.
        policy: the quantization policy.

    Example:
        >>> from qadv.quant import get_policy
        >>> bops([LayerCost(10, "first"), LayerCost(100, "hidden")], get_policy("pact2"))
        1040
    """
    total = 0
    for layer in layers:
        macs, role = (
            (layer["macs"], layer["role"])
            if isinstance(layer, Mapping)
            else (layer.macs, layer.role)
        )
        bw, ba = layer_bits(role, policy)
        total += int(macs) * bw * ba
    return total


def layer_bits(role: str, policy: QuantPolicy) -> tuple[int, int]:
    """``(weight bits, activation bits)`` of a layer with ``role`` in the BOPS convention
    of :func:`bops` (MBN: ``(M, N)`` binary bases; first and last layers: ``(8, 8)``);
    see :meth:`QuantPolicy.layer_bits`.

    Example:
        >>> from qadv.quant import get_policy
        >>> layer_bits("hidden", get_policy("mbn:3x1")), layer_bits("first", get_policy("xnor"))
        ((3, 1), (8, 8))
    """
    return policy.layer_bits(role)
