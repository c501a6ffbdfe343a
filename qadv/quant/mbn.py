"""``mbn``: ABC-Net M×N, ``M`` binary weight bases and ``N`` binary activation bases with
learned shifts and scales (BOPS: M × N binary operations). Names: ``"mbn"``,
``"mbn3x1"``, ``"mbn:3x1"``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from qadv.quant.policy import ParamFn, QuantPolicy, register_policy
from qadv.quant.primitives import mbn_activations, mbn_weights

__all__ = ["MBNPolicy", "activation_shifts"]


def activation_shifts(n: int) -> jax.Array:
    """Initial MBN activation shifts: ``n`` points evenly inside (-1, 1) (0 for n=1).

    Example:
        >>> activation_shifts(3).tolist()
        [-0.5, 0.0, 0.5]
    """
    return jnp.linspace(-1.0, 1.0, n + 2, dtype=jnp.float32)[1:-1]


@register_policy
@dataclasses.dataclass(frozen=True)
class MBNPolicy(QuantPolicy):
    """ABC-Net weights (``m_bases``) and activations (``n_bases``; parameters
    ``mbn_shifts`` and ``mbn_scales``).

    Example:
        >>> p = MBNPolicy(m_bases=2, n_bases=3)
        >>> p.name, p.layer_bits("hidden"), MBNPolicy.parse_suffix("3x1")
        ('mbn2x3', (2, 3), {'m_bases': 3, 'n_bases': 1})
    """

    kind: str = "mbn"

    options: ClassVar[tuple[str, ...]] = ("m_bases", "n_bases", "float_first", "float_last")
    forms: ClassVar[tuple[str, ...]] = ("mbn:<M>x<N>",)
    binary_activations: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return f"mbn{self.m_bases}x{self.n_bases}"

    @classmethod
    def parse_suffix(cls, suffix: str) -> dict[str, Any] | None:
        m, sep, n = suffix.partition("x")
        if sep and m.isdigit() and n.isdigit():
            return {"m_bases": int(m), "n_bases": int(n)}
        return None

    def weights(self, w: jax.Array, *, train: bool, anneal=1.0) -> jax.Array:
        return mbn_weights(w, m_bases=self.m_bases)

    def inputs(self, x: jax.Array, *, param: ParamFn) -> jax.Array:
        n = self.n_bases
        shifts = param("mbn_shifts", lambda _k: activation_shifts(n))
        scales = param("mbn_scales", jax.nn.initializers.constant(1.0 / n), (n,))
        return mbn_activations(x, shifts, scales)

    @property
    def hidden_bits(self) -> tuple[int, int]:
        return self.m_bases, self.n_bases
