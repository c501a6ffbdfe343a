"""Gradient-masking report: is a model's robustness real, or do its gradients hide it?

A model *masks* gradients when gradient attacks fail for reasons that have nothing to do
with robustness: a saturated softmax whose gradient is exactly zero (binarised networks,
DESIGN §2), a straight-through gradient that does not describe the function, randomness,
or a probability output. Athalye et al. (2018) and AutoAttack's ``checks.py`` list the
signs; :func:`masking_report` runs one check per sign and gives each a verdict with its
reason:

==================  =================================================================
check               masking suspected when
==================  =================================================================
zero-gradients      ≥ ``zero_gradient_threshold`` % of the correctly classified examples
                    have an exactly-zero input gradient (cross-entropy, β = 1)
softmax-output      the model's outputs are probabilities (non-negative, rows sum to 1)
randomness          two forward passes on the same images differ
gradient-fidelity   the input gradient disagrees with a finite difference of the loss
                    along a random direction, beyond the difference's rounding noise at
                    the model's precision, for many examples (shattered or
                    straight-through gradients)
temperature         PGD++ (one temperature on the logits) beats PGD by > ``tolerance``
iterations          a single step beats PGD, or PGD plateaus over 1..``max_steps``
                    iterations above what other attacks reach
epsilon             PGD's accuracy does not fall to 0 as ε grows while other curves do,
                    or stays above 0 at the largest meaningful ε (1 for L∞)
step-size           no step size brings PGD within ``tolerance`` of PGD++ (paper Fig. 3)
transfer            PGD on a surrogate model beats white-box PGD (needs ``surrogate``)
black-box           Square (gradient-free) beats white-box PGD
==================  =================================================================

"Beats" always means lower robust accuracy on the same examples by more than
``tolerance`` percentage points, and significantly so: a one-sided sign test on the
examples that only one of the two attacks breaks must give p < 0.01 (:func:`beats`).
Every attack is scored the qadv way (ball and [0, 1] verified, model re-run,
misclassified clean images never robust) and saved, so that a killed report resumes
attack by attack. The report also gives the per-example worst case over every attack it
ran at ε: an upper bound on the model's true robust accuracy. Every attack a check runs
goes through one door (``_Probe.record``), which registers the per-example robust flags
of each attack at the report's ε (FGSM, the step-size sweep, PGD-``max_steps`` of the
iterations curve, the temperatures, Square, transfer, ...); the worst case is taken over
all of them, whichever checks ran.

Checks register themselves with :func:`check`; a new check is one function.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import precision, records, signal
from qadv.attacks import AttackContext, get_norm, registry
from qadv.evaluate.core import (
    cached_attack,
    check_data,
    clean_predictions,
    data_fingerprint,
    model_fingerprint,
    padded,
    progress_bar,
)
from qadv.evaluate.diagnostics import accuracy_curve
from qadv.losses import cw_margin

__all__ = [
    "CHECKS",
    "MaskingConfig",
    "Verdict",
    "beats",
    "check",
    "masking_report",
    "write_masking_report",
]

PASS, SUSPECTED, SKIPPED = "pass", "masking suspected", "skipped"

#: Top-1 lead above which float32 softmax saturates (exp underflows below about -88).
SATURATION_GAP = 88.0


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """What the masking report measures.

    Attributes:
        norm: threat model, ``"linf"`` or ``"l2"``.
        eps: the radius the verdicts speak about (0.1 is Fashion-MNIST's usual L∞ budget;
            the paper's CIFAR budget is 8/255).
        steps: iterations of the white-box PGD every comparison uses.
        step_size: its step; ``None`` takes the norm's default (ε/4 for L∞).
        max_steps: the accuracy-against-iterations curve runs PGD this long.
        eps_factors: ε values of the accuracy-against-ε curves, as multiples of ``eps``;
            past the last one ε keeps doubling while PGD still leaves robust examples,
            up to ``eps_cap``.
        eps_cap: largest ε; ``None`` is 1 for L∞ (any image reachable) and
            ``sqrt(pixels)`` for L2.
        step_factors: step sizes of the step-size sweep, as multiples of ``eps``.
        temperatures: the PGD++ temperatures compared with PGD.
        margin_loss: also run PGD on the CW margin loss (no softmax to saturate).
        square_queries: query budget of the Square attack.
        tolerance: percentage points by which an attack must beat PGD to count.
        zero_gradient_threshold: percent of the correctly classified examples with an
            all-zero input gradient that flags masking.
        fidelity_threshold: fraction of examples whose gradient and finite difference
            disagree (relative error > 0.5, above the rounding floor) that flags masking.
        fd_step: smallest finite-difference step (pixel units, along a random ±1
            direction); the check also tries 4, 16, 64 and 256 times it, and uses per
            example the smallest step that rounding does not swamp (see the
            ``gradient-fidelity`` check).
        batch_size: examples per compiled attack call.
        seed: attack randomness (example ``i`` uses ``fold_in(key(seed), i)``).
    """

    norm: str = "linf"
    eps: float = 0.1
    steps: int = 20
    step_size: float | None = None
    max_steps: int = 200
    eps_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    eps_cap: float | None = None
    step_factors: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
    temperatures: tuple[str, ...] = ("njs", "hns")
    margin_loss: bool = True
    square_queries: int = 1000
    tolerance: float = 2.0
    zero_gradient_threshold: float = 1.0
    fidelity_threshold: float = 0.25
    fd_step: float = 1e-4
    batch_size: int = 250
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and what is allowed."""
        norm = get_norm(self.norm)
        if not (isinstance(self.eps, int | float) and self.eps > 0):
            raise ValueError(f"invalid eps {self.eps!r}; choose a number > 0")
        for name in ("steps", "max_steps", "square_queries", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"invalid {name} {v!r}; choose an integer >= 1")
        if self.max_steps < 2:
            raise ValueError(f"invalid max_steps {self.max_steps}; choose an integer >= 2")
        for name in ("eps_factors", "step_factors"):
            v = tuple(getattr(self, name))
            if not v or any(not isinstance(f, int | float) or f <= 0 for f in v):
                raise ValueError(f"invalid {name} {v!r}; choose positive multiples of eps")
        if self.eps_cap is not None and not self.eps_cap >= self.eps:
            raise ValueError(f"invalid eps_cap {self.eps_cap!r}; choose a value >= eps")
        for t in self.temperatures:
            registry.make_temperature(t)
        for name in ("tolerance", "zero_gradient_threshold", "fd_step"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0):
                raise ValueError(f"invalid {name} {v!r}; choose a number > 0")
        if not 0 < self.fidelity_threshold < 1:
            raise ValueError(
                f"invalid fidelity_threshold {self.fidelity_threshold!r}; "
                "choose a fraction in (0, 1)"
            )
        registry.make(
            "pgd", norm=norm.name, eps=self.eps, steps=self.steps, step_size=self.step_size
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One check's outcome: ``status`` is ``pass``, ``masking suspected`` or ``skipped``."""

    name: str
    status: str
    reason: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


#: Registered checks, in report order: name -> (title, function of a probe).
CHECKS: dict[str, tuple[str, Callable[[_Probe], Verdict]]] = {}


def check(name: str, title: str):
    """Register a masking check: a function ``probe -> Verdict`` (see ``_Probe``)."""

    def deco(fn):
        if name in CHECKS:
            raise ValueError(f"masking check {name!r} is already registered")
        CHECKS[name] = (title, fn)
        return fn

    return deco


def beats(robust_other: np.ndarray, robust_pgd: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Whether an attack beats PGD on the same examples, per example (paired).

    It beats PGD when its robust accuracy is lower by more than ``tolerance`` points AND a
    one-sided sign test on the examples that only one of the two breaks rejects "equally
    strong" at p < 0.01: a handful of examples on a small test set is not masking.
    """
    from scipy.stats import binomtest

    other_only = int((robust_pgd & ~robust_other).sum())
    pgd_only = int((robust_other & ~robust_pgd).sum())
    n = max(len(robust_pgd), 1)
    diff = 100.0 * (other_only - pgd_only) / n
    discordant = other_only + pgd_only
    p = binomtest(other_only, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    return {
        "beats": bool(diff > tolerance and p < 0.01),
        "points": diff,
        "broken_only_by_other": other_only,
        "broken_only_by_pgd": pgd_only,
        "p_value": float(p),
    }


def _pct(v: float) -> str:
    return f"{v:.1f}%"


def _eps_text(eps: float) -> str:
    k = eps * 255
    return f"{eps:.3g} ({k:.3g}/255)" if abs(k - round(k)) < 1e-6 else f"{eps:.3g}"


class _Probe:
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
            self._records[key] = cached_attack(
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

    def batches(self):
        b = min(self.config.batch_size, self.n)
        for start in range(0, self.n, b):
            xb, m = padded(self.images[start : start + b], b)
            yb, _ = padded(self.labels[start : start + b], b)
            yield jnp.asarray(xb), jnp.asarray(yb), m


def _gradient_facts(probe: _Probe) -> dict[str, Any]:
    f = probe.logits_fn

    @jax.jit
    def stats(x, y):
        logits = f(x)
        g = signal.input_gradient(f, x, y)
        zero = jnp.all(g.reshape(g.shape[0], -1) == 0, axis=1)
        return jnp.argmax(logits, -1) == y, signal.logit_gap(logits), zero

    parts = [[np.asarray(a)[:m] for a in stats(x, y)] for x, y, m in probe.batches()]
    correct, gap, zero = (np.concatenate(c) for c in zip(*parts, strict=True))
    ok = max(int(correct.sum()), 1)
    return {
        "correct": int(correct.sum()),
        "zero_gradient_pct": 100.0 * float((zero & correct).sum()) / ok,
        "saturated_pct": 100.0 * float(((gap > SATURATION_GAP) & correct).sum()) / ok,
        "gap_quantiles": {
            str(q): float(np.percentile(gap, q)) for q in (5, 25, 50, 75, 90, 95, 99)
        },
        "gap_max": float(gap.max()),
        "gaps": [float(v) for v in gap],
    }


@check("zero-gradients", "Zero input gradients (saturated softmax)")
def _zero_gradients(probe: _Probe) -> Verdict:
    facts = probe.fact("gradients", lambda: _gradient_facts(probe))
    zero, sat = facts["zero_gradient_pct"], facts["saturated_pct"]
    data = {k: v for k, v in facts.items() if k != "gaps"}
    if zero >= probe.config.zero_gradient_threshold:
        return Verdict(
            "zero-gradients",
            SUSPECTED,
            f"{_pct(zero)} of the correctly classified examples have an exactly-zero input "
            f"gradient ({_pct(sat)} lead their runner-up by more than {SATURATION_GAP:g} "
            "logits, where float32 softmax saturates); sign-gradient attacks cannot move them",
            data,
        )
    return Verdict(
        "zero-gradients",
        PASS,
        f"{_pct(zero)} of the correctly classified examples have a zero input gradient "
        f"(largest top-1 lead {facts['gap_max']:.1f} logits)",
        data,
    )


@check("softmax-output", "Probabilities instead of logits")
def _softmax_output(probe: _Probe) -> Verdict:
    def compute():
        fracs = []
        for x, _, m in probe.batches():
            z = np.asarray(probe.logits_fn(x), np.float64)[:m]
            fracs.append((z.min(axis=1) >= -1e-6) & (np.abs(z.sum(axis=1) - 1) < 1e-3))
        return float(np.concatenate(fracs).mean())

    frac = probe.fact("softmax_output", compute)
    if frac >= 0.99:
        return Verdict(
            "softmax-output",
            SUSPECTED,
            f"the outputs of {_pct(100 * frac)} of the examples are probabilities (non-negative, "
            "summing to 1); attacks need logits — cross-entropy on probabilities has vanishing "
            "gradients",
            {"probability_rows": frac},
        )
    return Verdict(
        "softmax-output", PASS, "the outputs are not probabilities", {"probability_rows": frac}
    )


@check("randomness", "Randomness across forward passes")
def _randomness(probe: _Probe) -> Verdict:
    def compute():
        x, _, m = next(probe.batches())
        a = np.asarray(probe.logits_fn(x), np.float64)[:m]
        b = np.asarray(probe.logits_fn(x), np.float64)[:m]
        scale = max(float(np.abs(a).max()), 1e-12)
        return {
            "max_abs_difference": float(np.abs(a - b).max()),
            "relative": float(np.abs(a - b).max() / scale),
            "prediction_changes": int((a.argmax(1) != b.argmax(1)).sum()),
            "examples": int(m),
        }

    d = probe.fact("randomness", compute)
    if d["relative"] > 1e-5:
        return Verdict(
            "randomness",
            SUSPECTED,
            f"two forward passes on the same {d['examples']} images differ (largest logit "
            f"change {d['max_abs_difference']:.3g}, {d['prediction_changes']} predictions "
            "changed); a randomised model needs expectation over transformation",
            d,
        )
    return Verdict("randomness", PASS, "two forward passes give the same logits", d)


#: Finite-difference steps of the fidelity check: ``fd_step * 4**k``, k = 0..4.
FD_LADDER = 5
#: Safety factor on the rounding-noise floor of a finite difference.
FD_NOISE_FACTOR = 4.0


def _jaxpr_dtypes(jaxpr) -> set:
    """Dtypes of every value an equation of ``jaxpr`` (or of a jaxpr nested in it) reads
    or writes."""
    out = set()
    for eqn in jaxpr.eqns:
        out.update(v.aval.dtype for v in (*eqn.invars, *eqn.outvars) if hasattr(v, "aval"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out |= _jaxpr_dtypes(inner)
    return out


def compute_epsilon(logits_fn: Callable, x: jax.Array) -> float:
    """Machine epsilon of the least precise float the model computes in: any floating
    dtype in its traced computation (bfloat16 compute gives ``2**-7``), and the matmul
    precision policy in force (TF32 on a GPU gives ``2**-10``;
    :func:`qadv.precision.relative_epsilon`)."""
    dtypes = _jaxpr_dtypes(jax.make_jaxpr(logits_fn)(x).jaxpr)
    floats = [float(jnp.finfo(d).eps) for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return max([precision.relative_epsilon(), *floats])


def _fidelity_facts(probe: _Probe) -> dict[str, Any]:
    """Directional derivative of the margin, by autodiff and by central differences at
    the steps ``fd_step * 4**k`` (see :func:`_gradient_fidelity` for the rule)."""
    f, h0 = probe.logits_fn, probe.config.fd_step
    steps = h0 * 4.0 ** np.arange(FD_LADDER)

    def loss(x, y):
        return jnp.sum(cw_margin(f(x), y))

    @jax.jit
    def measure(x, y, v):
        axes = tuple(range(1, x.ndim))
        g = jax.grad(loss)(x, y)
        ad = jnp.sum(g * v, axis=axes)
        g_abs = jnp.abs(g)
        fds, scales = [], []
        for h in steps.tolist():
            zp, zm = f(x + h * v), f(x - h * v)
            fds.append((cw_margin(zp, y) - cw_margin(zm, y)) / (2 * h))
            # what rounding scales with: both logit vectors, and each input's error
            # (relative to |x_i ± h|) times the margin's sensitivity to it
            size = jnp.max(jnp.abs(zp), axis=-1) + jnp.max(jnp.abs(zm), axis=-1)
            scales.append(size + 2 * jnp.sum(g_abs * (jnp.abs(x) + h), axis=axes))
        return ad, jnp.stack(fds), jnp.stack(scales)

    key = jax.random.key(probe.config.seed)
    parts = []
    for i, (x, y, m) in enumerate(probe.batches()):
        v = jax.random.rademacher(jax.random.fold_in(key, i), x.shape, jnp.float32)
        ad, fd, scale = (np.asarray(a, np.float64) for a in measure(x, y, v))
        parts.append((ad[:m], fd[:, :m], scale[:, :m]))
        if i == 0:
            eps_c = compute_epsilon(f, x)
    ad, fd, scale = (np.concatenate(p, axis=-1) for p in zip(*parts, strict=True))
    floor = FD_NOISE_FACTOR * eps_c * scale / (2 * steps[:, None])  # (K, N)
    err = np.abs(ad[None] - fd)
    size = np.maximum(np.maximum(np.abs(ad)[None], np.abs(fd)), 1e-12)
    resolved = floor <= 0.25 * np.abs(ad)[None]
    k = np.where(resolved.any(axis=0), resolved.argmax(axis=0), len(steps) - 1)
    cols = np.arange(len(ad))
    e, s_, fl = err[k, cols], size[k, cols], floor[k, cols]
    disagree = (e > 0.5 * s_) & (e > 2 * fl)
    rel = e / s_
    return {
        "disagree_fraction": float(disagree.mean()),
        "median_relative_error": float(np.median(rel)),
        "fd_step": h0,
        "steps": steps.tolist(),
        "step_used_counts": np.bincount(k, minlength=len(steps)).tolist(),
        "unresolved_fraction": float((~resolved.any(axis=0)).mean()),
        "compute_epsilon": eps_c,
    }


@check("gradient-fidelity", "Gradient against finite differences")
def _gradient_fidelity(probe: _Probe) -> Verdict:
    """Does the input gradient describe the function, at the precision the model runs in?

    Per example, along a random ±1 direction ``v``: ``a`` is the margin's directional
    derivative by autodiff and ``d_h`` its central difference at step ``h``, for
    ``h = fd_step * 4**k``, ``k = 0..4``. A central difference also carries rounding:
    ``|error| <= c * eps * S / (2h)``, with ``eps`` the machine epsilon of the least
    precise float in the model's computation or of the matmul precision in force
    (:func:`compute_epsilon`: float32 ``2**-23``, TF32 ``2**-10``, bfloat16 ``2**-7``),
    ``S`` the rounding's scale (``max|z|`` at both points, plus ``2 sum_i |g_i| (|x_i| +
    h)`` for each input's rounding, ``g`` the gradient) and ``c = 4`` (:data:`FD_NOISE_FACTOR`).
    Large logits make ``S`` large; bfloat16 or TF32 make ``eps`` large. The check uses the
    smallest step whose floor is at most ``|a| / 4`` (the largest if none is: the example
    is *unresolved*, counted in ``unresolved_fraction``), and counts a disagreement only
    when ``|a - d_h| > 0.5 max(|a|, |d_h|)`` **and** ``|a - d_h|`` exceeds twice the floor.
    Masking is suspected when more than ``fidelity_threshold`` of the examples disagree.
    An exactly linear model, however large its logits, and a smooth network in bfloat16
    therefore pass; a straight-through sign network in float32 (``d_h = 0`` between its
    jumps, ``±jump / 2h`` across one, never its surrogate gradient) is flagged.
    """
    d = probe.fact("fidelity", lambda: _fidelity_facts(probe))
    frac = d["disagree_fraction"]
    eps = f"compute epsilon {d['compute_epsilon']:.2g}"
    if frac > probe.config.fidelity_threshold:
        return Verdict(
            "gradient-fidelity",
            SUSPECTED,
            f"for {_pct(100 * frac)} of the examples the input gradient's directional derivative "
            f"disagrees (relative error > 0.5, above the rounding floor) with a finite "
            f"difference of the margin loss (steps from {d['fd_step']:.1g}, {eps}): the "
            "gradient does not describe the function (straight-through or shattered gradients)",
            d,
        )
    unresolved = d["unresolved_fraction"]
    note = (
        f"; at this precision ({eps}) finite differences cannot resolve the gradient of "
        f"{_pct(100 * unresolved)} of the examples, which are not counted"
        if unresolved > 0
        else ""
    )
    return Verdict(
        "gradient-fidelity",
        PASS,
        f"the gradient matches finite differences of the margin loss "
        f"(median relative error {d['median_relative_error']:.2g}){note}",
        d,
    )


@check("temperature", "PGD++: one temperature on the logits")
def _temperature(probe: _Probe) -> Verdict:
    pgd, pgd_r = probe.accuracy(*probe.white_box()), probe.robust(*probe.white_box())
    accs = {t: probe.accuracy(*probe.pgd(temperature=t)) for t in probe.config.temperatures}
    data = {"pgd": pgd, "pgd++": accs}
    if not accs:
        return Verdict("temperature", SKIPPED, "no temperatures configured", data)
    best = min(accs, key=accs.get)
    data["test"] = beats(probe.robust(*probe.pgd(temperature=best)), pgd_r, probe.config.tolerance)
    if data["test"]["beats"]:
        return Verdict(
            "temperature",
            SUSPECTED,
            f"PGD++ ({best.upper()}) leaves {_pct(accs[best])} where PGD leaves {_pct(pgd)}: "
            "rescaling the logits changes no prediction, so the difference is saturated "
            "softmax, not robustness",
            data,
        )
    return Verdict(
        "temperature",
        PASS,
        f"PGD++ ({best.upper()}) {_pct(accs[best])} against PGD {_pct(pgd)}: temperature "
        "scaling does not help",
        data,
    )


@check("iterations", "Accuracy against PGD iterations")
def _iterations(probe: _Probe) -> Verdict:
    c = probe.config
    _, wb = probe.white_box()
    long_key, cfg = probe.pgd(steps=c.max_steps)

    def compute():
        curve = accuracy_curve(
            probe.logits_fn,
            probe.images,
            probe.labels,
            cfg,
            batch_size=min(c.batch_size, probe.n),
            seed=c.seed,
            context=probe.context,
        )
        return [float(v) for v in curve]

    curve = probe.fact(f"iterations_T{c.max_steps}", compute)
    # the curve's end point, scored (same keys, so the same run): its per-example flags
    # feed the paired tests below and the report's worst case
    long_acc, long_r = probe.accuracy(long_key, cfg), probe.robust(long_key, cfg)
    fgsm_key, fgsm_cfg = probe.fgsm()
    fgsm, fgsm_r = probe.accuracy(fgsm_key, fgsm_cfg), probe.robust(fgsm_key, fgsm_cfg)
    strongest, strongest_r = probe.strongest()
    final, half = curve[-1], curve[len(curve) // 2]
    data = {
        "curve": curve,
        "pgd_max_steps": long_acc,
        "fgsm": fgsm,
        "strongest": strongest,
        "step_size": wb.step_size,
        "fgsm_test": beats(fgsm_r, long_r, c.tolerance),
        "test": beats(strongest_r, long_r, c.tolerance),
    }
    if data["fgsm_test"]["beats"]:
        t = data["fgsm_test"]
        return Verdict(
            "iterations",
            SUSPECTED,
            f"one FGSM step leaves {_pct(fgsm)}, below PGD's {_pct(long_acc)} after "
            f"{c.max_steps} steps on the same examples ({t['broken_only_by_other']} broken "
            f"only by FGSM, {t['broken_only_by_pgd']} only by PGD; sign test p = "
            f"{t['p_value']:.2g}): an iterative attack should be at least as strong",
            data,
        )
    if data["test"]["beats"] and half - final < 1.0:
        return Verdict(
            "iterations",
            SUSPECTED,
            f"PGD plateaus at {_pct(final)} (step {len(curve) // 2}: {_pct(half)}; step "
            f"{c.max_steps}: {_pct(final)}) while the attacks of this report together leave "
            f"{_pct(strongest)}: more iterations do not help",
            data,
        )
    return Verdict(
        "iterations",
        PASS,
        f"PGD falls to {_pct(final)} after {c.max_steps} steps (other attacks together: "
        f"{_pct(strongest)})",
        data,
    )


def _eps_curves(probe: _Probe) -> dict[str, Any]:
    c = probe.config
    cap = c.eps_cap
    if cap is None:
        cap = get_norm(c.norm).diameter(int(np.prod(probe.images.shape[1:])))
    variants = {"PGD": {}}
    variants.update({f"PGD++ ({t.upper()})": {"temperature": t} for t in c.temperatures})
    if c.margin_loss:
        variants["PGD (CW margin)"] = {"loss": "cw"}
    curves = {name: [] for name in variants}
    radii: list[float] = []
    todo = sorted({min(c.eps * f, cap) for f in c.eps_factors})
    while todo:
        eps = todo.pop(0)
        radii.append(eps)
        for name, opts in variants.items():
            curves[name].append(probe.accuracy(*probe.pgd(eps=eps, step_size=None, **opts)))
        if all(v[-1] == 0 for v in curves.values()):
            break
        if not todo and curves["PGD"][-1] > 0 and eps < cap:
            todo.append(min(2 * eps, cap))
    return {"eps": radii, "curves": curves, "cap": cap}


@check("epsilon", "Accuracy against ε")
def _epsilon(probe: _Probe) -> Verdict:
    d = _eps_curves(probe)
    radii, curves, cap = d["eps"], d["curves"], d["cap"]
    pgd = curves["PGD"]
    zero_at = {
        name: next((e for e, a in zip(radii, v, strict=True) if a == 0), None)
        for name, v in curves.items()
    }
    others = {k: v for k, v in zero_at.items() if k != "PGD" and v is not None}
    last = radii[-1]
    data = {**d, "zero_at": zero_at}
    if pgd[-1] > 0 and others:
        name = min(others, key=others.get)
        return Verdict(
            "epsilon",
            SUSPECTED,
            f"PGD still leaves {_pct(pgd[-1])} at ε = {_eps_text(last)} while {name} reaches 0% "
            f"at ε = {_eps_text(others[name])}: accuracy plateaus instead of falling to 0",
            data,
        )
    if pgd[-1] > 0 and last >= cap:
        return Verdict(
            "epsilon",
            SUSPECTED,
            f"PGD leaves {_pct(pgd[-1])} at ε = {_eps_text(last)}, the largest meaningful radius: "
            "an unbounded attack must reach 0%",
            data,
        )
    if pgd[-1] > 0:
        return Verdict(
            "epsilon",
            PASS,
            f"PGD falls to {_pct(pgd[-1])} at ε = {_eps_text(last)} (cap not reached)",
            data,
        )
    return Verdict("epsilon", PASS, f"PGD falls to 0% at ε = {_eps_text(zero_at['PGD'])}", data)


@check("step-size", "PGD step-size sweep (paper Fig. 3)")
def _step_size(probe: _Probe) -> Verdict:
    c = probe.config
    etas = [c.eps * f for f in c.step_factors]
    accs = [probe.accuracy(*probe.pgd(step_size=eta)) for eta in etas]
    plus = {t: probe.accuracy(*probe.pgd(temperature=t)) for t in c.temperatures}
    k = int(np.argmin(accs))
    data = {"step_sizes": etas, "pgd": accs, "pgd++": plus}
    best = min(plus, key=plus.get) if plus else None
    if best is not None:
        data["test"] = beats(
            probe.robust(*probe.pgd(temperature=best)),
            probe.robust(*probe.pgd(step_size=etas[k])),
            c.tolerance,
        )
    if best is not None and data["test"]["beats"]:
        return Verdict(
            "step-size",
            SUSPECTED,
            f"no step size helps PGD: its best (η = {etas[k]:.3g}) leaves {_pct(accs[k])}, while "
            f"PGD++ ({best.upper()}) at the default step leaves {_pct(plus[best])}",
            data,
        )
    return Verdict(
        "step-size",
        PASS,
        f"PGD's best step size (η = {etas[k]:.3g}) gives {_pct(accs[k])}"
        + (f", within {c.tolerance:g} points of PGD++" if plus else ""),
        data,
    )


def _versus_pgd(probe: _Probe, name: str, other: tuple[str, Any], what: str, why: str) -> Verdict:
    """Does ``other`` (key, config) beat white-box PGD on the same examples (:func:`beats`)?"""
    pgd = probe.accuracy(*probe.white_box())
    acc = probe.accuracy(*other)
    test = beats(probe.robust(*other), probe.robust(*probe.white_box()), probe.config.tolerance)
    data = {"pgd": pgd, "attack": acc, "test": test}
    if test["beats"]:
        reason = (
            f"{what} leaves {_pct(acc)}, below white-box PGD's {_pct(pgd)} "
            f"({test['broken_only_by_other']} examples broken only by it): {why}"
        )
        return Verdict(name, SUSPECTED, reason, data)
    return Verdict(name, PASS, f"{what} leaves {_pct(acc)}, white-box PGD {_pct(pgd)}", data)


@check("transfer", "White-box against transfer from a surrogate")
def _transfer(probe: _Probe) -> Verdict:
    if probe.context.surrogate is None:
        return Verdict("transfer", SKIPPED, "no surrogate model given")
    return _versus_pgd(
        probe,
        "transfer",
        probe.transfer(),
        "PGD run on the surrogate",
        "the model's own gradients mislead",
    )


@check("black-box", "White-box against Square (gradient-free)")
def _black_box(probe: _Probe) -> Verdict:
    key, cfg = probe.square()
    return _versus_pgd(
        probe,
        "black-box",
        (key, cfg),
        f"Square ({cfg.queries} queries, no gradients)",
        "an attack without gradients does better than one with them",
    )


def masking_report(
    logits_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    config: MaskingConfig | None = None,
    surrogate: Callable | None = None,
    context: AttackContext | None = None,
    checks: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    name: str = "model",
) -> dict[str, Any]:
    """Run the masking checks on one model; return the report (and save it to ``out_dir``).

    Args:
        logits_fn: pure function, images ``(B, H, W, C)`` in [0, 1] -> logits ``(B, d)``.
        images: float32 ``(N, H, W, C)`` in [0, 1] (e.g. the first N test images).
        labels: int ``(N,)``.
        config: what to measure (:class:`MaskingConfig`; defaults: L∞, ε = 0.1).
        surrogate: logits function of a different model (e.g. the float network of the
            same shape) for the transfer check; without it that check is skipped.
        context: attack context (NJS calibration images, input std); by default NJS
            calibrates on ``images``.
        checks: names from :data:`CHECKS` (default all, in registry order).
        out_dir: folder for ``masking.json``, ``masking.md``, plots and the per-attack
            records (a rerun reuses finished attacks and resumes unfinished ones).
        progress: progress bars.
        name: the model's name in the report.

    Returns:
        A dict: ``verdict`` (``masking suspected`` or ``no masking detected``), ``summary``
        (one paragraph), ``checks`` (name, title, status, reason, data), ``robust_accuracy``
        (PGD's and the per-example worst case over every attack at ε), provenance.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> w = np.linspace(-1, 1, 16 * 3).reshape(16, 3).astype(np.float32)
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> x = np.random.default_rng(0).uniform(size=(8, 4, 4, 1)).astype(np.float32)
        >>> y = np.asarray(jnp.argmax(f(x), -1))
        >>> r = masking_report(f, x, y, checks=["zero-gradients"], progress=False)
        >>> r["checks"][0]["status"]
        'pass'
    """
    config = config if config is not None else MaskingConfig()
    config.validate()
    names = list(CHECKS) if checks is None else list(checks)
    for n_ in names:
        if n_ not in CHECKS:
            raise ValueError(f"unknown masking check {n_!r}; choose from: " + ", ".join(CHECKS))
    images, labels = check_data(images, labels, logits_fn)
    if context is None:
        context = AttackContext(calib_images=images)
    if surrogate is not None:
        context = dataclasses.replace(context, surrogate=surrogate)
    out = Path(out_dir) if out_dir is not None else None
    t0 = time.perf_counter()
    with records.CompileClock() as clock:
        probe = _Probe(logits_fn, images, labels, config, context, out, progress)
        verdicts = []
        bar = progress_bar(len(names), "masking checks", progress)
        for n_ in names:
            title, fn = CHECKS[n_]
            v = fn(probe)
            verdicts.append(
                {
                    "name": v.name,
                    "title": title,
                    "status": v.status,
                    "reason": v.reason,
                    "data": v.data,
                }
            )
            bar.update(1)
        bar.close()

    # robust accuracy at ε of every attack the checks ran, and their per-example worst case
    robust, worst = probe.worst_case()
    if worst is not None:
        robust["worst case over all"] = 100.0 * float(worst.mean())
    correct = clean_predictions(logits_fn, images, batch_size=min(config.batch_size, len(images)))
    clean = 100.0 * float((correct == labels).mean())
    flagged = [v for v in verdicts if v["status"] == SUSPECTED]
    result: dict[str, Any] = {
        "model": name,
        "n": len(images),
        "norm": config.norm,
        "eps": config.eps,
        "clean_accuracy": clean,
        "verdict": SUSPECTED if flagged else "no masking detected",
        "robust_accuracy": robust,
        "checks": verdicts,
        "config": dataclasses.asdict(config),
        "surrogate": surrogate is not None,
        "wall_time_s": time.perf_counter() - t0,
        "timing": clock.as_dict(time.perf_counter() - t0),
        "git_commit": records.git_commit(),
        "environment": records.environment(),
    }
    result["summary"] = _summary(result, config)
    if out is not None:
        write_masking_report(result, out, gaps=probe._facts.get("gradients", {}).get("gaps"))
    return result


def _summary(r: dict[str, Any], c: MaskingConfig) -> str:
    flagged = [v for v in r["checks"] if v["status"] == SUSPECTED]
    skipped = [v["name"] for v in r["checks"] if v["status"] == SKIPPED]
    acc = r["robust_accuracy"]
    pgd, worst = acc.get("PGD"), acc.get("worst case over all")
    where = (
        f"At ε = {_eps_text(c.eps)} ({c.norm}, first {r['n']} test images, clean accuracy "
        f"{_pct(r['clean_accuracy'])})"
    )
    if pgd is not None:
        where += (
            f", PGD-{c.steps} reports {_pct(pgd)} robust accuracy; the per-example worst case "
            f"over every attack in this report leaves {_pct(worst)}."
        )
    else:
        where += "."
    if flagged:
        names = ", ".join(v["name"] for v in flagged)
        text = (
            f"**Gradient masking suspected** for {r['model']}: {len(flagged)} of "
            f"{len(r['checks'])} checks flag it ({names}). {where} "
        )
        if pgd is None:
            pass
        elif pgd - worst > c.tolerance:
            text += (
                f"At least {pgd - worst:.1f} points of PGD's robustness are fake; "
                f"{_pct(worst)} is an upper bound on the true robust accuracy."
            )
        else:
            text += "The attacks agree at ε, so the flags concern the gradients, not the number."
    else:
        text = (
            f"**No gradient masking detected** for {r['model']}: all "
            f"{len(r['checks']) - len(skipped)} checks that ran pass. {where}"
        )
    if skipped:
        text += f" Skipped: {', '.join(skipped)}."
    return text


def write_masking_report(
    r: dict[str, Any], out_dir: str | Path, *, gaps: Sequence[float] | None = None
) -> None:
    """Write ``masking.json``, ``masking.md`` and the plots of a :func:`masking_report`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(out / "masking.json", r)
    checks = {v["name"]: v for v in r["checks"]}
    plots = []
    if "iterations" in checks:
        d = checks["iterations"]["data"]
        steps = list(range(len(d["curve"])))
        records.plot_curves(
            out / "iterations.png",
            {
                "PGD": (steps[1:], d["curve"][1:]),
                "all attacks (worst case)": ([1, steps[-1]], [d["strongest"]] * 2),
            },
            xlabel="PGD iterations",
            ylabel="robust accuracy (%)",
            title=f"{r['model']}: accuracy against iterations",
            logx=True,
        )
        plots.append(("Accuracy against PGD iterations", "iterations.png"))
    if "epsilon" in checks:
        d = checks["epsilon"]["data"]
        records.plot_curves(
            out / "epsilon.png",
            {k: (d["eps"], v) for k, v in d["curves"].items()},
            xlabel=f"ε ({r['norm']})",
            ylabel="robust accuracy (%)",
            title=f"{r['model']}: accuracy against ε",
        )
        plots.append(("Accuracy against ε", "epsilon.png"))
    if "step-size" in checks:
        d = checks["step-size"]["data"]
        curves = {"PGD": (d["step_sizes"], d["pgd"])}
        for t, a in d["pgd++"].items():
            curves[f"PGD++ ({t.upper()}), default step"] = (
                [d["step_sizes"][0], d["step_sizes"][-1]],
                [a, a],
            )
        records.plot_curves(
            out / "step_size.png",
            curves,
            xlabel="step size η",
            ylabel="robust accuracy (%)",
            title=f"{r['model']}: PGD step-size sweep",
            logx=True,
        )
        plots.append(("PGD step-size sweep", "step_size.png"))
    if gaps:
        _plot_gaps(out / "logit_gap.png", np.asarray(gaps), r["model"])
        plots.append(("Top-1 lead over the runner-up logit", "logit_gap.png"))
    (out / "masking.md").write_text(masking_markdown(r, plots))


def _plot_gaps(path: Path, gaps: np.ndarray, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.hist(gaps, bins=50, color="tab:blue", alpha=0.8)
    ax.axvline(SATURATION_GAP, color="tab:red", ls="--", label="float32 softmax saturates")
    ax.set_xlabel("top-1 logit minus runner-up")
    ax.set_ylabel("examples")
    ax.set_title(f"{model}: logit gaps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def masking_markdown(r: dict[str, Any], plots: Sequence[tuple[str, str]] = ()) -> str:
    """The markdown of a :func:`masking_report` (verdict paragraph, checks, curves)."""
    lines = [f"# Gradient-masking report: {r['model']}", "", r["summary"], ""]
    lines += ["| check | verdict | reason |", "|---|---|---|"]
    for v in r["checks"]:
        lines.append(f"| {v['name']} | {v['status']} | {v['reason']} |")
    lines += ["", f"## Robust accuracy at ε = {_eps_text(r['eps'])} ({r['norm']})", ""]
    lines += ["| attack | robust accuracy |", "|---|---|"]
    lines += [f"| {k} | {_pct(v)} |" for k, v in r["robust_accuracy"].items()]
    checks = {v["name"]: v for v in r["checks"]}
    if "epsilon" in checks:
        d = checks["epsilon"]["data"]
        lines += ["", "## Accuracy against ε", ""]
        lines.append("| ε | " + " | ".join(d["curves"]) + " |")
        lines.append("|---" * (len(d["curves"]) + 1) + "|")
        for i, e in enumerate(d["eps"]):
            lines.append(
                f"| {_eps_text(e)} | " + " | ".join(_pct(v[i]) for v in d["curves"].values()) + " |"
            )
    if "iterations" in checks:
        d = checks["iterations"]["data"]
        marks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if t < len(d["curve"])]
        lines += ["", "## Accuracy against PGD iterations", ""]
        lines.append("| iterations | " + " | ".join(str(t) for t in marks) + " |")
        lines.append("|---" * (len(marks) + 1) + "|")
        lines.append("| PGD | " + " | ".join(_pct(d["curve"][t]) for t in marks) + " |")
    if "step-size" in checks:
        d = checks["step-size"]["data"]
        lines += ["", "## PGD step-size sweep", ""]
        lines.append("| η | " + " | ".join(f"{e:.3g}" for e in d["step_sizes"]) + " |")
        lines.append("|---" * (len(d["step_sizes"]) + 1) + "|")
        lines.append("| PGD | " + " | ".join(_pct(a) for a in d["pgd"]) + " |")
    for title, file in plots:
        lines += ["", f"![{title}]({file})"]
    lines += [
        "",
        f"n = {r['n']}; wall time {r['wall_time_s']:.0f} s"
        + (f" ({r['timing']['compile_time_s']:.0f} s compiling)" if "timing" in r else "")
        + f"; git commit {r['git_commit']}; "
        f"{r['environment']['processor']}, {r['environment']['cpu_count']} CPU cores, "
        f"jax {r['environment']['jax_version']} on {r['environment']['backend']}",
        "",
    ]
    return "\n".join(lines)
