"""The probe: one model's attacks and measurements, run once and cached, that the masking
checks share.

Every attack a check runs goes through one door, :meth:`Probe.record`, which scores it
the qadv way, saves it (a killed report resumes attack by attack) and registers the
per-example robust flags of each attack at the report's ε, so that the report's worst
case is taken over all of them, whichever checks ran. Other measurements (gradient
statistics, finite differences, curves) go through :meth:`Probe.fact`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from qadv import records
from qadv.attacks import get_norm, registry
from qadv.evaluate import core
from qadv.evaluate.core import data_fingerprint, model_fingerprint, padded

__all__ = ["Probe"]


class Probe:
    """Lazily measured, cached facts about one model that the checks share."""

    def __init__(self, logits_fn, images, labels, config, context, out_dir, progress):
        self.logits_fn = logits_fn
        self.images = images
        self.labels = labels
        self.config = config
        self.context = context
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.norm = get_norm(config.norm)
        self._records: dict[str, dict] = {}
        self._facts: dict[str, Any] = {}
        self._names: dict[str, str] = {}  # record key -> its name in the report
        self.at_eps: dict[str, str] = {}  # key -> name, every attack run at ε, in order
        self.n = len(images)
        self.fingerprint = data_fingerprint(images, labels)
        self.model_fingerprint = model_fingerprint(logits_fn, images)

    # --- attacks -------------------------------------------------------------------
    def record(self, key: str, attack_config) -> dict:
        """The scored record of ``attack_config`` (cached under ``key``); an attack at the
        report's ε (same norm and radius) is registered for the per-example worst case."""
        if key not in self._records:
            path = self.out_dir / "attacks" / f"{key}.json" if self.out_dir else None
            self._records[key] = core.cached_attack(
                path,
                self.logits_fn,
                self.images,
                self.labels,
                attack_config,
                seed=self.config.seed,
                batch_size=min(self.config.batch_size, self.n),
                context=self.context,
                progress=self.progress,
            )
        c = self.config
        if attack_config.norm == c.norm and math.isclose(attack_config.eps, c.eps, rel_tol=1e-9):
            self.at_eps.setdefault(key, self._names.get(key, key))
        return self._records[key]

    def accuracy(self, key: str, attack_config) -> float:
        return float(self.record(key, attack_config)["robust_accuracy"])

    def robust(self, key: str, attack_config) -> np.ndarray:
        return np.asarray(self.record(key, attack_config)["examples"]["robust"], bool)

    def pgd(self, *, eps=None, temperature="none", loss="ce", step_size=None, steps=None):
        """(key, config) of a PGD variant; defaults are the white-box settings."""
        c = self.config
        eps = c.eps if eps is None else float(eps)
        steps = c.steps if steps is None else steps
        if step_size is None and eps == c.eps:
            step_size = c.step_size
        cfg = registry.make(
            "pgd",
            norm=c.norm,
            eps=eps,
            steps=steps,
            step_size=step_size,
            temperature=temperature,
            loss=loss,
        )
        tag = "pgd" + ("" if temperature == "none" else f"++{temperature}")
        tag += "" if loss == "ce" else f"-{loss}"
        key = f"{tag}_eps{eps:.6g}_eta{cfg.step_size:.6g}_T{steps}"
        name = "PGD" if steps == c.steps else f"PGD-{steps}"
        name += "" if temperature == "none" else f"++ ({temperature.upper()})"
        name += "" if loss == "ce" else " (CW margin)" if loss == "cw" else f" ({loss})"
        default = registry.make("pgd", norm=c.norm, eps=eps, step_size=c.step_size).step_size
        if not math.isclose(cfg.step_size, default, rel_tol=1e-9):
            name += f" (η = {cfg.step_size:.3g})"
        return self._named(key, name), cfg

    def _named(self, key: str, name: str) -> str:
        self._names.setdefault(key, name)
        return key

    def white_box(self) -> tuple[str, Any]:
        return self.pgd()

    def fgsm(self):
        c = self.config
        return self._named("fgsm", "FGSM"), registry.make("fgsm", norm=c.norm, eps=c.eps)

    def square(self):
        c = self.config
        cfg = registry.make("square", norm=c.norm, eps=c.eps, queries=c.square_queries)
        return self._named("square", "Square"), cfg

    def transfer(self):
        c = self.config
        src = registry.make("pgd", norm=c.norm, eps=c.eps, steps=c.steps, step_size=c.step_size)
        cfg = registry.make("transfer", norm=c.norm, eps=c.eps, source=src)
        return self._named("transfer", "transfer"), cfg

    def others_at_eps(self) -> dict[str, tuple[str, Any]]:
        """Every non-PGD attack the report runs at ε: PGD++, margin PGD, Square, transfer."""
        out = {f"PGD++ ({t.upper()})": self.pgd(temperature=t) for t in self.config.temperatures}
        if self.config.margin_loss:
            out["PGD (CW margin)"] = self.pgd(loss="cw")
        out["Square"] = self.square()
        if self.context.surrogate is not None:
            out["transfer"] = self.transfer()
        return out

    def strongest(self) -> tuple[float, np.ndarray]:
        """Accuracy of the per-example worst case over PGD and the other attacks of
        :meth:`others_at_eps` (a fixed set, whichever checks ran before)."""
        robust = self.robust(*self.white_box())
        for key, cfg in self.others_at_eps().values():
            robust = robust & self.robust(key, cfg)
        return 100.0 * float(robust.mean()), robust

    def worst_case(self) -> tuple[dict[str, float], np.ndarray | None]:
        """Robust accuracy of every attack registered at ε (PGD first), and the
        per-example worst case over all of them (``None`` if none ran)."""
        keys = sorted(self.at_eps, key=lambda k: self.at_eps[k] != "PGD")
        acc = {self.at_eps[k]: float(self._records[k]["robust_accuracy"]) for k in keys}
        if not keys:
            return acc, None
        flags = [np.asarray(self._records[k]["examples"]["robust"], bool) for k in keys]
        return acc, np.logical_and.reduce(flags)

    # --- measurements --------------------------------------------------------------
    def fact(self, name: str, compute: Callable[[], Any]) -> Any:
        """A JSON-able measurement, computed once and cached in ``out_dir/facts``."""
        if name in self._facts:
            return self._facts[name]
        path = self.out_dir / "facts" / f"{name}.json" if self.out_dir else None
        stamp = {
            "config": dataclasses.asdict(self.config),
            "data": self.fingerprint,
            "model": self.model_fingerprint,
        }
        self._facts[name] = records.cached_json(path, stamp, compute)
        return self._facts[name]

    def cached_fact(self, name: str) -> Any:
        """The measurement ``name`` if a check has made it, else ``None`` (computes nothing)."""
        return self._facts.get(name)

    def batches(self):
        b = min(self.config.batch_size, self.n)
        for start in range(0, self.n, b):
            xb, m = padded(self.images[start : start + b], b)
            yb, _ = padded(self.labels[start : start + b], b)
            yield jnp.asarray(xb), jnp.asarray(yb), m
