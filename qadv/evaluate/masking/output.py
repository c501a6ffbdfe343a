"""The files of a masking report: ``masking.json``, ``masking.md`` and its plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qadv import records
from qadv.evaluate.masking.gradient_checks import SATURATION_GAP
from qadv.evaluate.masking.outcome import eps_text, pct

__all__ = ["masking_markdown", "write_masking_report"]


def write_masking_report(
    r: dict[str, Any], out_dir: str | Path, *, gaps: Sequence[float] | None = None
) -> None:
    """Write ``masking.json``, ``masking.md`` and the plots of a :func:`masking_report`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(out / "masking.json", r)
    checks = {v["name"]: v for v in r["checks"]}
    plots = []
    if "iterations" in checks:
        d = checks["iterations"]["data"]
        steps = list(range(len(d["curve"])))
        records.plot_curves(
            out / "iterations.png",
            {
                "PGD": (steps[1:], d["curve"][1:]),
                "all attacks (worst case)": ([1, steps[-1]], [d["strongest"]] * 2),
            },
            xlabel="PGD iterations",
            ylabel="robust accuracy (%)",
            title=f"{r['model']}: accuracy against iterations",
            logx=True,
        )
        plots.append(("Accuracy against PGD iterations", "iterations.png"))
    if "epsilon" in checks:
        d = checks["epsilon"]["data"]
        records.plot_curves(
            out / "epsilon.png",
            {k: (d["eps"], v) for k, v in d["curves"].items()},
            xlabel=f"ε ({r['norm']})",
            ylabel="robust accuracy (%)",
            title=f"{r['model']}: accuracy against ε",
        )
        plots.append(("Accuracy against ε", "epsilon.png"))
    if "step-size" in checks:
        d = checks["step-size"]["data"]
        curves = {"PGD": (d["step_sizes"], d["pgd"])}
        for t, a in d["pgd++"].items():
            curves[f"PGD++ ({t.upper()}), default step"] = (
                [d["step_sizes"][0], d["step_sizes"][-1]],
                [a, a],
            )
        records.plot_curves(
            out / "step_size.png",
            curves,
            xlabel="step size η",
            ylabel="robust accuracy (%)",
            title=f"{r['model']}: PGD step-size sweep",
            logx=True,
        )
        plots.append(("PGD step-size sweep", "step_size.png"))
    if gaps:
        _plot_gaps(out / "logit_gap.png", np.asarray(gaps), r["model"])
        plots.append(("Top-1 lead over the runner-up logit", "logit_gap.png"))
    (out / "masking.md").write_text(masking_markdown(r, plots))


def _plot_gaps(path: Path, gaps: np.ndarray, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.hist(gaps, bins=50, color="tab:blue", alpha=0.8)
    ax.axvline(SATURATION_GAP, color="tab:red", ls="--", label="float32 softmax saturates")
    ax.set_xlabel("top-1 logit minus runner-up")
    ax.set_ylabel("examples")
    ax.set_title(f"{model}: logit gaps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def masking_markdown(r: dict[str, Any], plots: Sequence[tuple[str, str]] = ()) -> str:
    """The markdown of a :func:`masking_report` (verdict paragraph, checks, curves)."""
    lines = [f"# Gradient-masking report: {r['model']}", "", r["summary"], ""]
    lines += ["| check | verdict | reason |", "|---|---|---|"]
    for v in r["checks"]:
        lines.append(f"| {v['name']} | {v['status']} | {v['reason']} |")
    lines += ["", f"## Robust accuracy at ε = {eps_text(r['eps'])} ({r['norm']})", ""]
    lines += ["| attack | robust accuracy |", "|---|---|"]
    lines += [f"| {k} | {pct(v)} |" for k, v in r["robust_accuracy"].items()]
    checks = {v["name"]: v for v in r["checks"]}
    if "epsilon" in checks:
        d = checks["epsilon"]["data"]
        lines += ["", "## Accuracy against ε", ""]
        lines.append("| ε | " + " | ".join(d["curves"]) + " |")
        lines.append("|---" * (len(d["curves"]) + 1) + "|")
        for i, e in enumerate(d["eps"]):
            lines.append(
                f"| {eps_text(e)} | " + " | ".join(pct(v[i]) for v in d["curves"].values()) + " |"
            )
    if "iterations" in checks:
        d = checks["iterations"]["data"]
        marks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if t < len(d["curve"])]
        lines += ["", "## Accuracy against PGD iterations", ""]
        lines.append("| iterations | " + " | ".join(str(t) for t in marks) + " |")
        lines.append("|---" * (len(marks) + 1) + "|")
        lines.append("| PGD | " + " | ".join(pct(d["curve"][t]) for t in marks) + " |")
    if "step-size" in checks:
        d = checks["step-size"]["data"]
        lines += ["", "## PGD step-size sweep", ""]
        lines.append("| η | " + " | ".join(f"{e:.3g}" for e in d["step_sizes"]) + " |")
        lines.append("|---" * (len(d["step_sizes"]) + 1) + "|")
        lines.append("| PGD | " + " | ".join(pct(a) for a in d["pgd"]) + " |")
    for title, file in plots:
        lines += ["", f"![{title}]({file})"]
    lines += [
        "",
        f"n = {r['n']}; wall time {r['wall_time_s']:.0f} s"
        + (f" ({r['timing']['compile_time_s']:.0f} s compiling)" if "timing" in r else "")
        + f"; git commit {r['git_commit']}; "
        f"{r['environment']['processor']}, {r['environment']['cpu_count']} CPU cores, "
        f"jax {r['environment']['jax_version']} on {r['environment']['backend']}",
        "",
    ]
    return "\n".join(lines)
