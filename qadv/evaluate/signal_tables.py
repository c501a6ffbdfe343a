"""Signal-propagation tables and the ρ ablation of one model (Gupta & Ajanthan).

- :func:`temperature_betas`: the per-example β a temperature strategy (``none``,
  ``fixed``, ``njs``, ``hns``) uses at the clean point, from the strategy itself;
- :func:`signal_table`: paper Table 13: Jacobian singular values of the β-scaled logits
  (``β J``), ``||ψ(β)||_2``, ``||∂ℓ(β)/∂x||_2`` and ``||sign ∂ℓ(β)/∂x||_2``;
- :func:`rho_ablation`: paper Table 12 (PGD++ NJS over ρ) plus the fixed-β rows and plain
  PGD, each through :func:`qadv.evaluate.evaluate_attack` (verified, resumable).

The ablation also covers Table 14: β from Proposition 1 for every correctly classified
image, without NJS's ``β₁`` (the ``prop1`` temperature), over the paper's ρ values.
:func:`qadv.evaluate.signal_report.signal_report` runs them all and writes the files.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import signal
from qadv.attacks import registry
from qadv.attacks.protocol import AttackContext, split_logits_fn
from qadv.evaluate import bounds as bounds_lib
from qadv.evaluate.core import cached_attack, check_data, padded

__all__ = [
    "PAPER_FIXED_BETAS",
    "PAPER_PROP1_RHOS",
    "PAPER_RHOS",
    "rho_ablation",
    "signal_table",
    "temperature_betas",
]

LogitsFn = Callable[[jax.Array], jax.Array]

PAPER_RHOS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 2e-1)
"""ρ values of the paper's Table 12 (PGD++ NJS)."""

PAPER_PROP1_RHOS = (1e-15, 1e-9, 1e-5, 1e-1, 2e-1, 5e-1)
"""ρ values of the paper's Table 14 (β from Proposition 1 per example)."""

PAPER_FIXED_BETAS = (0.1, 0.01)
"""Fixed temperatures compared in the paper (β = 0.01 is Table 11's "Heuristic")."""


def _temperature_config(t) -> registry.TemperatureConfig:
    return registry.make_temperature(t)


def _temperature_name(t) -> str:
    cfg = _temperature_config(t)
    if cfg.kind == "fixed":
        return f"fixed({cfg.beta:g})"
    if cfg.kind == "njs" and cfg.rho != 0.01:
        return f"njs(rho={cfg.rho:g})"
    return cfg.kind


@functools.partial(jax.jit, static_argnames="fn_static")
def _betas_batch(fn_static, fn_dyn, strategy, x, y):
    logits_fn = fn_static if fn_static is not None else fn_dyn
    state = strategy.init(logits_fn, x, y)
    return strategy.beta(state, logits_fn(x), y)


def temperature_betas(
    logits_fn: LogitsFn,
    images,
    labels,
    temperature="none",
    *,
    context: AttackContext | None = None,
    batch_size: int = 100,
) -> dict[str, np.ndarray]:
    """The per-example β a temperature strategy uses at the clean images.

    The strategy is built from its registered config exactly as the attacks build it
    (NJS calibrates ``β₁`` once on ``context.calib_images``, default ``images``), then
    ``init`` and ``beta`` are applied at the clean point (HNS: its grid search there; NJS:
    its per-step rule on the clean logits; ``none``: β = 1).

    Args:
        logits_fn: images ``(B, H, W, C)`` in ``[0, 1]`` -> logits ``(B, d)``.
        images: ``(N, H, W, C)``; labels: ``(N,)``.
        temperature: a name (``none``, ``fixed``, ``njs``, ``hns``) or a temperature config
            (``registry.make_temperature("fixed", beta=0.01)``).
        context: calibration images and input std for NJS.
        batch_size: examples per compiled call.

    Returns:
        ``beta`` ``(N,)`` float64, ``fallback`` and ``default`` ``(N,)`` bool (see
        ``qadv.attacks.temperature.BetaInfo``).

    Example:
        >>> import jax.numpy as jnp
        >>> from qadv.attacks import registry
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ jnp.eye(2)
        >>> t = registry.make_temperature("fixed", beta=0.5)
        >>> temperature_betas(f, jnp.ones((3, 2, 1, 1)), jnp.zeros(3, int), t)["beta"].tolist()
        [0.5, 0.5, 0.5]
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    n = len(images)
    cfg = _temperature_config(temperature)
    if context is None or context.calib_images is None:
        context = dataclasses.replace(context or AttackContext(), calib_images=images)
    strategy = cfg.build(logits_fn, context)
    if strategy is None:
        return {"beta": np.ones(n), "fallback": np.zeros(n, bool), "default": np.ones(n, bool)}
    fn_static, fn_dyn = split_logits_fn(logits_fn)
    bsz = min(batch_size, n)
    parts = []
    for start in range(0, n, bsz):
        xb, m = padded(images[start : start + bsz], bsz)
        yb, _ = padded(labels[start : start + bsz], bsz)
        info = _betas_batch(fn_static, fn_dyn, strategy, jnp.asarray(xb), jnp.asarray(yb))
        parts.append([np.asarray(a)[:m] for a in info])
    beta, fallback, default = (np.concatenate(c) for c in zip(*parts, strict=True))
    return {"beta": beta.astype(np.float64), "fallback": fallback, "default": default}


@functools.partial(jax.jit, static_argnames="fn_static")
def _signal_batch(fn_static, fn_dyn, x, y, betas):
    """Per example: correctness, singular values of J, and per temperature (rows of
    ``betas (K, B)``): ||psi||, ||grad||_2, ||sign grad||_2, all-zero gradient."""
    logits_fn = fn_static if fn_static is not None else fn_dyn
    logits = logits_fn(x)
    sv = signal.jacobian_singular_values(logits_fn, x)

    def per_beta(beta):
        g = signal.input_gradient(logits_fn, x, y, beta)
        axes = tuple(range(1, g.ndim))
        return (
            signal.error_signal_norm(logits, y, beta),
            bounds_lib.lp_norm(g, "l2"),
            jnp.sqrt(jnp.sum((g != 0).astype(g.dtype), axis=axes)),
            jnp.all(g == 0, axis=axes),
        )

    psi, gnorm, sgnorm, zero = jax.lax.map(per_beta, betas)
    return jnp.argmax(logits, axis=-1) == y, sv, psi, gnorm, sgnorm, zero


def _stats(a) -> dict[str, float]:
    a = np.asarray(a, np.float64)
    if not a.size:
        return {}
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "median": float(np.median(a)),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def signal_table(
    logits_fn: LogitsFn,
    images,
    labels,
    *,
    temperatures: Sequence = ("none", "njs", "hns"),
    context: AttackContext | None = None,
    correct_only: bool = True,
    max_examples: int | None = 500,
    batch_size: int = 100,
) -> dict[str, Any]:
    """Paper Table 13 for the original network and each temperature strategy.

    For each temperature, with ``β`` the per-example temperature the strategy uses at the
    clean point (:func:`temperature_betas`): the mean and standard deviation of all ``d``
    singular values of ``β J`` (the β-scaled logits' Jacobian) over the examples, and the
    means of ``||ψ(β)||_2``, ``||∂ℓ(β)/∂x||_2`` and ``||sign(∂ℓ(β)/∂x)||_2``
    (``ℓ(β) = CE(β f(x), y)``), plus the fraction of exactly-zero gradients and β's
    distribution. The paper uses 500 correctly classified test images.

    Args:
        logits_fn: images ``(B, H, W, C)`` in ``[0, 1]`` -> logits ``(B, d)``.
        images: ``(N, H, W, C)``; labels: ``(N,)``.
        temperatures: names or temperature configs; ``none`` is the original network.
        context: NJS calibration images (default: all of ``images``, in order).
        correct_only: keep only correctly classified examples (as the paper).
        max_examples: use at most this many (the first ones kept); ``None`` for all.
        batch_size: examples per compiled call.

    Returns:
        ``{"n_evaluated", "n_used", "sign_grad_norm_max", "rows": {name: statistics}}``.
    """
    images, labels = check_data(images, labels)
    context = context if context is not None else AttackContext()
    if context.calib_images is None:
        context = dataclasses.replace(context, calib_images=images)
    names = [_temperature_name(t) for t in temperatures]
    if len(set(names)) != len(names):
        raise ValueError(f"temperatures repeat: {names}")
    betas = [
        temperature_betas(logits_fn, images, labels, t, context=context, batch_size=batch_size)
        for t in temperatures
    ]
    beta_arr = np.stack([b["beta"] for b in betas]).astype(np.float32)  # (K, N)
    fn_static, fn_dyn = split_logits_fn(logits_fn)
    n = len(images)
    bsz = min(batch_size, n)
    parts = []
    for start in range(0, n, bsz):
        xb, m = padded(images[start : start + bsz], bsz)
        yb, _ = padded(labels[start : start + bsz], bsz)
        bb = np.stack([padded(r[start : start + bsz], bsz)[0] for r in beta_arr])
        out = _signal_batch(fn_static, fn_dyn, jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(bb))
        correct_b, sv_b, *per_t = (np.asarray(a) for a in out)
        parts.append([correct_b[:m], sv_b[:m], *(a[:, :m] for a in per_t)])
    correct = np.concatenate([p[0] for p in parts])
    sv = np.concatenate([p[1] for p in parts])
    psi, gnorm, sgnorm, zero = (np.concatenate([p[i] for p in parts], axis=1) for i in range(2, 6))
    keep = np.flatnonzero(correct) if correct_only else np.arange(n)
    if max_examples is not None:
        keep = keep[:max_examples]
    rows = {}
    for k, name in enumerate(names):
        scaled = beta_arr[k][keep, None].astype(np.float64) * sv[keep].astype(np.float64)
        rows[name] = {
            "temperature": registry.to_dict(_temperature_config(temperatures[k])),
            "beta": _stats(betas[k]["beta"][keep]),
            "fallback_count": int(betas[k]["fallback"][keep].sum()),
            "jsv_mean": float(scaled.mean()) if scaled.size else float("nan"),
            "jsv_std": float(scaled.std()) if scaled.size else float("nan"),
            "psi_norm_mean": float(np.mean(psi[k, keep])) if keep.size else float("nan"),
            "grad_norm_mean": float(np.mean(gnorm[k, keep])) if keep.size else float("nan"),
            "sign_grad_norm_mean": float(np.mean(sgnorm[k, keep])) if keep.size else float("nan"),
            "zero_gradient_fraction": float(np.mean(zero[k, keep])) if keep.size else float("nan"),
        }
    return {
        "n_evaluated": n,
        "n_used": int(keep.size),
        "correct_only": correct_only,
        "clean_accuracy": 100.0 * float(correct.mean()),
        "sign_grad_norm_max": float(math.sqrt(math.prod(images.shape[1:]))),
        "rows": rows,
    }


# ----------------------------------------------------------------------- rho ablation


def _check_ablation(rhos: Sequence[float], fixed_betas: Sequence[float]) -> None:
    for r in rhos:
        if isinstance(r, bool) or not (isinstance(r, int | float) and 0.0 < r < 1.0):
            raise ValueError(f"bad rho {r!r}; every rho must lie in (0, 1)")
    for b in fixed_betas:
        if isinstance(b, bool) or not (isinstance(b, int | float) and math.isfinite(b) and b > 0):
            raise ValueError(f"bad fixed beta {b!r}; it must be a finite number > 0")


def rho_ablation(
    logits_fn: LogitsFn,
    images,
    labels,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    steps: int = 20,
    rhos: Sequence[float] = PAPER_RHOS,
    fixed_betas: Sequence[float] = PAPER_FIXED_BETAS,
    prop1_rhos: Sequence[float] = PAPER_PROP1_RHOS,
    include_hns: bool = True,
    context: AttackContext | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 250,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Robust accuracy of PGD (β = 1), PGD++ with fixed β, PGD++ NJS over ρ (Table 12),
    PGD++ with Proposition 1's β per example over ρ (Table 14) and PGD++ HNS, all with the
    same ε, steps, step size (the norm's default) and seed.

    Each row runs through :func:`qadv.evaluate.evaluate_attack` (images verified in the
    ball, misclassified clean images never robust). With ``out_dir`` each attack's record
    goes to ``out_dir/<tag>.json``: an interrupted run resumes from its partial file and a
    finished one is reused when its config, seed and data match.

    Returns:
        One row per attack: ``label``, ``temperature``, ``rho``/``beta_fixed`` (where they apply),
        ``robust_accuracy``, ``clean_accuracy``, ``fallback_count``, ``beta`` statistics,
        ``wall_time_s``.
    """
    _check_ablation((*rhos, *prop1_rhos), fixed_betas)
    plan: list[tuple[str, dict[str, Any], dict[str, Any]]] = [("pgd", {}, {})]
    plan += [
        (f"pgd_fixed_{b:g}", {"temperature": "fixed", "beta": b}, {"beta_fixed": b})
        for b in fixed_betas
    ]
    plan += [(f"pgd_njs_rho_{r:g}", {"temperature": "njs", "rho": r}, {"rho": r}) for r in rhos]
    plan += [
        (f"pgd_prop1_rho_{r:g}", {"temperature": "prop1", "rho": r}, {"rho": r}) for r in prop1_rhos
    ]
    if include_hns:
        plan.append(("pgd_hns", {"temperature": "hns"}, {}))
    out = Path(out_dir) if out_dir is not None else None
    rows = []
    for tag, opts, shown in plan:
        cfg = registry.make("pgd", norm=norm, eps=eps, steps=steps, **opts)
        rec = cached_attack(
            None if out is None else out / f"{tag}.json",
            logits_fn,
            images,
            labels,
            cfg,
            batch_size=min(batch_size, len(images)),
            seed=seed,
            context=context,
            progress=progress,
        )
        rows.append(
            {
                "tag": tag,
                "label": rec["attack"],
                "temperature": cfg.temperature.kind,
                **shown,
                "robust_accuracy": rec["robust_accuracy"],
                "clean_accuracy": rec["clean_accuracy"],
                "fallback_count": rec.get("fallback_count", 0),
                "beta": rec.get("beta", {}),
                "wall_time_s": rec["wall_time_s"],
            }
        )
    return rows
