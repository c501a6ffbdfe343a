"""Brute-force exact robustness of tiny networks, independent of the MILP (for tests).

* **Sign first layer** (BNN-WAQ): every first-layer sign pattern ``s ∈ {±1}^n1`` is tried.
  Whether some ``x`` in the ball realises it is a linear program: ``a_i(x) >= 0`` where
  ``s_i = +1`` and ``a_i(x) <= -t`` where ``s_i = -1``, maximising ``t`` (the pattern is
  realisable iff ``t* > 0``: ``sign(0) = +1`` makes the negative side strict). Given the
  pattern, the rest of the network is a fixed function, so the logits are known exactly.
* **ReLU network** (BNN-WQ, ref): every activation pattern of every ReLU is tried; on each
  pattern's region the network is affine, and ``max (logit_j - logit_y)`` over the region is
  a linear program.

An example is adversarial iff some realisable pattern reaches ``logit_j >= logit_y`` for a
``j < y`` or ``logit_j >= logit_y + TIE_MARGIN`` for ``j > y`` (the tie rule of
``argmax``; same convention as :mod:`qadv.verify.milp`). The cost is ``2^units`` LPs:
keep the networks tiny (``<= 12`` enumerated units).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
from scipy import optimize

from qadv.verify.encoding import TIE_MARGIN, ball
from qadv.verify.network import Network, apply_activation

__all__ = ["EnumerationResult", "enumerate_robustness"]

MAX_UNITS = 14


class EnumerationResult(NamedTuple):
    """Outcome of the brute force.

    Attributes:
        robust: no realisable pattern is adversarial.
        x_adv: ``(H, W, C)`` float64 witness of an adversarial pattern, else ``None``.
        max_margin: ``max_j (logit_j - logit_y)`` over the ball (``-inf`` if no pattern).
        patterns: patterns realisable in the ball.
    """

    robust: bool
    x_adv: np.ndarray | None
    max_margin: float
    patterns: int


def _adversarial(margins: np.ndarray, y: int) -> bool:
    idx = np.arange(len(margins))
    need = np.where(idx > y, TIE_MARGIN, 0.0)
    return bool(np.any((margins >= need) & (idx != y)))


def enumerate_robustness(net: Network, x: np.ndarray, y: int, eps: float) -> EnumerationResult:
    """Exact robustness of a tiny ``net`` at ``x`` by enumerating activation patterns.

    Uses the sign-pattern mode when the first layer's activation is ``"sign"`` and the ReLU
    mode when every hidden activation is ``"relu"``.

    Raises:
        ValueError: too many units to enumerate, or another activation mix.

    Example:
        >>> from qadv.verify.network import Layer
        >>> net = Network((Layer(np.array([[1.0], [-1.0]]), np.array([-0.1]), "sign"),
        ...                Layer(np.array([[1.0, -1.0]]), np.array([0.0, 0.0]), "none")),
        ...               (2, 1, 1))
        >>> enumerate_robustness(net, np.array([0.6, 0.4]).reshape(2, 1, 1), 0, 0.01).robust
        True
        >>> enumerate_robustness(net, np.array([0.6, 0.4]).reshape(2, 1, 1), 0, 0.1).robust
        False
    """
    acts = net.hidden_activations
    lo, hi = ball(x, float(eps))
    if acts and acts[0] == "sign":
        return _enumerate_sign(net, lo, hi, int(y))
    if all(a == "relu" for a in acts):
        return _enumerate_relu(net, lo, hi, int(y))
    raise ValueError(
        f"enumeration needs a sign first layer or all-ReLU hidden layers, got {list(acts)}"
    )


def _check_units(n: int) -> None:
    if n > MAX_UNITS:
        raise ValueError(f"{n} units to enumerate; brute force allows at most {MAX_UNITS}")


def _enumerate_sign(net: Network, lo, hi, y: int) -> EnumerationResult:
    first = net.layers[0]
    n1 = first.width
    _check_units(n1)
    n0 = len(lo)
    robust, witness, best, count = True, None, -np.inf, 0
    for bits in itertools.product((1.0, -1.0), repeat=n1):
        s = np.array(bits)
        # variables (x, t): maximise t; s_i = +1: -a_i <= 0 ; s_i = -1: a_i + t <= 0
        a_ub = np.concatenate([-(s[:, None] * first.weight.T), (s < 0)[:, None] * 1.0], axis=1)
        b_ub = s * first.bias
        cost = np.zeros(n0 + 1)
        cost[-1] = -1.0
        res = optimize.linprog(
            cost, A_ub=a_ub, b_ub=b_ub, bounds=[*zip(lo, hi, strict=True), (None, 1.0)]
        )
        if res.status != 0 or res.x[-1] <= 1e-9:
            continue
        count += 1
        h = s
        for layer in net.layers[1:]:
            h = apply_activation(h @ layer.weight + layer.bias, layer.activation)
        margins = h - h[y]
        best = max(best, float(np.delete(margins, y).max()))
        if _adversarial(margins, y):
            robust = False
            witness = res.x[:n0]
    return EnumerationResult(robust, _shaped(witness, net), best, count)


def _enumerate_relu(net: Network, lo, hi, y: int) -> EnumerationResult:
    hidden = net.layers[:-1]
    n_units = sum(layer.width for layer in hidden)
    _check_units(n_units)
    n0 = len(lo)
    robust, witness, best, count = True, None, -np.inf, 0
    for bits in itertools.product((1, 0), repeat=n_units):
        phases = np.array(bits)
        rows, rhs = [], []  # rows @ x <= rhs
        e, e0 = np.eye(n0), np.zeros(n0)
        offset = 0
        for layer in hidden:
            a, c = layer.weight.T @ e, layer.weight.T @ e0 + layer.bias
            p = phases[offset : offset + layer.width]
            offset += layer.width
            sgn = np.where(p == 1, -1.0, 1.0)  # active: -a <= 0 ; inactive: a <= 0
            rows.append(sgn[:, None] * a)
            rhs.append(-sgn * c)
            e, e0 = p[:, None] * a, p * c
        a_ub, b_ub = np.concatenate(rows), np.concatenate(rhs)
        last = net.layers[-1]
        la, lc = last.weight.T @ e, last.weight.T @ e0 + last.bias
        feasible = False
        for j in range(net.num_classes):
            if j == y:
                continue
            res = optimize.linprog(
                -(la[j] - la[y]), A_ub=a_ub, b_ub=b_ub, bounds=list(zip(lo, hi, strict=True))
            )
            if res.status != 0:
                break  # the pattern's region is empty
            feasible = True
            m = float(la[j] @ res.x + lc[j] - la[y] @ res.x - lc[y])
            best = max(best, m)
            if m >= (TIE_MARGIN if j > y else 0.0):
                robust, witness = False, res.x
        count += int(feasible)
    return EnumerationResult(robust, _shaped(witness, net), best, count)


def _shaped(x: np.ndarray | None, net: Network) -> np.ndarray | None:
    return None if x is None else np.asarray(x).reshape(net.image_shape)
