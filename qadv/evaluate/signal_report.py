"""Signal propagation under temperature scaling, the ρ ablation, CLEVER and attack lower
bounds: Gupta & Ajanthan's Tables 11–14 and Finlay & Oberman's bounds, for one model.

- :func:`temperature_betas`: the per-example β a temperature strategy (``none``,
  ``fixed``, ``njs``, ``hns``) uses at the clean point, from the strategy itself;
- :func:`signal_table`: paper Table 13: Jacobian singular values of the β-scaled logits
  (``β J``), ``||ψ(β)||_2``, ``||∂ℓ(β)/∂x||_2`` and ``||sign ∂ℓ(β)/∂x||_2``;
- :func:`rho_ablation`: paper Table 12 (PGD++ NJS over ρ) plus the fixed-β rows and plain
  PGD, each through :func:`qadv.evaluate.evaluate_attack` (verified, resumable);
- :func:`signal_report`: all of the above, CLEVER per temperature (Table 11) and the
  L-/C-bounds beside FAB's minimal distances, written to ``signal.json``, ``signal.md``
  and plots.

The ablation also covers Table 14: β from Proposition 1 for every correctly classified
image, without NJS's ``β₁`` (the ``prop1`` temperature), over the paper's ρ values.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import report, signal
from qadv.attacks import get_norm, registry
from qadv.attacks.protocol import AttackContext, split_logits_fn
from qadv.evaluate import bounds as bounds_lib
from qadv.evaluate.core import (
    cached_attack,
    check_data,
    clean_predictions,
    data_fingerprint,
    model_fingerprint,
    padded,
)

__all__ = [
    "PAPER_FIXED_BETAS",
    "PAPER_PROP1_RHOS",
    "PAPER_RHOS",
    "format_signal_markdown",
    "rho_ablation",
    "signal_report",
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


# ----------------------------------------------------------------------------- report


def _section(out_dir: Path, name: str, params: Mapping[str, Any], compute: Callable[[], Any]):
    """Cached section of the report: ``out_dir/sections/<name>.json``, reused when its
    parameters (data fingerprint included) match."""
    return report.cached_json(out_dir / "sections" / f"{name}.json", params, compute)


def _floats(a) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)]


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def format_signal_markdown(record: Mapping[str, Any]) -> str:
    """The Markdown report of a :func:`signal_report` record."""
    lines = [f"# Signal propagation, ablations and lower bounds: {record.get('model', '')}", ""]
    lines.append(
        f"n = {record['n']} test images, clean accuracy {record['clean_accuracy']:.2f}%, "
        f"threat model {record['norm']} ε = {record['eps']:.6g}, PGD-{record['steps']}."
    )
    sig = record["signal"]
    lines += [
        "",
        f"## Signal propagation (paper Table 13; {sig['n_used']} correctly classified "
        "images, β at the clean point)",
        "",
    ]
    stats = [
        ("β (median)", lambda r: r["beta"].get("median")),
        ("jsv of βJ (mean)", lambda r: r["jsv_mean"]),
        ("jsv of βJ (std)", lambda r: r["jsv_std"]),
        ("‖ψ(β)‖₂", lambda r: r["psi_norm_mean"]),
        ("‖∂ℓ/∂x‖₂", lambda r: r["grad_norm_mean"]),
        (
            f"‖sign ∂ℓ/∂x‖₂ (max {sig['sign_grad_norm_max']:.1f})",
            lambda r: r["sign_grad_norm_mean"],
        ),
        ("zero-gradient fraction", lambda r: r["zero_gradient_fraction"]),
    ]
    names = list(sig["rows"])
    rows = [[label] + [_fmt(get(sig["rows"][n])) for n in names] for label, get in stats]
    lines.append(report.format_table(["statistic", *names], rows))
    lines += [
        "",
        "## PGD++ ablation: ρ of NJS (paper Table 12), Proposition 1 per example (Table 14), "
        "fixed β, plain PGD",
        "",
    ]
    rows = [
        [
            r["label"],
            _fmt(r.get("rho")),
            _fmt(r.get("beta_fixed")),
            f"{r['robust_accuracy']:.2f}",
            r["fallback_count"],
        ]
        for r in record["ablation"]
    ]
    lines.append(report.format_table(["attack", "ρ", "β", "robust acc. %", "β fallbacks"], rows))
    cl = record.get("clever")
    if cl:
        lines += [
            "",
            f"## CLEVER (paper Table 11): {cl['norm']} ball, radius {cl['radius']:g}, "
            f"{cl['nb_batches']}×{cl['batch_size']} samples"
            + (f", pool factor {cl['pool_factor']}" if cl.get("pool_factor") else "")
            + f"; {cl['n']} correctly classified images",
            "",
        ]
        lines.append(
            "Scores on softmax(β a) (as the paper's Table 11); `logits` is the "
            "temperature-invariant score on the logits. Estimates, not certificates."
        )
        lines.append("")
        rows = [
            [name, _fmt(s["mean"]), _fmt(s["median"]), _fmt(s["min"]), _fmt(s["max"])]
            for name, s in cl["summary"].items()
        ]
        lines.append(report.format_table(["output / β", "mean", "median", "min", "max"], rows))
    bd = record.get("bounds")
    if bd:
        lines += ["", f"## Finlay & Oberman lower bounds vs {bd['attack']} ({bd['norm']})", ""]
        lines.append(
            f"Empirical, not certified: L and C are the largest dual-norm gradient and "
            f"finite-difference curvature of the margin loss seen at {bd['n_samples']} points "
            f"uniform in the {bd['norm']} ball of radius {bd['radius']:.4g} (bounds capped "
            f"there); {bd['n']} correctly classified images."
        )
        lines.append("")
        rows = [
            [k, _fmt(v["mean"]), _fmt(v["median"]), _fmt(v["min"]), _fmt(v["max"])]
            for k, v in bd["summary"].items()
        ]
        lines.append(report.format_table(["quantity", "mean", "median", "min", "max"], rows))
        lines += [
            "",
            f"L-bound above the distance found: {bd['l_violations']} example(s) "
            f"{bd['l_violation_indices'][:20]}; C-bound above it: {bd['c_violations']} "
            f"{bd['c_violation_indices'][:20]}. Such an example proves its empirical "
            "constant too small.",
        ]
    lines += ["", f"Plots: {', '.join(record.get('plots', []))}", ""]
    return "\n".join(lines)


def _plots(out_dir: Path, record: Mapping[str, Any], per_example: Mapping[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    b = per_example.get("bounds")
    if b:
        fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
        series = {
            "L-bound": b["l_bound"],
            "C-bound": b["c_bound"],
            f"{record['bounds']['attack']} distance": b["distance"],
        }
        vals = [
            np.asarray([v for v in s if v is not None and v > 0], np.float64)
            for s in series.values()
        ]
        allv = np.concatenate([v for v in vals if v.size]) if any(v.size for v in vals) else None
        if allv is not None and allv.size:
            edges = (
                np.geomspace(allv.min(), allv.max() * 1.0001, 30) if allv.min() < allv.max() else 10
            )
            for (label, _), v in zip(series.items(), vals, strict=True):
                if v.size:
                    ax.hist(v, bins=edges, alpha=0.5, label=label)
            ax.set_xscale("log")
        ax.set_xlabel(f"{record['bounds']['norm']} distance")
        ax.set_ylabel("examples")
        if ax.get_legend_handles_labels()[0]:  # no warning when no distance was found
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "bounds_hist.png")
        plt.close(fig)
        written.append("bounds_hist.png")
    c = per_example.get("clever")
    if c:
        fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
        names = list(c["scores"])
        ax.boxplot([np.asarray(c["scores"][n], np.float64) for n in names])
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
        ax.set_ylabel("CLEVER score")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "clever.png")
        plt.close(fig)
        written.append("clever.png")
    abl = record.get("ablation")
    njs = [r for r in abl or [] if r["temperature"] == "njs"]
    if njs:
        curves = {"PGD++ NJS": ([r["rho"] for r in njs], [r["robust_accuracy"] for r in njs])}
        for r in abl:
            if r["temperature"] != "njs":
                curves[r["label"]] = ([njs[0]["rho"], njs[-1]["rho"]], [r["robust_accuracy"]] * 2)
        report.plot_curves(
            out_dir / "rho_ablation.png",
            curves,
            xlabel="ρ",
            ylabel="robust accuracy (%)",
            logx=True,
        )
        written.append("rho_ablation.png")
    return written


def signal_report(
    loaded_or_logits_fn,
    images,
    labels,
    *,
    out_dir: str | Path,
    eps: float = 8 / 255,
    norm: str = "linf",
    steps: int = 20,
    rhos: Sequence[float] = PAPER_RHOS,
    fixed_betas: Sequence[float] = PAPER_FIXED_BETAS,
    prop1_rhos: Sequence[float] = PAPER_PROP1_RHOS,
    signal_examples: int = 500,
    clever_examples: int = 50,
    clever_norm: str = "l1",
    clever_radius: float = 5.0,
    clever_batches: int = 50,
    clever_batch_size: int = 10,
    clever_pool_factor: int | None = 10,
    clever_beta: float = 0.01,
    bound_examples: int | None = None,
    bound_radius: float | None = None,
    bound_samples: int = 100,
    min_norm_attack: str = "fab",
    min_norm_steps: int = 100,
    context: AttackContext | None = None,
    batch_size: int = 250,
    seed: int = 0,
    progress: bool = False,
    model_name: str = "",
) -> dict[str, Any]:
    """Signal propagation, ρ ablation, CLEVER and lower bounds for one model, as files.

    Writes ``out_dir/signal.json`` (the record, per-example values included),
    ``signal.md`` (the tables) and plots (``bounds_hist.png``, ``clever.png``,
    ``rho_ablation.png``). Attacks go through ``evaluate_attack`` with their records under
    ``out_dir/attacks/`` (resumable), and every other section is cached under
    ``out_dir/sections/``: rerunning the same command skips the finished parts.

    Sections:

    - Table 13 (:func:`signal_table`) for ``none``, ``njs``, ``hns`` on up to
      ``signal_examples`` correctly classified images;
    - the ablation (:func:`rho_ablation`): PGD, PGD++ fixed β, PGD++ NJS over ``rhos``,
      PGD++ HNS;
    - CLEVER (Table 11) on the first ``clever_examples`` correctly classified images:
      softmax(β a) for Original (β = 1), ``fixed(clever_beta)``, NJS and HNS (β at the
      clean point), plus the temperature-invariant logits score; defaults follow the
      paper (ART's L1 CLEVER, 50 batches of 10, radius 5, pool factor 10);
    - L-/C-bounds of the margin loss in ``norm`` beside ``min_norm_attack``'s distances
      (``fab`` or ``deepfool``), with the examples where a bound exceeds the distance
      found. ``bound_radius`` defaults to ``4 * eps``.

    Args:
        loaded_or_logits_fn: a ``qadv.checkpoint.LoadedModel`` (its input std is used for
            NJS's normalised-space option) or a logits function.
        images: ``(N, H, W, C)`` in ``[0, 1]``; labels: ``(N,)``.
        out_dir: output folder.

    Returns:
        The record written to ``signal.json``.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(loaded_or_logits_fn, "logits_fn") and hasattr(loaded_or_logits_fn, "metadata"):
        logits_fn = loaded_or_logits_fn.logits_fn
        meta = dict(loaded_or_logits_fn.metadata)
        std = tuple(float(s) for s in meta.get("std", ())) or None
    elif callable(loaded_or_logits_fn):
        logits_fn, meta, std = loaded_or_logits_fn, {}, None
    else:
        raise ValueError(
            f"expected a LoadedModel or a logits function, got {type(loaded_or_logits_fn)}"
        )
    images, labels = check_data(images, labels, logits_fn)
    get_norm(norm)
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"bad eps {eps!r}; it must be a finite number > 0")
    _check_ablation((*rhos, *prop1_rhos), fixed_betas)
    if min_norm_attack not in ("fab", "deepfool"):
        raise ValueError(f"unknown minimum-norm attack {min_norm_attack!r}; use fab or deepfool")
    context = context if context is not None else AttackContext()
    context = dataclasses.replace(
        context,
        calib_images=images if context.calib_images is None else context.calib_images,
        input_std=context.input_std if context.input_std is not None else std,
    )
    fp = data_fingerprint(images, labels)
    base = {
        "data": fp,
        "model": meta.get("out_dir", model_name),
        "model_fingerprint": model_fingerprint(logits_fn, images),
        "seed": seed,
    }
    progress_fn = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)

    progress_fn("signal table (Table 13)")
    sig = _section(
        out,
        "signal",
        {**base, "n": signal_examples},
        lambda: signal_table(
            logits_fn,
            images,
            labels,
            context=context,
            max_examples=signal_examples,
            batch_size=min(100, batch_size),
        ),
    )

    progress_fn("PGD / PGD++ ablation (Table 12)")
    ablation = rho_ablation(
        logits_fn,
        images,
        labels,
        eps=eps,
        norm=norm,
        steps=steps,
        rhos=rhos,
        fixed_betas=fixed_betas,
        prop1_rhos=prop1_rhos,
        context=context,
        out_dir=out / "attacks",
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    correct = np.flatnonzero(
        clean_predictions(logits_fn, images, batch_size=min(batch_size, len(images))) == labels
    )
    key = jax.random.key(seed)

    progress_fn("CLEVER (Table 11)")
    sel = correct[:clever_examples]
    per_example: dict[str, Any] = {}
    clever_rec = None
    if sel.size and clever_examples > 0:
        temps = {
            "original": "none",
            f"fixed({clever_beta:g})": registry.make_temperature("fixed", beta=clever_beta),
            "njs": "njs",
            "hns": "hns",
        }

        def compute_clever():
            betas = {
                name: temperature_betas(logits_fn, images[sel], labels[sel], t, context=context)[
                    "beta"
                ]
                for name, t in temps.items()
            }
            scores = bounds_lib.clever(
                logits_fn,
                images[sel],
                key=key,
                norm=clever_norm,
                radius=clever_radius,
                nb_batches=clever_batches,
                batch_size=clever_batch_size,
                pool_factor=clever_pool_factor,
                betas=betas,
                outputs=("probs", "logits"),
                indices=sel,
            )
            return {
                "indices": sel.tolist(),
                "scores": {k: _floats(v) for k, v in scores.items()},
                "betas": {k: _floats(v) for k, v in betas.items()},
            }

        c = _section(
            out,
            "clever",
            {
                **base,
                "sel": sel.tolist(),
                "norm": clever_norm,
                "radius": clever_radius,
                "nb": clever_batches,
                "bs": clever_batch_size,
                "pool": clever_pool_factor,
                "beta": clever_beta,
            },
            compute_clever,
        )
        per_example["clever"] = c
        clever_rec = {
            "norm": clever_norm,
            "radius": clever_radius,
            "nb_batches": clever_batches,
            "batch_size": clever_batch_size,
            "pool_factor": clever_pool_factor,
            "n": len(sel),
            "summary": {k: _stats(np.asarray(v, np.float64)) for k, v in c["scores"].items()},
        }

    progress_fn(f"lower bounds and {min_norm_attack}")
    bsel = correct if bound_examples is None else correct[:bound_examples]
    bounds_rec = None
    if bsel.size:
        radius = float(bound_radius) if bound_radius is not None else 4.0 * float(eps)
        cfg = registry.make(min_norm_attack, norm=norm, eps=eps, steps=min_norm_steps)
        rec = cached_attack(
            out / "attacks" / f"{min_norm_attack}.json",
            logits_fn,
            images[bsel],
            labels[bsel],
            cfg,
            batch_size=min(batch_size, len(bsel)),
            seed=seed,
            indices=bsel,
            context=context,
            progress=progress,
        )
        dist = np.array([np.inf if d is None else d for d in rec["examples"]["distance"]])

        def compute_bounds():
            r = bounds_lib.lipschitz_bounds(
                logits_fn,
                images[bsel],
                labels[bsel],
                key=jax.random.fold_in(key, 1),
                norm=norm,
                radius=radius,
                n_samples=bound_samples,
                indices=bsel,
            )
            return {k: _floats(v) for k, v in r.items()}

        b = _section(
            out,
            "bounds",
            {**base, "sel": bsel.tolist(), "norm": norm, "radius": radius, "n": bound_samples},
            compute_bounds,
        )
        b_np = {
            k: np.array([np.inf if v is None else v for v in vals], np.float64)
            for k, vals in b.items()
        }
        cmp = bounds_lib.compare_with_distance(b_np, dist)
        per_example["bounds"] = {**b, "indices": bsel.tolist(), "distance": _floats(dist)}
        finite = np.isfinite(dist)
        bounds_rec = {
            "attack": cfg.label,
            "norm": norm,
            "radius": radius,
            "n_samples": bound_samples,
            "n": int(bsel.size),
            "summary": {
                "L-bound": _stats(b_np["l_bound"]),
                "C-bound": _stats(b_np["c_bound"]),
                "Lipschitz L": _stats(b_np["lipschitz"]),
                "curvature C": _stats(b_np["curvature"]),
                f"{cfg.label} distance (found)": _stats(dist[finite]),
            },
            "attack_found": int(finite.sum()),
            **{k: v for k, v in cmp.items() if not k.endswith("_violation")},
        }
        bounds_rec["l_violation_indices"] = bsel[cmp["l_violation_indices"]].tolist()
        bounds_rec["c_violation_indices"] = bsel[cmp["c_violation_indices"]].tolist()

    record: dict[str, Any] = {
        "model": meta.get("out_dir", model_name),
        "n": len(images),
        "clean_accuracy": sig["clean_accuracy"],
        "norm": norm,
        "eps": eps,
        "steps": steps,
        "seed": seed,
        "data": fp,
        "signal": sig,
        "ablation": ablation,
        "clever": clever_rec,
        "bounds": bounds_rec,
        "per_example": per_example,
        "wall_time_s": time.perf_counter() - t0,
        "environment": report.environment(),
        "git_commit": report.git_commit(),
        "model_metadata": meta,
    }
    record["plots"] = _plots(out, record, per_example)
    report.atomic_write_json(out / "signal.json", record)
    (out / "signal.md").write_text(format_signal_markdown(record))
    return record
