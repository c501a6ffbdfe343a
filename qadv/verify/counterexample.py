"""Confirming a MILP's counterexample on the real model, and the cuts when it fails.

A MILP solution is adversarial in real arithmetic up to HiGHS's tolerances. Before
:func:`~qadv.verify.milp.exact_robustness` reports it, :func:`polish` moves it to the
interior of its activation pattern's region (a linear program), :func:`in_ball32` rounds
it to float32 inside the ball, and :func:`is_adversarial` scores it on the JAX model (or
the float64 network). A pattern that fails is excluded by :func:`no_good_cut`, at most
:func:`cut_limit` times per target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from scipy import optimize

from qadv.verify.encoding import Unit, margin
from qadv.verify.network import Network

__all__ = ["LogitsFn", "cut_limit", "in_ball32", "is_adversarial", "no_good_cut", "polish"]

LogitsFn = Callable[[Any], Any]
_jit_apply = jax.jit(lambda fn, x: fn(x))


def polish(
    net: Network, units: Sequence[Unit], zvals: np.ndarray, lo, hi, y: int, j: int
) -> tuple[np.ndarray | None, float]:
    """The interior point of the solution's activation region (LP), and its slack."""
    n0 = len(lo)
    by_layer: dict[int, list[Unit]] = {}
    for unit in units:
        by_layer.setdefault(unit.layer, []).append(unit)
    a_rows, b_lo = [], []  # rows over (x, s): coef @ [x, s] >= b
    e, e0 = np.eye(n0), np.zeros(n0)
    for k, layer in enumerate(net.layers[:-1]):
        a, c = layer.weight.T @ e, layer.weight.T @ e0 + layer.bias
        e_new, e0_new = np.zeros((layer.width, n0)), np.zeros(layer.width)
        for unit in by_layer.get(k, []):
            ai, ci = a[unit.index], c[unit.index] + unit.shift
            phase = unit.stable_phase if unit.zvar < 0 else round(float(zvals[unit.zvar]))
            weight = -1.0 if unit.shift < 0 else 1.0
            if unit.kind == "sign":
                s = 1.0 if phase else -1.0
                if unit.zvar >= 0:  # s * a >= r * slack
                    r = np.abs(ai).sum() + abs(ci) + 1e-12
                    a_rows.append(np.append(s * ai, -r))
                    b_lo.append(-s * ci)
                e0_new[unit.index] += s
                continue
            if unit.zvar >= 0:  # relu phase: a >= 0 or a <= 0 (continuous: no slack)
                s = 1.0 if phase else -1.0
                a_rows.append(np.append(s * ai, 0.0))
                b_lo.append(-s * ci)
            if phase:
                e_new[unit.index] += weight * ai
                e0_new[unit.index] += weight * ci
        if layer.activation == "hardtanh":
            e0_new -= 1.0
        e, e0 = e_new, e0_new
    last = net.layers[-1]
    logit_a, logit_c = last.weight.T @ e, last.weight.T @ e0 + last.bias
    d_a, d_c = logit_a[j] - logit_a[y], logit_c[j] - logit_c[y]
    r = np.abs(d_a).sum() + abs(d_c) + 1.0
    a_rows.append(np.append(d_a, -r))
    b_lo.append(margin(j, y) - d_c)
    cost = np.zeros(n0 + 1)
    cost[-1] = -1.0
    res = optimize.linprog(
        cost,
        A_ub=-np.array(a_rows),
        b_ub=-np.array(b_lo),
        bounds=[*zip(lo, hi, strict=True), (None, 1.0)],
        method="highs",
    )
    if res.status != 0:
        return None, -np.inf
    return res.x[:n0], float(res.x[-1])


def in_ball32(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``x`` rounded to float32 and nudged inside ``[lo, hi]`` (exact comparison)."""
    x32 = np.clip(np.asarray(x, np.float64), lo, hi).astype(np.float32)
    x32 = np.where(x32.astype(np.float64) > hi, np.nextafter(x32, np.float32(-np.inf)), x32)
    x32 = np.where(x32.astype(np.float64) < lo, np.nextafter(x32, np.float32(np.inf)), x32)
    return x32


def is_adversarial(net: Network, logits_fn: LogitsFn | None, x: np.ndarray, y: int) -> bool:
    """Whether the model (``logits_fn``, else the float64 ``net``) misclassifies ``x``."""
    batch = np.asarray(x, np.float32).reshape((1, *net.image_shape))
    if logits_fn is None:
        logits = net.logits(batch)
    elif isinstance(logits_fn, jax.tree_util.Partial):  # weights are arguments: compile once
        logits = np.asarray(_jit_apply(logits_fn, batch))
    else:
        logits = np.asarray(logits_fn(batch))
    return int(np.argmax(logits[0])) != int(y)


def cut_limit(n_binaries: int, max_cuts: int | None) -> int:
    """No-good cuts allowed per target (see :func:`~qadv.verify.milp.exact_robustness`)."""
    if max_cuts is not None:
        return int(max_cuts)
    adaptive = max(16, 4 * n_binaries)
    return adaptive if n_binaries >= 20 else min(adaptive, 2**n_binaries)


def no_good_cut(units: Sequence[Unit], xval: np.ndarray) -> tuple:
    """Row excluding the binary assignment of ``xval``: sum over flips >= 1."""
    zs = np.array([u.zvar for u in units if u.zvar >= 0], int)
    if not zs.size:
        return zs, np.zeros(0), 1.0, np.inf
    ones = np.round(xval[zs]) > 0.5
    coef = np.where(ones, -1.0, 1.0)
    return zs, coef, 1.0 - float(ones.sum()), np.inf
