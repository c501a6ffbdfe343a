"""Ensemble evaluation, AutoAttack's protocol: attacks in cascade, per-example worst case.

Each member attacks only the examples that every earlier member left robust; an example
is robust under the ensemble iff it is classified correctly and no member broke it.
Because example ``i`` always uses the key ``fold_in(key(seed), i)`` and attacks are
per-example, the cascade's robust set equals the intersection of the members' robust
sets when each is run alone on every example; the cascade only saves the work.

The output keeps, per example: the robust flag, which attack broke it, and the norm of
the perturbation that did. Each member writes its own result file next to the ensemble's
(``<out>.members/<k>_<name>.json``), so a killed run resumes attack by attack, and
within an attack batch by batch.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from qadv import parallel, records
from qadv.attacks import get_norm, registry
from qadv.attacks.protocol import AttackContext
from qadv.evaluate.core import (
    cached_attack,
    check_inputs,
    check_seed,
    clean_predictions,
    resolve_context,
)

__all__ = ["evaluate_ensemble", "robust_accuracy_at"]


def _check_members(configs: list) -> None:
    """At least one attack, each valid, all different, all of one norm (one record, one
    threat model: its distances and :func:`robust_accuracy_at` are per norm)."""
    if not configs:
        raise ValueError("an ensemble needs at least one attack")
    for c in configs:
        c.validate()
    norms = sorted({c.norm for c in configs})
    if len(norms) > 1:
        raise ValueError(
            f"ensemble members must share one norm, got {', '.join(norms)}; "
            "evaluate each norm as its own ensemble"
        )
    labels_seen = [c.label for c in configs]
    if len(set(labels_seen)) != len(labels_seen):
        raise ValueError(f"ensemble members must differ, got {labels_seen}")


def _member_path(out: Path | None, k: int, config) -> Path | None:
    if out is None:
        return None
    slug = re.sub(r"[^a-z0-9+]+", "_", config.label.lower()).strip("_")
    return Path(str(out) + ".members") / f"{k:02d}_{slug}.json"


def evaluate_ensemble(
    logits_fn,
    images: np.ndarray,
    labels: np.ndarray,
    configs: list,
    *,
    batch_size: int = 250,
    seed: int = 0,
    context: AttackContext | None = None,
    calib_images: np.ndarray | None = None,
    input_std: tuple[float, ...] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    devices: list | None = None,
    name: str = "ensemble",
) -> dict[str, Any]:
    """Run ``configs`` in cascade over ``images``; return (and optionally save) the record.

    Args:
        logits_fn: the model, images ``(B, H, W, C)`` in [0, 1] -> logits ``(B, d)``.
        images, labels: the evaluated set (float in [0, 1] or ``uint8``, int labels).
        configs: attack configs, run in this order (e.g. ``registry.preset("standard")``).
        batch_size, seed, context, calib_images, input_std, progress, devices: as
            :func:`qadv.evaluate.evaluate_attack`; NJS calibrates on the first images of
            the *full* set, never on a member's subset.
        out: JSON path; member results go to ``<out>.members/``.
        extra: fields merged into the record.
        name: the ensemble's name in the record (e.g. the preset).

    Returns:
        ``clean_accuracy``, ``robust_accuracy`` (percent), ``attacks`` (per member: label,
        config, examples attacked and broken, robust accuracy after it, wall time) and
        ``examples`` (``robust``, ``broken_by`` (member label or ``None``), ``distance``).
    """
    images, labels, _ = check_inputs(images, labels, None, batch_size, logits_fn)
    n = len(images)
    _check_members(configs)
    check_seed(seed)
    out = Path(out) if out is not None else None
    t0 = time.perf_counter()
    context = resolve_context(context, calib_images, input_std, images)
    run = {
        "batch_size": batch_size,
        "seed": seed,
        "context": context,
        "progress": progress,
        "devices": devices,
    }

    clean_correct = clean_predictions(logits_fn, images, batch_size=batch_size) == labels
    clean_seconds = time.perf_counter() - t0
    robust = clean_correct.copy()
    broken_by = np.full(n, -1, np.int64)
    distance = np.where(clean_correct, np.inf, 0.0)
    members = []
    for k, config in enumerate(configs):
        sel = np.flatnonzero(robust)
        path = _member_path(out, k, config)
        rec = _attack_member(path, logits_fn, images, labels, config, sel, run)
        member_robust = np.asarray(rec["examples"]["robust"], bool)
        member_dist = np.asarray(
            [np.inf if v is None else v for v in rec["examples"]["distance"]], np.float64
        )
        newly = sel[~member_robust]
        broken_by[newly] = k
        # verified distances: <= eps where broken, beyond eps from minimum-norm members
        distance[sel] = np.minimum(distance[sel], member_dist)
        robust[newly] = False
        members.append(
            {
                "attack": config.label,
                "config": registry.to_dict(config),
                "attacked": len(sel),
                "broken": len(newly),
                "robust_accuracy_after": 100.0 * float(robust.mean()),
                "wall_time_s": float(rec["wall_time_s"]),
                "result_file": None if path is None else str(path),
            }
        )

    outcome = {"robust": robust, "broken_by": broken_by, "distance": distance}
    record = _ensemble_record(
        name, configs, seed, clean_correct, outcome, members, clean_seconds, extra
    )
    if out is not None and parallel.is_main_process():
        records.atomic_write_json(out, record)
    return record


def _attack_member(path, logits_fn, images, labels, config, sel, run: dict) -> dict[str, Any]:
    """One member's record on the examples ``sel`` still robust (cached at ``path``); an
    empty one when none is left."""
    if not len(sel):  # nothing left to attack
        return {"wall_time_s": 0.0, "examples": {"robust": [], "distance": []}}
    return cached_attack(
        path,
        logits_fn,
        images[sel],
        labels[sel],
        config,
        batch_size=run["batch_size"],
        seed=run["seed"],
        indices=sel,
        context=run["context"],
        progress=run["progress"],
        devices=run["devices"],
    )


def _ensemble_record(
    name, configs, seed, clean_correct, outcome, members, clean_seconds, extra
) -> dict[str, Any]:
    """The ensemble's record (see :func:`evaluate_ensemble`'s Returns); ``outcome`` holds
    the per-example ``robust``, ``broken_by`` (member index, -1) and ``distance``."""
    robust, broken_by, distance = outcome["robust"], outcome["broken_by"], outcome["distance"]
    eps_values = sorted({float(c.eps) for c in configs})
    return {
        "ensemble": name,
        "n": len(robust),
        "norm": configs[0].norm,
        "eps": eps_values[0] if len(eps_values) == 1 else eps_values,
        "seed": seed,
        "clean_accuracy": 100.0 * float(clean_correct.mean()),
        "robust_accuracy": 100.0 * float(robust.mean()),
        "adversarial_accuracy": 100.0 * float(robust.mean()),
        "attacks": members,
        # the attacks' own accumulated times (they survive resumes), plus the clean pass
        "wall_time_s": clean_seconds + sum(m["wall_time_s"] for m in members),
        "environment": records.environment(),
        **(extra or {}),
        "examples": {
            "clean_correct": clean_correct.tolist(),
            "robust": robust.tolist(),
            "broken_by": [None if b < 0 else configs[b].label for b in broken_by],
            "distance": [None if not np.isfinite(v) else float(v) for v in distance],
        },
    }


def _threat(record: dict) -> tuple[Any, float | None, float]:
    """``(norm, eps, limit)`` of a record: its norm, the radius it was scored at (``None``
    for an ensemble whose members ran at different radii) and the largest radius it can
    answer (its ``eps``, or ``inf`` if a minimum-norm attack measured every example)."""
    members = record.get("attacks") or [record]
    if not all("config" in m for m in members):  # a hand-made record: no threat model
        return get_norm("linf"), None, np.inf
    configs = [registry.from_dict(m["config"]) for m in members]
    norms = {c.norm for c in configs}
    if len(norms) != 1:
        raise ValueError(f"the record mixes threat models {sorted(norms)}; read one at a time")
    eps_values = {float(c.eps) for c in configs}
    limit = np.inf if any(c.minimum_norm for c in configs) else max(eps_values)
    eps = eps_values.pop() if len(eps_values) == 1 else None
    return get_norm(norms.pop()), eps, limit


def robust_accuracy_at(record: dict, radii, *, with_kind: bool = False):
    """Robust accuracy (percent) at each radius, read from a record's verified distances.

    An example counts as robust at ``r`` iff it is classified correctly and no verified
    adversarial image lies within ``r`` (compared with the ball's own float tolerance,
    :meth:`~qadv.attacks.norms.Norm.within`, as the evaluation itself does), so at the
    record's own ``eps`` the answer *is* the record's robust accuracy.

    What a record can answer:

    - a bounded attack (PGD, APGD, Square, ...) run at ``eps`` says nothing about radii
      above ``eps``: they are refused (``ValueError``);
    - below ``eps`` its reading is an **upper bound**: the attack was not run at that
      radius, and one run there may break more (``with_kind=True`` says so per radius);
    - a minimum-norm attack (FAB, DeepFool) verifies the smallest point it finds even
      beyond ``eps``; its record, and an ensemble with such a member, answers any radius.

    Args:
        record: a record of :func:`qadv.evaluate.evaluate_attack` or
            :func:`evaluate_ensemble`.
        radii: one radius or a sequence, in the record's norm.
        with_kind: also return, per radius, ``"measured"`` (the record's own ``eps``, or
            a minimum-norm attack) or ``"upper bound"`` (below a bounded attack's ``eps``).

    Returns:
        ``(len(radii),)`` float array, or ``(array, list of kinds)`` with ``with_kind``.
    """
    try:
        norm, eps, limit = _threat(record)
        ex = record["examples"]
        clean = np.asarray(ex["clean_correct"], bool)
        dist = np.asarray([np.inf if v is None else v for v in ex["distance"]], np.float64)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"not a record of evaluate_attack or evaluate_ensemble (no {e}); "
            "it needs per-example 'clean_correct' and 'distance'"
        ) from None
    if clean.shape != dist.shape:
        raise ValueError(f"record has {clean.shape} clean flags but {dist.shape} distances")
    radii = np.atleast_1d(np.asarray(radii, np.float64))
    bad = [r for r in radii if not np.isfinite(r) or r < 0]
    if bad:
        raise ValueError(f"bad radius {bad[0]!r}; radii must be finite and >= 0")
    above = [r for r in radii if r > limit and not norm.within(r, limit, rtol=1e-6, atol=0)]
    if above:
        raise ValueError(
            f"radius {above[0]:.6g} is above eps={limit:.6g}, the largest radius this record's "
            "bounded attacks ran at; they say nothing beyond it: run the attack at that radius"
        )
    values = np.asarray([100.0 * float(np.mean(clean & ~norm.within(dist, r))) for r in radii])
    if not with_kind:
        return values
    # a minimum-norm attack alone is read at every radius as it was run; otherwise only
    # the radius it was scored at is a measurement (a cascade attacks an example only
    # until one member breaks it, so distances below eps are not the members' minimum)
    single_min_norm = "attacks" not in record and "config" in record and np.isinf(limit)

    def kind(r: float) -> str:
        at_eps = eps is not None and abs(r - eps) <= 1e-6 * eps
        return "measured" if at_eps or single_min_norm else "upper bound"

    kinds = [kind(float(r)) for r in radii]
    return values, kinds
