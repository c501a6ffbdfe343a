"""Confirming a MILP's counterexample on the real model, and when its pattern may be cut.

A MILP solution is adversarial in real arithmetic up to HiGHS's tolerances. Its activation
pattern fixes the network to an affine function on a polyhedral region (the pattern's
*region*): a sign unit at ``+1`` needs ``a >= 0``, at ``-1`` the strict ``a < 0``
(``sign(0) = +1``), a ReLU phase ``a >= 0`` or ``a <= 0`` (continuous: no strictness), and
"adversarial for target ``j``" is the non-strict ``logit_j - logit_y >= margin(j, y)``.
Before :func:`~qadv.verify.milp.exact_robustness` reports a counterexample,
:func:`polish` moves it to the interior of that region (a linear program; the largest
slack on the sign rows with the logit condition kept, exact ties included, then the
largest slack on the logit condition), :func:`in_ball32` rounds it to float32 inside the
ball, and :func:`is_adversarial` scores it on the JAX model (or the float64 network).

:func:`examine` says whether a pattern may be excluded by :func:`no_good_cut`: only when
a linear program proves that its region holds no adversarial point (empty, or thinner
than :data:`THIN` on a strict row). A pattern that does hold adversarial points, none of
which could be confirmed, may be cut to look for a confirmable one elsewhere, but the
example can then no longer be called robust.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from scipy import optimize

from qadv.verify.encoding import Unit, margin
from qadv.verify.network import Network

__all__ = [
    "THIN",
    "LogitsFn",
    "PatternRows",
    "cut_limit",
    "examine",
    "in_ball32",
    "is_adversarial",
    "no_good_cut",
    "pattern_rows",
    "polish",
]

LogitsFn = Callable[[Any], Any]
_jit_apply = jax.jit(lambda fn, x: fn(x))

THIN = 1e-9
"""A strict row whose largest slack (relative to the row's scale) is at most this is taken
as unsatisfiable, and a closed row violated by at most this as satisfied: the same order
as HiGHS's feasibility tolerances, within which :mod:`qadv.verify.milp` is exact."""

_SIGN_POS, _SIGN_NEG, _RELU, _LOGIT = 0, 1, 2, 3


class PatternRows(NamedTuple):
    """The region of one activation pattern: ``coef @ x + const >= 0`` for every row,
    strictly (``> 0``) for the ``-1`` side of a sign unit. ``kind`` is ``0`` (sign ``+1``),
    ``1`` (sign ``-1``), ``2`` (ReLU phase) or ``3`` (the logit condition); ``scale`` makes
    slacks comparable. Rows that do not depend on ``x`` are decided and left out."""

    coef: np.ndarray
    const: np.ndarray
    kind: np.ndarray
    scale: np.ndarray


def pattern_rows(
    net: Network, units: Sequence[Unit], zvals: np.ndarray, y: int, j: int
) -> PatternRows | None:
    """The region of the pattern of ``zvals`` for target ``j``; ``None`` if a row that does
    not depend on ``x`` is violated (the pattern holds no adversarial point)."""
    n0 = net.layers[0].weight.shape[0]
    by_layer: dict[int, list[Unit]] = {}
    for unit in units:
        by_layer.setdefault(unit.layer, []).append(unit)
    rows: list[tuple[np.ndarray, float, int]] = []
    e, e0 = np.eye(n0), np.zeros(n0)
    for k, layer in enumerate(net.layers[:-1]):
        a, c = layer.weight.T @ e, layer.weight.T @ e0 + layer.bias
        e_new, e0_new = np.zeros((layer.width, n0)), np.zeros(layer.width)
        for unit in by_layer.get(k, []):
            ai, ci = a[unit.index], c[unit.index] + unit.shift
            phase = unit.stable_phase if unit.zvar < 0 else round(float(zvals[unit.zvar]))
            s = 1.0 if phase else -1.0
            if unit.kind == "sign":
                if unit.zvar >= 0:  # stable units hold on the whole box
                    rows.append((s * ai, s * ci, _SIGN_POS if phase else _SIGN_NEG))
                e0_new[unit.index] += s
                continue
            if unit.zvar >= 0:
                rows.append((s * ai, s * ci, _RELU))
            if phase:
                weight = -1.0 if unit.shift < 0 else 1.0
                e_new[unit.index] += weight * ai
                e0_new[unit.index] += weight * ci
        if layer.activation == "hardtanh":
            e0_new -= 1.0
        e, e0 = e_new, e0_new
    last = net.layers[-1]
    logit_a, logit_c = last.weight.T @ e, last.weight.T @ e0 + last.bias
    rows.append((logit_a[j] - logit_a[y], logit_c[j] - logit_c[y] - margin(j, y), _LOGIT))
    kept = []
    for coef, const, kind in rows:
        scale = np.abs(coef).sum() + abs(const) + (1.0 if kind == _LOGIT else 1e-12)
        if np.any(coef != 0):
            kept.append((coef, const, kind, scale))
        elif const <= THIN * scale if kind == _SIGN_NEG else const < -THIN * scale:
            return None
    return PatternRows(
        np.array([r[0] for r in kept]).reshape(len(kept), n0),
        np.array([r[1] for r in kept]),
        np.array([r[2] for r in kept], int),
        np.array([r[3] for r in kept]),
    )


def _max_slack(
    rows: PatternRows, lo, hi, with_slack: np.ndarray, shift: np.ndarray | None = None
) -> tuple[np.ndarray | None, float]:
    """``max t <= 1`` over ``x`` in the box with ``coef @ x + const >= scale * (t`` on the
    rows ``with_slack``, ``shift`` on the others ``)``: ``(x, t)``, or ``(None, -inf)``."""
    n0 = len(lo)
    fixed = np.zeros(len(rows.kind)) if shift is None else shift
    a_ub = np.concatenate([-rows.coef, (with_slack * rows.scale)[:, None]], axis=1)
    b_ub = rows.const - np.where(with_slack, 0.0, fixed * rows.scale)
    cost = np.zeros(n0 + 1)
    cost[-1] = -1.0
    res = optimize.linprog(
        cost,
        A_ub=a_ub if len(b_ub) else None,
        b_ub=b_ub if len(b_ub) else None,
        bounds=[*zip(lo, hi, strict=True), (None, 1.0)],
        method="highs",
    )
    if res.status != 0:
        return None, -np.inf
    return res.x[:n0], float(res.x[-1])


def polish(
    net: Network, units: Sequence[Unit], zvals: np.ndarray, lo, hi, y: int, j: int
) -> tuple[np.ndarray | None, float]:
    """An interior point of the pattern's adversarial region, and its slack on the sign rows.

    First the largest slack ``t`` on every sign row with the logit condition kept as it is
    (non-strict: an exact tie of integer logits is adversarial for ``j < y``), then, with
    the sign rows kept at ``t / 2``, the largest slack on the logit condition. ``(None,
    -inf)`` if the region is empty."""
    rows = pattern_rows(net, units, zvals, y, j)
    if rows is None:
        return None, -np.inf
    sign = rows.kind <= _SIGN_NEG
    x1, t1 = _max_slack(rows, lo, hi, sign)
    if x1 is None or t1 <= 0 or not np.any(rows.kind == _LOGIT):
        return x1, t1
    x2, _ = _max_slack(rows, lo, hi, rows.kind == _LOGIT, np.where(sign, t1 / 2, 0.0))
    return (x1, t1) if x2 is None else (x2, t1 / 2)


def examine(
    net: Network, units: Sequence[Unit], zvals: np.ndarray, lo, hi, y: int, j: int
) -> tuple[bool, list[np.ndarray]]:
    """``(excluded, candidates)`` for the pattern of the MILP solution ``zvals``.

    ``excluded``: a linear program proves the region holds no adversarial point (no
    ``x`` in the box with slack above :data:`THIN` on its strict rows), so a no-good cut
    loses nothing. ``candidates``: points to confirm on the model, the most interior first
    (:func:`polish`, then the point of that proof), and last the MILP's own ``x``."""
    raw = np.asarray(zvals[: len(lo)], np.float64)
    rows = pattern_rows(net, units, zvals, y, j)
    if rows is None:
        return True, [raw]
    x_proof, t = _max_slack(rows, lo, hi, rows.kind == _SIGN_NEG)
    if x_proof is None or t <= THIN:
        return True, [raw]
    x_pol, _ = polish(net, units, zvals, lo, hi, y, j)
    return False, [*([] if x_pol is None else [x_pol]), x_proof, raw]


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
