"""Model diagnostics: signal propagation (paper Table 13) and accuracy against PGD
iterations (paper Fig. 1a)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import attacks, signal
from qadv.attacks.keys import restart_keys
from qadv.attacks.protocol import AttackContext
from qadv.evaluate.core import padded
from qadv.evaluate.inputs import check_batch_size, check_data

__all__ = ["accuracy_curve", "diagnose"]


def accuracy_curve(
    logits_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    config,
    *,
    batch_size: int = 250,
    seed: int = 0,
    context: AttackContext | None = None,
) -> np.ndarray:
    """Robust accuracy (percent) of the PGD iterate after each step (paper Fig. 1a).

    ``config`` is a PGD/FGSM config (``registry.make("pgd", ...)``). Entry ``t`` is the
    accuracy at iterate ``t`` (0 = the random start), from one compiled ``lax.scan`` that
    records predictions at every step. As everywhere in qadv, a misclassified clean image
    never counts as robust, and example ``i`` uses the key ``fold_in(key(seed), i)``. The
    curve follows the attack's first restart with that restart's random starts, so for a
    single-restart config its last entry is the robust accuracy that
    :func:`~qadv.evaluate.evaluate_attack` reports for the same config and seed.

    Returns:
        ``(config.steps + 1,)`` accuracies in percent.
    """
    if not isinstance(config, attacks.PGDConfig):
        raise ValueError(f"accuracy_curve needs a PGD or FGSM config, got {config.label!r}")
    images, labels = check_data(images, labels, logits_fn)
    n = len(images)
    batch_size = min(check_batch_size(batch_size), n)
    context = context if context is not None else attacks.AttackContext(calib_images=images)
    strategy = attacks.prepare(config, logits_fn, context)
    atk = attacks.make_pgd(
        logits_fn,
        eps=config.eps,
        step_size=config.step_size,
        norm=config.norm,
        temperature=strategy,
        loss=config.loss,
        random_init=config.random_init,
    )

    @jax.jit
    def trajectory(keys, x, y):
        def correct(s):
            return jnp.argmax(logits_fn(s.x_adv), axis=-1) == y

        def body(s, _):
            s = atk.step(s)
            return s, correct(s)

        s0 = atk.init(keys, x, y)
        _, hits = jax.lax.scan(body, s0, None, length=config.steps)
        clean = jnp.argmax(logits_fn(x), axis=-1) == y
        return jnp.concatenate([correct(s0)[None], hits], axis=0) & clean[None]  # (T+1, B)

    base_key = jax.random.key(seed)
    total = np.zeros(config.steps + 1)
    for start in range(0, n, batch_size):
        xb, m = padded(images[start : start + batch_size], batch_size)
        yb, _ = padded(labels[start : start + batch_size], batch_size)
        ib, _ = padded(np.arange(start, start + m), batch_size)
        keys = restart_keys(attacks.example_keys(base_key, jnp.asarray(ib)), 0)
        hits = np.asarray(trajectory(keys, jnp.asarray(xb), jnp.asarray(yb)))
        total += hits[:, :m].sum(axis=1)
    return 100.0 * total / n


def diagnose(
    logits_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 100,
    jacobian_examples: int = 100,
) -> dict[str, Any]:
    """Signal-propagation statistics of a model at β = 1 (paper Table 13, DESIGN §2).

    Reports the fraction of examples whose input gradient is exactly zero, the
    distribution of the top-1 minus runner-up logit gap, mean ‖ψ‖, mean input-gradient
    and sign-gradient norms (over all examples), and Jacobian singular values over the
    first ``jacobian_examples`` correctly classified examples.
    """
    images, labels = check_data(images, labels, logits_fn)
    n = len(images)
    batch_size = min(check_batch_size(batch_size), n)

    @jax.jit
    def stats(x, y):
        logits = logits_fn(x)
        g = signal.input_gradient(logits_fn, x, y)
        axes = tuple(range(1, g.ndim))
        return (
            signal.logit_gap(logits),
            jnp.argmax(logits, axis=-1) == y,
            signal.error_signal_norm(logits, y),
            jnp.sqrt(jnp.sum(g * g, axis=axes)),
            jnp.sqrt(jnp.sum((g != 0).astype(g.dtype), axis=axes)),
            jnp.all(g == 0, axis=axes),
        )

    parts = []
    for b in range(-(-n // batch_size)):
        xb, m = padded(images[b * batch_size : (b + 1) * batch_size], batch_size)
        yb, _ = padded(labels[b * batch_size : (b + 1) * batch_size], batch_size)
        parts.append([np.asarray(a)[:m] for a in stats(jnp.asarray(xb), jnp.asarray(yb))])
    gap, correct, psi, gnorm, sgnorm, zero = (np.concatenate(c) for c in zip(*parts, strict=True))

    idx = np.flatnonzero(correct)[:jacobian_examples]
    jsv = (
        np.asarray(
            jax.jit(lambda x: signal.jacobian_singular_values(logits_fn, x))(
                jnp.asarray(images[idx])
            )
        )
        if len(idx)
        else np.zeros((0, 1))
    )
    return {
        "n": n,
        "clean_accuracy": 100.0 * float(correct.mean()),
        "zero_gradient_fraction": float(zero.mean()),
        "logit_gap_median": float(np.median(gap)),
        "logit_gap_p90": float(np.percentile(gap, 90)),
        "logit_gap_max": float(gap.max()),
        "logit_gap_frac_over_88": float((gap > 88).mean()),
        "psi_norm_mean": float(psi.mean()),
        "input_grad_norm_mean": float(gnorm.mean()),
        "sign_grad_norm_mean": float(sgnorm.mean()),
        "sign_grad_norm_max": float(np.sqrt(np.prod(images.shape[1:]))),
        "jsv_mean": float(jsv.mean()) if jsv.size else float("nan"),
        "jsv_std": float(jsv.std()) if jsv.size else float("nan"),
        "jsv_examples": len(idx),
        "logit_gap_quantiles": {
            str(q): float(np.percentile(gap, q)) for q in (5, 25, 50, 75, 90, 95, 99)
        },
    }
