"""IPROP: the target-propagation attack of Khalil, Gupta & Dilkina (2019) on BNN-WAQ MLPs.

"Combinatorial attacks on binarized neural networks" (ICLR 2019) attacks a BNN whose
hidden units are signs by decomposing the full attack MILP into small layer-wise
problems. One IPROP iteration, for a target class ``j``:

1. **Forward**: the current image ``x`` gives the sign activations ``h_1 .. h_D``.
2. **Last-layer target**: choose ``t_D ∈ {±1}^n`` within Hamming distance ``S`` (the step
   size) of ``h_D`` that maximises ``logit_j - logit_y``. The logits are linear in
   ``h_D``, so this is exact and greedy: flip the (at most ``S``) units whose flip gains
   the most.
3. **Propagate targets backwards**: for ``l = D .. 2``, a small MILP finds
   ``t_{l-1} ∈ {±1}`` within Hamming distance ``S`` of ``h_{l-1}`` that satisfies as many
   targets ``sign(a_l(t_{l-1})) = t_l`` as possible (one binary per satisfied target,
   big-M from interval bounds).
4. **First layer**: a MILP over the input (continuous ``x`` in the ε-ball ∩ ``[0, 1]``,
   one binary per first-layer target) satisfies as many targets ``t_1`` as possible.
5. **Evaluate** the new ``x``; keep it if ``logit_j - logit_y`` did not decrease (and
   the activations moved), else double ``S`` (up to ``max_step``); stop the target when
   ``S`` is exhausted or the budget ends.

The targets tried are the runner-up classes of the clean logits (``num_targets`` of them);
the attack stops at the first image the model misclassifies.

Simplifications, stated honestly:

* the paper starts from the clean image and uses a solver time budget per iteration; here
  each small MILP has its own ``milp_time_limit`` (HiGHS) and the whole attack a number of
  ``iterations`` per target;
* the step-size schedule (doubling ``S`` after a non-improving iteration) and the
  acceptance rule (margin not decreased) are ours; the paper's exact schedule is not
  reproduced;
* the layer-wise objective counts satisfied targets with equal weights;
* only networks whose hidden activations are all ``sign`` (BNN-WAQ without ``float_last``)
  are supported.

The returned image always lies in the ball and ``[0, 1]`` (float32); success is decided by
``logits_fn`` (the JAX model) when given, else by the float64 network.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
from scipy import optimize

from qadv.verify.counterexample import LogitsFn, in_ball32, is_adversarial
from qadv.verify.encoding import ball, interval_bounds, solve_milp
from qadv.verify.network import Network

__all__ = ["IPropResult", "iprop", "iprop_applies", "iprop_batch"]

_STRICT = 1e-6  # a "-1" target asks for a <= -_STRICT * scale (sign(0) = +1)


class IPropResult(NamedTuple):
    """Outcome of IPROP on one example.

    Attributes:
        x_adv: ``(H, W, C)`` float32, in the ball and ``[0, 1]``.
        success: the model misclassifies ``x_adv``.
        target: the target class that succeeded (``-1`` if none).
        iterations: IPROP iterations run over all targets.
        time_s: wall time.
    """

    x_adv: np.ndarray
    success: bool
    target: int
    iterations: int
    time_s: float


def iprop_applies(net: Network) -> bool:
    """Whether IPROP can attack ``net``: every hidden activation is ``sign`` (a BNN-WAQ MLP
    without ``float_last``), so each hidden layer has a binary target to propagate.

    Example:
        >>> from qadv.verify.network import Layer, Network
        >>> def net(act):
        ...     w, b = np.ones((2, 2)), np.zeros(2)
        ...     return Network([Layer(w, b, act), Layer(w, b, "none")], (2, 1, 1))
        >>> iprop_applies(net("sign")), iprop_applies(net("relu"))
        (True, False)
    """
    acts = net.hidden_activations
    return bool(acts) and all(a == "sign" for a in acts)


def _check_net(net: Network) -> None:
    if not iprop_applies(net):
        raise ValueError(
            "IPROP needs a network whose hidden activations are all sign (BNN-WAQ without "
            f"float_last), got {list(net.hidden_activations)}"
        )


def _signs(net: Network, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    pre = net.preactivations(x[None])
    return [np.where(a[0] >= 0, 1.0, -1.0) for a in pre[:-1]], pre[-1][0]


def _last_target(w: np.ndarray, h: np.ndarray, y: int, j: int, step: int) -> np.ndarray:
    """Flip at most ``step`` units of ``h`` to maximise ``(w_j - w_y) · h`` (exact)."""
    gain = -2.0 * h * (w[:, j] - w[:, y])
    order = np.argsort(-gain, kind="stable")[:step]
    flip = order[gain[order] > 0]
    t = h.copy()
    t[flip] *= -1.0
    return t


def _hidden_target(
    w: np.ndarray, b: np.ndarray, h: np.ndarray, t: np.ndarray, step: int, time_limit: float
) -> np.ndarray:
    """``u ∈ {±1}^n`` within Hamming ``step`` of ``h`` satisfying most ``sign(u w + b) = t``."""
    n, m = w.shape
    # variables: z (n, u = 2z - 1), s (m, satisfied)
    a_z, a_c = 2.0 * w.T, b - w.sum(axis=0)  # a = a_z @ z + a_c
    lo = a_c + np.minimum(a_z, 0).sum(axis=1)
    hi = a_c + np.maximum(a_z, 0).sum(axis=1)
    scale = np.abs(a_z).sum(axis=1) + np.abs(a_c) + 1.0
    rows, lbs, ubs = [], [], []
    for k in range(m):
        s = np.zeros(m)
        if t[k] > 0:  # s_k = 1 => a_k >= 0 :  a - lo (1 - s) >= 0
            s[k] = lo[k]
            rows.append(np.concatenate([a_z[k], s]))
            lbs.append(lo[k] - a_c[k])
            ubs.append(np.inf)
        else:  # s_k = 1 => a_k <= -δ :  a <= hi (1 - s) - δ s
            s[k] = hi[k] + _STRICT * scale[k]
            rows.append(np.concatenate([a_z[k], s]))
            lbs.append(-np.inf)
            ubs.append(hi[k] - a_c[k])
    ones = h > 0  # Hamming: sum_{h=+1} (1 - z) + sum_{h=-1} z <= step
    rows.append(np.concatenate([np.where(ones, -1.0, 1.0), np.zeros(m)]))
    lbs.append(-np.inf)
    ubs.append(step - float(ones.sum()))
    res = solve_milp(
        np.concatenate([np.zeros(n), -np.ones(m)]),
        integrality=np.ones(n + m),
        bounds=optimize.Bounds(0, 1),
        constraints=optimize.LinearConstraint(np.array(rows), lbs, ubs),
        options={"time_limit": float(time_limit)},
    )
    if res.x is None:
        return h
    return np.where(np.round(res.x[:n]) > 0.5, 1.0, -1.0)


def _first_layer(
    w: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, t: np.ndarray, time_limit: float
) -> np.ndarray | None:
    """``x`` in the box satisfying most first-layer targets ``sign(x w + b) = t``."""
    n, m = w.shape
    bounds = interval_bounds_affine(w, b, lo, hi)
    a_lo, a_hi = bounds
    scale = np.abs(w).sum(axis=0) + np.abs(b) + 1.0
    rows, lbs, ubs = [], [], []
    for k in range(m):
        s = np.zeros(m)
        if t[k] > 0:
            s[k] = a_lo[k]
            rows.append(np.concatenate([w[:, k], s]))
            lbs.append(a_lo[k] - b[k])
            ubs.append(np.inf)
        else:
            s[k] = a_hi[k] + _STRICT * scale[k]
            rows.append(np.concatenate([w[:, k], s]))
            lbs.append(-np.inf)
            ubs.append(a_hi[k] - b[k])
    res = solve_milp(
        np.concatenate([np.zeros(n), -np.ones(m)]),
        integrality=np.concatenate([np.zeros(n), np.ones(m)]),
        bounds=optimize.Bounds(np.concatenate([lo, np.zeros(m)]), np.concatenate([hi, np.ones(m)])),
        constraints=optimize.LinearConstraint(np.array(rows), lbs, ubs),
        options={"time_limit": float(time_limit)},
    )
    return None if res.x is None else res.x[:n]


def interval_bounds_affine(w, b, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    c = centre @ w + b
    r = radius @ np.abs(w)
    return c - r, c + r


def iprop(
    net: Network,
    x: np.ndarray,
    y: int,
    eps: float,
    *,
    logits_fn: LogitsFn | None = None,
    step: int = 5,
    max_step: int | None = None,
    iterations: int = 10,
    num_targets: int = 3,
    milp_time_limit: float = 1.0,
) -> IPropResult:
    """Run IPROP on one example (see the module docstring).

    Args:
        net: a BNN-WAQ network (all hidden activations ``sign``).
        x: ``(H, W, C)`` image in ``[0, 1]``.
        y: its label.
        eps: L∞ radius.
        logits_fn: the JAX model, which scores the result (default: the float64 ``net``).
        step: initial step size ``S`` (units whose target may differ per layer).
        max_step: largest step size (default: the widest hidden layer).
        iterations: iterations per target class.
        num_targets: runner-up classes tried, in the order of the clean logits.
        milp_time_limit: seconds for each small MILP.

    Example:
        >>> from qadv.verify.network import Layer
        >>> net = Network((Layer(np.array([[1.0], [-1.0]]), np.array([-0.1]), "sign"),
        ...                Layer(np.array([[1.0, -1.0]]), np.array([0.0, 0.0]), "none")),
        ...               (2, 1, 1))
        >>> r = iprop(net, np.array([0.6, 0.4]).reshape(2, 1, 1), 0, 0.1)
        >>> bool(r.success), float(np.abs(r.x_adv.ravel() - [0.6, 0.4]).max()) <= 0.1 + 1e-7
        (True, True)
    """
    _check_net(net)
    t0 = time.monotonic()
    x = np.asarray(x, np.float32)
    if x.shape != tuple(net.image_shape):
        raise ValueError(f"image of shape {x.shape}, the network takes {net.image_shape}")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"bad eps {eps!r}; use a finite number >= 0")
    for name, v in (("step", step), ("iterations", iterations), ("num_targets", num_targets)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"bad {name} {v!r}; use an integer >= 1")
    y = int(y)
    lo, hi = ball(x, float(eps))
    widest = max(layer.width for layer in net.layers[:-1])
    max_step = widest if max_step is None else int(max_step)
    x0 = x.reshape(-1).astype(np.float64)
    if is_adversarial(net, logits_fn, x, y):
        return IPropResult(x.copy(), True, -1, 0, time.monotonic() - t0)
    _, clean = _signs(net, x0)
    targets = [int(j) for j in np.argsort(-clean, kind="stable") if j != y][:num_targets]
    w_last = net.layers[-1].weight
    best_x, best_gap, total = x0, -np.inf, 0
    interval_bounds(net, lo, hi)  # validates the box against the network
    for j in targets:
        cur = x0.copy()
        hs, logits = _signs(net, cur)
        gap = logits[j] - logits[y]
        s = step
        for _ in range(iterations):
            total += 1
            t = _last_target(w_last, hs[-1], y, j, s)
            for layer_idx in range(len(hs) - 1, 0, -1):
                layer = net.layers[layer_idx]
                t = _hidden_target(
                    layer.weight, layer.bias, hs[layer_idx - 1], t, s, milp_time_limit
                )
            cand = _first_layer(
                net.layers[0].weight, net.layers[0].bias, lo, hi, t, milp_time_limit
            )
            moved = False
            if cand is not None:
                cand = in_ball32(cand, lo, hi).astype(np.float64)
                new_hs, new_logits = _signs(net, cand)
                new_gap = new_logits[j] - new_logits[y]
                moved = any(not np.array_equal(a, b) for a, b in zip(new_hs, hs, strict=True))
                if new_gap >= gap and moved:
                    cur, hs, gap = cand, new_hs, new_gap
                    if gap > best_gap:
                        best_x, best_gap = cur, gap
                    x32 = cur.astype(np.float32).reshape(net.image_shape)
                    if is_adversarial(net, logits_fn, x32, y):
                        return IPropResult(x32, True, j, total, time.monotonic() - t0)
                    continue
            if s >= max_step:
                break
            s = min(2 * s, max_step)
    x_best = in_ball32(best_x, lo, hi).reshape(net.image_shape)
    success = is_adversarial(net, logits_fn, x_best, y)
    return IPropResult(x_best, success, -1, total, time.monotonic() - t0)


def iprop_batch(
    net: Network,
    images: np.ndarray,
    labels: np.ndarray,
    eps: float,
    *,
    progress: bool = False,
    **options,
) -> list[IPropResult]:
    """:func:`iprop` on every example (``options`` as for :func:`iprop`), with a progress bar."""
    from qadv.evaluate.core import progress_bar

    bar = progress_bar(len(images), "iprop", progress)
    out = []
    try:
        for x, y in zip(np.asarray(images, np.float32), np.asarray(labels), strict=True):
            out.append(iprop(net, x, int(y), eps, **options))
            bar.update(1)
    finally:
        bar.close()
    return out
