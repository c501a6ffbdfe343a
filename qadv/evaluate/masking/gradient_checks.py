"""Masking checks on the model's gradients and outputs, without attacks.

``zero-gradients`` (a saturated softmax), ``softmax-output`` (probabilities instead of
logits), ``randomness`` (two forward passes differ) and ``gradient-fidelity`` (the input
gradient against finite differences at the model's precision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import precision, signal
from qadv.evaluate.masking.outcome import PASS, SUSPECTED, CheckOutcome, check, pct
from qadv.evaluate.masking.probe import Probe
from qadv.losses import cw_margin

__all__ = ["FD_LADDER", "FD_NOISE_FACTOR", "SATURATION_GAP", "compute_epsilon"]

#: Top-1 lead above which float32 softmax saturates (exp underflows below about -88).
SATURATION_GAP = 88.0


def _gradient_facts(probe: Probe) -> dict[str, Any]:
    f = probe.logits_fn

    @jax.jit
    def stats(x, y):
        logits = f(x)
        g = signal.input_gradient(f, x, y)
        zero = jnp.all(g.reshape(g.shape[0], -1) == 0, axis=1)
        return jnp.argmax(logits, -1) == y, signal.logit_gap(logits), zero

    parts = [[np.asarray(a)[:m] for a in stats(x, y)] for x, y, m in probe.batches()]
    correct, gap, zero = (np.concatenate(c) for c in zip(*parts, strict=True))
    ok = max(int(correct.sum()), 1)
    return {
        "correct": int(correct.sum()),
        "zero_gradient_pct": 100.0 * float((zero & correct).sum()) / ok,
        "saturated_pct": 100.0 * float(((gap > SATURATION_GAP) & correct).sum()) / ok,
        "gap_quantiles": {
            str(q): float(np.percentile(gap, q)) for q in (5, 25, 50, 75, 90, 95, 99)
        },
        "gap_max": float(gap.max()),
        "gaps": [float(v) for v in gap],
    }


@check("zero-gradients", "Zero input gradients (saturated softmax)")
def _zero_gradients(probe: Probe) -> CheckOutcome:
    facts = probe.fact("gradients", lambda: _gradient_facts(probe))
    zero, sat = facts["zero_gradient_pct"], facts["saturated_pct"]
    data = {k: v for k, v in facts.items() if k != "gaps"}
    if zero >= probe.config.zero_gradient_threshold:
        return CheckOutcome(
            "zero-gradients",
            SUSPECTED,
            f"{pct(zero)} of the correctly classified examples have an exactly-zero input "
            f"gradient ({pct(sat)} lead their runner-up by more than {SATURATION_GAP:g} "
            "logits, where float32 softmax saturates); sign-gradient attacks cannot move them",
            data,
        )
    return CheckOutcome(
        "zero-gradients",
        PASS,
        f"{pct(zero)} of the correctly classified examples have a zero input gradient "
        f"(largest top-1 lead {facts['gap_max']:.1f} logits)",
        data,
    )


@check("softmax-output", "Probabilities instead of logits")
def _softmax_output(probe: Probe) -> CheckOutcome:
    def compute():
        fracs = []
        for x, _, m in probe.batches():
            z = np.asarray(probe.logits_fn(x), np.float64)[:m]
            fracs.append((z.min(axis=1) >= -1e-6) & (np.abs(z.sum(axis=1) - 1) < 1e-3))
        return float(np.concatenate(fracs).mean())

    frac = probe.fact("softmax_output", compute)
    if frac >= 0.99:
        return CheckOutcome(
            "softmax-output",
            SUSPECTED,
            f"the outputs of {pct(100 * frac)} of the examples are probabilities (non-negative, "
            "summing to 1); attacks need logits — cross-entropy on probabilities has vanishing "
            "gradients",
            {"probability_rows": frac},
        )
    return CheckOutcome(
        "softmax-output", PASS, "the outputs are not probabilities", {"probability_rows": frac}
    )


@check("randomness", "Randomness across forward passes")
def _randomness(probe: Probe) -> CheckOutcome:
    def compute():
        x, _, m = next(probe.batches())
        a = np.asarray(probe.logits_fn(x), np.float64)[:m]
        b = np.asarray(probe.logits_fn(x), np.float64)[:m]
        scale = max(float(np.abs(a).max()), 1e-12)
        return {
            "max_abs_difference": float(np.abs(a - b).max()),
            "relative": float(np.abs(a - b).max() / scale),
            "prediction_changes": int((a.argmax(1) != b.argmax(1)).sum()),
            "examples": int(m),
        }

    d = probe.fact("randomness", compute)
    if d["relative"] > 1e-5:
        return CheckOutcome(
            "randomness",
            SUSPECTED,
            f"two forward passes on the same {d['examples']} images differ (largest logit "
            f"change {d['max_abs_difference']:.3g}, {d['prediction_changes']} predictions "
            "changed); a randomised model needs expectation over transformation",
            d,
        )
    return CheckOutcome("randomness", PASS, "two forward passes give the same logits", d)


#: Finite-difference steps of the fidelity check: ``fd_step * 4**k``, k = 0..4.
FD_LADDER = 5
#: Safety factor on the rounding-noise floor of a finite difference.
FD_NOISE_FACTOR = 4.0


def _jaxpr_dtypes(jaxpr) -> set:
    """Dtypes of every value an equation of ``jaxpr`` (or of a jaxpr nested in it) reads
    or writes."""
    out = set()
    for eqn in jaxpr.eqns:
        out.update(v.aval.dtype for v in (*eqn.invars, *eqn.outvars) if hasattr(v, "aval"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out |= _jaxpr_dtypes(inner)
    return out


def compute_epsilon(logits_fn: Callable, x: jax.Array) -> float:
    """Machine epsilon of the least precise float the model computes in: any floating
    dtype in its traced computation (bfloat16 compute gives ``2**-7``), and the matmul
    precision policy in force (TF32 on a GPU gives ``2**-10``;
    :func:`qadv.precision.relative_epsilon`)."""
    dtypes = _jaxpr_dtypes(jax.make_jaxpr(logits_fn)(x).jaxpr)
    floats = [float(jnp.finfo(d).eps) for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return max([precision.relative_epsilon(), *floats])


def _fidelity_facts(probe: Probe) -> dict[str, Any]:
    """Directional derivative of the margin, by autodiff and by central differences at
    the steps ``fd_step * 4**k`` (see :func:`_gradient_fidelity` for the rule)."""
    f, h0 = probe.logits_fn, probe.config.fd_step
    steps = h0 * 4.0 ** np.arange(FD_LADDER)

    def loss(x, y):
        return jnp.sum(cw_margin(f(x), y))

    @jax.jit
    def measure(x, y, v):
        axes = tuple(range(1, x.ndim))
        g = jax.grad(loss)(x, y)
        ad = jnp.sum(g * v, axis=axes)
        g_abs = jnp.abs(g)
        fds, scales = [], []
        for h in steps.tolist():
            zp, zm = f(x + h * v), f(x - h * v)
            fds.append((cw_margin(zp, y) - cw_margin(zm, y)) / (2 * h))
            # what rounding scales with: both logit vectors, and each input's error
            # (relative to |x_i ± h|) times the margin's sensitivity to it
            size = jnp.max(jnp.abs(zp), axis=-1) + jnp.max(jnp.abs(zm), axis=-1)
            scales.append(size + 2 * jnp.sum(g_abs * (jnp.abs(x) + h), axis=axes))
        return ad, jnp.stack(fds), jnp.stack(scales)

    key = jax.random.key(probe.config.seed)
    parts = []
    for i, (x, y, m) in enumerate(probe.batches()):
        v = jax.random.rademacher(jax.random.fold_in(key, i), x.shape, jnp.float32)
        ad, fd, scale = (np.asarray(a, np.float64) for a in measure(x, y, v))
        parts.append((ad[:m], fd[:, :m], scale[:, :m]))
        if i == 0:
            eps_c = compute_epsilon(f, x)
    ad, fd, scale = (np.concatenate(p, axis=-1) for p in zip(*parts, strict=True))
    floor = FD_NOISE_FACTOR * eps_c * scale / (2 * steps[:, None])  # (K, N)
    err = np.abs(ad[None] - fd)
    size = np.maximum(np.maximum(np.abs(ad)[None], np.abs(fd)), 1e-12)
    resolved = floor <= 0.25 * np.abs(ad)[None]
    k = np.where(resolved.any(axis=0), resolved.argmax(axis=0), len(steps) - 1)
    cols = np.arange(len(ad))
    e, s_, fl = err[k, cols], size[k, cols], floor[k, cols]
    disagree = (e > 0.5 * s_) & (e > 2 * fl)
    rel = e / s_
    return {
        "disagree_fraction": float(disagree.mean()),
        "median_relative_error": float(np.median(rel)),
        "fd_step": h0,
        "steps": steps.tolist(),
        "step_used_counts": np.bincount(k, minlength=len(steps)).tolist(),
        "unresolved_fraction": float((~resolved.any(axis=0)).mean()),
        "compute_epsilon": eps_c,
    }


@check("gradient-fidelity", "Gradient against finite differences")
def _gradient_fidelity(probe: Probe) -> CheckOutcome:
    """Does the input gradient describe the function, at the precision the model runs in?

    Per example, along a random ±1 direction ``v``: ``a`` is the margin's directional
    derivative by autodiff and ``d_h`` its central difference at step ``h``, for
    ``h = fd_step * 4**k``, ``k = 0..4``. A central difference also carries rounding:
    ``|error| <= c * eps * S / (2h)``, with ``eps`` the machine epsilon of the least
    precise float in the model's computation or of the matmul precision in force
    (:func:`compute_epsilon`: float32 ``2**-23``, TF32 ``2**-10``, bfloat16 ``2**-7``),
    ``S`` the rounding's scale (``max|z|`` at both points, plus ``2 sum_i |g_i| (|x_i| +
    h)`` for each input's rounding, ``g`` the gradient) and ``c = 4`` (:data:`FD_NOISE_FACTOR`).
    Large logits make ``S`` large; bfloat16 or TF32 make ``eps`` large. The check uses the
    smallest step whose floor is at most ``|a| / 4`` (the largest if none is: the example
    is *unresolved*, counted in ``unresolved_fraction``), and counts a disagreement only
    when ``|a - d_h| > 0.5 max(|a|, |d_h|)`` **and** ``|a - d_h|`` exceeds twice the floor.
    Masking is suspected when more than ``fidelity_threshold`` of the examples disagree.
    An exactly linear model, however large its logits, and a smooth network in bfloat16
    therefore pass; a straight-through sign network in float32 (``d_h = 0`` between its
    jumps, ``±jump / 2h`` across one, never its surrogate gradient) is flagged.
    """
    d = probe.fact("fidelity", lambda: _fidelity_facts(probe))
    frac = d["disagree_fraction"]
    eps = f"compute epsilon {d['compute_epsilon']:.2g}"
    if frac > probe.config.fidelity_threshold:
        return CheckOutcome(
            "gradient-fidelity",
            SUSPECTED,
            f"for {pct(100 * frac)} of the examples the input gradient's directional derivative "
            f"disagrees (relative error > 0.5, above the rounding floor) with a finite "
            f"difference of the margin loss (steps from {d['fd_step']:.1g}, {eps}): the "
            "gradient does not describe the function (straight-through or shattered gradients)",
            d,
        )
    unresolved = d["unresolved_fraction"]
    note = (
        f"; at this precision ({eps}) finite differences cannot resolve the gradient of "
        f"{pct(100 * unresolved)} of the examples, which are not counted"
        if unresolved > 0
        else ""
    )
    return CheckOutcome(
        "gradient-fidelity",
        PASS,
        f"the gradient matches finite differences of the margin loss "
        f"(median relative error {d['median_relative_error']:.2g}){note}",
        d,
    )
