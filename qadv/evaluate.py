"""Robustness evaluation: run an attack over a test set, verify it, and score it honestly.

Protocol (DESIGN §2): adversarial accuracy is taken over *all* evaluated images —
misclassified clean images count as failures of the model. It is computed by
re-running the model on the returned images after checking that each lies in the
ε-ball and in [0, 1]. Partial results are saved after every batch, so a killed run
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import attacks, report, signal

__all__ = [
    "AttackSpec",
    "accuracy_curve",
    "clean_predictions",
    "diagnose",
    "evaluate_attack",
    "make_temperature",
]

ATTACKS = ("fgsm", "pgd")
NORMS = ("linf", "l2")
TEMPERATURES = ("none", "njs", "hns", "fixed")
LOSSES = ("ce", "dlr", "cw")
NJS_SPACES = ("pixel", "normalized")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """Full configuration of one attack run (everything needed to reproduce it).

    ``temperature`` is ``"none"`` (β = 1), ``"njs"``, ``"hns"`` or ``"fixed"``
    (with ``beta``). ``eps`` and ``step_size`` are in [0, 1] pixel units.
    For FGSM ``steps`` is 1 and the step size is ε. ``njs_space`` picks the input
    space of the NJS Jacobian: ``"pixel"`` ([0, 1] images, qadv's default) or
    ``"normalized"`` (mean/std-normalised inputs, as the authors' release; β₁ is then
    about 1/std larger).
    """

    attack: str = "pgd"
    norm: str = "linf"
    eps: float = 8 / 255
    step_size: float | None = 2 / 255
    steps: int = 20
    restarts: int = 1
    temperature: str = "none"
    beta: float = 1.0
    loss: str = "ce"
    rho: float = 0.01
    grid_size: int = 100
    hns_exact: bool = False
    calib_size: int = 101
    njs_space: str = "pixel"
    random_init: bool = True
    seed: int = 0

    def __post_init__(self):
        _choice("attack", self.attack, ATTACKS)
        _choice("norm", self.norm, NORMS)
        _choice("temperature", self.temperature, TEMPERATURES)
        _choice("loss", self.loss, LOSSES)
        if not (np.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"bad eps {self.eps!r}; it must be a positive number, e.g. 8/255")
        if self.attack == "fgsm":
            object.__setattr__(self, "steps", 1)
            object.__setattr__(self, "step_size", self.eps)
        if self.step_size is None or not (np.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"bad step size {self.step_size!r}; it must be a positive number")
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"bad steps {self.steps!r}; it must be an integer >= 1")
        if int(self.restarts) != self.restarts or self.restarts < 1:
            raise ValueError(f"bad restarts {self.restarts!r}; it must be an integer >= 1")
        if not (0.0 < self.rho < 1.0):
            raise ValueError(f"bad rho {self.rho!r}; it must lie in (0, 1)")
        if self.temperature == "fixed" and not (np.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"bad beta {self.beta!r}; a fixed temperature must be positive")
        if self.grid_size < 3:
            raise ValueError(f"bad grid size {self.grid_size!r}; it must be >= 3")
        _choice("NJS Jacobian space", self.njs_space, NJS_SPACES)
        if self.calib_size < 1:
            raise ValueError(f"bad calibration size {self.calib_size!r}; it must be >= 1")

    @property
    def label(self) -> str:
        """Short human name, e.g. ``PGD++ (HNS) linf``."""
        name = self.attack.upper()
        if self.temperature == "none":
            return f"{name} {self.norm}"
        if self.temperature == "fixed":
            return f"{name} (β={self.beta:g}) {self.norm}"
        return f"{name}++ ({self.temperature.upper()}) {self.norm}"

    def fingerprint(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def make_temperature(
    spec: AttackSpec,
    logits_fn: Callable,
    calib_images: np.ndarray | None,
    *,
    input_std: tuple[float, ...] | None = None,
):
    """Build the temperature strategy of ``spec`` (NJS is calibrated once, here).

    ``input_std`` is the model's per-channel normalisation std, needed when
    ``spec.njs_space == "normalized"``.
    """
    if spec.temperature == "none":
        return None
    if spec.temperature == "fixed":
        return attacks.fixed(spec.beta)
    if spec.temperature == "hns":
        return attacks.hns(grid_size=spec.grid_size, exact=spec.hns_exact)
    if calib_images is None or len(calib_images) == 0:
        raise ValueError("NJS needs calibration images (the first test images, in order)")
    std = None
    if spec.njs_space == "normalized":
        if input_std is None:
            raise ValueError("NJS in normalized space needs the model's input std")
        std = tuple(float(s) for s in input_std)
    calib = jnp.asarray(calib_images[: spec.calib_size])
    return attacks.njs(logits_fn, calib, rho=spec.rho, input_std=std)


def clean_predictions(
    logits_fn: Callable, images: np.ndarray, *, batch_size: int = 500
) -> np.ndarray:
    """Predicted labels for ``images`` (float in [0, 1]), one compiled call per batch size."""
    predict = jax.jit(lambda x: jnp.argmax(logits_fn(x), axis=-1))
    out = []
    for start in range(0, len(images), batch_size):
        xb, n = _pad(images[start : start + batch_size], batch_size)
        out.append(np.asarray(predict(jnp.asarray(xb)))[:n])
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def _pad(a: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    n = len(a)
    if n == size:
        return a, n
    reps = np.repeat(a[-1:], size - n, axis=0)
    return np.concatenate([a, reps], axis=0), n


def _padded_batch(
    images: np.ndarray, labels: np.ndarray, b: int, batch_size: int
) -> tuple[slice, np.ndarray, np.ndarray, int]:
    """Batch ``b`` padded to ``batch_size`` (one compiled shape); ``m`` real examples."""
    sl = slice(b * batch_size, min((b + 1) * batch_size, len(images)))
    xb, m = _pad(images[sl], batch_size)
    yb, _ = _pad(labels[sl], batch_size)
    return sl, xb, yb, m


def _check_ball(x: np.ndarray, x_adv: np.ndarray, spec: AttackSpec) -> None:
    tol = 1e-5
    if not np.all(np.isfinite(x_adv)):
        raise RuntimeError(f"{spec.label}: the attack returned non-finite images")
    if x_adv.min() < -tol or x_adv.max() > 1 + tol:
        raise RuntimeError(f"{spec.label}: adversarial images leave [0, 1]")
    delta = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    if spec.norm == "linf":
        dist = np.abs(delta).max(axis=1)
    else:
        dist = np.sqrt((delta**2).sum(axis=1))
    worst = float(dist.max()) if len(dist) else 0.0
    if worst > spec.eps * (1 + 1e-4) + tol:
        raise RuntimeError(
            f"{spec.label}: perturbation {worst:.6g} exceeds eps {spec.eps:.6g} ({spec.norm})"
        )


def evaluate_attack(
    logits_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    spec: AttackSpec,
    *,
    batch_size: int = 250,
    calib_images: np.ndarray | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    devices: list | None = None,
    input_std: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Attack ``images`` batch by batch and return (and optionally save) the result record.

    Args:
        logits_fn: pure function, images (B, H, W, C) in [0, 1] -> logits (B, d).
        images: float32 (N, H, W, C) in [0, 1].
        labels: int (N,).
        spec: the attack configuration.
        batch_size: examples per compiled attack call (the last batch is padded).
        calib_images: NJS calibration images; defaults to ``images`` (the first
            ``spec.calib_size`` test images, in order, as in the paper's release).
        out: JSON path. Partial progress goes to ``<out>.partial.npz`` and a rerun
            with the same spec and data resumes from it.
        progress: show a progress bar.
        extra: extra fields merged into the record (e.g. checkpoint metadata).
        devices: shard every batch over these devices (a 1-D ``jax.sharding.Mesh``
            over the batch axis; parameters are replicated). ``batch_size`` must be a
            multiple of their number. ``None``: the default device.
        input_std: the model's normalisation std (for ``njs_space="normalized"``).

    Returns:
        A dict with the config, ``n``, clean and adversarial accuracy (percent),
        per-example β statistics, the fallback count, wall time, and provenance.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.ndim != 4 or labels.shape != (len(images),):
        raise ValueError(
            f"images must be (N, H, W, C) and labels (N,); got {images.shape} and {labels.shape}"
        )
    if batch_size < 1:
        raise ValueError(f"bad batch size {batch_size!r}; it must be >= 1")
    n = len(images)
    batch_size = min(batch_size, n)
    num_batches = -(-n // batch_size)
    if calib_images is None:
        calib_images = images

    data_id = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]
    partial_path = Path(str(out) + ".partial.npz") if out is not None else None
    state = {
        "adv_correct": np.zeros(n, bool),
        "clean_correct": np.zeros(n, bool),
        "beta": np.ones(n, np.float32),
        "fallback": np.zeros(n, bool),
        "done": np.zeros(num_batches, bool),
        "seconds": np.zeros((), np.float64),
    }
    if partial_path is not None and partial_path.exists():
        with np.load(partial_path) as saved:
            if str(saved["key"]) == f"{spec.fingerprint()}:{data_id}:{batch_size}":
                state = {k: saved[k].copy() for k in state}

    put = _batch_placer(devices, batch_size)
    temperature = make_temperature(spec, logits_fn, calib_images, input_std=input_std)
    base_key = jax.random.key(spec.seed)
    predict = jax.jit(lambda x: jnp.argmax(logits_fn(x), axis=-1))
    kwargs = dict(eps=spec.eps, norm=spec.norm, temperature=temperature, loss=spec.loss)

    todo = [b for b in range(num_batches) if not state["done"][b]]
    bar = _progress(len(todo), spec.label, progress)
    t0, seconds0 = time.perf_counter(), float(state["seconds"])
    for b in todo:
        sl, xb, yb, m = _padded_batch(images, labels, b, batch_size)
        key = jax.random.fold_in(base_key, b)
        xd, yd = put(xb), put(yb)
        if spec.attack == "fgsm":
            x_adv, info = attacks.fgsm(
                logits_fn, xd, yd, key=key if spec.random_init else None, return_info=True, **kwargs
            )
        else:
            x_adv, info = attacks.pgd(
                logits_fn,
                xd,
                yd,
                key=key,
                step_size=spec.step_size,
                steps=spec.steps,
                restarts=spec.restarts,
                random_init=spec.random_init,
                return_info=True,
                **kwargs,
            )
        x_adv = np.asarray(x_adv)
        _check_ball(xb, x_adv, spec)
        state["adv_correct"][sl] = (np.asarray(predict(put(x_adv))) == yb)[:m]
        state["clean_correct"][sl] = (np.asarray(predict(xd)) == yb)[:m]
        state["beta"][sl] = np.asarray(info.beta)[:m]
        state["fallback"][sl] = np.asarray(info.fallback)[:m]
        state["done"][b] = True
        state["seconds"] = np.asarray(seconds0 + time.perf_counter() - t0)
        if partial_path is not None:
            _save_partial(partial_path, state, f"{spec.fingerprint()}:{data_id}:{batch_size}")
        bar.update(1)
        bar.set_postfix(adv_acc=f"{100 * state['adv_correct'][: sl.stop].mean():.1f}%")
    bar.close()
    seconds = float(state["seconds"])

    beta = state["beta"].astype(np.float64)
    record = {
        "attack": spec.label,
        "config": dataclasses.asdict(spec),
        "n": n,
        "clean_accuracy": 100.0 * float(state["clean_correct"].mean()),
        "adversarial_accuracy": 100.0 * float(state["adv_correct"].mean()),
        "beta": {
            "mean": float(beta.mean()),
            "median": float(np.median(beta)),
            "min": float(beta.min()),
            "max": float(beta.max()),
        },
        "fallback_count": int(state["fallback"].sum()),
        "batch_size": batch_size,
        "wall_time_s": seconds,
        "environment": report.environment(),
        **(extra or {}),
    }
    if out is not None:
        report.atomic_write_json(out, record)
        if partial_path is not None:
            partial_path.unlink(missing_ok=True)
    return record


def _batch_placer(devices: list | None, batch_size: int) -> Callable[[np.ndarray], jax.Array]:
    """``device_put`` onto one device, or sharded over ``devices`` along the batch axis."""
    if devices is None or len(devices) <= 1:
        return jnp.asarray
    if batch_size % len(devices):
        raise ValueError(
            f"bad batch size {batch_size}; with {len(devices)} devices it must be a multiple "
            f"of {len(devices)}"
        )
    mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    return lambda a: jax.device_put(np.asarray(a), sharding)


def _save_partial(path: Path, state: dict[str, np.ndarray], key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, key=np.asarray(key), **state)
    tmp.replace(path)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False)


def accuracy_curve(
    logits_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    spec: AttackSpec,
    *,
    batch_size: int = 250,
    calib_images: np.ndarray | None = None,
) -> np.ndarray:
    """Adversarial accuracy (percent) of the iterate after each PGD step (paper Fig. 1a).

    Entry ``t`` is the accuracy at iterate ``t`` (0 = the random start), from one
    compiled ``lax.scan`` that records predictions at every step.

    Returns:
        ``(spec.steps + 1,)`` accuracies in percent.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    n = len(images)
    batch_size = min(batch_size, n)
    temperature = make_temperature(
        spec, logits_fn, images if calib_images is None else calib_images
    )
    atk = attacks.make_pgd(
        logits_fn,
        eps=spec.eps,
        step_size=spec.step_size,
        norm=spec.norm,
        temperature=temperature,
        loss=spec.loss,
        random_init=spec.random_init,
    )

    @jax.jit
    def trajectory(key, x, y):
        def correct(s):
            return jnp.argmax(logits_fn(s.x_adv), axis=-1) == y

        def body(s, _):
            s = atk.step(s)
            return s, correct(s)

        s0 = atk.init(key, x, y)
        _, hits = jax.lax.scan(body, s0, None, length=spec.steps)
        return jnp.concatenate([correct(s0)[None], hits], axis=0)  # (T+1, B)

    base_key = jax.random.key(spec.seed)
    total = np.zeros(spec.steps + 1)
    for b in range(-(-n // batch_size)):
        _, xb, yb, m = _padded_batch(images, labels, b, batch_size)
        hits = np.asarray(
            trajectory(jax.random.fold_in(base_key, b), jnp.asarray(xb), jnp.asarray(yb))
        )
        total += hits[:, :m].sum(axis=1)
    return 100.0 * total / n


def diagnose(
    logits_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 100,
    jacobian_examples: int = 100,
) -> dict[str, Any]:
    """Signal-propagation statistics of a model at β = 1 (paper Table 13, DESIGN §2).

    Reports the fraction of examples whose input gradient is exactly zero, the
    distribution of the top-1 minus runner-up logit gap, mean ‖ψ‖, mean input-gradient
    and sign-gradient norms (over all examples), and Jacobian singular values over the
    first ``jacobian_examples`` correctly classified examples.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    n = len(images)
    batch_size = min(batch_size, n)

    @jax.jit
    def stats(x, y):
        logits = logits_fn(x)
        g = signal.input_gradient(logits_fn, x, y)
        axes = tuple(range(1, g.ndim))
        return (
            signal.logit_gap(logits),
            jnp.argmax(logits, axis=-1) == y,
            signal.error_signal_norm(logits, y),
            jnp.sqrt(jnp.sum(g * g, axis=axes)),
            jnp.sqrt(jnp.sum((g != 0).astype(g.dtype), axis=axes)),
            jnp.all(g == 0, axis=axes),
        )

    parts = []
    for b in range(-(-n // batch_size)):
        _, xb, yb, m = _padded_batch(images, labels, b, batch_size)
        parts.append([np.asarray(a)[:m] for a in stats(jnp.asarray(xb), jnp.asarray(yb))])
    gap, correct, psi, gnorm, sgnorm, zero = (np.concatenate(c) for c in zip(*parts, strict=True))

    idx = np.flatnonzero(correct)[:jacobian_examples]
    jsv = (
        np.asarray(
            jax.jit(lambda x: signal.jacobian_singular_values(logits_fn, x))(
                jnp.asarray(images[idx])
            )
        )
        if len(idx)
        else np.zeros((0, 1))
    )
    return {
        "n": n,
        "clean_accuracy": 100.0 * float(correct.mean()),
        "zero_gradient_fraction": float(zero.mean()),
        "logit_gap_median": float(np.median(gap)),
        "logit_gap_p90": float(np.percentile(gap, 90)),
        "logit_gap_max": float(gap.max()),
        "logit_gap_frac_over_88": float((gap > 88).mean()),
        "psi_norm_mean": float(psi.mean()),
        "input_grad_norm_mean": float(gnorm.mean()),
        "sign_grad_norm_mean": float(sgnorm.mean()),
        "sign_grad_norm_max": float(np.sqrt(np.prod(images.shape[1:]))),
        "jsv_mean": float(jsv.mean()) if jsv.size else float("nan"),
        "jsv_std": float(jsv.std()) if jsv.size else float("nan"),
        "jsv_examples": len(idx),
        "logit_gap_quantiles": {
            str(q): float(np.percentile(gap, q)) for q in (5, 25, 50, 75, 90, 95, 99)
        },
    }
