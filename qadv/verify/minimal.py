"""The exact minimal L∞ perturbation of a few examples beside minimum-norm attacks'.

:func:`minimal_perturbations` bisects each example's minimal adversarial radius with the
MILP (:func:`~qadv.verify.milp.minimal_linf`), starting from the smallest verified
perturbation that FAB or DeepFool found, and reports how close each attack came. The
exact minimum brackets every attack from below: an attack's distance can never fall
under the proven lower bound (counted as ``violations``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qadv import records
from qadv.verify.network import Network, extract_network
from qadv.verify.rows import JsonlRows, fmt

__all__ = ["MIN_NORM_ATTACKS", "minimal_perturbations"]

MIN_NORM_ATTACKS = ("fab", "fab-t", "deepfool")
"""The minimum-norm attacks :func:`minimal_perturbations` can compare against."""

_ROW_FIELDS = ("lower", "upper", "unsolved", "checks")


def minimal_perturbations(
    loaded,
    images,
    labels,
    *,
    count: int,
    tol: float = 1e-3,
    time_limit: float = 10.0,
    eps_max: float = 1.0,
    min_norm_attacks: Sequence[str] = ("fab", "deepfool"),
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The exact minimal L∞ perturbation (bisection with the MILP) of the first ``count``
    correctly classified examples, beside the smallest one each minimum-norm attack finds.

    The minimum-norm attacks run first; the smallest distance they find (a verified
    adversarial example) is where the bisection starts, so the MILPs stay at small,
    tractable radii. The exact minimum brackets every attack from below: an attack's
    distance can never fall under the proven ``lower`` bound (counted as ``violations``).
    Per-example results go to ``out/minimal.jsonl`` as they finish (a killed run resumes),
    the summary to ``out/minimal.json`` and ``out/minimal.md``.

    Returns:
        ``{"examples": [{index, lower, upper, unsolved, checks, <attack>: distance}],
        "summary": {...}, ...}``; ``lower``/``upper`` bracket the minimum to ``tol``
        unless ``unsolved`` (a check hit the time limit).
    """
    from qadv.evaluate.core import check_data, check_seed, clean_predictions

    images, labels = check_data(images, labels)
    check_seed(seed)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"bad count {count!r}; use an integer >= 1")
    for a in min_norm_attacks:
        if a not in MIN_NORM_ATTACKS:
            raise ValueError(f"unknown minimum-norm attack {a!r}; choose fab, fab-t or deepfool")
    net: Network = extract_network(loaded)
    logits_fn = loaded.logits_fn
    correct = np.flatnonzero(clean_predictions(logits_fn, images, batch_size=250) == labels)
    idx = correct[:count]
    if not len(idx):
        raise ValueError("no correctly classified example to measure")
    out_dir = Path(out) if out is not None else None
    attacks = list(min_norm_attacks)
    settings = {"tol": tol, "time_limit": time_limit, "eps_max": eps_max}
    # the attacks first: their smallest verified perturbation is where bisection starts
    distances = _attack_distances(
        logits_fn, images, labels, idx, attacks, eps_max, seed, out_dir, progress
    )
    rows = _bisect(
        net, logits_fn, images, labels, idx, attacks, distances, settings, out_dir, progress
    )
    examples = []
    for k, i in enumerate(idx):
        row = {"index": int(i), **{f: rows.rows[int(i)][f] for f in _ROW_FIELDS}}
        row.update({a: distances[a][k] for a in attacks})
        examples.append(row)
    record = {
        "model": {k: v for k, v in loaded.metadata.items() if k != "variable_shapes"},
        **settings,
        "attacks": attacks,
        "summary": _summary(examples, attacks),
        "examples": examples,
        "environment": records.environment(),
    }
    if out_dir is not None:
        _write(record, out_dir)
    return record


def _attack_distances(
    logits_fn, images, labels, idx, attacks, eps_max, seed, out_dir, progress
) -> dict[str, list[float | None]]:
    """Each attack's verified distance per example of ``idx`` (``None``: none found)."""
    from qadv.attacks import registry
    from qadv.evaluate.core import cached_attack

    distances = {}
    for a in attacks:
        cfg = registry.make(a, norm="linf", eps=eps_max)
        rec = cached_attack(
            out_dir / f"minimal_{a}.json" if out_dir else None,
            logits_fn,
            images[idx],
            labels[idx],
            cfg,
            seed=seed,
            indices=idx,
            batch_size=min(100, len(idx)),
            progress=progress,
        )
        distances[a] = [None if d is None else float(d) for d in rec["examples"]["distance"]]
    return distances


def _bisect(
    net, logits_fn, images, labels, idx, attacks, distances, settings, out_dir, progress
) -> JsonlRows:
    """The exact bracket of every example of ``idx``, resumed from ``out/minimal.jsonl``."""
    from qadv.evaluate.core import data_fingerprint, model_fingerprint, progress_bar
    from qadv.verify.milp import minimal_linf

    header = {
        **settings,
        "attacks": attacks,
        "data": data_fingerprint(images[idx], labels[idx], idx),
        "model": model_fingerprint(logits_fn, images[idx]),
    }
    tol = settings["tol"]
    rows = JsonlRows(out_dir / "minimal.jsonl" if out_dir else None, header)
    bar = progress_bar(sum(int(i) not in rows.rows for i in idx), "minimal L∞", progress)
    for k, i in enumerate(idx):
        if int(i) in rows.rows:
            continue
        found = [distances[a][k] for a in attacks if distances[a][k] is not None]
        r = minimal_linf(
            net,
            images[i],
            int(labels[i]),
            tol=tol,
            time_limit=settings["time_limit"],
            eps_max=settings["eps_max"],
            logits_fn=logits_fn,
            upper_hint=min(found) if found else None,
        )
        upper = None if np.isinf(r.upper) else r.upper
        rows.add(
            int(i),
            {
                "lower": r.lower,
                "upper": upper,
                "unsolved": bool(upper is None or upper - r.lower > tol + 1e-12),
                "checks": r.checks,
            },
        )
        bar.update(1)
    bar.close()
    return rows


def _summary(examples: list[dict], attacks: Sequence[str]) -> dict[str, Any]:
    """Solved count, median exact minimum and, per attack, how close it came."""
    solved = [e for e in examples if not e["unsolved"] and e["upper"] is not None]
    summary: dict[str, Any] = {
        "n": len(examples),
        "n_solved": len(solved),
        "exact_median": float(np.median([e["upper"] for e in solved])) if solved else None,
    }
    for a in attacks:
        found = [e for e in solved if e[a] is not None]
        summary[a] = {
            "found": len(found),
            "median_ratio_to_exact": float(np.median([e[a] / e["upper"] for e in found]))
            if found
            else None,
            "violations": sum(e[a] is not None and e[a] < e["lower"] - 1e-6 for e in examples),
        }
    return summary


def _write(record: dict[str, Any], out_dir: Path) -> None:
    """``minimal.json`` and ``minimal.md`` in ``out_dir``."""
    records.atomic_write_json(out_dir / "minimal.json", record)
    attacks, summary, examples = record["attacks"], record["summary"], record["examples"]
    head = ["example", "exact lower", "exact upper", *attacks]
    body = [
        [
            e["index"],
            f"{e['lower']:.4f}",
            fmt(e["upper"], 4) + (" (unsolved)" if e["unsolved"] else ""),
            *[fmt(e[a], 4) for a in attacks],
        ]
        for e in examples
    ]
    ratios = ", ".join(
        f"{a}: found {summary[a]['found']}, median distance / exact "
        f"{fmt(summary[a]['median_ratio_to_exact'], 2)}, {summary[a]['violations']} below the "
        "proven lower bound"
        for a in attacks
    )
    (out_dir / "minimal.md").write_text(
        "\n".join(
            [
                "# Minimal L∞ perturbation: exact (MILP bisection) against attacks",
                "",
                f"First {len(examples)} correctly classified test images; bisection to "
                f"{record['tol']:.4g} with a {record['time_limit']:g} s limit per check; "
                f"{summary['n_solved']} solved. {ratios}.",
                "",
                records.format_table(head, body),
                "",
            ]
        )
    )
