"""Measuring one cell of a study: train (or reuse) its network, then clean accuracy,
signal diagnostics and every attack at every radius, each result resumable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from qadv import data, records
from qadv.apps.study.config import _FORMAT, Cell, EvalSpec, eps_key
from qadv.attacks import AttackContext, registry
from qadv.checkpoint import load_checkpoint
from qadv.evaluate import clean_predictions, diagnose, evaluate_attack, evaluate_ensemble
from qadv.models import layer_costs, make_logits_fn, recalibrate_batch_stats
from qadv.training import TrainConfig, make_model, train


def _model_fingerprint(variables: Any) -> str:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        a = np.asarray(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+]+", "_", text).strip("_").lower()


def _finished_summary(config: TrainConfig, run_dir: Path) -> dict | None:
    """The summary of a finished run of exactly ``config`` in ``run_dir``, else ``None``."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    try:
        summary = records.read_json(path)
    except (OSError, ValueError):
        return None
    done = summary.get("steps") is not None and summary.get("steps") == summary.get("total_steps")
    return summary if done and summary.get("config") == config.to_dict() else None


def _check_model(cell: Cell) -> None:
    """Build the cell's network abstractly, so a bad architecture fails before any work."""
    info = data.get_dataset_info(cell.train.dataset)
    try:
        layer_costs(make_model(cell.train), input_shape=info.image_shape)
    except (ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cell {cell.name!r}: {first}") from None


class _Data:
    """Test (and training) splits loaded once per dataset, and the surrogate network
    loaded once per study run."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self._cache: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.surrogates: dict[str, tuple[Callable, str]] = {}

    def split(self, config: TrainConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
        key = (config.dataset, config.source, split)
        if key not in self._cache:
            self._cache[key] = data.load_split(
                config.dataset, split, data_dir=self.data_dir, source=config.source
            )
        return self._cache[key]


def _float_images(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x


def _cached_result(path: Path, configs: list, seed: int, n: int, expect: dict) -> dict | None:
    """The result file at ``path`` if it was written for these configs, seed, ``n`` and
    the fingerprints in ``expect`` (the model's, and a transfer attack's surrogate's)."""
    if not path.exists():
        return None
    try:
        rec = records.read_json(path)
    except (OSError, ValueError):
        return None
    same = (
        rec.get("seed") == seed
        and rec.get("n") == n
        and all(rec.get(k) == v for k, v in expect.items())
        and rec.get("study_configs") == [registry.to_dict(c) for c in configs]
    )
    return rec if same else None


def _cell_spec(cell: Cell, spec: EvalSpec, surrogate: Cell | None = None) -> dict:
    d = {"cell": cell.to_dict(), "eval": spec.to_dict()}
    if surrogate is not None:
        d["surrogate"] = surrogate.to_dict()
    return json.loads(json.dumps(d))


def _measure_cell(
    cell: Cell,
    spec: EvalSpec,
    out_dir: Path,
    loader: _Data,
    *,
    progress: bool,
    log: Callable[[str], None],
    runs_dir: Path | None = None,
    surrogate: Cell | None = None,
) -> dict:
    """Train (or reuse), measure and record one cell; resumes from its record.
    ``surrogate``: the cell whose network transfer attacks run on (trained if needed)."""
    rec_path = out_dir / "cells" / f"{cell.name}.json"
    cell_spec = _cell_spec(cell, spec, surrogate)
    rec = _resumed_record(rec_path, cell_spec)
    if rec.get("complete"):
        return rec

    def save() -> None:
        records.atomic_write_json(rec_path, rec)

    runs = out_dir / "runs" if runs_dir is None else runs_dir
    run_dir = runs / cell.run_name
    summary = _train_or_reuse(cell, run_dir, loader, progress=progress, log=log)
    loaded = load_checkpoint(run_dir)
    test = _TestImages.load(cell, spec, loader)
    variables, recal = _recalibrated(cell, spec, loaded, test, loader)
    fingerprint = _model_fingerprint(variables)
    if rec.get("model_fingerprint") != fingerprint:
        rec = {}
    depth = len(layer_costs(loaded.model, input_shape=tuple(loaded.metadata["image_shape"])))
    rec.update(
        {
            "format": _FORMAT,
            "cell": cell.name,
            "group": cell.group,
            "axes": dict(cell.axes),
            "weight_layers": depth,
            "spec": cell_spec,
            "run_dir": str(run_dir),
            "model_fingerprint": fingerprint,
            "complete": False,
            "training": {k: summary.get(k) for k in _TRAINING_KEYS},
            "recalibration": recal,
        }
    )
    rec.setdefault("eval_wall_time_s", {})
    save()
    _measure_clean(rec, save, loaded.model, variables, test, spec)
    logits_fn = make_logits_fn(loaded.model, variables)
    expect = {"model_fingerprint": fingerprint}
    context = AttackContext(calib_images=test.images, input_std=tuple(loaded.metadata["std"]))
    if surrogate is not None:
        sur_fn, expect["surrogate_fingerprint"] = _surrogate(
            surrogate, spec, runs, loader, progress=progress, log=log
        )
        context = dataclasses.replace(context, surrogate=sur_fn)
    common = dict(
        batch_size=min(spec.batch_size, spec.n),
        seed=spec.seed,
        context=context,
        progress=progress,
    )
    rec.setdefault("attacks", {})
    for eps in spec.eps:
        jobs = _attack_jobs(spec, eps, logits_fn, test, common)
        _measure_radius(rec, save, cell, spec, eps, jobs, out_dir, expect, log)
    rec["eval_wall_time_s"]["attacks"] = sum(
        r.get("wall_time_s", 0.0) for per in rec["attacks"].values() for r in per.values()
    )
    rec["complete"] = True
    save()
    return rec


_TRAINING_KEYS = (
    "epochs",
    "steps",
    "train_accuracy",
    "train_loss",
    "clean_accuracy",
    "wall_time_s",
)
"""The fields of a training summary kept in a cell's record."""


def _surrogate(
    cell: Cell, spec: EvalSpec, runs: Path, loader: _Data, *, progress: bool, log
) -> tuple[Callable, str]:
    """The logits function and fingerprint of the surrogate cell's network (trained and
    recalibrated exactly as when it is measured itself), built once per study run."""
    run_dir = runs / cell.run_name
    if cell.name not in loader.surrogates:
        _train_or_reuse(cell, run_dir, loader, progress=progress, log=log)
        loaded = load_checkpoint(run_dir)
        test = _TestImages.load(cell, spec, loader)
        variables, _ = _recalibrated(cell, spec, loaded, test, loader)
        fn = make_logits_fn(loaded.model, variables)
        loader.surrogates[cell.name] = (fn, _model_fingerprint(variables))
    return loader.surrogates[cell.name]


def _resumed_record(rec_path: Path, cell_spec: dict) -> dict[str, Any]:
    """The cell's record if it was written for the same spec and format, else ``{}``."""
    if not rec_path.exists():
        return {}
    try:
        rec = records.read_json(rec_path)
    except (OSError, ValueError):
        return {}
    return rec if rec.get("spec") == cell_spec and rec.get("format") == _FORMAT else {}


def _train_or_reuse(
    cell: Cell, run_dir: Path, loader: _Data, *, progress: bool, log: Callable[[str], None]
) -> dict:
    """The summary of the cell's finished training run, training it first if needed."""
    summary = _finished_summary(cell.train, run_dir)
    if summary is not None:
        return summary
    log(f"{cell.name}: training {cell.train.arch}/{cell.train.policy} -> {run_dir}")
    try:
        return train(cell.train, run_dir, data_dir=loader.data_dir, progress=progress)
    except ValueError as e:
        raise ValueError(f"cell {cell.name!r}: {e}") from None


@dataclasses.dataclass(frozen=True)
class _TestImages:
    """The clean-accuracy images (``clean_x``, ``clean_y``) and the first ``n`` attacked
    ones (``images``, ``labels``), as floats in [0, 1]."""

    clean_x: np.ndarray
    clean_y: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    batch_size: int

    @classmethod
    def load(cls, cell: Cell, spec: EvalSpec, loader: _Data) -> _TestImages:
        test_x, test_y = loader.split(cell.train, "test")
        clean_n = len(test_x) if spec.clean_n is None else min(spec.clean_n, len(test_x))
        if spec.n > len(test_x):
            raise ValueError(f"n={spec.n} exceeds the {len(test_x)} test images of {cell.name!r}")
        clean_x = _float_images(test_x[:clean_n])
        clean_y = np.asarray(test_y[:clean_n], np.int32)
        images, labels = clean_x[: spec.n], clean_y[: spec.n]
        if len(clean_x) < spec.n:
            images = _float_images(test_x[: spec.n])
            labels = np.asarray(test_y[: spec.n], np.int32)
        batch_size = min(spec.batch_size * 2, clean_n)
        return cls(clean_x, clean_y, images, labels, batch_size)

    def clean_accuracy(self, model, variables) -> float:
        """Clean accuracy (%) of ``model`` with ``variables`` on ``clean_x``."""
        fn = make_logits_fn(model, variables)
        pred = clean_predictions(fn, self.clean_x, batch_size=self.batch_size)
        return 100.0 * float((pred == self.clean_y).mean())


def _recalibrated(
    cell: Cell, spec: EvalSpec, loaded, test: _TestImages, loader: _Data
) -> tuple[dict, dict[str, Any] | None]:
    """The variables to evaluate (BatchNorm statistics recomputed on training images when
    the cell asks for it) and the recalibration record (``None`` when not asked)."""
    variables = dict(loaded.variables)
    if not cell.recalibrate:
        return variables, None
    t0 = time.perf_counter()
    train_x, _ = loader.split(cell.train, "train")
    limit = cell.train.train_examples
    if cell.recalibrate_examples is not None:
        limit = min(limit or len(train_x), cell.recalibrate_examples)
    before = test.clean_accuracy(loaded.model, variables)
    variables = recalibrate_batch_stats(
        loaded.model, variables, train_x[:limit], batch_size=spec.batch_size * 2
    )
    recal = {
        "examples": len(train_x[:limit]),
        "clean_accuracy_before": before,
        "wall_time_s": time.perf_counter() - t0,
    }
    return variables, recal


def _measure_clean(rec: dict, save, model, variables, test: _TestImages, spec: EvalSpec) -> None:
    """Clean accuracy and the signal diagnostics, each skipped when already recorded."""
    if "clean" not in rec:
        t0 = time.perf_counter()
        rec["clean"] = {"n": len(test.clean_x), "accuracy": test.clean_accuracy(model, variables)}
        rec["eval_wall_time_s"]["clean"] = time.perf_counter() - t0
        save()
    if "diagnostics" not in rec:
        t0 = time.perf_counter()
        rec["diagnostics"] = diagnose(
            make_logits_fn(model, variables),
            test.images,
            test.labels,
            batch_size=min(100, spec.n),
            jacobian_examples=spec.jacobian_examples,
        )
        rec["eval_wall_time_s"]["diagnostics"] = time.perf_counter() - t0
        save()


def _attack_jobs(
    spec: EvalSpec, eps: float, logits_fn, test: _TestImages, common: dict
) -> list[tuple[str, list, Callable[[Path, dict], dict]]]:
    """``(name, configs, job)`` for every attack of the spec at ``eps``, then the ensemble."""
    images, labels = test.images, test.labels
    jobs: list[tuple[str, list, Callable[[Path, dict], dict]]] = []
    for name, config in spec.attack_configs(eps).items():
        jobs.append((name, [config], _attack_job(logits_fn, images, labels, config, common)))
    if spec.ensemble is not None:
        members = spec.ensemble_configs(eps)
        job = _ensemble_job(logits_fn, images, labels, members, spec.ensemble, common)
        jobs.append((spec.ensemble, members, job))
    return jobs


def _measure_radius(
    rec: dict, save, cell: Cell, spec: EvalSpec, eps: float, jobs, out_dir: Path, expect, log
) -> None:
    """Runs (or reads back) every job at one radius and records it, then the per-example
    worst case over all of them. ``expect``: the fingerprints a stored result must carry
    (the model's; a transfer attack's also its surrogate's)."""
    key = eps_key(eps)
    done = rec["attacks"].setdefault(key, {})
    result_dir = out_dir / "cells" / cell.name / expect["model_fingerprint"]
    flags = {}
    for name, configs, job in jobs:
        path = result_dir / _slug(key) / f"{_slug(name)}.json"
        transfer = any(c.kind == "transfer" for c in configs)
        keys = {k: v for k, v in expect.items() if transfer or k == "model_fingerprint"}
        result = _cached_result(path, configs, spec.seed, spec.n, keys)
        if result is None:
            log(f"{cell.name}: {name} at eps={key}")
            extra = {
                "cell": cell.name,
                **keys,
                "study_configs": [registry.to_dict(c) for c in configs],
            }
            result = job(path, extra)
        flags[name] = np.asarray(result["examples"]["robust"], bool)
        if name not in done:
            done[name] = {
                "label": result.get("attack", f"ensemble: {name}"),
                "robust_accuracy": result["robust_accuracy"],
                "wall_time_s": result["wall_time_s"],
                "file": str(path.relative_to(out_dir)),
            }
            if "attacks" in result:  # an ensemble: robust accuracy after each member
                done[name]["members"] = [
                    {"attack": m["attack"], "robust_accuracy_after": m["robust_accuracy_after"]}
                    for m in result["attacks"]
                ]
            save()
    worst = np.logical_and.reduce(list(flags.values()))
    done["worst"] = {
        "label": "worst case over all attacks",
        "robust_accuracy": 100.0 * float(worst.mean()),
    }


def _attack_job(logits_fn, images, labels, config, common) -> Callable[[Path, dict], dict]:
    def run(path: Path, extra: dict) -> dict:
        return evaluate_attack(logits_fn, images, labels, config, out=path, extra=extra, **common)

    return run


def _ensemble_job(logits_fn, images, labels, configs, name, common) -> Callable[[Path, dict], dict]:
    def run(path: Path, extra: dict) -> dict:
        return evaluate_ensemble(
            logits_fn, images, labels, configs, out=path, name=name, extra=extra, **common
        )

    return run
