"""What a study writes: the table (:func:`study_table`), plots against the grid
variables, ``study.md`` and ``study.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qadv import records
from qadv.apps.study.config import PLOT_AXES, Cell, EvalSpec, StudyConfig, eps_key
from qadv.attacks import registry


def _row_value(rec: dict, *keys, scale: float = 1.0):
    v: Any = rec
    for k in keys:
        if not isinstance(v, Mapping) or k not in v or v[k] is None:
            return "–"
        v = v[k]
    return float(v) * scale if isinstance(v, int | float) else v


def _attack_columns(spec: EvalSpec) -> list[tuple[str, str]]:
    names = [*spec.attacks, *([spec.ensemble] if spec.ensemble else []), "worst"]
    return [(eps_key(e), n) for e in spec.eps for n in names]


def study_table(
    config: StudyConfig, cell_records: Mapping[str, dict]
) -> tuple[list[str], list[list]]:
    """Header and rows (one per cell, in config order) of the study table.

    Accuracies are percent; ``>88`` and ``zero grad`` are the percentages of the first
    ``n`` test images whose top-1 logit leads by more than 88 and whose input gradient
    is exactly zero; ``PGD−ens`` is PGD's robust accuracy minus the ensemble's. Cells
    without a record show dashes.
    """
    spec = config.eval
    header = [
        "cell",
        "epochs",
        "train acc",
        "clean",
        "train s",
        "eval s",
        "gap p50",
        "gap p90",
        "gap max",
        ">88 %",
        "zero grad %",
        "‖ψ‖",
        "JSV",
    ]
    cols = _attack_columns(spec)
    header += [f"{n} @{e}" for e, n in cols]
    gap_cols = [eps_key(e) for e in spec.eps] if "pgd" in spec.attacks and spec.ensemble else []
    header += [f"PGD−ens @{e}" for e in gap_cols]
    rows = []
    for cell in config.cells:
        rec = cell_records.get(cell.name, {})
        diag = rec.get("diagnostics", {})
        ev = rec.get("eval_wall_time_s", {})
        row = [
            cell.name + ("" if rec.get("complete") else " (incomplete)"),
            _row_value(rec, "training", "epochs"),
            _row_value(rec, "training", "train_accuracy", scale=100.0),
            _row_value(rec, "clean", "accuracy"),
            _row_value(rec, "training", "wall_time_s"),
            float(sum(ev.values())) if ev else "–",
            _row_value(diag, "logit_gap_median"),
            _row_value(diag, "logit_gap_p90"),
            _row_value(diag, "logit_gap_max"),
            _row_value(diag, "logit_gap_frac_over_88", scale=100.0),
            _row_value(diag, "zero_gradient_fraction", scale=100.0),
            _row_value(diag, "psi_norm_mean"),
            _row_value(diag, "jsv_mean"),
        ]
        row += [_row_value(rec, "attacks", e, n, "robust_accuracy") for e, n in cols]
        for e in gap_cols:
            pgd = _row_value(rec, "attacks", e, "pgd", "robust_accuracy")
            ens = _row_value(rec, "attacks", e, spec.ensemble, "robust_accuracy")
            row.append(pgd - ens if isinstance(pgd, float) and isinstance(ens, float) else "–")
        rows.append([int(v) if k == 1 and isinstance(v, float) else v for k, v in enumerate(row)])
    return header, rows


def _series(cells: Sequence[Cell], cell_records: Mapping[str, dict], axis: str):
    """Curves along ``axis``: cells grouped by group and by every other axis value."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        if axis not in cell.axes or cell.name not in cell_records:
            continue
        others = ", ".join(f"{k}={v:g}" for k, v in sorted(cell.axes.items()) if k != axis)
        label = cell.group + (f" ({others})" if others else "")
        groups.setdefault(label.strip(), []).append(cell)
    return {
        k: sorted(v, key=lambda c: c.axes[axis])
        for k, v in groups.items()
        if len({c.axes[axis] for c in v}) >= 2
    }


def _plots(config: StudyConfig, cell_records: Mapping[str, dict], plot_dir: Path) -> list[str]:
    spec = config.eval
    written = []
    for axis in PLOT_AXES:
        series = _series(config.cells, cell_records, axis)
        if not series:
            continue
        zero = {}
        gap = {}
        for label, cells in series.items():
            pts = [
                (
                    c.axes[axis],
                    100.0 * cell_records[c.name]["diagnostics"]["zero_gradient_fraction"],
                )
                for c in cells
                if "diagnostics" in cell_records[c.name]
            ]
            if len(pts) >= 2:
                zero[label] = tuple(zip(*pts, strict=True))
            if "pgd" not in spec.attacks or spec.ensemble is None:
                continue
            for e in spec.eps:
                key = eps_key(e)
                pts = []
                for c in cells:
                    per = cell_records[c.name].get("attacks", {}).get(key, {})
                    if "pgd" in per and spec.ensemble in per:
                        diff = per["pgd"]["robust_accuracy"] - per[spec.ensemble]["robust_accuracy"]
                        pts.append((c.axes[axis], diff))
                if len(pts) >= 2:
                    gap[f"{label}, ε={key}"] = tuple(zip(*pts, strict=True))
        logx = axis == "width"
        if zero:
            path = plot_dir / f"zero_gradient_vs_{axis}.png"
            records.plot_curves(
                path,
                zero,
                xlabel=axis,
                ylabel="test images with a zero input gradient (%)",
                title=f"Zero-gradient fraction vs {axis}",
                logx=logx,
            )
            written.append(path.name)
        if gap:
            path = plot_dir / f"pgd_gap_vs_{axis}.png"
            records.plot_curves(
                path,
                gap,
                xlabel=axis,
                ylabel=f"PGD − {spec.ensemble} robust accuracy (points)",
                title=f"PGD's overestimate vs {axis}",
                logx=logx,
            )
            written.append(path.name)
    return written


def _describe_attacks(spec: EvalSpec) -> list[str]:
    e = spec.eps[0]
    lines = [
        f"- `{name}`: {registry.to_dict(cfg)}".replace(f"'eps': {float(e)!r}", "'eps': ε")
        for name, cfg in spec.attack_configs(e).items()
    ]
    if spec.ensemble:
        labels = ", ".join(c.label for c in spec.ensemble_configs(e))
        lines.append(
            f"- `{spec.ensemble}` ensemble (cascade): {labels}; options {spec.ensemble_opts}"
        )
    return lines


def _write_report(
    config: StudyConfig, cell_records: dict[str, dict], out_dir: Path, wall: float
) -> dict[str, Any]:
    header, rows = study_table(config, cell_records)
    plots = _plots(config, cell_records, out_dir / "plots")
    env = records.environment()
    spec = config.eval
    done = [c.name for c in config.cells if cell_records.get(c.name, {}).get("complete")]
    missing = [c.name for c in config.cells if c.name not in done]
    lines = [
        f"# {config.name}",
        "",
        *([config.description, ""] if config.description else []),
        f"Attacks and diagnostics on the first {spec.n} test images; clean accuracy on "
        + ("all test images" if spec.clean_n is None else f"the first {spec.clean_n}")
        + f"; {spec.norm} radii {', '.join(eps_key(e) for e in spec.eps)}; seed {spec.seed}.",
        "Accuracies in percent. `train acc` is the running training accuracy of the last "
        "epoch; `gap` is the top-1 minus runner-up logit; `>88 %` the share of images "
        "whose top-1 lead exceeds 88 (ψ underflows to 0 in float32); `JSV` the mean "
        "Jacobian singular value; `worst` the per-example worst case over every attack and "
        "the ensemble; `PGD−ens` PGD minus the ensemble (points of accuracy).",
        "",
        records.format_table(header, rows),
        "",
        "Attacks (ε as in each column):",
        *_describe_attacks(spec),
        "",
    ]
    recal = [
        f"- `{c.name}`: BatchNorm statistics re-estimated on the hard ±1 network from "
        f"{cell_records[c.name]['recalibration']['examples']} training images; clean accuracy "
        f"{cell_records[c.name]['recalibration']['clean_accuracy_before']:.2f}% before, "
        f"{cell_records[c.name]['clean']['accuracy']:.2f}% after."
        for c in config.cells
        if cell_records.get(c.name, {}).get("recalibration") and "clean" in cell_records[c.name]
    ]
    if recal:
        lines += ["Recalibrated cells:", *recal, ""]
    lines += [f"![{p}](plots/{p})" for p in plots]
    if plots:
        lines.append("")
    if missing:
        lines += [f"Not finished: {', '.join(missing)}.", ""]
    lines += [
        f"Wall time of this invocation: {wall:.0f} s. Commit {env['git_commit']}, "
        f"{env['backend']} ({', '.join(sorted(set(env['devices'])))}), "
        f"{env['cpu_count']} CPUs, jax {env['jax_version']}.",
        "",
    ]
    (out_dir / "study.md").write_text("\n".join(lines))
    summary = {
        "config": config.to_dict(),
        "header": header,
        "rows": rows,
        "cells": {
            k: {kk: vv for kk, vv in v.items() if kk != "spec"} for k, v in cell_records.items()
        },
        "complete": done,
        "missing": missing,
        "plots": plots,
        "wall_time_s": wall,
        "environment": env,
    }
    records.atomic_write_json(out_dir / "study.json", summary)
    return summary
