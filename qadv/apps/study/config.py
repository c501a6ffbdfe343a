"""A study's configuration: :class:`EvalSpec` (what is measured), :class:`Cell` (one
trained network) and :class:`StudyConfig` (the grid), and Python config files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qadv import records
from qadv.attacks import registry
from qadv.checkpoint import json_tuples
from qadv.config_files import load_config_file
from qadv.training import TrainConfig
from qadv.validation import check_count, check_keys

#: Grid variables the study plots against (when at least two cells differ in them).
PLOT_AXES: tuple[str, ...] = ("depth", "width", "epochs")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_FORMAT = 1


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
        surrogate: name of a cell of the study whose network is the surrogate of every
            transfer attack (``transfer`` with ``attack_opts={"transfer": {"source":
            "pgd"}}``); it is trained first if needed. ``None``: no transfer attacks.

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
    surrogate: str | None = None

    def __post_init__(self):
        check_count("n", self.n)
        check_count("clean_n", self.clean_n, allow_none=True)
        check_count("batch_size", self.batch_size)
        check_count("jacobian_examples", self.jacobian_examples)
        check_count("seed", self.seed, minimum=0)
        eps = (self.eps,) if isinstance(self.eps, str | int | float) else tuple(self.eps)
        eps = tuple(records.parse_fraction(e, name="eps") for e in eps)
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
        if self.surrogate is not None and not (
            isinstance(self.surrogate, str) and _NAME.match(self.surrogate)
        ):
            raise ValueError(f"invalid surrogate {self.surrogate!r}; name a cell of the study")
        transfers = [n for n, c in self.attack_configs(eps[0]).items() if c.kind == "transfer"]
        if transfers and self.surrogate is None:
            raise ValueError(
                f"attack {transfers[0]!r} needs a surrogate network; set surrogate to the "
                "name of a cell of the study"
            )

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
        # (an option that fits no member is refused by the registry)
        return registry.preset(self.ensemble, norm=self.norm, eps=float(eps), **self.ensemble_opts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict` (without ``surrogate`` when it is
        ``None``, so the records of studies without one keep their keys)."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        if d["surrogate"] is None:
            del d["surrogate"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalSpec:
        """Builds a spec from a dict (unknown keys raise ``ValueError``)."""
        check_keys("EvalSpec key", d, sorted(f.name for f in dataclasses.fields(cls)))
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
        check_count("recalibrate_examples", self.recalibrate_examples, allow_none=True)

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
        check_keys("Cell key", d, sorted(f.name for f in dataclasses.fields(cls)))
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
        if self.eval.surrogate is not None and self.eval.surrogate not in names:
            raise ValueError(
                f"surrogate {self.eval.surrogate!r} is not a cell of the study; choose from: "
                + ", ".join(names)
            )

    def surrogate_cell(self) -> Cell | None:
        """The cell named by ``eval.surrogate`` (``None`` without one)."""
        return next((c for c in self.cells if c.name == self.eval.surrogate), None)

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
        check_keys("StudyConfig key", d, sorted(f.name for f in dataclasses.fields(cls)))
        d = dict(d)
        d["cells"] = tuple(c if isinstance(c, Cell) else Cell.from_dict(c) for c in d["cells"])
        return cls(**d)


def load_study_config(path: str | Path, options: Mapping[str, str] | None = None) -> StudyConfig:
    """Load a study from a Python config file.

    The file defines ``config(**options) -> StudyConfig`` (or a dict for
    :meth:`StudyConfig.from_dict`); ``options`` are passed to it as keyword arguments
    (strings, from ``--set key=value``).

    Raises:
        ValueError: a missing file, a file that fails to run, no ``config`` function, an
            option it does not take, or a bad value: one line naming the file (the
            errors of :func:`qadv.config_files.load_config_file`, shared with
            ``qadv train --config``).
    """
    return load_config_file(path, "config", kind="study", options=options, convert=_study)


def _study(result: Any) -> StudyConfig:
    if isinstance(result, Mapping):
        result = StudyConfig.from_dict(result)
    if type(result).__name__ == "Experiment" and hasattr(result, "parts"):
        return result  # a paper experiment of qadv.apps.repro
    if not isinstance(result, StudyConfig):
        raise ValueError(f"config() returned {type(result).__name__}, not a StudyConfig")
    return result
