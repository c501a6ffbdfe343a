"""Exact L∞ robustness of small MLPs by mixed-integer linear programming (HiGHS).

The network is the :class:`~qadv.verify.network.Network` of a BNN-WAQ, BNN-WQ or float MLP;
the threat model is the L∞ ball of radius ``eps`` around ``x`` intersected with ``[0, 1]``.

Encoding (Narodytska et al. 2018; Khalil et al. 2019; Tjeng et al. 2019 for ReLU):

* the input ``x`` is continuous in ``[max(0, x0 - eps), min(1, x0 + eps)]``;
* interval arithmetic over that box gives bounds ``l <= a <= u`` on every pre-activation
  ``a``; they are the big-M constants, and every neuron whose sign or phase they fix
  (``l >= 0`` or ``u < 0``) becomes a constant (no binary);
* a sign unit ``h = sign(a)`` (``sign(0) = +1``) is a binary ``z`` with ``h = 2z - 1`` and
  ``a >= l (1 - z)``, ``a <= u z - delta (1 - z)``. ``delta`` is the strict-inequality
  margin of ``sign(a) = -1``: behind a sign layer ``a`` takes values on a lattice (integers
  for ``±1`` weights and an integer bias), so ``a < 0`` implies ``a <= -delta`` for the gap
  ``delta > 0`` that :func:`sign_gaps` derives from the weights and bias, and an exact tie
  ``a = 0`` can only be ``+1``. On the first layer (real input) and where no lattice is
  known, ``delta = 0`` and a tie is left to the counterexample check below;
* a ReLU ``y = max(a, 0)`` is ``y >= 0``, ``y >= a``, ``y <= u z``, ``y <= a - l (1 - z)``;
* a hardtanh (BNN-WAQ with a float classifier) is ``relu(a + 1) - relu(a - 1) - 1``;
* "adversarial for target ``j``" is ``logit_j - logit_y >= 0`` for ``j < y`` and
  ``logit_j - logit_y >= TIE_MARGIN`` for ``j > y``: ``argmax`` breaks ties to the lowest
  index, and BNN-WAQ and BNN-WQ logits (integers plus biases) can tie exactly.
  ``TIE_MARGIN`` is 1e-4: it must exceed HiGHS's integer-feasibility tolerance (1e-6, not
  settable through scipy), else the solver returns exact ties as "adversarial". A target
  ``j > y`` that beats ``y`` by less than 1e-4 (about the float32 resolution of logits of
  size 1000) is therefore not counted.

One MILP per target class ``j``, with a zero objective (a feasibility problem: HiGHS stops
at the first feasible point). Per-target problems are smaller than one problem with a
target selector (no big-M over the logits) and let a non-robust example stop at the first
target that is reachable; the targets are tried in the order of the clean logits, and a
target whose interval upper bound already rules it out costs no MILP. An example is
**robust** iff every target's MILP is infeasible.

Every counterexample is confirmed on the real model: the MILP's activation pattern is
fixed and a linear program moves ``x`` to the interior of that pattern's region (the
largest slack on every sign constraint and on the logit condition), the point is rounded to
float32 inside the ball and scored by ``logits_fn`` (the JAX model) or, without one, by the
float64 network. A pattern that is adversarial only on a measure-zero boundary (or only
within solver tolerances) is excluded by a no-good cut and the MILP is solved again. Every
cut removes one activation pattern, so the rounds make progress; by default up to
``max(16, 4 n)`` cuts per target for ``n`` binaries (at most the ``2^n`` patterns), with the
time limit as the real cap. An example still undecided then is ``unsolved``.
An example whose MILPs hit the time limit is ``unsolved`` too, and never counted either way.

"Exact" therefore means exact in real arithmetic up to HiGHS's feasibility tolerances
(1e-7 on constraints): a robustness proof can miss an adversarial region thinner than that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from scipy import optimize, sparse

from qadv.verify.network import Layer, Network, apply_activation

__all__ = [
    "NOT_ROBUST",
    "ROBUST",
    "TIE_MARGIN",
    "UNSOLVED",
    "MinimalResult",
    "Verdict",
    "ball",
    "exact_robustness",
    "interval_bounds",
    "minimal_linf",
    "sign_gaps",
    "verify_batch",
]

ROBUST = "robust"
NOT_ROBUST = "not_robust"
UNSOLVED = "unsolved"
TIE_MARGIN = 1e-4
"""Margin by which ``logit_j`` must exceed ``logit_y`` for a target ``j > y``."""

LogitsFn = Callable[[Any], Any]
_jit_apply = jax.jit(lambda fn, x: fn(x))


class Verdict(NamedTuple):
    """Outcome of the exact check of one example at one radius.

    Attributes:
        status: ``"robust"``, ``"not_robust"`` or ``"unsolved"``.
        x_adv: ``(H, W, C)`` float32 counterexample (in the ball and ``[0, 1]``, confirmed
            by the model) when not robust, else ``None``.
        target: the class the counterexample's MILP aimed at (``-1`` if none).
        time_s: wall time spent.
        milps: MILPs solved.
        reason: why unsolved (``"time limit"``, ``"numerical"``), else ``""``.
    """

    status: str
    x_adv: np.ndarray | None
    target: int
    time_s: float
    milps: int
    reason: str = ""


def ball(x0: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 ``(lo, hi)`` of the L∞ ball of radius ``eps`` around ``x0`` ∩ ``[0, 1]``.

    Example:
        >>> [v.tolist() for v in ball(np.array([0.1, 0.9]), 0.2)]
        [[0.0, 0.7], [0.30000000000000004, 1.0]]
    """
    x0 = np.asarray(x0, np.float64).ravel()
    return np.maximum(x0 - eps, 0.0), np.minimum(x0 + eps, 1.0)


def _interval_activation(lo: np.ndarray, hi: np.ndarray, kind: str):
    if kind == "sign":
        return np.where(lo >= 0, 1.0, -1.0), np.where(hi < 0, -1.0, 1.0)
    return apply_activation(lo, kind), apply_activation(hi, kind)


def interval_bounds(net: Network, lo: np.ndarray, hi: np.ndarray) -> list[tuple]:
    """Interval-arithmetic bounds ``(l, u)`` on every layer's pre-activations over a box.

    Example:
        >>> from qadv.verify.network import Layer
        >>> net = Network((Layer(np.array([[1.0], [-1.0]]), np.zeros(1), "none"),), (2, 1, 1))
        >>> [b.tolist() for b in interval_bounds(net, np.zeros(2), np.ones(2))[0]]
        [[-1.0], [1.0]]
    """
    out = []
    h_lo, h_hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    for layer in net.layers:
        centre, radius = (h_lo + h_hi) / 2, (h_hi - h_lo) / 2
        a_c = centre @ layer.weight + layer.bias
        a_r = radius @ np.abs(layer.weight)
        a_lo, a_hi = a_c - a_r, a_c + a_r
        out.append((a_lo, a_hi))
        h_lo, h_hi = _interval_activation(a_lo, a_hi, layer.activation)
    return out


@contextlib.contextmanager
def _quiet_fd1():
    """Silence file descriptor 1 (HiGHS prints some diagnostics from C despite disp=False)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def solve_milp(cost: np.ndarray, **kwargs) -> optimize.OptimizeResult:
    """``scipy.optimize.milp`` with the solver's stray C output silenced."""
    with _quiet_fd1():
        return optimize.milp(cost, **kwargs)


# ----------------------------------------------------------------------------- the program


@dataclasses.dataclass
class _Unit:
    """A nonlinear unit: one ``z`` (or none if stable) of a sign or ReLU piece.

    ``shift`` is added to the pre-activation (hardtanh pieces use +1 and -1)."""

    layer: int
    index: int
    kind: str  # "sign" or "relu"
    shift: float
    zvar: int  # -1 when stable
    stable_phase: int  # +1 / 0 for stable units (sign +1 / relu active is 1), else -1


class _Program:
    """Variables, bounds and sparse rows of the MILP of one (network, box)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray):
        self.lb = list(lo)
        self.ub = list(hi)
        self.integrality = [0] * len(lo)
        self.rows: list[tuple[np.ndarray, np.ndarray, float, float]] = []

    @property
    def nvar(self) -> int:
        return len(self.lb)

    def var(self, lb: float, ub: float, integer: bool) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.integrality.append(int(integer))
        return self.nvar - 1

    def row(self, coef: np.ndarray, lb: float, ub: float) -> None:
        """``lb <= coef @ v <= ub`` (``coef`` covers the first ``len(coef)`` variables)."""
        cols = np.flatnonzero(coef)
        self.rows.append((cols, coef[cols], lb, ub))

    def constraints(self, extra=()) -> optimize.LinearConstraint:
        rows = [*self.rows, *extra]
        data = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0)
        cols = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, int)
        ptr = np.cumsum([0] + [len(r[0]) for r in rows])
        mat = sparse.csr_array((data, cols, ptr), shape=(len(rows), self.nvar))
        return optimize.LinearConstraint(
            mat, np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
        )


def _pad(e: np.ndarray, n: int) -> np.ndarray:
    return np.pad(e, ((0, 0), (0, n - e.shape[1])))


def _encode(net: Network, lo: np.ndarray, hi: np.ndarray, bounds) -> tuple:
    """Build the program: returns ``(program, units, logit expression (E, e0))``."""
    prog = _Program(lo, hi)
    n0 = len(lo)
    e, e0 = np.eye(n0), np.zeros(n0)  # current layer input as an affine map of the variables
    units: list[_Unit] = []
    for k, layer in enumerate(net.layers[:-1]):
        a, c = layer.weight.T @ e, layer.weight.T @ e0 + layer.bias
        l_all, u_all = bounds[k]
        pieces = [("sign", 0.0, 1.0)] if layer.activation == "sign" else []
        binary_input = k > 0 and net.layers[k - 1].activation == "sign"
        gaps = sign_gaps(layer) if binary_input and layer.activation == "sign" else None
        if layer.activation == "relu":
            pieces = [("relu", 0.0, 1.0)]
        if layer.activation == "hardtanh":  # relu(a + 1) - relu(a - 1) - 1
            pieces = [("relu", 1.0, 1.0), ("relu", -1.0, -1.0)]
        out_rows: list[tuple[int, np.ndarray, float]] = []  # (unit, coef, const)
        for i in range(layer.width):
            for kind, shift, weight in pieces:
                l, u = l_all[i] + shift, u_all[i] + shift
                ai, ci = a[i], c[i] + shift
                if kind == "sign":
                    delta = 0.0 if gaps is None else gaps[i]  # a < 0 => a <= -delta
                    if l > -delta or l >= 0 or u < 0:
                        s = 1.0 if l > -delta or l >= 0 else -1.0
                        units.append(_Unit(k, i, kind, shift, -1, int(s > 0)))
                        out_rows.append((i, np.zeros(0), weight * s))
                        continue
                    z = prog.var(0, 1, True)
                    units.append(_Unit(k, i, kind, shift, z, -1))
                    coef = _pad(ai[None], prog.nvar)[0]
                    # a >= l (1 - z)  <=>  a + l z >= l ;
                    # a <= u z - delta (1 - z)  <=>  a - (u + delta) z <= -delta
                    prog.row(coef + _onehot(z, prog.nvar, l), l - ci, np.inf)
                    prog.row(coef + _onehot(z, prog.nvar, -(u + delta)), -np.inf, -ci - delta)
                    out_rows.append((i, _onehot(z, prog.nvar, 2.0 * weight), -weight))
                    continue
                if u <= 0:
                    units.append(_Unit(k, i, kind, shift, -1, 0))
                    continue
                if l >= 0:
                    units.append(_Unit(k, i, kind, shift, -1, 1))
                    out_rows.append((i, weight * ai, weight * ci))
                    continue
                y = prog.var(0, u, False)
                z = prog.var(0, 1, True)
                units.append(_Unit(k, i, kind, shift, z, -1))
                coef = _pad(ai[None], prog.nvar)[0]
                yv = _onehot(y, prog.nvar, 1.0)
                prog.row(coef - yv, -np.inf, -ci)  # y >= a
                prog.row(yv - coef + _onehot(z, prog.nvar, -l), -np.inf, ci - l)  # y <= a - l(1-z)
                prog.row(yv + _onehot(z, prog.nvar, -u), -np.inf, 0.0)  # y <= u z
                out_rows.append((i, _onehot(y, prog.nvar, weight), 0.0))
        e_new = np.zeros((layer.width, prog.nvar))
        e0_new = np.zeros(layer.width)
        for i, coef, const in out_rows:
            e_new[i, : len(coef)] += coef
            e0_new[i] += const
        if layer.activation == "hardtanh":
            e0_new -= 1.0
        e, e0 = e_new, e0_new
    last = net.layers[-1]
    return prog, units, (last.weight.T @ e, last.weight.T @ e0 + last.bias)


_GAP_RTOL = 1e-9


def sign_gaps(layer: Layer) -> np.ndarray:
    """Per neuron, the ``delta > 0`` with ``a < 0  =>  a <= -delta`` over ``{±1}`` inputs.

    For a layer whose input ``h`` is a sign layer's output, ``a = h @ w + b`` takes finitely
    many values. When the magnitudes of a neuron's weights are integer multiples of one step
    ``g`` (``±1`` weights: ``g = 1``; BatchNorm-folded ``±1`` weights: ``g = |w|``), those
    values lie on the lattice ``c + 2 g Z`` with ``c = b - sum(w)`` (every ``h_k = -1``), so
    the largest negative value is ``-2 g (1 - frac(c / 2g))``, or ``-2g`` when ``0`` itself
    is a value (an exact tie, ``sign(0) = +1``). The MILP uses that gap as the strict margin
    of ``sign(a) = -1``: ``a <= -delta`` instead of ``a <= 0``, which excludes the tie
    ``a = 0`` from the ``-1`` side by construction.

    ``delta`` is reduced by ``1e-9 (|b| + sum|w|)`` against rounding. It is ``0`` (no margin:
    ties then left to the counterexample check and the no-good cuts) for a neuron without a
    common step (float weights), or whose lattice comes within that tolerance of ``0``
    without the arithmetic being exact (integers, or dyadic fractions): there rounding, not
    the real value, decides the sign of a near-tie.

    Example:
        >>> w = np.array([[1.0, 2.0, 0.5], [-1.0, 1.0, 0.3], [1.0, -1.0, 0.2]])
        >>> sign_gaps(Layer(w, np.array([0.0, 0.5, 0.0]), "sign")).round(6).tolist()
        [1.0, 1.5, 0.0]

        (the first neuron takes the values ``±1, ±3``; the second ``0.5 + {0, ±2, ±4}``;
        the third may tie at ``0.5 - 0.3 - 0.2`` up to rounding.)
    """
    w, b = layer.weight, layer.bias
    out = np.zeros(layer.width)
    for i in range(layer.width):
        col = w[:, i]
        tol = _GAP_RTOL * (abs(b[i]) + np.abs(col).sum()) + 1e-300
        g = _common_step(np.abs(col[col != 0]))
        if g <= 0:
            continue
        c = b[i] - col.sum()
        f = c / (2 * g) - np.floor(c / (2 * g))  # in [0, 1)
        if f == 0 and _exact_sums(np.append(col, b[i])):
            gap = 2 * g  # a = 0 is a value: an exact tie, sign(0) = +1
        elif min(f, 1 - f) * 2 * g <= tol:  # a near-tie that rounding may put on either side
            continue
        else:
            gap = 2 * g * (1 - f)
        out[i] = max(gap - tol, 0.0)
    return out


def _exact_sums(v: np.ndarray) -> bool:
    """Every signed sum of ``v`` is exact in float64 (multiples of ``2^-20``, small)."""
    scaled = v * 2.0**20
    return bool(np.all(scaled == np.round(scaled)) and np.abs(scaled).sum() < 2.0**52)


def _common_step(m: np.ndarray) -> float:
    """The largest ``g`` with every entry of ``m > 0`` an integer multiple of it (0: none)."""
    if not m.size:
        return 0.0
    vals = np.unique(m)
    top = float(vals[-1])
    tol = _GAP_RTOL * top
    g = float(vals[0])
    for v in vals[1:]:
        a, r = float(v), g
        while r > tol:
            a, r = r, float(np.fmod(a, r))
            if r > a - tol:  # fmod's remainder within tolerance of a full step
                r = 0.0
        g = a
        if g < 1e-4 * top:
            return 0.0
    ratio = vals / g
    if np.any(np.abs(ratio - np.round(ratio)) > 1e-8 * ratio):
        return 0.0
    return g


def _onehot(i: int, n: int, value: float) -> np.ndarray:
    v = np.zeros(n)
    v[i] = value
    return v


def _margin(j: int, y: int) -> float:
    return TIE_MARGIN if j > y else 0.0


# ----------------------------------------------------------------------------- polishing


def _polish(
    net: Network, units: Sequence[_Unit], zvals: np.ndarray, lo, hi, y: int, j: int
) -> tuple[np.ndarray | None, float]:
    """The interior point of the solution's activation region (LP), and its slack."""
    n0 = len(lo)
    by_layer: dict[int, list[_Unit]] = {}
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
    b_lo.append(_margin(j, y) - d_c)
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


def _in_ball32(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``x`` rounded to float32 and nudged inside ``[lo, hi]`` (exact comparison)."""
    x32 = np.clip(np.asarray(x, np.float64), lo, hi).astype(np.float32)
    x32 = np.where(x32.astype(np.float64) > hi, np.nextafter(x32, np.float32(-np.inf)), x32)
    x32 = np.where(x32.astype(np.float64) < lo, np.nextafter(x32, np.float32(np.inf)), x32)
    return x32


def _is_adversarial(net: Network, logits_fn: LogitsFn | None, x: np.ndarray, y: int) -> bool:
    batch = np.asarray(x, np.float32).reshape((1, *net.image_shape))
    if logits_fn is None:
        logits = net.logits(batch)
    elif isinstance(logits_fn, jax.tree_util.Partial):  # weights are arguments: compile once
        logits = np.asarray(_jit_apply(logits_fn, batch))
    else:
        logits = np.asarray(logits_fn(batch))
    return int(np.argmax(logits[0])) != int(y)


# ----------------------------------------------------------------------------- the check


def exact_robustness(
    net: Network,
    x: np.ndarray,
    y: int,
    eps: float,
    *,
    logits_fn: LogitsFn | None = None,
    time_limit: float = 10.0,
    max_cuts: int | None = None,
) -> Verdict:
    """Decide whether ``net`` classifies every point of the ``eps``-ball around ``x`` as ``y``.

    Args:
        net: the network (:func:`~qadv.verify.network.extract_network`).
        x: ``(H, W, C)`` image in ``[0, 1]``.
        y: its label.
        eps: L∞ radius ``>= 0``.
        logits_fn: the JAX model's ``(B, H, W, C) -> (B, d)`` logits function; every
            counterexample is confirmed on it (default: on the float64 ``net``).
        time_limit: seconds for the whole example (all targets); past it, ``unsolved``.
        max_cuts: no-good cuts per target before giving up on a degenerate target (its
            MILP keeps finding activation patterns that are adversarial only on a boundary
            or within tolerances). ``None`` (default): adaptive, ``max(16, 4 n)`` for ``n``
            binaries, capped by the ``2^n`` patterns there are; each cut removes one pattern,
            so every round makes progress, and ``time_limit`` is the real cap.

    Returns:
        A :class:`Verdict`.

    Example:
        >>> from qadv.verify.network import Layer
        >>> net = Network((Layer(np.array([[1.0, -1.0]]), np.array([0.0, 0.5]), "none"),),
        ...               (1, 1, 1))
        >>> v = exact_robustness(net, np.full((1, 1, 1), 0.5), 0, 0.1)
        >>> v.status, exact_robustness(net, np.full((1, 1, 1), 0.5), 0, 0.3).status
        ('robust', 'not_robust')
    """
    t0 = time.monotonic()
    if not (isinstance(eps, int | float | np.floating) and np.isfinite(eps) and eps >= 0):
        raise ValueError(f"bad eps {eps!r}; use a finite number >= 0")
    x = np.asarray(x, np.float32)
    if x.shape != tuple(net.image_shape):
        raise ValueError(f"image of shape {x.shape}, the network takes {net.image_shape}")
    y = int(y)
    if not 0 <= y < net.num_classes:
        raise ValueError(f"bad label {y}; use 0..{net.num_classes - 1}")
    if max_cuts is not None and not (isinstance(max_cuts, int | np.integer) and max_cuts >= 0):
        raise ValueError(f"bad max_cuts {max_cuts!r}; use an integer >= 0 or None")
    if _is_adversarial(net, logits_fn, x, y):
        return Verdict(NOT_ROBUST, x.copy(), -1, time.monotonic() - t0, 0)
    lo, hi = ball(x, float(eps))
    bounds = interval_bounds(net, lo, hi)
    clean = net.logits(x[None])[0]
    targets = [j for j in np.argsort(-clean, kind="stable") if j != y]
    # interval bound on logit_j - logit_y from the last hidden layer's output box
    h_lo, h_hi = (
        (lo, hi)
        if len(net.layers) == 1
        else _interval_activation(*bounds[-2], net.layers[-2].activation)
    )
    w, b = net.layers[-1].weight, net.layers[-1].bias
    prog, units, (logit_e, logit_e0) = _encode(net, lo, hi, bounds)
    integrality = np.array(prog.integrality)
    cut_limit = _cut_limit(int(integrality.sum()), max_cuts)
    var_bounds = optimize.Bounds(np.array(prog.lb), np.array(prog.ub))
    milps = 0
    for j in targets:
        j = int(j)
        dw = w[:, j] - w[:, y]
        upper = (h_lo + h_hi) / 2 @ dw + (h_hi - h_lo) / 2 @ np.abs(dw) + b[j] - b[y]
        if upper < _margin(j, y):
            continue
        diff = logit_e[j] - logit_e[y]
        target_row = (np.flatnonzero(diff), diff[np.flatnonzero(diff)])
        cuts: list = []
        for _ in range(cut_limit + 1):
            remaining = time_limit - (time.monotonic() - t0)
            if remaining <= 0:
                return Verdict(UNSOLVED, None, -1, time.monotonic() - t0, milps, "time limit")
            extra = [(*target_row, _margin(j, y) - (logit_e0[j] - logit_e0[y]), np.inf), *cuts]
            res = solve_milp(
                np.zeros(prog.nvar),
                integrality=integrality,
                bounds=var_bounds,
                constraints=prog.constraints(extra),
                options={"time_limit": float(remaining), "presolve": True},
            )
            milps += 1
            if res.status == 2:  # infeasible: target j is unreachable
                break
            if res.x is None:
                reason = "time limit" if res.status == 1 else f"solver status {res.status}"
                return Verdict(UNSOLVED, None, -1, time.monotonic() - t0, milps, reason)
            candidates = []
            x_pol, _slack = _polish(net, units, res.x, lo, hi, y, j)
            if x_pol is not None:
                candidates.append(x_pol)
            candidates.append(res.x[: len(lo)])
            for cand in candidates:
                x32 = _in_ball32(cand, lo, hi)
                if _is_adversarial(net, logits_fn, x32, y):
                    x_adv = x32.reshape(net.image_shape)
                    return Verdict(NOT_ROBUST, x_adv, j, time.monotonic() - t0, milps)
            cuts.append(_no_good_cut(units, res.x))
            if not cuts[-1][0].size:  # no binaries to cut: nothing else to try
                break
        else:
            return Verdict(UNSOLVED, None, -1, time.monotonic() - t0, milps, "numerical")
    return Verdict(ROBUST, None, -1, time.monotonic() - t0, milps)


def _cut_limit(n_binaries: int, max_cuts: int | None) -> int:
    """No-good cuts allowed per target (see :func:`exact_robustness`)."""
    if max_cuts is not None:
        return int(max_cuts)
    adaptive = max(16, 4 * n_binaries)
    return adaptive if n_binaries >= 20 else min(adaptive, 2**n_binaries)


def _no_good_cut(units: Sequence[_Unit], xval: np.ndarray) -> tuple:
    """Row excluding the binary assignment of ``xval``: sum over flips >= 1."""
    zs = np.array([u.zvar for u in units if u.zvar >= 0], int)
    if not zs.size:
        return zs, np.zeros(0), 1.0, np.inf
    ones = np.round(xval[zs]) > 0.5
    coef = np.where(ones, -1.0, 1.0)
    return zs, coef, 1.0 - float(ones.sum()), np.inf


def verify_batch(
    net: Network,
    images: np.ndarray,
    labels: np.ndarray,
    eps: float,
    *,
    logits_fn: LogitsFn | None = None,
    time_limit: float = 10.0,
    progress: bool = False,
    on_result: Callable[[int, Verdict], None] | None = None,
    skip: Sequence[int] = (),
) -> list[Verdict | None]:
    """:func:`exact_robustness` for every example, with a progress bar.

    Args:
        net, eps, logits_fn, time_limit: as for :func:`exact_robustness` (the time limit is
            per example).
        images: ``(N, H, W, C)`` in ``[0, 1]``.
        labels: ``(N,)`` integer labels.
        progress: show a tqdm bar with the running counts.
        on_result: called with ``(i, verdict)`` as each example finishes (to save it).
        skip: indices already done elsewhere (their entries are ``None``).

    Example:
        >>> from qadv.verify.network import Layer
        >>> net = Network((Layer(np.array([[1.0, -1.0]]), np.array([0.0, 0.5]), "none"),),
        ...               (1, 1, 1))
        >>> xs = np.array([0.5, 0.1], np.float32).reshape(2, 1, 1, 1)
        >>> [v.status for v in verify_batch(net, xs, np.array([0, 1]), 0.1)]
        ['robust', 'robust']
    """
    from qadv.evaluate.core import progress_bar

    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if images.ndim != 4 or labels.shape != (len(images),):
        raise ValueError(
            f"images must be (N, H, W, C) and labels (N,); got {images.shape} and {labels.shape}"
        )
    skip_set = {int(i) for i in skip}
    bar = progress_bar(len(images) - len(skip_set & set(range(len(images)))), "verify", progress)
    counts = {ROBUST: 0, NOT_ROBUST: 0, UNSOLVED: 0}
    out: list[Verdict | None] = []
    try:
        for i, (x, y) in enumerate(zip(images, labels, strict=True)):
            if i in skip_set:
                out.append(None)
                continue
            verdict = exact_robustness(
                net, x, int(y), eps, logits_fn=logits_fn, time_limit=time_limit
            )
            out.append(verdict)
            counts[verdict.status] += 1
            if on_result is not None:
                on_result(i, verdict)
            bar.update(1)
            bar.set_postfix(**counts)
    finally:
        bar.close()
    return out


class MinimalResult(NamedTuple):
    """Bracket on the minimal adversarial L∞ perturbation of one example.

    Attributes:
        lower: largest radius proven robust (0 if none).
        upper: smallest ``||x_adv - x||∞`` of a confirmed counterexample (``inf`` if none
            up to ``eps_max``).
        x_adv: that counterexample, or ``None``.
        unsolved: a check hit its time limit, so the bracket stopped short of ``tol``.
        checks: exact checks run.
    """

    lower: float
    upper: float
    x_adv: np.ndarray | None
    unsolved: bool
    checks: int


def minimal_linf(
    net: Network,
    x: np.ndarray,
    y: int,
    *,
    tol: float = 1e-3,
    time_limit: float = 10.0,
    eps_max: float = 1.0,
    logits_fn: LogitsFn | None = None,
    upper_hint: float | None = None,
) -> MinimalResult:
    """The minimal L∞ adversarial perturbation, bracketed by bisection with exact checks.

    ``upper - lower <= tol`` on return unless ``unsolved``. A counterexample found at a
    radius ``r`` tightens ``upper`` to its own distance, which may be below ``r``.

    Args:
        net, x, y, logits_fn: as for :func:`exact_robustness`.
        tol: bracket width to reach.
        time_limit: seconds per exact check.
        eps_max: the largest radius considered.
        upper_hint: the norm of an adversarial example already known (e.g. a verified
            attack's): bisection starts from ``[0, upper_hint]`` instead of checking
            ``eps_max`` first, which keeps the MILPs at small, tractable radii.

    Example:
        >>> from qadv.verify.network import Layer
        >>> net = Network((Layer(np.array([[1.0, -1.0]]), np.array([0.0, 0.5]), "none"),),
        ...               (1, 1, 1))
        >>> r = minimal_linf(net, np.full((1, 1, 1), 0.5), 0, tol=1e-4)
        >>> round(r.lower, 3), round(r.upper, 3)
        (0.25, 0.25)
    """
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"bad tol {tol!r}; use a number > 0")
    if not (np.isfinite(eps_max) and eps_max > 0):
        raise ValueError(f"bad eps_max {eps_max!r}; use a number > 0")
    x = np.asarray(x, np.float32)
    checks = 0

    def check(eps: float) -> Verdict:
        nonlocal checks
        checks += 1
        return exact_robustness(net, x, y, eps, logits_fn=logits_fn, time_limit=time_limit)

    if upper_hint is not None and np.isfinite(upper_hint) and 0 < upper_hint <= eps_max:
        lower, best, upper = 0.0, None, float(upper_hint)
    else:
        v = check(eps_max)
        if v.status == ROBUST:
            return MinimalResult(eps_max, np.inf, None, False, checks)
        if v.status == UNSOLVED:
            return MinimalResult(0.0, np.inf, None, True, checks)
        lower, best = 0.0, v.x_adv
        upper = _linf(best, x)
    if upper == 0.0:
        return MinimalResult(0.0, 0.0, best, False, checks)
    while upper - lower > tol:
        mid = (lower + upper) / 2
        v = check(mid)
        if v.status == ROBUST:
            lower = mid
        elif v.status == NOT_ROBUST:
            best, upper = v.x_adv, min(mid, _linf(v.x_adv, x))
        else:
            return MinimalResult(lower, upper, best, True, checks)
    return MinimalResult(lower, upper, best, False, checks)


def _linf(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
