"""Studies: a grid of trained networks, each measured the same way, in one table.

A :class:`StudyConfig` is a tuple of :class:`Cell` s (a name, a
:class:`~qadv.train.TrainConfig`, its coordinates in the grid) and one :class:`EvalSpec`
(test images, radii, attacks, ensemble). :func:`run_study` trains every cell (reusing
finished runs), measures it and writes::

    out_dir/runs/<arch>_<policy>_<hash>/    training run folders (shared by equal configs)
    out_dir/cells/<cell>.json                one record per cell (see below)
    out_dir/cells/<cell>/<model hash>/       per-attack result files of that cell
    out_dir/study.json, out_dir/study.md     every cell in one table
    out_dir/plots/*.png                      zero-gradient fraction and the PGD − ensemble
                                             gap against depth, width and epochs

Each cell record holds the training summary (epochs, final training accuracy, wall
time), the clean test accuracy, the signal diagnostics of :func:`qadv.evaluate.diagnose`
(logit-gap quantiles, fraction of top-1 leads over 88, zero-gradient fraction, mean ‖ψ‖,
mean Jacobian singular value) and the robust accuracy of every attack and of the
ensemble at every ε, plus ``worst``: the per-example worst case over all of them.

Resumption: the record is rewritten atomically after every measurement, and every attack
keeps its own result file (and, inside, per-batch partial results), so a killed study
resumes cell by cell, attack by attack and batch by batch. A finished cell whose
configuration is unchanged is read back and its record is not touched. Attack results
live under a hash of the evaluated weights, so a retrained or recalibrated model never
reuses another model's results.

Example:
    >>> cell = Cell("mlp", TrainConfig(arch="mlp", policy="bnn_wq", epochs=1),
    ...             axes={"depth": 1, "width": 256})
    >>> study = StudyConfig(cells=(cell,), eval=EvalSpec(n=8, eps=("8/255",)))
    >>> StudyConfig.from_dict(study.to_dict()) == study
    True
    >>> StudyConfig.from_dict({"cells": [], "colour": 1})
    Traceback (most recent call last):
    ...
    ValueError: unknown StudyConfig key 'colour'; choose from: cells, description, eval, name
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from qadv import data, report
from qadv.attacks import AttackContext, registry
from qadv.checkpoint import json_tuples, load_checkpoint
from qadv.evaluate import clean_predictions, diagnose, evaluate_attack, evaluate_ensemble
from qadv.models import layer_costs, make_logits_fn, recalibrate_batch_stats
from qadv.train import TrainConfig, make_model, train

__all__ = [
    "PLOT_AXES",
    "Cell",
    "EvalSpec",
    "StudyConfig",
    "eps_key",
    "load_study_config",
    "run_study",
    "study_table",
]

#: Grid variables the study plots against (when at least two cells differ in them).
PLOT_AXES: tuple[str, ...] = ("depth", "width", "epochs")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_FORMAT = 1


def _check_keys(kind: str, d: Mapping[str, Any], allowed: Sequence[str]) -> None:
    bad = sorted(set(d) - set(allowed))
    if bad:
        raise ValueError(
            f"unknown {kind} key {bad[0]!r}; choose from: {', '.join(sorted(allowed))}"
        )


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"invalid {name} {value!r}; choose a positive integer")


def eps_key(eps: float) -> str:
    """A radius as a short key in 1/255 units.

    Example:
        >>> eps_key(8 / 255), eps_key(0.1)
        ('8/255', '25.5/255')
    """
    return f"{float(eps) * 255:.4g}/255"


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """What is measured on every cell.

    Attributes:
        n: attacks and diagnostics use the first ``n`` test images.
        clean_n: clean accuracy on the first ``clean_n`` test images (``None``: all).
        eps: radii (floats, or strings like ``"8/255"``); the default is the
            Fashion-MNIST budget 0.1 (about 25/255) and the paper's 8/255.
        norm: threat model of every attack (``linf`` or ``l2``).
        attacks: attack names as :func:`qadv.attacks.registry.make` knows them, with an
            optional ``++<temperature>`` suffix (``pgd++njs``) and an optional ``#<tag>``
            that tells apart two settings of one attack (``pgd#steps50`` with its own
            ``attack_opts``). Include ``pgd`` for the PGD − ensemble gap.
        attack_opts: per-attack options, keyed by an entry of ``attacks``, e.g.
            ``{"square": {"queries": 1000}, "pgd": {"steps": 40}}``.
        ensemble: an ensemble preset (``standard``, ...) run in cascade, or ``None``.
        ensemble_opts: overrides for the preset's members that have the option, e.g.
            ``{"queries": 1000}`` (a cheaper Square for CPU).
        batch_size: attack batch size.
        seed: example ``i`` uses the key ``fold_in(key(seed), i)``.
        jacobian_examples: correctly classified images used for Jacobian singular values.

    Example:
        >>> spec = EvalSpec(n=8, eps=("8/255",), attacks=("pgd", "pgd++hns"), ensemble=None)
        >>> [c.label for c in spec.attack_configs(spec.eps[0]).values()]
        ['PGD L∞', 'PGD++ (HNS) L∞']
        >>> EvalSpec(attacks=("pgd", "bim"))
        Traceback (most recent call last):
        ...
        ValueError: unknown attack 'bim'; choose one of: ...
    """

    n: int = 1000
    clean_n: int | None = None
    eps: tuple[float, ...] = (0.1, 8 / 255)
    norm: str = "linf"
    attacks: tuple[str, ...] = ("pgd", "pgd++njs", "pgd++hns", "apgd-ce", "square")
    attack_opts: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    ensemble: str | None = "standard"
    ensemble_opts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 250
    seed: int = 0
    jacobian_examples: int = 100

    def __post_init__(self):
        _positive_int("n", self.n)
        _positive_int("clean_n", self.clean_n, allow_none=True)
        _positive_int("batch_size", self.batch_size)
        _positive_int("jacobian_examples", self.jacobian_examples)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"invalid seed {self.seed!r}; choose an integer >= 0")
        eps = (self.eps,) if isinstance(self.eps, str | int | float) else tuple(self.eps)
        eps = tuple(report.parse_fraction(e, name="eps") for e in eps)
        if not eps or any(e <= 0 for e in eps):
            raise ValueError(f"invalid eps {self.eps!r}; choose one or more positive radii")
        object.__setattr__(self, "eps", eps)
        attacks = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
        if len(set(attacks)) != len(attacks):
            raise ValueError(f"attacks {list(attacks)} repeat a name; list each once")
        object.__setattr__(self, "attacks", attacks)
        opts = json_tuples({k: dict(v) for k, v in dict(self.attack_opts).items()})
        object.__setattr__(self, "attack_opts", opts)
        object.__setattr__(self, "ensemble_opts", json_tuples(dict(self.ensemble_opts)))
        for name in opts:
            if name not in attacks:
                raise ValueError(
                    f"attack_opts names {name!r}, which is not in attacks; choose from: "
                    + ", ".join(attacks)
                )
        if not attacks and self.ensemble is None:
            raise ValueError("an EvalSpec needs at least one attack or an ensemble")
        for e in eps:  # build everything once: unknown names and options fail here
            self.attack_configs(e)
            self.ensemble_configs(e)

    def attack_configs(self, eps: float) -> dict[str, Any]:
        """The attack configs at radius ``eps``, keyed by their name in :attr:`attacks`."""
        out = {}
        for name in self.attacks:
            base, _, temperature = name.partition("#")[0].partition("++")
            opts = dict(self.attack_opts.get(name, {}))
            if temperature:
                opts["temperature"] = temperature
            out[name] = registry.make(base, norm=self.norm, eps=float(eps), **opts)
        return out

    def ensemble_configs(self, eps: float) -> list:
        """The ensemble's member configs at radius ``eps`` (empty without an ensemble)."""
        if self.ensemble is None:
            return []
        configs = registry.preset(
            self.ensemble, norm=self.norm, eps=float(eps), **self.ensemble_opts
        )
        names = {o for c in configs for o in (f.name for f in dataclasses.fields(c))}
        unused = sorted(set(self.ensemble_opts) - names)
        if unused:
            raise ValueError(
                f"ensemble option {unused[0]!r} fits no member of {self.ensemble!r}; "
                f"its options: {', '.join(sorted(names - {'norm', 'eps'}))}"
            )
        return configs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalSpec:
        """Builds a spec from a dict (unknown keys raise ``ValueError``)."""
        _check_keys("EvalSpec", d, [f.name for f in dataclasses.fields(cls)])
        return cls(**dict(d))


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained network of a study.

    Attributes:
        name: unique name (letters, digits, ``_ . + -``); it names the cell's files.
        train: what to train (cells with equal configs share one run folder).
        group: the series the cell belongs to in plots (e.g. ``"MLP BC"``).
        axes: the cell's coordinates in the grid, e.g. ``{"depth": 4, "width": 1024}``;
            ``epochs`` is added from ``train`` unless given. Plots draw one curve per
            group and per setting of the other axes.
        recalibrate: after training, re-estimate the BatchNorm statistics on the
            hard-binarised network (:func:`qadv.models.recalibrate_batch_stats`).
        recalibrate_examples: the first this many training examples are used for it
            (``None``: every training example of the run).
    """

    name: str
    train: TrainConfig
    group: str = ""
    axes: Mapping[str, float] = dataclasses.field(default_factory=dict)
    recalibrate: bool = False
    recalibrate_examples: int | None = 10_000

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"invalid cell name {self.name!r}; use letters, digits and _ . + - only"
            )
        if isinstance(self.train, Mapping):
            try:
                object.__setattr__(self, "train", TrainConfig.from_dict(self.train))
            except ValueError as e:
                raise ValueError(f"cell {self.name!r}: {e}") from None
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"cell {self.name!r}: train must be a TrainConfig or a dict")
        axes = dict(self.axes)
        for k, v in axes.items():
            if isinstance(v, bool) or not isinstance(v, int | float | np.number):
                raise ValueError(f"cell {self.name!r}: axis {k!r} has value {v!r}; use a number")
        axes.setdefault("epochs", self.train.epochs)
        object.__setattr__(self, "axes", {k: float(v) for k, v in axes.items()})
        if self.recalibrate not in (True, False):
            raise ValueError(f"cell {self.name!r}: recalibrate must be True or False")
        _positive_int("recalibrate_examples", self.recalibrate_examples, allow_none=True)

    @property
    def run_name(self) -> str:
        """Training run folder name: equal training configs share it."""
        t = self.train
        digest = hashlib.sha256(json.dumps(t.to_dict(), sort_keys=True).encode()).hexdigest()
        return f"{t.arch}_{t.policy}_{digest[:10]}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {
            "name": self.name,
            "train": self.train.to_dict(),
            "group": self.group,
            "axes": dict(self.axes),
            "recalibrate": self.recalibrate,
            "recalibrate_examples": self.recalibrate_examples,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cell:
        """Builds a cell from a dict (``train`` a dict or TrainConfig; unknown keys raise)."""
        _check_keys("Cell", d, [f.name for f in dataclasses.fields(cls)])
        if "name" not in d or "train" not in d:
            raise ValueError(f"a cell needs a name and a train config, got keys {sorted(d)}")
        return cls(**dict(d))


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A grid of cells and the evaluation applied to each.

    Attributes:
        cells: the cells, in table order (names unique).
        eval: the :class:`EvalSpec`.
        name: title of ``study.md``.
        description: a paragraph for ``study.md`` (what the grid varies and why).
    """

    cells: tuple[Cell, ...]
    eval: EvalSpec = dataclasses.field(default_factory=EvalSpec)
    name: str = "study"
    description: str = ""

    def __post_init__(self):
        cells = tuple(c if isinstance(c, Cell) else Cell.from_dict(c) for c in self.cells)
        names = [c.name for c in cells]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"cell name {dup[0]!r} is used twice; cell names must be unique")
        object.__setattr__(self, "cells", cells)
        if isinstance(self.eval, Mapping):
            object.__setattr__(self, "eval", EvalSpec.from_dict(self.eval))
        if not isinstance(self.eval, EvalSpec):
            raise ValueError(f"eval must be an EvalSpec or a dict, got {type(self.eval).__name__}")

    def select(self, only: Sequence[str] | None) -> tuple[Cell, ...]:
        """The cells named in ``only`` (all if ``None``); unknown names raise."""
        if only is None:
            return self.cells
        names = [c.name for c in self.cells]
        for n in only:
            if n not in names:
                raise ValueError(f"unknown cell {n!r}; choose from: {', '.join(names)}")
        return tuple(c for c in self.cells if c.name in set(only))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {
            "name": self.name,
            "description": self.description,
            "cells": [c.to_dict() for c in self.cells],
            "eval": self.eval.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudyConfig:
        """Builds a study from a dict (unknown keys raise ``ValueError``)."""
        _check_keys("StudyConfig", d, [f.name for f in dataclasses.fields(cls)])
        d = dict(d)
        d["cells"] = tuple(c if isinstance(c, Cell) else Cell.from_dict(c) for c in d["cells"])
        return cls(**d)


def load_study_config(path: str | Path, options: Mapping[str, str] | None = None) -> StudyConfig:
    """Load a study from a Python config file.

    The file defines ``config(**options) -> StudyConfig`` (or a dict for
    :meth:`StudyConfig.from_dict`); ``options`` are passed to it as keyword arguments
    (strings, from ``--set key=value``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file fails to run, has no ``config`` function, or an option it
            does not take.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no study config file {path}")
    spec = importlib.util.spec_from_file_location(f"qadv_study_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the file's own error (syntax, import, ...), as one line
        raise ValueError(f"study config file {path}: {type(e).__name__}: {e}") from None
    fn = getattr(module, "config", None)
    if not callable(fn):
        raise ValueError(f"{path} defines no config() function returning a StudyConfig")
    options = dict(options or {})
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    bad = sorted(set(options) - set(params))
    if bad and not takes_any:
        raise ValueError(
            f"{path.name} config() takes no option {bad[0]!r}; its options: "
            + (", ".join(params) or "none")
        )
    result = fn(**options)
    if isinstance(result, Mapping):
        result = StudyConfig.from_dict(result)
    if type(result).__name__ == "Experiment" and hasattr(result, "parts"):
        return result  # a paper experiment of qadv.repro
    if not isinstance(result, StudyConfig):
        raise ValueError(f"{path} config() returned {type(result).__name__}, not a StudyConfig")
    return result


# ----------------------------------------------------------------------------- running


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
        summary = report.read_json(path)
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
    """Test (and training) splits loaded once per dataset."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self._cache: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}

    def split(self, config: TrainConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
        key = (config.dataset, config.source, split)
        if key not in self._cache:
            self._cache[key] = data.load_split(
                config.dataset, split, data_dir=self.data_dir, source=config.source
            )
        return self._cache[key]


def _float_images(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x


def _cached_result(path: Path, configs: list, seed: int, n: int, fingerprint: str) -> dict | None:
    if not path.exists():
        return None
    try:
        rec = report.read_json(path)
    except (OSError, ValueError):
        return None
    same = (
        rec.get("seed") == seed
        and rec.get("n") == n
        and rec.get("model_fingerprint") == fingerprint
        and rec.get("study_configs") == [registry.to_dict(c) for c in configs]
    )
    return rec if same else None


def _cell_spec(cell: Cell, spec: EvalSpec) -> dict:
    return json.loads(json.dumps({"cell": cell.to_dict(), "eval": spec.to_dict()}))


def _measure_cell(
    cell: Cell,
    spec: EvalSpec,
    out_dir: Path,
    loader: _Data,
    *,
    progress: bool,
    log: Callable[[str], None],
    runs_dir: Path | None = None,
) -> dict:
    """Train (or reuse), measure and record one cell; resumes from its record."""
    rec_path = out_dir / "cells" / f"{cell.name}.json"
    cell_spec = _cell_spec(cell, spec)
    rec: dict[str, Any] = {}
    if rec_path.exists():
        try:
            rec = report.read_json(rec_path)
        except (OSError, ValueError):
            rec = {}
        if rec.get("spec") != cell_spec or rec.get("format") != _FORMAT:
            rec = {}
        elif rec.get("complete"):
            return rec

    def save() -> None:
        report.atomic_write_json(rec_path, rec)

    # ---- training
    run_dir = (out_dir / "runs" if runs_dir is None else runs_dir) / cell.run_name
    summary = _finished_summary(cell.train, run_dir)
    if summary is None:
        log(f"{cell.name}: training {cell.train.arch}/{cell.train.policy} -> {run_dir}")
        try:
            summary = train(cell.train, run_dir, data_dir=loader.data_dir, progress=progress)
        except ValueError as e:
            raise ValueError(f"cell {cell.name!r}: {e}") from None
    loaded = load_checkpoint(run_dir)
    model, variables = loaded.model, dict(loaded.variables)
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

    def clean_accuracy(v) -> float:
        fn = make_logits_fn(model, v)
        pred = clean_predictions(fn, clean_x, batch_size=min(spec.batch_size * 2, clean_n))
        return 100.0 * float((pred == clean_y).mean())

    recal: dict[str, Any] | None = None
    if cell.recalibrate:
        t0 = time.perf_counter()
        train_x, _ = loader.split(cell.train, "train")
        limit = cell.train.train_examples
        if cell.recalibrate_examples is not None:
            limit = min(limit or len(train_x), cell.recalibrate_examples)
        before = clean_accuracy(variables)
        variables = recalibrate_batch_stats(
            model, variables, train_x[:limit], batch_size=spec.batch_size * 2
        )
        recal = {
            "examples": len(train_x[:limit]),
            "clean_accuracy_before": before,
            "wall_time_s": time.perf_counter() - t0,
        }
    fingerprint = _model_fingerprint(variables)
    if rec.get("model_fingerprint") != fingerprint:
        rec = {}
    logits_fn = make_logits_fn(model, variables)
    depth = len(layer_costs(model, input_shape=tuple(loaded.metadata["image_shape"])))
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
            "training": {
                k: summary.get(k)
                for k in (
                    "epochs",
                    "steps",
                    "train_accuracy",
                    "train_loss",
                    "clean_accuracy",
                    "wall_time_s",
                )
            },
            "recalibration": recal,
        }
    )
    rec.setdefault("eval_wall_time_s", {})
    save()

    # ---- clean accuracy and diagnostics
    if "clean" not in rec:
        t0 = time.perf_counter()
        rec["clean"] = {"n": clean_n, "accuracy": clean_accuracy(variables)}
        rec["eval_wall_time_s"]["clean"] = time.perf_counter() - t0
        save()
    if "diagnostics" not in rec:
        t0 = time.perf_counter()
        rec["diagnostics"] = diagnose(
            logits_fn,
            images,
            labels,
            batch_size=min(100, spec.n),
            jacobian_examples=spec.jacobian_examples,
        )
        rec["eval_wall_time_s"]["diagnostics"] = time.perf_counter() - t0
        save()

    # ---- attacks and ensemble, per radius
    context = AttackContext(calib_images=images, input_std=tuple(loaded.metadata["std"]))
    result_dir = out_dir / "cells" / cell.name / fingerprint
    rec.setdefault("attacks", {})
    common = dict(
        batch_size=min(spec.batch_size, spec.n),
        seed=spec.seed,
        context=context,
        progress=progress,
    )
    for eps in spec.eps:
        key = eps_key(eps)
        done = rec["attacks"].setdefault(key, {})
        flags = {}
        jobs: list[tuple[str, list, Callable[[Path, dict], dict]]] = []
        for name, config in spec.attack_configs(eps).items():
            jobs.append((name, [config], _attack_job(logits_fn, images, labels, config, common)))
        if spec.ensemble is not None:
            members = spec.ensemble_configs(eps)
            jobs.append(
                (
                    spec.ensemble,
                    members,
                    _ensemble_job(logits_fn, images, labels, members, spec.ensemble, common),
                )
            )
        for name, configs, job in jobs:
            path = result_dir / _slug(key) / f"{_slug(name)}.json"
            result = _cached_result(path, configs, spec.seed, spec.n, fingerprint)
            if result is None:
                log(f"{cell.name}: {name} at eps={key}")
                result = job(
                    path,
                    {
                        "cell": cell.name,
                        "model_fingerprint": fingerprint,
                        "study_configs": [registry.to_dict(c) for c in configs],
                    },
                )
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
    rec["eval_wall_time_s"]["attacks"] = sum(
        r.get("wall_time_s", 0.0) for per in rec["attacks"].values() for r in per.values()
    )
    rec["complete"] = True
    save()
    return rec


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


# ----------------------------------------------------------------------------- reporting


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


def study_table(config: StudyConfig, records: Mapping[str, dict]) -> tuple[list[str], list[list]]:
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
        rec = records.get(cell.name, {})
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


def _series(cells: Sequence[Cell], records: Mapping[str, dict], axis: str):
    """Curves along ``axis``: cells grouped by group and by every other axis value."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        if axis not in cell.axes or cell.name not in records:
            continue
        others = ", ".join(f"{k}={v:g}" for k, v in sorted(cell.axes.items()) if k != axis)
        label = cell.group + (f" ({others})" if others else "")
        groups.setdefault(label.strip(), []).append(cell)
    return {
        k: sorted(v, key=lambda c: c.axes[axis])
        for k, v in groups.items()
        if len({c.axes[axis] for c in v}) >= 2
    }


def _plots(config: StudyConfig, records: Mapping[str, dict], plot_dir: Path) -> list[str]:
    spec = config.eval
    written = []
    for axis in PLOT_AXES:
        series = _series(config.cells, records, axis)
        if not series:
            continue
        zero = {}
        gap = {}
        for label, cells in series.items():
            pts = [
                (c.axes[axis], 100.0 * records[c.name]["diagnostics"]["zero_gradient_fraction"])
                for c in cells
                if "diagnostics" in records[c.name]
            ]
            if len(pts) >= 2:
                zero[label] = tuple(zip(*pts, strict=True))
            if "pgd" not in spec.attacks or spec.ensemble is None:
                continue
            for e in spec.eps:
                key = eps_key(e)
                pts = []
                for c in cells:
                    per = records[c.name].get("attacks", {}).get(key, {})
                    if "pgd" in per and spec.ensemble in per:
                        diff = per["pgd"]["robust_accuracy"] - per[spec.ensemble]["robust_accuracy"]
                        pts.append((c.axes[axis], diff))
                if len(pts) >= 2:
                    gap[f"{label}, ε={key}"] = tuple(zip(*pts, strict=True))
        logx = axis == "width"
        if zero:
            path = plot_dir / f"zero_gradient_vs_{axis}.png"
            report.plot_curves(
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
            report.plot_curves(
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
    config: StudyConfig, records: dict[str, dict], out_dir: Path, wall: float
) -> dict[str, Any]:
    header, rows = study_table(config, records)
    plots = _plots(config, records, out_dir / "plots")
    env = report.environment()
    spec = config.eval
    done = [c.name for c in config.cells if records.get(c.name, {}).get("complete")]
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
        report.format_table(header, rows),
        "",
        "Attacks (ε as in each column):",
        *_describe_attacks(spec),
        "",
    ]
    recal = [
        f"- `{c.name}`: BatchNorm statistics re-estimated on the hard ±1 network from "
        f"{records[c.name]['recalibration']['examples']} training images; clean accuracy "
        f"{records[c.name]['recalibration']['clean_accuracy_before']:.2f}% before, "
        f"{records[c.name]['clean']['accuracy']:.2f}% after."
        for c in config.cells
        if records.get(c.name, {}).get("recalibration") and "clean" in records[c.name]
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
        "cells": {k: {kk: vv for kk, vv in v.items() if kk != "spec"} for k, v in records.items()},
        "complete": done,
        "missing": missing,
        "plots": plots,
        "wall_time_s": wall,
        "environment": env,
    }
    report.atomic_write_json(out_dir / "study.json", summary)
    return summary


def run_study(
    config: StudyConfig,
    out_dir: str | Path,
    *,
    only: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    store: str | Path | None = None,
) -> dict[str, Any]:
    """Train and measure every cell (or those in ``only``), then write the report.

    Args:
        config: the study.
        out_dir: folder for runs, cell records, ``study.md``, ``study.json`` and plots.
        only: names of the cells to run now; the report still lists every cell that has
            a record.
        data_dir: IDX folder or tfds data dir (see :func:`qadv.data.load_split`).
        progress: show progress bars.
        store: folder of training runs shared between studies (a run's folder name is
            keyed by the hash of its training config, so equal configs train once);
            ``None``: ``out_dir/runs``.

    Returns:
        The content of ``study.json``: the config, the table (``header``, ``rows``), each
        cell's record (``cells``), ``complete``/``missing`` cell names, plot files,
        wall time and environment.
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    out_dir = Path(out_dir)
    cells = config.select(only)
    for cell in cells:
        _check_model(cell)
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = _Data(data_dir)
    bar = tqdm(cells, desc="study", unit="cell", disable=not progress, dynamic_ncols=True)
    log = tqdm.write if progress else (lambda _msg: None)
    for cell in bar:
        bar.set_postfix_str(cell.name)
        _measure_cell(
            cell,
            config.eval,
            out_dir,
            loader,
            progress=progress,
            log=log,
            runs_dir=None if store is None else Path(store),
        )
    bar.close()
    records = {}
    for cell in config.cells:
        path = out_dir / "cells" / f"{cell.name}.json"
        if path.exists():
            try:
                rec = report.read_json(path)
            except (OSError, ValueError):
                continue
            if rec.get("spec") == _cell_spec(cell, config.eval):
                records[cell.name] = rec
    return _write_report(config, records, out_dir, time.time() - t0)
