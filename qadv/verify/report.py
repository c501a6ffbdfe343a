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
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qadv import records
from qadv.verify.iprop import iprop, iprop_applies
from qadv.verify.milp import NOT_ROBUST, ROBUST, UNSOLVED, Verdict, verify_batch
from qadv.verify.network import Network, extract_network

__all__ = [
    "count_violations",
    "flip_rate_curves",
    "gap_to_truth",
    "minimal_perturbations",
    "write_gap_report",
]


def _eps_tag(eps: float) -> str:
    return f"{eps:.6g}".replace("/", "_")


class _Jsonl:
    """Append-only per-example results with a header that pins the data and settings."""

    def __init__(self, path: Path | None, header: Mapping[str, Any]):
        self.path, self.header, self.rows = path, dict(header), {}
        if path is None or not path.exists():
            return
        records = []
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        for ln in lines:
            try:
                records.append(json.loads(ln))
            except json.JSONDecodeError:  # a line cut by a kill: keep the whole ones
                break
        if not records or records[0].get("header") != self.header:
            raise ValueError(
                f"{path} holds results for other data or settings; use another --out folder"
            )
        self.rows = {int(r["i"]): r for r in records[1:]}
        if len(records) < len(lines):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            tmp.replace(path)

    def add(self, i: int, row: Mapping[str, Any]) -> None:
        self.rows[int(i)] = {"i": int(i), **row}
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a") as f:
            if new:
                f.write(json.dumps({"header": self.header}) + "\n")
            f.write(json.dumps(self.rows[int(i)]) + "\n")
            f.flush()


def _verdict_row(v: Verdict, x: np.ndarray) -> dict[str, Any]:
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
    from qadv.attacks import presets
    from qadv.evaluate.core import cached_attack, check_data, data_fingerprint, model_fingerprint

    images, labels = check_data(images, labels)
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
    configs = {
        a: presets.ensemble_members([a], norm="linf", eps=eps_list[0], **overrides)[0]
        for a in attacks
    }  # validates names early
    del configs
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
        exact = _Jsonl(out_dir / "exact" / f"eps_{tag}.jsonl" if out_dir else None, header)
        verify_batch(
            net,
            images,
            labels,
            eps,
            logits_fn=logits_fn,
            time_limit=time_limit,
            progress=progress,
            skip=list(exact.rows),
            on_result=lambda i, v, rec=exact: rec.add(i, _verdict_row(v, images[i])),
        )
        status = np.array([exact.rows[i]["status"] for i in range(len(images))])
        milp_time = np.array([exact.rows[i]["time_s"] for i in range(len(images))])
        broken: dict[str, np.ndarray] = {}
        for name in attacks:
            cfg = presets.ensemble_members([name], norm="linf", eps=eps, **overrides)[0]
            path = out_dir / "attacks" / f"{name}_eps_{tag}.json" if out_dir else None
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
        if run_iprop:
            ip_header = {**header, "options": dict(iprop_options or {})}
            ip = _Jsonl(out_dir / "iprop" / f"eps_{tag}.jsonl" if out_dir else None, ip_header)
            from qadv.evaluate.core import progress_bar

            todo = [i for i in range(len(images)) if i not in ip.rows]
            bar = progress_bar(len(todo), "iprop", progress)
            for i in todo:
                r = iprop(
                    net,
                    images[i],
                    int(labels[i]),
                    eps,
                    logits_fn=logits_fn,
                    **dict(iprop_options or {}),
                )
                ip.add(
                    i,
                    {
                        "success": bool(r.success),
                        "time_s": round(r.time_s, 4),
                        "iterations": r.iterations,
                    },
                )
                bar.update(1)
            bar.close()
            broken["iprop"] = np.array([ip.rows[i]["success"] for i in range(len(images))])
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
            _fmt(r["exact_robust_accuracy"]),
        ]
        for a in names:
            s = r["attacks"][a]
            flag = f", {s['violations']} VIOLATIONS" if s["violations"] else ""
            cells.append(f"{_fmt(s['robust_accuracy'])} (+{_fmt(s['gap'])}{flag})")
        table.append(cells)
    flips = [["eps", "exact", *names]] + [
        [
            f"{r['eps']:.4g}",
            _fmt(r["exact_flip_rate"]),
            *[_fmt(r["attacks"][a]["flip_rate"]) for a in names],
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


def _fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


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
    from qadv.attacks import registry
    from qadv.evaluate.core import (
        cached_attack,
        check_data,
        clean_predictions,
        data_fingerprint,
        model_fingerprint,
        progress_bar,
    )
    from qadv.verify.milp import minimal_linf

    images, labels = check_data(images, labels)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"bad count {count!r}; use an integer >= 1")
    for a in min_norm_attacks:
        if a not in ("fab", "fab-t", "deepfool"):
            raise ValueError(f"unknown minimum-norm attack {a!r}; choose fab, fab-t or deepfool")
    net: Network = extract_network(loaded)
    logits_fn = loaded.logits_fn
    correct = np.flatnonzero(clean_predictions(logits_fn, images, batch_size=250) == labels)
    idx = correct[:count]
    if not len(idx):
        raise ValueError("no correctly classified example to measure")
    out_dir = Path(out) if out is not None else None
    # the attacks first: their smallest verified perturbation is where bisection starts
    distances = {}
    for a in min_norm_attacks:
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
    header = {
        "tol": tol,
        "time_limit": time_limit,
        "eps_max": eps_max,
        "attacks": list(min_norm_attacks),
        "data": data_fingerprint(images[idx], labels[idx], idx),
        "model": model_fingerprint(logits_fn, images[idx]),
    }
    rows = _Jsonl(out_dir / "minimal.jsonl" if out_dir else None, header)
    bar = progress_bar(sum(int(i) not in rows.rows for i in idx), "minimal L∞", progress)
    for k, i in enumerate(idx):
        if int(i) in rows.rows:
            continue
        found = [distances[a][k] for a in min_norm_attacks if distances[a][k] is not None]
        r = minimal_linf(
            net,
            images[i],
            int(labels[i]),
            tol=tol,
            time_limit=time_limit,
            eps_max=eps_max,
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
    examples = []
    for k, i in enumerate(idx):
        row = {
            "index": int(i),
            **{f: rows.rows[int(i)][f] for f in ("lower", "upper", "unsolved", "checks")},
        }
        row.update({a: distances[a][k] for a in min_norm_attacks})
        examples.append(row)
    solved = [e for e in examples if not e["unsolved"] and e["upper"] is not None]
    summary: dict[str, Any] = {
        "n": len(examples),
        "n_solved": len(solved),
        "exact_median": float(np.median([e["upper"] for e in solved])) if solved else None,
    }
    for a in min_norm_attacks:
        found = [e for e in solved if e[a] is not None]
        summary[a] = {
            "found": len(found),
            "median_ratio_to_exact": float(np.median([e[a] / e["upper"] for e in found]))
            if found
            else None,
            "violations": sum(e[a] is not None and e[a] < e["lower"] - 1e-6 for e in examples),
        }
    record = {
        "model": {k: v for k, v in loaded.metadata.items() if k != "variable_shapes"},
        "tol": tol,
        "time_limit": time_limit,
        "eps_max": eps_max,
        "attacks": list(min_norm_attacks),
        "summary": summary,
        "examples": examples,
        "environment": records.environment(),
    }
    if out_dir is not None:
        records.atomic_write_json(out_dir / "minimal.json", record)
        head = ["example", "exact lower", "exact upper", *min_norm_attacks]
        body = [
            [
                e["index"],
                f"{e['lower']:.4f}",
                _fmt(e["upper"], 4) + (" (unsolved)" if e["unsolved"] else ""),
                *[_fmt(e[a], 4) for a in min_norm_attacks],
            ]
            for e in examples
        ]
        ratios = ", ".join(
            f"{a}: found {summary[a]['found']}, median distance / exact "
            f"{_fmt(summary[a]['median_ratio_to_exact'], 2)}, {summary[a]['violations']} below the "
            "proven lower bound"
            for a in min_norm_attacks
        )
        (out_dir / "minimal.md").write_text(
            "\n".join(
                [
                    "# Minimal L∞ perturbation: exact (MILP bisection) against attacks",
                    "",
                    f"First {len(examples)} correctly classified test images; bisection to "
                    f"{tol:.4g} with a {time_limit:g} s limit per check; {len(solved)} solved. "
                    f"{ratios}.",
                    "",
                    records.format_table(head, body),
                    "",
                ]
            )
        )
    return record
