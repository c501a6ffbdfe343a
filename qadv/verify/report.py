"""Gap to truth: attacks' robust accuracy against the exact value, and the flip-rate curves.

:func:`gap_to_truth` runs, for every radius of a list, the exact MILP check
(:func:`~qadv.verify.milp.verify_batch`), every requested attack (registry names such as
``pgd``, ``pgd++njs``, ``square``) and IPROP (BNN-WAQ only) on the same images, then
reports on the **solved** examples (the ones the MILP decided within its time limit):

* the exact robust accuracy, ``n_solved`` and ``n_unsolved``;
* each attack's robust accuracy on those same examples and its gap ``attack - exact``
  (never negative: an attack cannot break an example proven robust; any such example is
  counted under ``violations`` and flagged);
* the flip rate (the paper's Fig. 2): the share of solved, correctly classified examples
  whose prediction the attack (or the exact check) flips, against the radius.

Everything resumes after a kill: exact and IPROP results are appended to JSONL files one
example at a time, attacks use :func:`~qadv.evaluate.core.cached_attack`.

:func:`minimal_perturbations` (exact minimal radius beside FAB and DeepFool) lives in
:mod:`qadv.verify.minimal` and is importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qadv import records
from qadv.verify.iprop import iprop, iprop_applies
from qadv.verify.milp import NOT_ROBUST, ROBUST, UNSOLVED, ExactOutcome, verify_batch
from qadv.verify.minimal import minimal_perturbations
from qadv.verify.network import Network, extract_network
from qadv.verify.rows import JsonlRows, fmt

__all__ = [
    "count_violations",
    "flip_rate_curves",
    "gap_to_truth",
    "minimal_perturbations",
    "write_gap_report",
]


def _eps_tag(eps: float) -> str:
    return f"{eps:.6g}".replace("/", "_")


def _outcome_row(v: ExactOutcome, x: np.ndarray) -> dict[str, Any]:
    dist = None
    if v.x_adv is not None:
        dist = float(np.abs(v.x_adv.astype(np.float64) - x.astype(np.float64)).max())
    return {
        "status": v.status,
        "target": v.target,
        "time_s": round(v.time_s, 4),
        "milps": v.milps,
        "reason": v.reason,
        "distance": dist,
    }


def gap_to_truth(
    loaded: Any,
    images: np.ndarray,
    labels: np.ndarray,
    eps_list: Sequence[float],
    attacks: Sequence[str] = ("pgd", "pgd++njs", "square"),
    *,
    out: str | Path | None = None,
    time_limit: float = 10.0,
    seed: int = 0,
    run_iprop: bool | None = None,
    iprop_options: Mapping[str, Any] | None = None,
    attack_overrides: Mapping[str, Any] | None = None,
    batch_size: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """Exact robust accuracy against attacks on the same examples, at every radius.

    Args:
        loaded: a :class:`~qadv.checkpoint.LoadedModel` of an ``mlp`` checkpoint.
        images: ``(N, H, W, C)`` float32 in ``[0, 1]``.
        labels: ``(N,)``.
        eps_list: L∞ radii.
        attacks: registered attack names, ``name++temperature`` for PGD++ variants.
        out: folder for per-example results (resumable) and the report; ``None``: memory.
        time_limit: seconds per example for the exact check.
        seed: attack seed (example ``i`` uses ``fold_in(key(seed), i)``).
        run_iprop: run IPROP (default: when the network's hidden units are all signs).
        iprop_options: keyword arguments of :func:`~qadv.verify.iprop.iprop`.
        attack_overrides: options applied to each attack that has them (e.g. ``steps``).
        batch_size: attack batch size.
        progress: progress bars.

    Returns:
        ``{"model", "n", "time_limit", "attacks", "rows": [one per eps], ...}``; each row
        has ``eps``, ``n_solved``, ``n_unsolved``, ``exact_robust_accuracy``, per attack
        ``robust_accuracy`` / ``gap`` / ``violations`` / ``flip_rate``, ``exact_flip_rate``
        and the MILP time statistics.
    """
    from qadv.evaluate.core import check_data, check_seed, data_fingerprint, model_fingerprint

    images, labels = check_data(images, labels)
    check_seed(seed)
    eps_list = [float(e) for e in eps_list]
    for e in eps_list:
        if not (np.isfinite(e) and 0 < e <= 1):
            raise ValueError(f"bad eps {e!r}; use radii in (0, 1]")
    if not (np.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"bad time limit {time_limit!r}; use seconds > 0")
    net: Network = extract_network(loaded)
    logits_fn = loaded.logits_fn
    if run_iprop is None:
        run_iprop = iprop_applies(net)
    if run_iprop and not iprop_applies(net):
        raise ValueError("IPROP needs a BNN-WAQ MLP (all hidden activations sign)")
    overrides = dict(attack_overrides or {})
    _attack_configs(attacks, eps_list[0], overrides)  # validates names early
    out_dir = Path(out) if out is not None else None
    fingerprint = data_fingerprint(images, labels)
    rows = []
    for eps in eps_list:
        tag = _eps_tag(eps)
        header = {
            "eps": eps,
            "time_limit": time_limit,
            "data": fingerprint,
            "model": model_fingerprint(logits_fn, images),
        }
        exact = JsonlRows(out_dir / "exact" / f"eps_{tag}.jsonl" if out_dir else None, header)
        status, milp_time = _exact_results(
            exact, net, images, labels, eps, logits_fn, time_limit, progress
        )
        broken = _attacks_broken(
            attacks, overrides, eps, out_dir, logits_fn, images, labels, seed, batch_size, progress
        )
        if run_iprop:
            ip_header = {**header, "options": dict(iprop_options or {})}
            ip = JsonlRows(out_dir / "iprop" / f"eps_{tag}.jsonl" if out_dir else None, ip_header)
            broken["iprop"] = _iprop_broken(ip, net, images, labels, eps, logits_fn, progress)
        rows.append(_summarise(eps, status, milp_time, broken, logits_fn, images, labels))
    record = {
        "model": {k: v for k, v in loaded.metadata.items() if k != "variable_shapes"},
        "n": len(images),
        "time_limit": time_limit,
        "attacks": list(attacks) + (["iprop"] if run_iprop else []),
        "seed": seed,
        "rows": rows,
        "environment": records.environment(),
    }
    if out_dir is not None:
        write_gap_report(record, out_dir)
    return record


def _attack_configs(attacks: Sequence[str], eps: float, overrides: Mapping[str, Any]) -> dict:
    """Each attack's L∞ config at ``eps`` (an unknown name or option raises here)."""
    from qadv.attacks import presets

    members = presets.ensemble_members(list(attacks), norm="linf", eps=eps, **overrides)
    return dict(zip(attacks, members, strict=True))


def _exact_results(
    exact: JsonlRows, net, images, labels, eps, logits_fn, time_limit, progress
) -> tuple[np.ndarray, np.ndarray]:
    """``(status, MILP seconds)`` per example, the MILP run on those not yet in ``exact``."""
    verify_batch(
        net,
        images,
        labels,
        eps,
        logits_fn=logits_fn,
        time_limit=time_limit,
        progress=progress,
        skip=list(exact.rows),
        on_result=lambda i, v: exact.add(i, _outcome_row(v, images[i])),
    )
    status = np.array([exact.rows[i]["status"] for i in range(len(images))])
    milp_time = np.array([exact.rows[i]["time_s"] for i in range(len(images))])
    return status, milp_time


def _attacks_broken(
    attacks, overrides, eps, out_dir, logits_fn, images, labels, seed, batch_size, progress
) -> dict[str, np.ndarray]:
    """Per attack, the examples it broke (verified), its record cached under ``out_dir``."""
    from qadv.evaluate.core import cached_attack

    broken: dict[str, np.ndarray] = {}
    for name, cfg in _attack_configs(attacks, eps, overrides).items():
        path = out_dir / "attacks" / f"{name}_eps_{_eps_tag(eps)}.json" if out_dir else None
        rec = cached_attack(
            path,
            logits_fn,
            images,
            labels,
            cfg,
            seed=seed,
            batch_size=min(batch_size, len(images)),
            progress=progress,
        )
        broken[name] = ~np.asarray(rec["examples"]["robust"], bool)
    return broken


def _iprop_broken(ip: JsonlRows, net, images, labels, eps, logits_fn, progress) -> np.ndarray:
    """The examples IPROP broke, run on those not yet in ``ip``."""
    from qadv.evaluate.core import progress_bar

    options = dict(ip.header["options"])
    todo = [i for i in range(len(images)) if i not in ip.rows]
    bar = progress_bar(len(todo), "iprop", progress)
    for i in todo:
        r = iprop(net, images[i], int(labels[i]), eps, logits_fn=logits_fn, **options)
        ip.add(
            i,
            {"success": bool(r.success), "time_s": round(r.time_s, 4), "iterations": r.iterations},
        )
        bar.update(1)
    bar.close()
    return np.array([ip.rows[i]["success"] for i in range(len(images))])


def _summarise(eps, status, milp_time, broken, logits_fn, images, labels) -> dict[str, Any]:
    from qadv.evaluate import clean_predictions

    clean_ok = clean_predictions(logits_fn, images, batch_size=250) == labels
    # An adversarial example that an attack found (verified in the ball, model re-run) is
    # as much a proof of non-robustness as the MILP's: it settles an example the MILP left
    # unsolved. Robustness itself is only ever proved by the MILP.
    any_broken = np.logical_or.reduce([b for b in broken.values()]) if broken else None
    by_attack = (
        (status == UNSOLVED) & clean_ok & any_broken
        if any_broken is not None
        else np.zeros(len(status), bool)
    )
    solved = (status != UNSOLVED) | by_attack
    robust = status == ROBUST
    n_solved = int(solved.sum())
    row: dict[str, Any] = {
        "eps": eps,
        "n_solved": n_solved,
        "n_solved_by_milp": int((status != UNSOLVED).sum()),
        "n_settled_by_attack": int(by_attack.sum()),
        "n_unsolved": int((~solved).sum()),
        "n_not_robust": int((status == NOT_ROBUST).sum() + by_attack.sum()),
        "clean_accuracy_solved": _pct(clean_ok[solved]),
        "exact_robust_accuracy": _pct(robust[solved]),
        "milp_time_s": {
            "mean": float(milp_time.mean()),
            "median": float(np.median(milp_time)),
            "max": float(milp_time.max()),
        },
    }
    base = solved & clean_ok
    row["exact_flip_rate"] = _pct(~robust[base])
    row["attacks"] = {}
    for name, br in broken.items():
        attack_robust = clean_ok & ~br
        acc = _pct(attack_robust[solved])
        row["attacks"][name] = {
            "robust_accuracy": acc,
            "gap": None if acc is None else acc - row["exact_robust_accuracy"],
            "violations": int((br & robust & clean_ok).sum()),
            "flip_rate": _pct(br[base]),
        }
    return row


def _pct(mask: np.ndarray) -> float | None:
    return None if not mask.size else 100.0 * float(np.mean(mask))


def count_violations(record: Mapping[str, Any]) -> int:
    """How often an attack contradicted the exact answer; anything above 0 is a bug.

    In a :func:`gap_to_truth` record: examples, summed over radii and attacks, that an
    attack broke although the MILP proved them robust. In a :func:`minimal_perturbations`
    record: perturbations an attack found below the proven minimum.

    Example:
        >>> count_violations({"rows": [{"attacks": {"pgd": {"violations": 0}}}]})
        0
        >>> count_violations({"attacks": ["fab"], "summary": {"fab": {"violations": 2}}})
        2
    """
    if "rows" in record:
        return sum(int(a["violations"]) for r in record["rows"] for a in r["attacks"].values())
    return sum(int(record["summary"][a]["violations"]) for a in record["attacks"])


def flip_rate_curves(record: Mapping[str, Any]) -> dict[str, tuple[list, list]]:
    """``{"exact": (eps, flip %), attack: (eps, flip %), ...}`` from a gap record."""
    rows = record["rows"]
    eps = [r["eps"] for r in rows]
    curves = {"exact (MILP)": (eps, [r["exact_flip_rate"] for r in rows])}
    for name in record["attacks"]:
        curves[name] = (eps, [r["attacks"][name]["flip_rate"] for r in rows])
    return curves


def write_gap_report(record: Mapping[str, Any], out_dir: str | Path) -> None:
    """``gap.json``, ``gap.md`` and ``flip_rate.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    records.atomic_write_json(out_dir / "gap.json", record)
    names = list(record["attacks"])
    header = [
        "eps",
        "solved (MILP + attack)",
        "unsolved",
        "exact %",
        *[f"{a} % (gap)" for a in names],
    ]
    table = []
    for r in record["rows"]:
        cells = [
            f"{r['eps']:.4g}",
            f"{r['n_solved']} ({r['n_solved_by_milp']} + {r.get('n_settled_by_attack', 0)})",
            r["n_unsolved"],
            fmt(r["exact_robust_accuracy"]),
        ]
        for a in names:
            s = r["attacks"][a]
            flag = f", {s['violations']} VIOLATIONS" if s["violations"] else ""
            cells.append(f"{fmt(s['robust_accuracy'])} (+{fmt(s['gap'])}{flag})")
        table.append(cells)
    flips = [["eps", "exact", *names]] + [
        [
            f"{r['eps']:.4g}",
            fmt(r["exact_flip_rate"]),
            *[fmt(r["attacks"][a]["flip_rate"]) for a in names],
        ]
        for r in record["rows"]
    ]
    model = record["model"]
    lines = [
        f"# Gap to truth: {model.get('arch')} / {model.get('policy_name')}",
        "",
        f"{record['n']} test images, exact check by MILP (HiGHS) with a {record['time_limit']:g} s "
        "limit per example. An example is solved when the MILP proves it robust or not, or "
        "when an attack's verified adversarial example settles one the MILP left open "
        "(robustness is only ever proved by the MILP). Robust accuracy (%) on the solved "
        "examples only; the gap is attack − exact (never negative).",
        "",
        records.format_table(header, table),
        "",
        "## Flip rate (% of solved, correctly classified examples flipped; paper Fig. 2)",
        "",
        records.format_table(flips[0], flips[1:]),
        "",
        "MILP seconds per example: "
        + ", ".join(
            f"eps {r['eps']:.4g}: median {r['milp_time_s']['median']:.2f}, "
            f"max {r['milp_time_s']['max']:.2f}"
            for r in record["rows"]
        ),
        "",
    ]
    (out_dir / "gap.md").write_text("\n".join(lines))
    curves = {
        k: (xs, [np.nan if v is None else v for v in ys])
        for k, (xs, ys) in flip_rate_curves(record).items()
    }
    records.plot_curves(
        out_dir / "flip_rate.png",
        curves,
        xlabel="L∞ bound ε",
        ylabel="flip rate (%)",
        title=f"{model.get('arch')} / {model.get('policy_name')}: flip rate vs ε",
    )
