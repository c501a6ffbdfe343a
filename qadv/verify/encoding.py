"""The MILP of a small MLP over an L∞ box: interval bounds, variables, rows, and HiGHS.

:func:`encode` builds the mixed-integer program that :func:`~qadv.verify.milp.exact_robustness`
solves once per target class: the input is continuous in the box, every unstable sign or
ReLU unit gets one binary with big-M rows from :func:`interval_bounds`, and the logits are
an affine expression of the variables. The encoding and its conventions (the strict
margin :func:`sign_gaps` gives a sign unit, :data:`TIE_MARGIN` for ``argmax`` ties) are
described in :mod:`qadv.verify.milp`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import numpy as np
from scipy import optimize, sparse

from qadv.verify.network import Layer, Network, apply_activation

__all__ = [
    "TIE_MARGIN",
    "Program",
    "Unit",
    "ball",
    "encode",
    "interval_activation",
    "interval_bounds",
    "margin",
    "sign_gaps",
    "solve_milp",
]

TIE_MARGIN = 1e-4
"""Margin by which ``logit_j`` must exceed ``logit_y`` for a target ``j > y``."""


def ball(x0: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 ``(lo, hi)`` of the L∞ ball of radius ``eps`` around ``x0`` ∩ ``[0, 1]``.

    Example:
        >>> [v.tolist() for v in ball(np.array([0.1, 0.9]), 0.2)]
        [[0.0, 0.7], [0.30000000000000004, 1.0]]
    """
    x0 = np.asarray(x0, np.float64).ravel()
    return np.maximum(x0 - eps, 0.0), np.minimum(x0 + eps, 1.0)


def interval_activation(lo: np.ndarray, hi: np.ndarray, kind: str):
    """Bounds on an activation's outputs over pre-activations in ``[lo, hi]``."""
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
        h_lo, h_hi = interval_activation(a_lo, a_hi, layer.activation)
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
class Unit:
    """A nonlinear unit: one ``z`` (or none if stable) of a sign or ReLU piece.

    ``shift`` is added to the pre-activation (hardtanh pieces use +1 and -1)."""

    layer: int
    index: int
    kind: str  # "sign" or "relu"
    shift: float
    zvar: int  # -1 when stable
    stable_phase: int  # +1 / 0 for stable units (sign +1 / relu active is 1), else -1


class Program:
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


def encode(net: Network, lo: np.ndarray, hi: np.ndarray, bounds) -> tuple:
    """Build the program: returns ``(program, units, logit expression (E, e0))``."""
    prog = Program(lo, hi)
    n0 = len(lo)
    e, e0 = np.eye(n0), np.zeros(n0)  # current layer input as an affine map of the variables
    units: list[Unit] = []
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
                        units.append(Unit(k, i, kind, shift, -1, int(s > 0)))
                        out_rows.append((i, np.zeros(0), weight * s))
                        continue
                    z = prog.var(0, 1, True)
                    units.append(Unit(k, i, kind, shift, z, -1))
                    coef = _pad(ai[None], prog.nvar)[0]
                    # a >= l (1 - z)  <=>  a + l z >= l ;
                    # a <= u z - delta (1 - z)  <=>  a - (u + delta) z <= -delta
                    prog.row(coef + onehot(z, prog.nvar, l), l - ci, np.inf)
                    prog.row(coef + onehot(z, prog.nvar, -(u + delta)), -np.inf, -ci - delta)
                    out_rows.append((i, onehot(z, prog.nvar, 2.0 * weight), -weight))
                    continue
                if u <= 0:
                    units.append(Unit(k, i, kind, shift, -1, 0))
                    continue
                if l >= 0:
                    units.append(Unit(k, i, kind, shift, -1, 1))
                    out_rows.append((i, weight * ai, weight * ci))
                    continue
                y = prog.var(0, u, False)
                z = prog.var(0, 1, True)
                units.append(Unit(k, i, kind, shift, z, -1))
                coef = _pad(ai[None], prog.nvar)[0]
                yv = onehot(y, prog.nvar, 1.0)
                prog.row(coef - yv, -np.inf, -ci)  # y >= a
                prog.row(yv - coef + onehot(z, prog.nvar, -l), -np.inf, ci - l)  # y <= a - l(1-z)
                prog.row(yv + onehot(z, prog.nvar, -u), -np.inf, 0.0)  # y <= u z
                out_rows.append((i, onehot(y, prog.nvar, weight), 0.0))
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


def onehot(i: int, n: int, value: float) -> np.ndarray:
    """A length-``n`` row, ``value`` at ``i`` and 0 elsewhere."""
    v = np.zeros(n)
    v[i] = value
    return v


def margin(j: int, y: int) -> float:
    """How much ``logit_j - logit_y`` must reach for target ``j`` to beat label ``y``
    (``argmax`` breaks ties to the lowest index)."""
    return TIE_MARGIN if j > y else 0.0
