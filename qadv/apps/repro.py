"""Paper experiments: one config file per table or figure, run by ``qadv study``.

An :class:`Experiment` is a list of :class:`Part` s, each a :class:`~qadv.apps.study.StudyConfig`
(the networks and what is measured on them) of one kind:

* ``attacks``: :func:`qadv.apps.study.run_study` (clean accuracy, diagnostics, every attack
  and ensemble at every ε), written to ``out/<part>/study.{md,json}``;
* ``signal``: :func:`qadv.evaluate.signal_report.signal_report` on every network
  (signal propagation under NJS/HNS, ρ ablation, CLEVER, L/C lower bounds), written to
  ``out/<part>/<cell>/signal.{md,json}``;
* ``verify``: ``qadv verify`` (exact robustness by MILP, IPROP and attacks) on every
  network, written to ``out/<part>/<cell>/``.

Training runs live in a checkpoint store (``--store``, ``$QADV_STORE``, default
``runs/store``) under a hash of their training config, so a network shared by several
tables is trained once. Every step resumes after a kill. :func:`run_experiment` writes
``out/experiment.md`` and ``out/experiment.json`` (each part's table, plots of a swept
attack option, the command, commit, wall time and hardware).

A config file defines ``config(size="cpu", tiny=False) -> Experiment``; ``tiny`` shrinks
it to a few examples and one epoch (the tests run every config this way).

Example:
    >>> from qadv.apps import paper_models as pm
    >>> from qadv.apps.study import StudyConfig
    >>> cells = pm.models([("bnn_wq", "bnn_wq", "resnet18", {})], "cpu")
    >>> part = Part("linf", StudyConfig(cells, pm.attack_spec("cpu", ["pgd", "pgd++njs"])))
    >>> exp = Experiment("Table 2", parts=(part,), size="cpu")
    >>> shrink(exp).parts[0].study.eval.n
    4
    >>> Part("x", part.study, kind="milp")
    Traceback (most recent call last):
    ...
    ValueError: unknown part kind 'milp'; choose one of: attacks, signal, verify
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qadv import records
from qadv.apps.paper_models import check_size
from qadv.apps.study import Cell, EvalSpec, StudyConfig, eps_key, run_study

__all__ = [
    "DEFAULT_STORE",
    "PART_KINDS",
    "STORE_ENV",
    "SWEEPS",
    "Experiment",
    "Part",
    "finish",
    "resolve_store",
    "run_experiment",
    "shrink",
]

PART_KINDS: tuple[str, ...] = ("attacks", "signal", "verify")
#: Attack options (and ``eps``) a part may plot robust accuracy against.
SWEEPS: tuple[str, ...] = ("eps", "steps", "step_size", "restarts", "rho", "beta")
STORE_ENV = "QADV_STORE"
DEFAULT_STORE = Path("runs") / "store"


@dataclasses.dataclass(frozen=True)
class Part:
    """One measurement of an experiment.

    Attributes:
        name: folder name of the part under the experiment's output folder.
        study: the networks (cells) and, for ``attacks``, the evaluation.
        kind: ``attacks``, ``signal`` or ``verify`` (see the module docstring).
        sweep: for ``attacks``: plot robust accuracy against this attack option
            (``steps``, ``step_size``, ``rho``, ...) over the ``#``-tagged variants of each
            attack, or against ``eps``.
        options: keyword arguments of ``signal_report`` (``signal``) or of ``qadv
            verify`` flags without dashes (``verify``: ``eps``, ``n``, ``time_limit``).
    """

    name: str
    study: StudyConfig
    kind: str = "attacks"
    sweep: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in PART_KINDS:
            raise ValueError(
                f"unknown part kind {self.kind!r}; choose one of: {', '.join(PART_KINDS)}"
            )
        if self.sweep is not None and self.sweep not in SWEEPS:
            raise ValueError(f"unknown sweep {self.sweep!r}; choose one of: {', '.join(SWEEPS)}")
        object.__setattr__(self, "options", dict(self.options))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One table or figure of a paper at one size.

    Attributes:
        name: title (``"Gupta & Ajanthan Table 2"``).
        parts: the measurements.
        size: ``paper``, ``gpu`` or ``cpu``.
        description: setting and the paper's numbers it targets (markdown).
    """

    name: str
    parts: tuple[Part, ...]
    size: str = "cpu"
    description: str = ""

    def __post_init__(self):
        check_size(self.size)
        names = [p.name for p in self.parts]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"an experiment needs parts with unique names, got {names}")

    def cells(self) -> dict[str, Cell]:
        """Every network of the experiment by cell name (first definition wins)."""
        out: dict[str, Cell] = {}
        for part in self.parts:
            for cell in part.study.cells:
                out.setdefault(cell.name, cell)
        return out


def resolve_store(store: str | Path | None) -> Path:
    """The checkpoint store: ``store``, else ``$QADV_STORE``, else ``runs/store``."""
    return Path(store or os.environ.get(STORE_ENV) or DEFAULT_STORE)


# ----------------------------------------------------------------------------- tiny size


def _tiny_cell(cell: Cell) -> Cell:
    t = cell.train
    kw: dict[str, Any] = {"epochs": 1, "train_examples": 64, "batch_size": 32, "robust_examples": 0}
    opts = dict(t.model.arch_opts)
    if t.model.arch in ("resnet18", "resnet50", "resnet20"):
        opts["width"] = 4
    if t.model.arch == "vgg16":
        from qadv.models.vgg import VGG16_CFG

        opts["cfg"] = tuple(c if isinstance(c, str) else 4 for c in VGG16_CFG)
    if t.model.arch == "mlp":
        opts["widths"] = (16,)
    kw["arch_opts"] = opts
    if t.adversary.name != "none":
        kw["adv_steps"] = 1
    return dataclasses.replace(cell, train=t.replace(**kw), recalibrate_examples=64)


def _tiny_spec(spec: EvalSpec) -> EvalSpec:
    opts = {}
    for name in spec.attacks:
        o = dict(spec.attack_opts.get(name, {}))
        for k, cap in (("steps", 2), ("restarts", 1), ("queries", 5), ("grid_size", 5)):
            if k in o:
                o[k] = min(o[k], cap)
        base = name.partition("#")[0]
        if base.startswith(("pgd", "apgd", "fab", "deepfool")) and "steps" not in o:
            o["steps"] = 2
        if base.startswith("square"):
            o["queries"] = 5
        opts[name] = o
    return dataclasses.replace(
        spec,
        n=4,
        clean_n=4,
        attack_opts={k: v for k, v in opts.items() if v},
        ensemble=None if spec.attacks else spec.ensemble,
        ensemble_opts={} if spec.attacks else spec.ensemble_opts,
        batch_size=4,
        jacobian_examples=2,
    )


_TINY_SIGNAL = {
    "signal_examples": 4,
    "clever_examples": 2,
    "clever_batches": 2,
    "clever_batch_size": 2,
    "bound_examples": 2,
    "bound_samples": 4,
    "min_norm_steps": 2,
    "steps": 2,
    "batch_size": 4,
}


def shrink(exp: Experiment) -> Experiment:
    """The experiment at a tiny size: 64 training images, one epoch, 4 test images,
    thin networks of the same architecture, two attack steps (for tests and smoke runs)."""
    parts = []
    for part in exp.parts:
        cells = tuple(_tiny_cell(c) for c in part.study.cells)
        study = dataclasses.replace(part.study, cells=cells, eval=_tiny_spec(part.study.eval))
        opts = dict(part.options)
        if part.kind == "signal":
            sweep = opts.get("beta_sweep_examples")
            opts.update(_TINY_SIGNAL, **({"beta_sweep_examples": 2} if sweep else {}))
        if part.kind == "verify":
            opts.update(n=2, time_limit=2.0)
        parts.append(dataclasses.replace(part, study=study, options=opts))
    return dataclasses.replace(exp, parts=tuple(parts), name=exp.name + " (tiny)")


def finish(exp: Experiment, tiny: bool | str = False) -> Experiment:
    """``exp``, shrunk by :func:`shrink` when ``tiny`` is true (``--set tiny=1``)."""
    if str(tiny).lower() not in ("0", "1", "false", "true"):
        raise ValueError(f"invalid tiny {tiny!r}; choose 0/1 or false/true")
    return shrink(exp) if str(tiny).lower() in ("1", "true") else exp


# ----------------------------------------------------------------------------- running


def _train_cells(cells: Sequence[Cell], store: Path, data_dir, progress: bool) -> dict[str, Path]:
    from qadv.apps.study.measure import _finished_summary
    from qadv.training import train

    runs = {}
    for cell in cells:
        run_dir = store / cell.run_name
        if _finished_summary(cell.train, run_dir) is None:
            train(cell.train, run_dir, data_dir=data_dir, progress=progress)
        runs[cell.name] = run_dir
    return runs


def _test_images(cell: Cell, n: int, data_dir) -> tuple[np.ndarray, np.ndarray]:
    from qadv import data

    x, y = data.load_split(cell.train.dataset, "test", data_dir=data_dir, source=cell.train.source)
    return x[:n].astype(np.float32) / np.float32(255.0), np.asarray(y[:n], np.int32)


def _run_signal(part: Part, out: Path, store: Path, data_dir, progress: bool) -> dict:
    from qadv.checkpoint import load_checkpoint
    from qadv.evaluate.signal_report import signal_report

    runs = _train_cells(part.study.cells, store, data_dir, progress)
    records = {}
    for cell in part.study.cells:
        loaded = load_checkpoint(runs[cell.name])
        x, y = _test_images(cell, part.study.eval.n, data_dir)
        opts = {"eps": part.study.eval.eps[0], "norm": part.study.eval.norm, **part.options}
        rec = signal_report(
            loaded, x, y, out_dir=out / cell.name, progress=progress, model_name=cell.name, **opts
        )
        records[cell.name] = {"file": f"{cell.name}/signal.md", "keys": sorted(rec)}
    return records


def _run_verify(part: Part, out: Path, store: Path, data_dir, progress: bool) -> dict:
    from qadv.apps import cli

    runs = _train_cells(part.study.cells, store, data_dir, progress)
    records = {}
    for cell in part.study.cells:
        opts = {"eps": ",".join(f"{e:g}" for e in part.study.eval.eps), **part.options}
        argv = ["verify", "--checkpoint", str(runs[cell.name]), "--out", str(out / cell.name)]
        for k, v in opts.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        cli.main([*argv, "--no-progress"])
        records[cell.name] = {"folder": cell.name}
    return records


def _sweep_value(spec: EvalSpec, name: str, sweep: str, eps: float):
    if sweep == "eps":
        return eps
    opts = spec.attack_opts.get(name, {})
    if sweep in opts:
        return opts[sweep]
    cfg = spec.attack_configs(eps)[name]
    value = getattr(cfg, sweep, None)
    temp = getattr(cfg, "temperature", None)
    return getattr(temp, sweep, value) if value is None else value


def _sweep_plot(part: Part, summary: dict, out: Path) -> str | None:
    """Robust accuracy against the part's swept option, one curve per network and attack."""
    spec = part.study.eval
    curves: dict[str, list[tuple[float, float]]] = {}
    for cell, rec in summary["cells"].items():
        for e in spec.eps:
            per = rec.get("attacks", {}).get(eps_key(e), {})
            for name in spec.attacks:
                if name not in per:
                    continue
                x = _sweep_value(spec, name, part.sweep, e)
                if not isinstance(x, int | float):
                    continue
                family = name.partition("#")[0]
                label = f"{cell}: {family}" + ("" if part.sweep == "eps" else f" ε={eps_key(e)}")
                curves.setdefault(label, []).append((float(x), per[name]["robust_accuracy"]))
    series = {k: tuple(zip(*sorted(v), strict=True)) for k, v in curves.items() if len(v) >= 2}
    if not series:
        return None
    path = out / f"accuracy_vs_{part.sweep}.png"
    records.plot_curves(
        path,
        series,
        xlabel=part.sweep,
        ylabel="robust accuracy (%)",
        title=f"{part.name}: robust accuracy against {part.sweep}",
        logx=part.sweep in ("rho", "beta"),
    )
    return path.name


def _compact_table(summary: dict) -> str:
    """The study table without the diagnostic columns: network, clean, every attack."""
    header = summary["header"]
    keep = [i for i, h in enumerate(header) if h in ("cell", "clean") or "@" in h]
    rows = [[r[i] for i in keep] for r in summary["rows"]]
    return records.format_table([header[i] for i in keep], rows)


def run_experiment(
    exp: Experiment,
    out_dir: str | Path,
    *,
    store: str | Path | None = None,
    only: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Run every part of ``exp`` (only the cells in ``only``, if given) and write
    ``out_dir/experiment.{md,json}``; returns the JSON record."""
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = resolve_store(store)
    known = set(exp.cells())
    for name in only or ():
        if name not in known:
            raise ValueError(f"unknown cell {name!r}; choose from: {', '.join(sorted(known))}")
    record: dict[str, Any] = {"name": exp.name, "size": exp.size, "parts": {}}
    lines = [f"# {exp.name} ({exp.size} size)", "", exp.description, ""]
    for part in exp.parts:
        study = part.study
        selected = [c.name for c in study.cells if only is None or c.name in only]
        if not selected:
            continue
        keep = {*selected, study.eval.surrogate}  # a transfer attack's surrogate stays
        study = dataclasses.replace(study, cells=tuple(c for c in study.cells if c.name in keep))
        part = dataclasses.replace(part, study=study)
        pdir = out / part.name
        lines += [f"## {part.name}", ""]
        if part.kind == "attacks":
            summary = run_study(
                study, pdir, only=selected, data_dir=data_dir, progress=progress, store=runs
            )
            plot = _sweep_plot(part, summary, pdir) if part.sweep else None
            record["parts"][part.name] = {
                "kind": "attacks",
                "header": summary["header"],
                "rows": summary["rows"],
                "missing": summary["missing"],
                "plot": plot,
            }
            lines += [f"Full table: [`{part.name}/study.md`]({part.name}/study.md).", ""]
            lines += [_compact_table(summary), ""]
            lines += [f"![{plot}]({part.name}/{plot})", ""] if plot else []
        else:
            pdir.mkdir(parents=True, exist_ok=True)
            run = _run_signal if part.kind == "signal" else _run_verify
            cells = run(part, pdir, runs, data_dir, progress)
            record["parts"][part.name] = {"kind": part.kind, "cells": cells}
            lines += [f"- `{c}`: [`{part.name}/{c}/`]({part.name}/{c}/)" for c in cells] + [""]
    wall = time.time() - t0
    env = records.environment()
    record.update(command=command, wall_time_s=wall, environment=env, store=str(runs))
    lines += [
        f"Command: `{command}`. Wall time of this invocation: {wall:.0f} s. "
        f"Commit {env['git_commit']}, {env['backend']} "
        f"({', '.join(sorted(set(env['devices'])))}), {env['cpu_count']} CPUs, "
        f"jax {env['jax_version']}. Checkpoint store: `{runs}`.",
        "",
    ]
    (out / "experiment.md").write_text("\n".join(lines))
    records.atomic_write_json(out / "experiment.json", record)
    return record
