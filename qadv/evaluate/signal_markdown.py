"""The Markdown page and the plots of a signal report
(:func:`qadv.evaluate.signal_report.signal_report`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qadv import records
from qadv.evaluate.beta_sweep import format_beta_sweep

__all__ = ["format_signal_markdown", "signal_plots"]


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
    lines.append(records.format_table(["statistic", *names], rows))
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
    lines.append(records.format_table(["attack", "ρ", "β", "robust acc. %", "β fallbacks"], rows))
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
        lines.append(records.format_table(["output / β", "mean", "median", "min", "max"], rows))
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
        lines.append(records.format_table(["quantity", "mean", "median", "min", "max"], rows))
        lines += [
            "",
            f"L-bound above the distance found: {bd['l_violations']} example(s) "
            f"{bd['l_violation_indices'][:20]}; C-bound above it: {bd['c_violations']} "
            f"{bd['c_violation_indices'][:20]}. Such an example proves its empirical "
            "constant too small.",
        ]
    sweep = record.get("beta_sweep")
    if sweep:
        lines += [
            "",
            f"## Against the temperature β (paper Figures 4-5): medians over "
            f"{len(sweep['examples'])} correctly classified images",
            "",
            format_beta_sweep(sweep),
        ]
    lines += ["", f"Plots: {', '.join(record.get('plots', []))}", ""]
    return "\n".join(lines)


def signal_plots(
    out_dir: Path, record: Mapping[str, Any], per_example: Mapping[str, Any]
) -> list[str]:
    """Write the report's plots into ``out_dir``; return their file names.

    ``bounds_hist.png`` (L-/C-bounds beside the minimum-norm attack's distances),
    ``clever.png`` (CLEVER scores per temperature) and ``rho_ablation.png`` (robust
    accuracy over NJS's ρ), each only when its section has data.
    """
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
        records.plot_curves(
            out_dir / "rho_ablation.png",
            curves,
            xlabel="ρ",
            ylabel="robust accuracy (%)",
            logx=True,
        )
        written.append("rho_ablation.png")
    return written
