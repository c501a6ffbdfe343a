"""Model facts: parameters, multiply-accumulates and bit operations (BOPS) per layer.

``qadv info --arch resnet20 --dataset cifar10 --quant mbn:3x1`` prints them; BOPS follow
the convention of Frickenstein et al. (Table 2): ``MACs * b_w * b_a`` per conv/dense
layer, ``M * N`` binary operations per MAC for MBN, 8 x 8 bits for float layers and for
the first and last layers (:func:`qadv.quant.bops`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from qadv.data import get_dataset_info
from qadv.models import get_model, init_variables, layer_costs
from qadv.quant import bops, get_policy, layer_bits

__all__ = ["format_info", "model_info"]


def model_info(
    arch: str,
    *,
    dataset: str = "cifar10",
    quant: str = "ref",
    arch_opts: Mapping[str, Any] | None = None,
    policy_opts: Mapping[str, Any] | None = None,
) -> dict:
    """Per-layer and total parameters, MACs and BOPS of ``arch`` on ``dataset``'s images.

    Traced abstractly: nothing is computed or allocated beyond shapes.

    Example:
        >>> info = model_info("resnet20", dataset="cifar10", quant="mbn:3x1")
        >>> round(info["bops"] / 1e8, 2), len(info["layers"])
        (1.49, 20)
    """
    data = get_dataset_info(dataset)
    policy = get_policy(quant, **dict(policy_opts or {}))
    model = get_model(
        arch,
        num_classes=data.num_classes,
        policy=policy,
        mean=data.mean,
        std=data.std,
        **dict(arch_opts or {}),
    )
    costs = layer_costs(model, input_shape=data.image_shape)
    shapes = jax.eval_shape(
        lambda: init_variables(model, key=jax.random.key(0), input_shape=(1, *data.image_shape))
    )
    total_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes.get("params", {})))
    layers = []
    for c in costs:
        bw, ba = layer_bits(c.role, policy)
        layers.append(
            {
                "name": c.name,
                "kind": c.kind,
                "role": c.role,
                "out_shape": list(c.out_shape),
                "params": c.params,
                "macs": c.macs,
                "bits": [bw, ba],
                "bops": c.macs * bw * ba,
            }
        )
    return {
        "arch": arch,
        "dataset": dataset,
        "policy": policy.name,
        "input_shape": list(data.image_shape),
        "layers": layers,
        "params": total_params,
        "layer_params": sum(x["params"] for x in layers),
        "macs": sum(x["macs"] for x in layers),
        "bops": bops(costs, policy),
        "fp_bops": bops(costs, get_policy("ref")),
    }


def format_info(info: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`model_info` (one row per layer, then totals)."""
    rows = [("layer", "kind", "role", "output", "params", "MACs", "bits w×a", "BOPS")]
    for x in info["layers"]:
        rows.append(
            (
                x["name"],
                x["kind"],
                x["role"],
                "×".join(str(d) for d in x["out_shape"]),
                f"{x['params']:,}",
                f"{x['macs']:,}",
                f"{x['bits'][0]}×{x['bits'][1]}",
                f"{x['bops']:,}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        f"{info['arch']} on {info['dataset']} {tuple(info['input_shape'])}, "
        f"policy {info['policy']} (first and last layers at 8 bits)"
    ]
    for i, r in enumerate(rows):
        lines.append(
            "  ".join(
                v.ljust(w) if j < 4 else v.rjust(w)
                for j, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        f"total: {info['params']:,} parameters ({info['layer_params']:,} in conv/dense "
        f"layers), {info['macs']:,} MACs, {info['bops']:,} BOPS = "
        f"{info['bops'] / 1e8:.2f}e8 ({info['fp_bops'] / max(info['bops'], 1):.1f}x fewer "
        "than float at 8 bits)"
    )
    return "\n".join(lines)
