"""Binary weights shared by BNN-WQ and BNN-WAQ: BinaryConnect, GD-tanh or MD-tanh-S
(:func:`~qadv.quant.primitives.binarize_weights`), and how each trains."""

from __future__ import annotations

import dataclasses

import jax

from qadv.quant.policy import QuantPolicy
from qadv.quant.primitives import binarize_weights

__all__ = ["BinaryWeightPolicy"]


@dataclasses.dataclass(frozen=True)
class BinaryWeightPolicy(QuantPolicy):
    """Base of the policies with ±1 weights trained by ``wq_method`` (not registered).

    BinaryConnect (``"bc"``) clips the latent kernels to ``[-1, 1]`` after every update;
    the tanh methods train on ``tanh(beta w)`` with ``beta`` annealed instead. Evaluation
    uses hard ±1 weights.
    """

    def weights(self, w: jax.Array, *, train: bool, anneal=1.0) -> jax.Array:
        return binarize_weights(w, method=self.wq_method, beta=anneal, hard=not train)

    @property
    def anneals(self) -> bool:
        return self.wq_method != "bc"

    @property
    def clipped_params(self) -> tuple[str, ...]:
        return () if self.anneals else ("kernel",)
