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
largest slack on every sign constraint with the logit condition kept, non-strict, so that
an exact tie of integer logits stays adversarial; then the largest slack on the logit
condition), the point is rounded to float32 inside the ball and scored by ``logits_fn``
(the JAX model) or, without one, by the float64 network. A pattern whose candidates all
fail is excluded by a no-good cut and the MILP is solved again. The cut loses nothing when
a linear program proves that the pattern's region holds no adversarial point (the ``-1``
side of a sign unit strict, the logit condition non-strict): the pattern was adversarial
only on a measure-zero boundary or within solver tolerances. Otherwise the region does hold
adversarial points that float32 cannot confirm; the search goes on for a confirmable one,
but the example can no longer be robust: it is ``unsolved`` (reason ``"unconfirmed"``)
unless another pattern is confirmed. Every cut removes one activation pattern, so the
rounds make progress; by default up to ``max(16, 4 n)`` cuts per target for ``n``
binaries (at most the ``2^n`` patterns), with the time limit as the real cap. An example
still undecided then is ``unsolved`` (reason ``"numerical"``). An example whose MILPs hit
the time limit is ``unsolved`` too, and never counted either way.

"Exact" therefore means exact in real arithmetic up to HiGHS's feasibility tolerances
(1e-7 on constraints): a robustness proof can miss an adversarial region thinner than that.

The program is built in :mod:`qadv.verify.encoding`, counterexamples are confirmed in
:mod:`qadv.verify.counterexample`; this module decides (:func:`exact_robustness`, whose
outcome is an :class:`ExactOutcome`), runs a batch (:func:`verify_batch`) and bisects the
minimal radius (:func:`minimal_linf`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import optimize

from qadv.verify.counterexample import (
    LogitsFn,
    cut_limit,
    examine,
    in_ball32,
    is_adversarial,
    no_good_cut,
)
from qadv.verify.encoding import (
    TIE_MARGIN,
    Program,
    Unit,
    ball,
    encode,
    interval_activation,
    interval_bounds,
    margin,
    sign_gaps,
    solve_milp,
)
from qadv.verify.network import Network

__all__ = [
    "NOT_ROBUST",
    "ROBUST",
    "TIE_MARGIN",
    "UNSOLVED",
    "ExactOutcome",
    "MinimalResult",
    "Verdict",
    "ball",
    "exact_robustness",
    "interval_bounds",
    "minimal_linf",
    "sign_gaps",
    "solve_milp",
    "verify_batch",
]

ROBUST = "robust"
NOT_ROBUST = "not_robust"
UNSOLVED = "unsolved"


class ExactOutcome(NamedTuple):
    """Outcome of the exact check of one example at one radius.

    Attributes:
        status: ``"robust"``, ``"not_robust"`` or ``"unsolved"``.
        x_adv: ``(H, W, C)`` float32 counterexample (in the ball and ``[0, 1]``, confirmed
            by the model) when not robust, else ``None``.
        target: the class the counterexample's MILP aimed at (``-1`` if none).
        time_s: wall time spent.
        milps: MILPs solved.
        reason: why unsolved, else ``""``: ``"time limit"``; ``"numerical"`` (the
            no-good cuts ran out); ``"unconfirmed"`` (an activation pattern holds
            adversarial points in real arithmetic, but none was confirmed by the model).
    """

    status: str
    x_adv: np.ndarray | None
    target: int
    time_s: float
    milps: int
    reason: str = ""


Verdict = ExactOutcome
"""The former name of :class:`ExactOutcome`, kept so that existing imports work."""


# ----------------------------------------------------------------------------- the check


class _Problem(NamedTuple):
    """The MILP of one example at one radius, shared by its per-target checks.

    ``h_box`` bounds the last hidden layer's output (the input box for a single layer);
    ``logit_e @ v + logit_e0`` are the logits as an affine map of the variables ``v``.
    """

    net: Network
    y: int
    lo: np.ndarray
    hi: np.ndarray
    targets: list[int]
    h_box: tuple[np.ndarray, np.ndarray]
    prog: Program
    units: list[Unit]
    logit_e: np.ndarray
    logit_e0: np.ndarray
    integrality: np.ndarray
    var_bounds: optimize.Bounds
    cut_limit: int


def _checked_example(net: Network, x, y, eps, max_cuts) -> tuple[np.ndarray, int]:
    """``(float32 x, int y)``, or a one-line ``ValueError`` naming the bad argument."""
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
    return x, y


def _build_problem(net: Network, x: np.ndarray, y: int, eps: float, max_cuts) -> _Problem:
    """Bounds, encoding and target order (by the clean logits) of one example."""
    lo, hi = ball(x, eps)
    bounds = interval_bounds(net, lo, hi)
    clean = net.logits(x[None])[0]
    targets = [int(j) for j in np.argsort(-clean, kind="stable") if j != y]
    h_box = (
        (lo, hi)
        if len(net.layers) == 1
        else interval_activation(*bounds[-2], net.layers[-2].activation)
    )
    prog, units, (logit_e, logit_e0) = encode(net, lo, hi, bounds)
    integrality = np.array(prog.integrality)
    return _Problem(
        net=net,
        y=y,
        lo=lo,
        hi=hi,
        targets=targets,
        h_box=h_box,
        prog=prog,
        units=units,
        logit_e=logit_e,
        logit_e0=logit_e0,
        integrality=integrality,
        var_bounds=optimize.Bounds(np.array(prog.lb), np.array(prog.ub)),
        cut_limit=cut_limit(int(integrality.sum()), max_cuts),
    )


def _ruled_out(p: _Problem, j: int) -> bool:
    """The interval bound on ``logit_j - logit_y`` over ``h_box`` already rules ``j`` out."""
    w, b = p.net.layers[-1].weight, p.net.layers[-1].bias
    h_lo, h_hi = p.h_box
    dw = w[:, j] - w[:, p.y]
    upper = (h_lo + h_hi) / 2 @ dw + (h_hi - h_lo) / 2 @ np.abs(dw) + b[j] - b[p.y]
    return upper < margin(j, p.y)


def _confirmed(p: _Problem, xval: np.ndarray, j: int, logits_fn) -> tuple[np.ndarray | None, bool]:
    """``(x_adv, excluded)`` for the MILP solution ``xval``: the first of its candidates
    (:func:`~qadv.verify.counterexample.examine`) that the model confirms, rounded to
    float32 inside the ball, else ``None``; and whether its pattern is proven to hold no
    adversarial point (so that a no-good cut loses nothing)."""
    excluded, candidates = examine(p.net, p.units, xval, p.lo, p.hi, p.y, j)
    for cand in candidates:
        x32 = in_ball32(cand, p.lo, p.hi)
        if is_adversarial(p.net, logits_fn, x32, p.y):
            return x32.reshape(p.net.image_shape), excluded
    return None, excluded


def _check_target(
    p: _Problem, j: int, logits_fn, t0: float, time_limit: float, milps: int
) -> tuple[ExactOutcome | None, int, bool]:
    """MILP rounds for target ``j`` (one more per no-good cut): ``(outcome, milps, doubt)``
    with ``outcome`` ``None`` when no further pattern is left, else the example's final
    outcome; ``doubt``: a pattern that holds adversarial points (none confirmed) was cut,
    so ``j`` is not proven unreachable."""
    y = p.y
    diff = p.logit_e[j] - p.logit_e[y]
    target_row = (np.flatnonzero(diff), diff[np.flatnonzero(diff)])
    cuts: list = []
    doubt = False
    for _ in range(p.cut_limit + 1):
        remaining = time_limit - (time.monotonic() - t0)
        if remaining <= 0:
            out = ExactOutcome(UNSOLVED, None, -1, time.monotonic() - t0, milps, "time limit")
            return out, milps, doubt
        extra = [(*target_row, margin(j, y) - (p.logit_e0[j] - p.logit_e0[y]), np.inf), *cuts]
        res = solve_milp(
            np.zeros(p.prog.nvar),
            integrality=p.integrality,
            bounds=p.var_bounds,
            constraints=p.prog.constraints(extra),
            options={"time_limit": float(remaining), "presolve": True},
        )
        milps += 1
        if res.status == 2:  # infeasible: no pattern left for target j
            return None, milps, doubt
        if res.x is None:
            reason = "time limit" if res.status == 1 else f"solver status {res.status}"
            out = ExactOutcome(UNSOLVED, None, -1, time.monotonic() - t0, milps, reason)
            return out, milps, doubt
        x_adv, excluded = _confirmed(p, res.x, j, logits_fn)
        if x_adv is not None:
            return ExactOutcome(NOT_ROBUST, x_adv, j, time.monotonic() - t0, milps), milps, doubt
        doubt = doubt or not excluded
        cuts.append(no_good_cut(p.units, res.x))
        if not cuts[-1][0].size:  # no binaries to cut: nothing else to try
            return None, milps, doubt
    return ExactOutcome(UNSOLVED, None, -1, time.monotonic() - t0, milps, "numerical"), milps, doubt


def exact_robustness(
    net: Network,
    x: np.ndarray,
    y: int,
    eps: float,
    *,
    logits_fn: LogitsFn | None = None,
    time_limit: float = 10.0,
    max_cuts: int | None = None,
) -> ExactOutcome:
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
        An :class:`ExactOutcome`.

    Example:
        >>> from qadv.verify.network import Layer
        >>> net = Network((Layer(np.array([[1.0, -1.0]]), np.array([0.0, 0.5]), "none"),),
        ...               (1, 1, 1))
        >>> v = exact_robustness(net, np.full((1, 1, 1), 0.5), 0, 0.1)
        >>> v.status, exact_robustness(net, np.full((1, 1, 1), 0.5), 0, 0.3).status
        ('robust', 'not_robust')
    """
    t0 = time.monotonic()
    x, y = _checked_example(net, x, y, eps, max_cuts)
    if is_adversarial(net, logits_fn, x, y):
        return ExactOutcome(NOT_ROBUST, x.copy(), -1, time.monotonic() - t0, 0)
    problem = _build_problem(net, x, y, float(eps), max_cuts)
    milps, doubt = 0, False
    for j in problem.targets:
        if _ruled_out(problem, j):
            continue
        outcome, milps, doubt_j = _check_target(problem, j, logits_fn, t0, time_limit, milps)
        if outcome is not None:
            return outcome
        doubt = doubt or doubt_j
    if doubt:  # an adversarial region was found but no point of it could be confirmed
        return ExactOutcome(UNSOLVED, None, -1, time.monotonic() - t0, milps, "unconfirmed")
    return ExactOutcome(ROBUST, None, -1, time.monotonic() - t0, milps)


def verify_batch(
    net: Network,
    images: np.ndarray,
    labels: np.ndarray,
    eps: float,
    *,
    logits_fn: LogitsFn | None = None,
    time_limit: float = 10.0,
    progress: bool = False,
    on_result: Callable[[int, ExactOutcome], None] | None = None,
    skip: Sequence[int] = (),
) -> list[ExactOutcome | None]:
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
    out: list[ExactOutcome | None] = []
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

    def check(eps: float) -> ExactOutcome:
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
