"""Signal propagation under temperature scaling, the ρ ablation, CLEVER and attack lower
bounds: Gupta & Ajanthan's Tables 11–14 and Finlay & Oberman's bounds, for one model.

- :class:`SignalConfig`: what the report measures (validated up front);
- :func:`signal_report`: Table 13 (:func:`signal_table`), the ablation
  (:func:`rho_ablation`), CLEVER per temperature (Table 11) and the L-/C-bounds beside a
  minimum-norm attack's distances, written to ``signal.json``, ``signal.md`` and plots.

The tables live in :mod:`qadv.evaluate.signal_tables` and the Markdown page and plots in
:mod:`qadv.evaluate.signal_markdown`; their public names are re-exported here.

Example:
    >>> cfg = SignalConfig(eps=0.1, rhos=(0.01,), clever_examples=0)
    >>> cfg.validate()
    >>> SignalConfig(norm="l1").validate()
    Traceback (most recent call last):
    ValueError: unknown norm 'l1'; choose one of: linf, l2
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from qadv import records
from qadv.attacks import get_norm, registry
from qadv.attacks.protocol import AttackContext
from qadv.evaluate import bounds as bounds_lib
from qadv.evaluate.beta_sweep import beta_sweep, plot_beta_sweep
from qadv.evaluate.core import (
    cached_attack,
    check_data,
    check_seed,
    clean_predictions,
    data_fingerprint,
    model_fingerprint,
)
from qadv.evaluate.signal_markdown import format_signal_markdown, signal_plots
from qadv.evaluate.signal_tables import (
    PAPER_FIXED_BETAS,
    PAPER_PROP1_RHOS,
    PAPER_RHOS,
    _check_ablation,
    _stats,
    rho_ablation,
    signal_table,
    temperature_betas,
)

__all__ = [
    "PAPER_FIXED_BETAS",
    "PAPER_PROP1_RHOS",
    "PAPER_RHOS",
    "SignalConfig",
    "format_signal_markdown",
    "rho_ablation",
    "signal_report",
    "signal_table",
    "temperature_betas",
]

_SEQUENCES = ("rhos", "fixed_betas", "prop1_rhos")


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_positive(v, *, integer: bool = False) -> bool:
    """A finite number > 0 (integral with ``integer``), as :mod:`qadv.evaluate.bounds` checks."""
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        return False
    return math.isfinite(float(v)) and v > 0 and (not integer or int(v) == v)


@dataclasses.dataclass(frozen=True)
class SignalConfig:
    """What the signal report measures.

    Attributes:
        eps: radius of the PGD ablation and of the minimum-norm attack's budget.
        norm: threat model, ``"linf"`` or ``"l2"`` (PGD, the minimum-norm attack, bounds).
        steps: PGD iterations of every ablation row.
        rhos: NJS ρ values of the ablation (paper Table 12), each in ``(0, 1)``.
        fixed_betas: fixed temperatures of the ablation, each a finite number > 0.
        prop1_rhos: ρ values of Proposition 1's per-example β (Table 14), in ``(0, 1)``.
        signal_examples: correctly classified images of Table 13 (``None``: all).
        clever_examples: correctly classified images of CLEVER (0 skips it).
        clever_norm: CLEVER's norm, ``l1`` (the paper's, as ART), ``l2`` or ``linf``.
        clever_radius: CLEVER's sampling radius (also the largest score).
        clever_batches: CLEVER's batches (``N_b``).
        clever_batch_size: points per CLEVER batch (``N_s``).
        clever_pool_factor: CLEVER's pool of ``pool_factor * batch_size`` points per
            example (``None``: fresh points in every batch).
        clever_beta: the fixed temperature CLEVER scores beside Original, NJS and HNS.
        bound_examples: correctly classified images of the L-/C-bounds (``None``: all;
            0 skips them).
        bound_radius: the bounds' sampling radius (``None``: ``4 * eps``).
        bound_samples: sample points per example of the bounds.
        min_norm_attack: ``fab`` or ``deepfool``, whose distances the bounds are set beside.
        min_norm_steps: its iterations.
        beta_sweep_examples: correctly classified images of the β sweep (paper Figures
            4-5, :func:`qadv.evaluate.beta_sweep.beta_sweep`; 0 skips it).
        batch_size: examples per compiled attack call.
        seed: attack and sampling randomness.

    :meth:`validate` checks the CLEVER fields only when ``clever_examples > 0`` and the
    bound fields only when ``bound_examples != 0``: a skipped section's options are unused.
    """

    eps: float = 8 / 255
    norm: str = "linf"
    steps: int = 20
    rhos: tuple[float, ...] = PAPER_RHOS
    fixed_betas: tuple[float, ...] = PAPER_FIXED_BETAS
    prop1_rhos: tuple[float, ...] = PAPER_PROP1_RHOS
    signal_examples: int | None = 500
    clever_examples: int = 50
    clever_norm: str = "l1"
    clever_radius: float = 5.0
    clever_batches: int = 50
    clever_batch_size: int = 10
    clever_pool_factor: int | None = 10
    clever_beta: float = 0.01
    bound_examples: int | None = None
    bound_radius: float | None = None
    bound_samples: int = 100
    min_norm_attack: str = "fab"
    min_norm_steps: int = 100
    beta_sweep_examples: int = 0
    batch_size: int = 250
    seed: int = 0

    def __post_init__(self):
        for name in _SEQUENCES:  # lists and arrays are stored as tuples (hashable)
            v = getattr(self, name)
            if not isinstance(v, tuple | str) and hasattr(v, "__iter__"):
                object.__setattr__(self, name, tuple(v))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and what is allowed."""
        norm = get_norm(self.norm)  # one line naming the threat models otherwise
        eps = self.eps
        if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"bad eps {eps!r}; it must be a finite number > 0")
        norm.check_eps(eps)  # pixel units (L2 once the image size is known)
        for name in _SEQUENCES:
            if not isinstance(getattr(self, name), tuple):
                raise ValueError(
                    f"invalid {name} {getattr(self, name)!r}; choose a sequence of numbers"
                )
        _check_ablation((*self.rhos, *self.prop1_rhos), self.fixed_betas)
        if self.min_norm_attack not in ("fab", "deepfool"):
            raise ValueError(
                f"unknown minimum-norm attack {self.min_norm_attack!r}; use fab or deepfool"
            )
        for name in ("steps", "min_norm_steps", "batch_size"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 1):
                raise ValueError(f"invalid {name} {v!r}; choose an integer >= 1")
        for name, v in (
            ("signal_examples", self.signal_examples),
            ("clever_examples", self.clever_examples),
            ("bound_examples", self.bound_examples),
            ("beta_sweep_examples", self.beta_sweep_examples),
        ):
            if not ((v is None and name != "clever_examples") or (_is_int(v) and v >= 0)):
                raise ValueError(f"invalid {name} {v!r}; choose an integer >= 0")
        check_seed(self.seed)
        if self.clever_examples > 0:
            self._validate_clever()
        if self.bound_examples != 0:
            self._validate_bounds()

    def _validate_clever(self) -> None:
        if self.clever_norm not in bounds_lib.BALL_NORMS:
            raise ValueError(
                f"unknown clever_norm {self.clever_norm!r}; "
                f"choose one of: {', '.join(bounds_lib.BALL_NORMS)}"
            )
        for name in ("clever_radius", "clever_beta"):
            if not _is_positive(getattr(self, name)):
                raise ValueError(f"invalid {name} {getattr(self, name)!r}; choose a number > 0")
        for name in ("clever_batches", "clever_batch_size", "clever_pool_factor"):
            v = getattr(self, name)
            if not ((v is None and name == "clever_pool_factor") or _is_positive(v, integer=True)):
                raise ValueError(f"invalid {name} {v!r}; choose an integer >= 1")

    def _validate_bounds(self) -> None:
        if self.bound_radius is not None and not _is_positive(self.bound_radius):
            raise ValueError(f"invalid bound_radius {self.bound_radius!r}; choose a number > 0")
        if not _is_positive(self.bound_samples, integer=True):
            raise ValueError(
                f"invalid bound_samples {self.bound_samples!r}; choose an integer >= 1"
            )


def _config_from(config: SignalConfig | None, options: Mapping[str, Any]) -> SignalConfig:
    """The validated config: ``config``, or one built from the loose keyword options."""
    fields = [f.name for f in dataclasses.fields(SignalConfig)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise TypeError(
            f"signal_report() got unexpected keyword argument(s) {', '.join(unknown)}; "
            f"the options are config=SignalConfig(...) or its fields: {', '.join(fields)}"
        )
    if config is not None and options:
        raise ValueError(
            f"signal_report() got config and the options {', '.join(sorted(options))}; "
            "give either config=SignalConfig(...) or the options, not both"
        )
    if config is None:
        config = SignalConfig(**options)
    elif not isinstance(config, SignalConfig):
        raise TypeError(f"config must be a SignalConfig, got {type(config).__name__}")
    config.validate()
    return config


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What every section of one report shares."""

    logits_fn: Callable
    images: np.ndarray
    labels: np.ndarray
    config: SignalConfig
    context: AttackContext
    out: Path
    base: dict[str, Any]  # cache key of every section: data, model, fingerprint, seed
    progress: bool


def _unpack_model(loaded_or_logits_fn) -> tuple[Callable, dict[str, Any], tuple | None]:
    """``(logits_fn, metadata, input std)`` of a ``LoadedModel`` or a logits function."""
    if hasattr(loaded_or_logits_fn, "logits_fn") and hasattr(loaded_or_logits_fn, "metadata"):
        meta = dict(loaded_or_logits_fn.metadata)
        std = tuple(float(s) for s in meta.get("std", ())) or None
        return loaded_or_logits_fn.logits_fn, meta, std
    if callable(loaded_or_logits_fn):
        return loaded_or_logits_fn, {}, None
    raise ValueError(
        f"expected a LoadedModel or a logits function, got {type(loaded_or_logits_fn)}"
    )


def _with_defaults(context: AttackContext | None, images, std) -> AttackContext:
    """``context`` with NJS's calibration images (default ``images``) and the input std
    (default the checkpoint's) filled in."""
    context = context if context is not None else AttackContext()
    return dataclasses.replace(
        context,
        calib_images=images if context.calib_images is None else context.calib_images,
        input_std=context.input_std if context.input_std is not None else std,
    )


def _section(out_dir: Path, name: str, params: Mapping[str, Any], compute: Callable[[], Any]):
    """Cached section of the report: ``out_dir/sections/<name>.json``, reused when its
    parameters (data fingerprint included) match."""
    return records.cached_json(out_dir / "sections" / f"{name}.json", params, compute)


def _floats(a) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)]


def _inputs(
    loaded_or_logits_fn, images, labels, cfg, context, out_dir, progress, model_name
) -> tuple[_Inputs, dict[str, Any]]:
    """The checked inputs every section shares (the output folder made), and the
    model's metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logits_fn, meta, std = _unpack_model(loaded_or_logits_fn)
    images, labels = check_data(images, labels, logits_fn)
    get_norm(cfg.norm).check_eps(cfg.eps, images[0].size)  # before any section runs
    context = _with_defaults(context, images, std)
    base = {
        "data": data_fingerprint(images, labels),
        "model": meta.get("out_dir", model_name),
        "model_fingerprint": model_fingerprint(logits_fn, images),
        "seed": cfg.seed,
    }
    return _Inputs(logits_fn, images, labels, cfg, context, out, base, progress), meta


def _signal_section(run: _Inputs) -> dict[str, Any]:
    """Table 13 (:func:`signal_table`), cached."""
    cfg = run.config
    return _section(
        run.out,
        "signal",
        {**run.base, "n": cfg.signal_examples},
        lambda: signal_table(
            run.logits_fn,
            run.images,
            run.labels,
            context=run.context,
            max_examples=cfg.signal_examples,
            batch_size=min(100, cfg.batch_size),
        ),
    )


def _ablation(run: _Inputs) -> list[dict[str, Any]]:
    """The PGD / PGD++ rows (:func:`rho_ablation`), records under ``out/attacks``."""
    cfg = run.config
    return rho_ablation(
        run.logits_fn,
        run.images,
        run.labels,
        eps=cfg.eps,
        norm=cfg.norm,
        steps=cfg.steps,
        rhos=cfg.rhos,
        fixed_betas=cfg.fixed_betas,
        prop1_rhos=cfg.prop1_rhos,
        context=run.context,
        out_dir=run.out / "attacks",
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=run.progress,
    )


def _clever_section(run: _Inputs, correct: np.ndarray, key) -> tuple[dict | None, dict | None]:
    """CLEVER (Table 11) per temperature on the first correctly classified images:
    ``(per-example scores and betas, summary)``, both ``None`` when skipped."""
    cfg = run.config
    sel = correct[: cfg.clever_examples]
    if not (sel.size and cfg.clever_examples > 0):
        return None, None
    temps = {
        "original": "none",
        f"fixed({cfg.clever_beta:g})": registry.make_temperature("fixed", beta=cfg.clever_beta),
        "njs": "njs",
        "hns": "hns",
    }
    x, y = run.images[sel], run.labels[sel]

    def compute():
        betas = {
            name: temperature_betas(run.logits_fn, x, y, t, context=run.context)["beta"]
            for name, t in temps.items()
        }
        scores = bounds_lib.clever(
            run.logits_fn,
            x,
            key=key,
            norm=cfg.clever_norm,
            radius=cfg.clever_radius,
            nb_batches=cfg.clever_batches,
            batch_size=cfg.clever_batch_size,
            pool_factor=cfg.clever_pool_factor,
            betas=betas,
            outputs=("probs", "logits"),
            indices=sel,
        )
        return {
            "indices": sel.tolist(),
            "scores": {k: _floats(v) for k, v in scores.items()},
            "betas": {k: _floats(v) for k, v in betas.items()},
        }

    params = {
        **run.base,
        "sel": sel.tolist(),
        "norm": cfg.clever_norm,
        "radius": cfg.clever_radius,
        "nb": cfg.clever_batches,
        "bs": cfg.clever_batch_size,
        "pool": cfg.clever_pool_factor,
        "beta": cfg.clever_beta,
    }
    c = _section(run.out, "clever", params, compute)
    summary = {
        "norm": cfg.clever_norm,
        "radius": cfg.clever_radius,
        "nb_batches": cfg.clever_batches,
        "batch_size": cfg.clever_batch_size,
        "pool_factor": cfg.clever_pool_factor,
        "n": len(sel),
        "summary": {k: _stats(np.asarray(v, np.float64)) for k, v in c["scores"].items()},
    }
    return c, summary


def _bounds_section(run: _Inputs, correct: np.ndarray, key) -> tuple[dict | None, dict | None]:
    """L-/C-bounds beside the minimum-norm attack's distances: ``(per-example values,
    summary)``, both ``None`` when no image is selected."""
    cfg = run.config
    bsel = correct if cfg.bound_examples is None else correct[: cfg.bound_examples]
    if not bsel.size:
        return None, None
    radius = float(cfg.bound_radius) if cfg.bound_radius is not None else 4.0 * float(cfg.eps)
    attack = registry.make(
        cfg.min_norm_attack, norm=cfg.norm, eps=cfg.eps, steps=cfg.min_norm_steps
    )
    rec = cached_attack(
        run.out / "attacks" / f"{cfg.min_norm_attack}.json",
        run.logits_fn,
        run.images[bsel],
        run.labels[bsel],
        attack,
        batch_size=min(cfg.batch_size, len(bsel)),
        seed=cfg.seed,
        indices=bsel,
        context=run.context,
        progress=run.progress,
    )
    dist = np.array([np.inf if d is None else d for d in rec["examples"]["distance"]])

    def compute():
        r = bounds_lib.lipschitz_bounds(
            run.logits_fn,
            run.images[bsel],
            run.labels[bsel],
            key=jax.random.fold_in(key, 1),
            norm=cfg.norm,
            radius=radius,
            n_samples=cfg.bound_samples,
            indices=bsel,
        )
        return {k: _floats(v) for k, v in r.items()}

    params = {**run.base, "sel": bsel.tolist(), "norm": cfg.norm, "radius": radius}
    b = _section(run.out, "bounds", {**params, "n": cfg.bound_samples}, compute)
    per_example = {**b, "indices": bsel.tolist(), "distance": _floats(dist)}
    return per_example, _bounds_summary(b, dist, bsel, attack.label, radius, cfg)


def _bounds_summary(b, dist, bsel, label: str, radius: float, cfg: SignalConfig) -> dict:
    """Statistics of the bounds and distances, and the examples where a bound exceeds
    the distance found."""
    b_np = {
        k: np.array([np.inf if v is None else v for v in vals], np.float64) for k, vals in b.items()
    }
    cmp = bounds_lib.compare_with_distance(b_np, dist)
    finite = np.isfinite(dist)
    rec = {
        "attack": label,
        "norm": cfg.norm,
        "radius": radius,
        "n_samples": cfg.bound_samples,
        "n": int(bsel.size),
        "summary": {
            "L-bound": _stats(b_np["l_bound"]),
            "C-bound": _stats(b_np["c_bound"]),
            "Lipschitz L": _stats(b_np["lipschitz"]),
            "curvature C": _stats(b_np["curvature"]),
            f"{label} distance (found)": _stats(dist[finite]),
        },
        "attack_found": int(finite.sum()),
        **{k: v for k, v in cmp.items() if not k.endswith("_violation")},
    }
    rec["l_violation_indices"] = bsel[cmp["l_violation_indices"]].tolist()
    rec["c_violation_indices"] = bsel[cmp["c_violation_indices"]].tolist()
    return rec


def _sweep_section(run: _Inputs, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The β sweep of Figures 4-5 (:func:`beta_sweep`), cached; ``None`` when skipped."""
    n = run.config.beta_sweep_examples
    if not n:
        return None
    say("β sweep (Figures 4-5)")
    return _section(
        run.out,
        "beta_sweep",
        {**run.base, "n": n},
        lambda: beta_sweep(run.logits_fn, run.images, run.labels, max_examples=n),
    )


def _settings(cfg: SignalConfig) -> dict[str, Any]:
    """The threat model and seed as the record shows them."""
    return {"norm": cfg.norm, "eps": cfg.eps, "steps": cfg.steps, "seed": cfg.seed}


def signal_report(
    loaded_or_logits_fn,
    images,
    labels,
    *,
    config: SignalConfig | None = None,
    out_dir: str | Path,
    context: AttackContext | None = None,
    progress: bool = False,
    model_name: str = "",
    **options,
) -> dict[str, Any]:
    """Signal propagation, ρ ablation, CLEVER and lower bounds for one model, as files.

    Writes ``out_dir/signal.json`` (the record, per-example values included),
    ``signal.md`` (the tables) and plots (``bounds_hist.png``, ``clever.png``,
    ``rho_ablation.png``). Attacks go through ``evaluate_attack`` with their records under
    ``out_dir/attacks/`` (resumable), and every other section is cached under
    ``out_dir/sections/``: rerunning the same command skips the finished parts.

    Sections (the options are :class:`SignalConfig`'s fields):

    - Table 13 (:func:`signal_table`) for ``none``, ``njs``, ``hns`` on up to
      ``signal_examples`` correctly classified images;
    - the ablation (:func:`rho_ablation`): PGD, PGD++ fixed β, PGD++ NJS over ``rhos``,
      PGD++ with Proposition 1's β over ``prop1_rhos``, PGD++ HNS;
    - CLEVER (Table 11) on the first ``clever_examples`` correctly classified images:
      softmax(β a) for Original (β = 1), ``fixed(clever_beta)``, NJS and HNS (β at the
      clean point), plus the temperature-invariant logits score; defaults follow the
      paper (ART's L1 CLEVER, 50 batches of 10, radius 5, pool factor 10);
    - L-/C-bounds of the margin loss in ``norm`` beside ``min_norm_attack``'s distances
      (``fab`` or ``deepfool``), with the examples where a bound exceeds the distance
      found. ``bound_radius`` defaults to ``4 * eps``;
    - the β sweep of Figures 4-5 when ``beta_sweep_examples > 0`` (``beta_sweep_*.png``).

    Args:
        loaded_or_logits_fn: a ``qadv.checkpoint.LoadedModel`` (its input std is used for
            NJS's normalised-space option) or a logits function.
        images: ``(N, H, W, C)`` in ``[0, 1]``; labels: ``(N,)``.
        config: what to measure (:class:`SignalConfig`; default ``SignalConfig()``).
        out_dir: output folder.
        context: attack context (NJS calibration images, default ``images``; input std,
            default the checkpoint's).
        progress: print each section's name and show the attacks' progress.
        model_name: the model's name in the record when it is not a checkpoint.
        **options: :class:`SignalConfig`'s fields as keywords (``eps=..., steps=...``),
            instead of ``config``; giving both is an error.

    Returns:
        The record written to ``signal.json``.
    """
    cfg = _config_from(config, options)
    t0 = time.perf_counter()
    run, meta = _inputs(
        loaded_or_logits_fn, images, labels, cfg, context, out_dir, progress, model_name
    )
    logits_fn, images, labels, out = run.logits_fn, run.images, run.labels, run.out
    say = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)

    say("signal table (Table 13)")
    sig = _signal_section(run)
    say("PGD / PGD++ ablation (Table 12)")
    ablation = _ablation(run)
    correct = np.flatnonzero(
        clean_predictions(logits_fn, images, batch_size=min(cfg.batch_size, len(images))) == labels
    )
    key = jax.random.key(cfg.seed)
    say("CLEVER (Table 11)")
    per_example: dict[str, Any] = {}
    clever, clever_rec = _clever_section(run, correct, key)
    if clever is not None:
        per_example["clever"] = clever
    say(f"lower bounds and {cfg.min_norm_attack}")
    bounds, bounds_rec = _bounds_section(run, correct, key)
    if bounds is not None:
        per_example["bounds"] = bounds
    sweep = _sweep_section(run, say)

    record = {
        "model": meta.get("out_dir", model_name),
        "n": len(images),
        "clean_accuracy": sig["clean_accuracy"],
        **_settings(cfg),
        "data": run.base["data"],
        "signal": sig,
        "ablation": ablation,
        "clever": clever_rec,
        "bounds": bounds_rec,
        "beta_sweep": sweep,
        "per_example": per_example,
        "wall_time_s": time.perf_counter() - t0,
        "environment": records.environment(),
        "git_commit": records.git_commit(),
        "model_metadata": meta,
    }
    record["plots"] = signal_plots(out, record, per_example)
    record["plots"] += plot_beta_sweep(out, sweep) if sweep else []
    records.atomic_write_json(out / "signal.json", record)
    (out / "signal.md").write_text(format_signal_markdown(record))
    return record
