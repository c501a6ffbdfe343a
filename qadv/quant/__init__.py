"""Quantizers and quantization policies.

* :mod:`qadv.quant.primitives` — the straight-through quantizers (``sign_ste``,
  ``binarize_weights``, ``xnor_weights``, ``pact_activation``, ``dorefa_weights``,
  ``mbn_*``), pure functions that work under ``jit``, ``vmap`` and every autodiff mode;
* :mod:`qadv.quant.policy` — :class:`QuantPolicy`, the registry of policy kinds and the
  one parser of policy names (:func:`get_policy`, ``"mbn:3x1"``, ``"pact4"``);
* one module per kind, each registering itself: :mod:`~qadv.quant.ref`,
  :mod:`~qadv.quant.bnn_wq`, :mod:`~qadv.quant.bnn_waq`, :mod:`~qadv.quant.mbn`,
  :mod:`~qadv.quant.pact`, :mod:`~qadv.quant.xnor`;
* :mod:`qadv.quant.cost` — BOPS (:func:`bops`, :func:`layer_bits`, :class:`LayerCost`).

A policy answers what the layers above ask of it (``qadv.models`` applies its quantizers,
training asks whether it anneals or clips, verification asks for its exact activation);
none of them branches on its kind. A new kind is one module that subclasses
:class:`QuantPolicy` and registers it with :func:`register_policy`.

Example:
    >>> import qadv.quant as quant
    >>> p = quant.get_policy("pact:4")
    >>> p.name, quant.layer_bits("hidden", p)
    ('pact4', (4, 4))
"""

from qadv.quant.policy import (
    ROLES,
    QuantPolicy,
    check_role,
    get_policy,
    option_kinds,
    parse_policy,
    policy_class,
    policy_kinds,
    register_policy,
    unregister_policy,
)
from qadv.quant.primitives import (
    WQ_METHODS,
    binarize_weights,
    check_bits,
    dorefa_weights,
    mbn_activation_bases,
    mbn_activations,
    mbn_shifts,
    mbn_weight_bases,
    mbn_weights,
    pact_activation,
    round_ste,
    sign_ste,
    straight_through,
    uniform_quantize,
    xnor_weights,
)

# the built-in kinds register themselves, in this order (the order error messages list)
from qadv.quant.ref import RefPolicy  # isort: skip
from qadv.quant.bnn_wq import BNNWQPolicy  # isort: skip
from qadv.quant.bnn_waq import BNNWAQPolicy  # isort: skip
from qadv.quant.mbn import MBNPolicy  # isort: skip
from qadv.quant.pact import PACT_ALPHA_INIT, PACTPolicy  # isort: skip
from qadv.quant.xnor import XNORPolicy  # isort: skip
from qadv.quant.cost import LayerCost, bops, layer_bits  # isort: skip

POLICY_KINDS: tuple[str, ...] = policy_kinds()
"""The built-in kinds; :func:`policy_kinds` also lists kinds registered later."""

__all__ = [
    "PACT_ALPHA_INIT",
    "POLICY_KINDS",
    "ROLES",
    "WQ_METHODS",
    "BNNWAQPolicy",
    "BNNWQPolicy",
    "LayerCost",
    "MBNPolicy",
    "PACTPolicy",
    "QuantPolicy",
    "RefPolicy",
    "XNORPolicy",
    "binarize_weights",
    "bops",
    "check_bits",
    "check_role",
    "dorefa_weights",
    "get_policy",
    "layer_bits",
    "mbn_activation_bases",
    "mbn_activations",
    "mbn_shifts",
    "mbn_weight_bases",
    "mbn_weights",
    "option_kinds",
    "pact_activation",
    "parse_policy",
    "policy_class",
    "policy_kinds",
    "register_policy",
    "round_ste",
    "sign_ste",
    "straight_through",
    "uniform_quantize",
    "unregister_policy",
    "xnor_weights",
]
