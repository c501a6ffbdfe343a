"""Signal-propagation diagnostics: input-output Jacobians, input Hessian norms, gradients.

Notation (Gupta & Ajanthan): logits ``a = f(x)`` with ``d`` classes, ``p(beta) =
softmax(beta a)``, loss ``l(beta) = CE(beta a, y)``, error signal ``psi = p - onehot(y)``,
Jacobian ``J = da/dx`` (``d x N`` with ``N = H*W*C``) and Gram matrix ``G = J J^T``.

The input Hessian of the temperature-scaled cross-entropy is (paper Eq. 8)::

    H(beta) = beta * sum_k psi_k d2a_k/dx2  +  beta^2 J^T S J,    S = diag(p) - p p^T.

For ReLU, max-pool and straight-through (``sign_ste``) networks the first term vanishes
almost everywhere, and ``||H||_F = beta^2 sqrt(tr(S G S G))``: one Jacobian per example
(``d`` reverse passes, taken from one batched linearisation in chunks that fit a memory
budget, see :func:`jacobian`) and then ``O(d^2)`` per ``beta``; the ``N x N`` Hessian is
never formed. ``tr(S G S G)`` is evaluated as ``sum_ij p_i p_j Gc_ij^2`` with
``Gc = V G' V^T``, ``V = I - 1 p^T`` and ``G'`` the Gram matrix of the rows minus the top
class's row (:func:`centred_gram`): the rows of ``V`` sum to zero, so ``G'`` gives the
same product, and it stays accurate (and non-negative) when ``p`` is nearly one-hot.
:func:`log_hessian_norm_topk` keeps the rows of the ``k`` largest logits only (HNS at 100
or 1,000 classes).

``hessian_norm(..., exact=True)`` adds the curvature term for smooth networks (tanh,
GELU, softplus) through the ``beta``-independent matrices ``Q_kl = <d2a_k, d2a_l>_F``
and ``R_k = J (d2a_k) J^T``; building ``Q`` costs ``N`` Jacobian-vector products of the
Jacobian per example (forward-over-reverse), so exact mode is meant for small inputs or
few examples. Every ``beta`` then costs ``O(d^3)``.

All functions are batched over the leading axis, pure, and usable under ``jax.jit``;
the ones that take a model compile as one program per model and shape when called
outside it (:func:`qadv.static_fn.jit_over_model`), rather than running op by op.
``logits_fn`` must treat examples independently (eval mode).

The package holds one concept per module, all re-exported here:

- :mod:`qadv.signal.jacobians`: Jacobians, memory budgets and chunking, Gram matrices,
  singular values;
- :mod:`qadv.signal.hessians`: Hessian norms from Gram matrices (Gauss-Newton, top-k,
  exact curvature);
- :mod:`qadv.signal.gradients`: input gradients, error signals, zero-gradient measures;
- :mod:`qadv.signal.prop1`: logit gaps and Proposition 1's temperature bound.
"""

from __future__ import annotations

# imports written ``X as X`` keep constants and helpers reachable as ``signal.X``, outside __all__
from qadv.signal.gradients import (
    error_signal_norm,
    input_gradient,
    input_gradient_norm,
    sign_gradient_norm,
    zero_gradient_fraction,
    zero_gradient_mask,
)
from qadv.signal.hessians import (
    centred_gram,
    curvature_terms,
    hessian_norm,
    log_hessian_norm_from_gram,
    log_hessian_norm_topk,
    top_classes,
)
from qadv.signal.jacobians import DEFAULT_MEMORY_BUDGET as DEFAULT_MEMORY_BUDGET
from qadv.signal.jacobians import PAIRS_PER_PASS as PAIRS_PER_PASS
from qadv.signal.jacobians import UNROLL_CHUNKS as UNROLL_CHUNKS
from qadv.signal.jacobians import LogitsFn as LogitsFn
from qadv.signal.jacobians import (
    activation_bytes,
    centred_jacobian_gram,
    class_chunk,
    gram,
    jacobian,
    jacobian_chunks,
    jacobian_rows,
    jacobian_singular_values,
    resolve_memory_budget,
)
from qadv.signal.jacobians import map_examples as map_examples
from qadv.signal.prop1 import logit_gap, prop1_beta, prop1_log_constant

__all__ = [
    "activation_bytes",
    "centred_gram",
    "centred_jacobian_gram",
    "class_chunk",
    "curvature_terms",
    "error_signal_norm",
    "gram",
    "hessian_norm",
    "input_gradient",
    "input_gradient_norm",
    "jacobian",
    "jacobian_chunks",
    "jacobian_rows",
    "jacobian_singular_values",
    "log_hessian_norm_from_gram",
    "log_hessian_norm_topk",
    "logit_gap",
    "prop1_beta",
    "prop1_log_constant",
    "resolve_memory_budget",
    "sign_gradient_norm",
    "top_classes",
    "zero_gradient_fraction",
    "zero_gradient_mask",
]
