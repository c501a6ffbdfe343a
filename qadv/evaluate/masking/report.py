"""The masking report: run the checks on one model and assemble their outcomes, the robust
accuracy of every attack at ε and their per-example worst case, and a summary."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qadv import records
from qadv.attacks import AttackContext
from qadv.evaluate.core import check_data, clean_predictions, progress_bar
from qadv.evaluate.masking.config import MaskingConfig
from qadv.evaluate.masking.outcome import CHECKS, SKIPPED, SUSPECTED, eps_text, pct
from qadv.evaluate.masking.output import write_masking_report
from qadv.evaluate.masking.probe import Probe

__all__ = ["masking_report"]


def masking_report(
    logits_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    config: MaskingConfig | None = None,
    surrogate: Callable | None = None,
    context: AttackContext | None = None,
    checks: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    name: str = "model",
) -> dict[str, Any]:
    """Run the masking checks on one model; return the report (and save it to ``out_dir``).

    Args:
        logits_fn: pure function, images ``(B, H, W, C)`` in [0, 1] -> logits ``(B, d)``.
        images: float32 ``(N, H, W, C)`` in [0, 1] (e.g. the first N test images).
        labels: int ``(N,)``.
        config: what to measure (:class:`MaskingConfig`; defaults: L∞, ε = 0.1).
        surrogate: logits function of a different model (e.g. the float network of the
            same shape) for the transfer check; without it that check is skipped.
        context: attack context (NJS calibration images, input std); by default NJS
            calibrates on ``images``.
        checks: names from :data:`CHECKS` (default all, in registry order).
        out_dir: folder for ``masking.json``, ``masking.md``, plots and the per-attack
            records (a rerun reuses finished attacks and resumes unfinished ones).
        progress: progress bars.
        name: the model's name in the report.

    Returns:
        A dict: ``verdict`` (``masking suspected`` or ``no masking detected``), ``summary``
        (one paragraph), ``checks`` (name, title, status, reason, data), ``robust_accuracy``
        (PGD's and the per-example worst case over every attack at ε), provenance.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> w = np.linspace(-1, 1, 16 * 3).reshape(16, 3).astype(np.float32)
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> x = np.random.default_rng(0).uniform(size=(8, 4, 4, 1)).astype(np.float32)
        >>> y = np.asarray(jnp.argmax(f(x), -1))
        >>> r = masking_report(f, x, y, checks=["zero-gradients"], progress=False)
        >>> r["checks"][0]["status"]
        'pass'
    """
    config = config if config is not None else MaskingConfig()
    config.validate()
    names = list(CHECKS) if checks is None else list(checks)
    for n_ in names:
        if n_ not in CHECKS:
            raise ValueError(f"unknown masking check {n_!r}; choose from: " + ", ".join(CHECKS))
    images, labels = check_data(images, labels, logits_fn)
    if context is None:
        context = AttackContext(calib_images=images)
    if surrogate is not None:
        context = dataclasses.replace(context, surrogate=surrogate)
    out = Path(out_dir) if out_dir is not None else None
    t0 = time.perf_counter()
    with records.CompileClock() as clock:
        probe = Probe(logits_fn, images, labels, config, context, out, progress)
        rows = _run_checks(probe, names, progress)
    result = _assemble(probe, rows, name=name, surrogate=surrogate is not None, t0=t0, clock=clock)
    result["summary"] = _summary(result, config)
    if out is not None:
        gaps = (probe.cached_fact("gradients") or {}).get("gaps")
        write_masking_report(result, out, gaps=gaps)
    return result


def _run_checks(probe: Probe, names: Sequence[str], progress: bool) -> list[dict[str, Any]]:
    """Run the checks ``names`` in order; one row (name, title, status, reason, data) each."""
    rows = []
    bar = progress_bar(len(names), "masking checks", progress)
    for n_ in names:
        title, fn = CHECKS[n_]
        v = fn(probe)
        rows.append(
            {
                "name": v.name,
                "title": title,
                "status": v.status,
                "reason": v.reason,
                "data": v.data,
            }
        )
        bar.update(1)
    bar.close()
    return rows


def _assemble(
    probe: Probe,
    rows: list[dict[str, Any]],
    *,
    name: str,
    surrogate: bool,
    t0: float,
    clock: records.CompileClock,
) -> dict[str, Any]:
    """The report without its summary: the check rows, clean accuracy, the robust accuracy
    at ε of every attack the checks ran and their per-example worst case, provenance."""
    config, images, labels = probe.config, probe.images, probe.labels
    robust, worst = probe.worst_case()
    if worst is not None:
        robust["worst case over all"] = 100.0 * float(worst.mean())
    correct = clean_predictions(
        probe.logits_fn, images, batch_size=min(config.batch_size, len(images))
    )
    clean = 100.0 * float((correct == labels).mean())
    flagged = [v for v in rows if v["status"] == SUSPECTED]
    return {
        "model": name,
        "n": len(images),
        "norm": config.norm,
        "eps": config.eps,
        "clean_accuracy": clean,
        "verdict": SUSPECTED if flagged else "no masking detected",
        "robust_accuracy": robust,
        "checks": rows,
        "config": dataclasses.asdict(config),
        "surrogate": surrogate,
        "wall_time_s": time.perf_counter() - t0,
        "timing": clock.as_dict(time.perf_counter() - t0),
        "git_commit": records.git_commit(),
        "environment": records.environment(),
    }


def _summary(r: dict[str, Any], c: MaskingConfig) -> str:
    """The report's verdict paragraph: which checks flag masking, PGD's robust accuracy
    against the per-example worst case, and which checks were skipped."""
    flagged = [v for v in r["checks"] if v["status"] == SUSPECTED]
    skipped = [v["name"] for v in r["checks"] if v["status"] == SKIPPED]
    acc = r["robust_accuracy"]
    pgd, worst = acc.get("PGD"), acc.get("worst case over all")
    where = (
        f"At ε = {eps_text(c.eps)} ({c.norm}, first {r['n']} test images, clean accuracy "
        f"{pct(r['clean_accuracy'])})"
    )
    if pgd is not None:
        where += (
            f", PGD-{c.steps} reports {pct(pgd)} robust accuracy; the per-example worst case "
            f"over every attack in this report leaves {pct(worst)}."
        )
    else:
        where += "."
    if flagged:
        names = ", ".join(v["name"] for v in flagged)
        text = (
            f"**Gradient masking suspected** for {r['model']}: {len(flagged)} of "
            f"{len(r['checks'])} checks flag it ({names}). {where} "
        )
        if pgd is None:
            pass
        elif pgd - worst > c.tolerance:
            text += (
                f"At least {pgd - worst:.1f} points of PGD's robustness are fake; "
                f"{pct(worst)} is an upper bound on the true robust accuracy."
            )
        else:
            text += "The attacks agree at ε, so the flags concern the gradients, not the number."
    else:
        text = (
            f"**No gradient masking detected** for {r['model']}: all "
            f"{len(r['checks']) - len(skipped)} checks that ran pass. {where}"
        )
    if skipped:
        text += f" Skipped: {', '.join(skipped)}."
    return text
