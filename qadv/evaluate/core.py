"""One attack over a test set: verified, resumable, scored honestly, per example.

Protocol (DESIGN §2, AutoAttack):

- robust accuracy is taken over *all* evaluated images; an example is robust only if
  the model classifies it correctly *and* the attack's image, re-run through the model,
  is still classified correctly. A misclassified clean image is never robust (it is not
  even attacked);
- every returned image is checked to lie in the ε-ball of the attack's norm and in
  ``[0, 1]`` before it is scored; a violation is an attack bug and raises;
- example ``i`` of the evaluated set uses the PRNG key ``fold_in(key(seed), i)``, so each
  per-example result is the same for any batch size, device count, or subset it is
  evaluated in (the ensemble relies on this);
- every distance in a record is measured here, on the float32 images, for an image that
  the model was re-run on and that is adversarial; an attack's own account of its
  distances is never scored. A minimum-norm attack's points beyond ``eps`` are verified
  the same way before their distances are kept;
- partial results are saved after every batch; a rerun with the same model, attack,
  data, seed and precision resumes where it stopped. A record or partial state of
  another model (:func:`model_fingerprint`) or of another prepared context (a transfer
  attack's surrogate, NJS's calibration: :func:`prepared_fingerprint`) is never reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qadv import parallel, records
from qadv.attacks import registry
from qadv.attacks.protocol import (
    AttackContext,
    example_keys,
    execute,
    prepare,
    split_logits_fn,
)
from qadv.evaluate.fingerprint import (
    data_fingerprint,
    model_fingerprint,
    prepared_fingerprint,
)
from qadv.evaluate.inputs import (
    as_images,
    check_data,
    check_inputs,
    check_seed,
    check_writable,
    resolve_context,
)

__all__ = [
    "as_images",
    "batch_placer",
    "cached_attack",
    "check_data",
    "check_seed",
    "check_writable",
    "clean_predictions",
    "data_fingerprint",
    "device_multiple",
    "evaluate_attack",
    "model_fingerprint",
    "padded",
    "predict",
    "prepared_fingerprint",
    "progress_bar",
]


def padded(a: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """``a`` padded to ``size`` rows by repeating its last row (one compiled shape)."""
    n = len(a)
    if n == size:
        return a, n
    reps = np.repeat(a[-1:], size - n, axis=0)
    return np.concatenate([a, reps], axis=0), n


def batch_placer(devices: list | None, batch_size: int | None = None) -> Callable[[Any], jax.Array]:
    """``device_put`` onto one device, or sharded over ``devices`` along the batch axis
    (:func:`qadv.parallel.place` on :func:`qadv.parallel.make_mesh`; ``devices`` may span
    several hosts, every process passing the same global batch).

    With several devices every batch must have a multiple of ``len(devices)`` rows:
    callers pad with :func:`padded` to :func:`device_multiple` and drop the padding from
    the results (``batch_size`` is accepted for compatibility and ignored).
    """
    if devices is None or len(devices) <= 1:
        return jnp.asarray
    sharding = parallel.batch_sharding(parallel.make_mesh(devices))
    return lambda a: parallel.place(a if isinstance(a, jax.Array) else np.asarray(a), sharding)


def device_multiple(size: int, devices: list | None) -> int:
    """``size`` rounded up to a multiple of the device count (padded rows are discarded).

    Example:
        >>> device_multiple(10, [0] * 8), device_multiple(10, None)
        (16, 10)
    """
    return parallel.round_up(size, 1 if devices is None else len(devices))


@functools.partial(jax.jit, static_argnames="fn_static")
def _predict(fn_static, fn_dyn, x) -> jax.Array:
    logits_fn = fn_static if fn_static is not None else fn_dyn
    return jnp.argmax(logits_fn(x), axis=-1).astype(jnp.int32)


def predict(logits_fn: Callable, x) -> jax.Array:
    """``argmax logits_fn(x)``, compiled once per model function and shape."""
    fn_static, fn_dyn = split_logits_fn(logits_fn)
    return _predict(fn_static, fn_dyn, x)


def clean_predictions(
    logits_fn: Callable, images: np.ndarray, *, batch_size: int = 500
) -> np.ndarray:
    """Predicted labels for ``images`` (float in [0, 1], or ``uint8`` scaled by 1/255), one
    compiled call per batch size (the last batch is padded by repeating its last image)."""
    out = []
    for start in range(0, len(images), batch_size):
        xb = np.asarray(images[start : start + batch_size])
        xb, n = padded(as_images(xb), batch_size)
        out.append(np.asarray(predict(logits_fn, jnp.asarray(xb)))[:n])
    return np.concatenate(out).astype(np.int32) if out else np.zeros((0,), np.int32)


def _bucket(m: int, batch_size: int, devices: list | None) -> int:
    """Compiled batch size for ``m`` examples: ``batch_size``, or for a short last batch
    the next power of two (at least 8), so padding never costs more than 2x; over several
    devices, ``batch_size`` rounded up to a multiple of their count. Results are per
    example (keys from the example index), so the choice never changes them."""
    if m >= batch_size or (devices is not None and len(devices) > 1):
        return device_multiple(batch_size, devices)
    return min(batch_size, max(8, 1 << (m - 1).bit_length()))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over batches, or a silent stand-in."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False)


def _stats(a: np.ndarray) -> dict[str, float]:
    a = np.asarray(a, np.float64)
    if not a.size:
        return {}
    return {
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def _json_floats(a: np.ndarray) -> list:
    """Per-example floats for JSON: ``inf`` (nothing found) becomes ``None``."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)]


class _Pending(NamedTuple):
    """One dispatched attack batch: its examples, compiled size, padded images, count."""

    sel: np.ndarray
    size: int
    xb: np.ndarray
    m: int
    res: Any


def _verify_launch(p: _Pending, logits_fn, put, config):
    """Wait for one batch's attack and dispatch the re-runs of the model on its points
    (``x_adv``, and a minimum-norm attack's points found beyond ε)."""
    x_adv = parallel.to_host(p.res.x_adv)[: p.m]
    found = None if p.res.found is None else parallel.to_host(p.res.found)[: p.m]
    checks = [
        predict(logits_fn, put(padded(c, p.size)[0])) for c in (x_adv, found) if c is not None
    ]
    return p, x_adv, found, checks


def _verified_distances(p: _Pending, x_adv, found, checks, labels, geometry, indices, config):
    """``(m,)`` float64 distance of the closest verified adversarial point of each example
    of a batch (``inf``: none); refuses an attack that left the ball or [0, 1]."""
    x = p.xb[: p.m]
    ok = geometry.in_ball(x_adv, x, config.eps)
    if not ok.all():
        bad = int(indices[p.sel][np.flatnonzero(~ok)[0]])
        raise RuntimeError(
            f"{config.label}: the attack returned an image outside the {geometry.label} "
            f"ball of radius {config.eps:.6g} or outside [0, 1] (example {bad})"
        )
    dist = np.full(p.m, np.inf)
    for cand, pred in zip((c for c in (x_adv, found) if c is not None), checks, strict=True):
        dist = np.minimum(dist, _verified_distance(geometry, cand, x, labels[p.sel], pred, p.m))
    return dist


def _verified_distance(geometry, x_cand, x, yb, pred, m) -> np.ndarray:
    """``(m,)`` float64 norm of ``x_cand - x`` measured on the float32 images where
    ``x_cand`` is finite, in ``[0, 1]`` and misclassified when the model is re-run on it
    (``pred``, its predictions); ``inf`` elsewhere (no verified adversarial point)."""
    adv_pred = parallel.to_host(pred)[:m]
    inside = geometry.in_ball(x_cand, x, np.inf)  # finite and in [0, 1]
    measured = np.asarray(geometry.distance(x_cand, x), np.float64)
    return np.where((adv_pred != yb) & inside, measured, np.inf)


def evaluate_attack(
    logits_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    config,
    *,
    batch_size: int = 250,
    seed: int = 0,
    indices: np.ndarray | None = None,
    context: AttackContext | None = None,
    calib_images: np.ndarray | None = None,
    input_std: tuple[float, ...] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    devices: list | None = None,
) -> dict[str, Any]:
    """Attack ``images`` batch by batch; return (and optionally save) the scored record.

    Args:
        logits_fn: pure function, images ``(B, H, W, C)`` in [0, 1] -> logits ``(B, d)``.
        images: ``(N, H, W, C)``, float in [0, 1] or ``uint8`` (scaled by 1/255).
        labels: int ``(N,)``.
        config: an attack config (``qadv.attacks.registry.make(name, ...)``).
        batch_size: examples per compiled attack call (the last batch is padded).
        seed: example ``i`` uses the PRNG key ``fold_in(key(seed), indices[i])``.
        indices: each example's index in the full evaluated set (default ``0..N-1``);
            pass it when evaluating a subset so that the keys stay the same.
        context: what the attack's ``prepare`` may need (NJS calibration images, the
            model's input std, a surrogate model); ``calib_images``/``input_std``
            (deprecated: put them in ``context``) fill it
            in; calibration defaults to ``images`` (the first test images, in order).
        out: JSON path. Partial progress goes to ``<out>.partial.npz``; a rerun with the
            same attack, data and seed resumes from it.
        progress: show a progress bar.
        extra: extra fields merged into the record (e.g. checkpoint metadata).
        devices: shard every batch over these devices (a 1-D mesh over the batch axis,
            parameters replicated; :mod:`qadv.parallel`); a batch is padded to a multiple
            of their number and the padding discarded, so the results do not depend on
            the device count. They may span several hosts (after
            :func:`qadv.parallel.initialize`): every process then runs this same call on
            the same data, and only process 0 writes ``out``, which must lie on a
            filesystem all processes share (they read its partial progress).

    Returns:
        A dict with the attack's label and config, ``n``, ``clean_accuracy`` and
        ``robust_accuracy`` (= ``adversarial_accuracy``; percent), attack-specific
        statistics (e.g. ``beta``), wall time, provenance, and per-example records under
        ``examples``: ``index``, ``clean_correct``, ``robust``, ``distance`` (norm of the
        smallest adversarial perturbation found, ``None`` if none), ``queries``.
    """
    return _evaluate(
        logits_fn,
        images,
        labels,
        config,
        batch_size=batch_size,
        seed=seed,
        indices=indices,
        context=resolve_context(context, calib_images, input_std, images),
        out=out,
        progress=progress,
        extra=extra,
        devices=devices,
        reuse=False,
    )


def _evaluate(
    logits_fn,
    images,
    labels,
    config,
    *,
    batch_size,
    seed,
    indices,
    context,
    out,
    progress,
    extra,
    devices,
    reuse: bool,
) -> dict[str, Any]:
    """:func:`evaluate_attack` with ``context`` resolved; with ``reuse``, the finished
    record at ``out`` is returned as it is when it was made by this same run: the same
    attack config and seed, data, model and prepared context (``keys`` below, which also
    key the partial state)."""
    images, labels, indices = check_inputs(images, labels, indices, batch_size, logits_fn)
    seed = check_seed(seed)
    n = len(images)
    geometry = config.geometry
    config.validate()
    config.validate_image_size(images[0].size)
    if out is not None:
        check_writable(out)
    data = prepare(config, logits_fn, context)
    cfg_dict = registry.to_dict(config)
    keys = {
        "config": cfg_dict,
        "seed": seed,
        "data_fingerprint": data_fingerprint(images, labels, indices),
        "model_fingerprint": model_fingerprint(logits_fn, images),
        "context_fingerprint": prepared_fingerprint(data, images),
    }
    if reuse and out is not None and Path(out).exists():
        try:
            rec = records.read_json(out)
        except (OSError, ValueError):
            rec = {}
        if all(rec.get(k) == v for k, v in keys.items()):
            return rec
    run_id = _run_id(keys)
    partial_path = Path(str(out) + ".partial.npz") if out is not None else None
    state, aux = _resumed_state(partial_path, n, run_id)

    t0, seconds0 = time.perf_counter(), float(state["seconds"])

    def checkpoint() -> None:
        """Record the time spent so far and save the partial state (process 0 only)."""
        state["seconds"] = np.asarray(seconds0 + time.perf_counter() - t0)
        if partial_path is not None and parallel.is_main_process():
            _save_partial(partial_path, state, aux, run_id)

    with records.CompileClock() as clock:
        put = batch_placer(devices)
        if not state["clean_done"]:
            _score_clean(state, logits_fn, images, labels, put, batch_size, devices)
        run = _Run(
            logits_fn, images, labels, indices, config, geometry, data, put, batch_size, devices
        )
        _attack_batches(run, jax.random.key(seed), state, aux, progress, checkpoint)
    state["seconds"] = np.asarray(seconds0 + time.perf_counter() - t0)

    timing = clock.as_dict(time.perf_counter() - t0)
    record = _record(config, keys, batch_size, state, aux, indices, timing, extra)
    if out is not None and parallel.is_main_process():
        records.atomic_write_json(out, record)
        if partial_path is not None:
            partial_path.unlink(missing_ok=True)
    return record


def _run_id(keys: dict) -> str:
    """What a partial state must match to be resumed: attack config and seed, data, model
    and the attack's prepared context."""
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()


def _resumed_state(partial_path: Path | None, n: int, run_id: str) -> tuple[dict, dict]:
    """``(state, aux)``: the saved partial state of this same run, or a fresh one."""
    state = {
        "clean_correct": np.zeros(n, bool),
        "clean_done": np.zeros((), bool),
        "robust": np.zeros(n, bool),
        "distance": np.full(n, np.inf, np.float64),
        "queries": np.zeros(n, np.int64),
        "done": np.zeros(n, bool),
        "seconds": np.zeros((), np.float64),
    }
    aux: dict[str, np.ndarray] = {}
    if partial_path is not None and partial_path.exists():
        try:
            with np.load(partial_path) as saved:
                if str(saved["run_id"]) == run_id:
                    loaded = {k: saved[k].copy() for k in state}
                    aux = {k[4:]: saved[k].copy() for k in saved.files if k.startswith("aux_")}
                    state = loaded
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            pass  # a damaged partial file: start afresh (it is written atomically)
    return state, aux


def _score_clean(state: dict, logits_fn, images, labels, put, batch_size, devices) -> None:
    """Classify every clean image; the misclassified are never robust and are not
    attacked, so they are marked done."""
    clean_size = device_multiple(batch_size, devices)
    for start in range(0, len(images), batch_size):
        xb, m = padded(images[start : start + batch_size], clean_size)
        pred = parallel.to_host(predict(logits_fn, put(xb)))[:m]
        state["clean_correct"][start : start + m] = pred == labels[start : start + m]
    state["clean_done"] = np.asarray(True)
    state["done"] |= ~state["clean_correct"]


class _Run(NamedTuple):
    """What every batch of one :func:`evaluate_attack` call shares."""

    logits_fn: Callable
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    config: Any
    geometry: Any
    data: Any
    put: Callable
    batch_size: int
    devices: list | None


def _launch(run: _Run, base_key: jax.Array, sel: np.ndarray) -> _Pending:
    """Dispatch the attack on one batch (asynchronous: nothing waits for it)."""
    size = _bucket(len(sel), run.batch_size, run.devices)
    xb, m = padded(run.images[sel], size)
    yb, _ = padded(run.labels[sel], size)
    ib, _ = padded(run.indices[sel], size)
    keys = example_keys(base_key, jnp.asarray(ib))
    if run.devices is not None and len(run.devices) > 1:
        keys = run.put(keys)
    res = execute(run.config, run.data, run.logits_fn, run.put(xb), run.put(yb), keys)
    return _Pending(sel, size, xb, m, res)


def _attack_batches(
    run: _Run, base_key: jax.Array, state: dict, aux: dict, progress: bool, checkpoint
) -> None:
    """Attack every example not yet done, batch by batch, storing each batch's verified
    results in ``state``/``aux`` and calling ``checkpoint`` after it."""
    todo = np.flatnonzero(~state["done"])
    batches = [todo[i : i + run.batch_size] for i in range(0, len(todo), run.batch_size)]
    bar = progress_bar(len(batches), run.config.label, progress)
    # One batch in flight: batch i+1 is dispatched before batch i's results are
    # verified and saved, so the accelerator attacks while the host checks and writes.
    pending = _launch(run, base_key, batches[0]) if batches else None
    for b in range(len(batches)):
        cur, x_adv, found, checks = _verify_launch(pending, run.logits_fn, run.put, run.config)
        pending, failed = None, None
        try:  # a failure to start the next batch still saves this one first
            pending = _launch(run, base_key, batches[b + 1]) if b + 1 < len(batches) else None
        except BaseException as e:  # re-raised once this batch is saved
            failed = e
        dist = _verified_distances(
            cur, x_adv, found, checks, run.labels, run.geometry, run.indices, run.config
        )
        _store(state, aux, cur, dist, run)
        checkpoint()
        bar.update(1)
        bar.set_postfix(robust=f"{100 * state['robust'][state['done']].mean():.1f}%")
        if failed is not None:
            raise failed
    bar.close()


def _store(state: dict, aux: dict, cur: _Pending, dist: np.ndarray, run: _Run) -> None:
    """One verified batch's results into the run's state."""
    sel, n = cur.sel, len(run.images)
    state["robust"][sel] = ~run.geometry.within(dist, run.config.eps)
    state["distance"][sel] = dist
    state["queries"][sel] = parallel.to_host(cur.res.queries)[: cur.m]
    for k, v in cur.res.aux.items():
        v = parallel.to_host(v)[: cur.m]
        if k not in aux:
            aux[k] = np.zeros((n, *v.shape[1:]), v.dtype)
        aux[k][sel] = v
    state["done"][sel] = True


def _record(config, keys, batch_size, state, aux, indices, timing, extra) -> dict[str, Any]:
    """The scored record of a finished run (see :func:`evaluate_attack`'s Returns);
    ``keys``: its config, seed and fingerprints (see :func:`_evaluate`)."""
    robust = state["robust"] & state["clean_correct"]
    record: dict[str, Any] = {
        "attack": config.label,
        "config": keys["config"],
        "seed": keys["seed"],
        "n": len(indices),
        "clean_accuracy": 100.0 * float(state["clean_correct"].mean()),
        "robust_accuracy": 100.0 * float(robust.mean()),
        "adversarial_accuracy": 100.0 * float(robust.mean()),
        "attacked": int(state["clean_correct"].sum()),
        "queries": _stats(state["queries"][state["clean_correct"]]),
        "batch_size": batch_size,
        "norm": config.norm,
        "eps": float(config.eps),
        "minimum_norm": bool(config.minimum_norm),
        "model_fingerprint": keys["model_fingerprint"],
        "data_fingerprint": keys["data_fingerprint"],
        "context_fingerprint": keys["context_fingerprint"],
        "wall_time_s": float(state["seconds"]),
        "timing": timing,
        "environment": records.environment(),
        **(extra or {}),
    }
    attacked = state["clean_correct"]
    if "beta" in aux:
        record["beta"] = _stats(aux["beta"][attacked])
    if "fallback" in aux:
        record["fallback_count"] = int(aux["fallback"][attacked].sum())
    record["examples"] = {
        "index": indices.tolist(),
        "clean_correct": state["clean_correct"].tolist(),
        "robust": robust.tolist(),
        "distance": _json_floats(np.where(attacked, state["distance"], 0.0)),
        "queries": state["queries"].tolist(),
    }
    return record


def cached_attack(
    path: str | Path | None,
    logits_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    config,
    *,
    seed: int = 0,
    indices: np.ndarray | None = None,
    context: AttackContext | None = None,
    calib_images: np.ndarray | None = None,
    input_std: tuple[float, ...] | None = None,
    **kwargs,
) -> dict[str, Any]:
    """:func:`evaluate_attack`, reusing the record at ``path`` when it was made by the same
    run; otherwise evaluate (resuming from ``<path>.partial.npz``) and save there.
    ``path=None`` always evaluates.

    The same run means: the same attack config and seed, the same data (images, labels,
    indices: ``data_fingerprint``), the same model (:func:`model_fingerprint`, which
    includes the precision policy) and the same prepared context
    (:func:`prepared_fingerprint`: a transfer attack's surrogate, NJS's calibration).
    The record carries these hashes; a record that differs in any of them, or predates
    them, is recomputed, never reused.
    """
    return _evaluate(
        logits_fn,
        images,
        labels,
        config,
        seed=seed,
        indices=indices,
        context=resolve_context(context, calib_images, input_std, images),
        out=path,
        batch_size=kwargs.pop("batch_size", 250),
        progress=kwargs.pop("progress", True),
        extra=kwargs.pop("extra", None),
        devices=kwargs.pop("devices", None),
        reuse=True,
        **kwargs,
    )


def _save_partial(path: Path, state: dict, aux: dict, run_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, run_id=np.asarray(run_id), **state, **{f"aux_{k}": v for k, v in aux.items()})
    tmp.replace(path)
