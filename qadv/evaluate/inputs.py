"""Checked inputs of the evaluation: images (``uint8`` pixels or floats in [0, 1]),
labels, indices, batch size, seed, the attack context and the output path; each bad one
refused with one line naming it, before any work."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from qadv import records
from qadv.attacks.protocol import AttackContext

__all__ = [
    "as_images",
    "check_batch_size",
    "check_data",
    "check_inputs",
    "check_seed",
    "check_writable",
    "resolve_context",
]


def as_images(images) -> np.ndarray:
    """``images`` as float32: ``uint8`` pixels are scaled by 1/255 (as the datasets store
    them and :func:`clean_predictions` reads them), other dtypes are taken as they are."""
    a = np.asarray(images)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    return a.astype(np.float32, copy=False)


def check_data(images, labels, logits_fn: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(float32 images (N, H, W, C) in [0, 1], int32 labels (N,))`` with N >= 1, or a
    one-line ``ValueError`` naming what is wrong. ``uint8`` images are scaled by 1/255
    (:func:`as_images`). Labels must be whole numbers >= 0; with ``logits_fn`` also below
    its number of classes."""
    images = as_images(images)
    raw = np.asarray(labels)
    if raw.size and not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, bool)):
        if not np.issubdtype(raw.dtype, np.floating) or not np.all(np.isfinite(raw)):
            raise ValueError(f"labels must be integers, got dtype {raw.dtype}")
        if np.any(raw != np.round(raw)):
            raise ValueError(
                f"labels must be whole numbers, got e.g. {raw[raw != np.round(raw)][0]!r}"
            )
    labels = raw.astype(np.int32)
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    if images.ndim != 4 or labels.shape != (len(images),):
        raise ValueError(
            f"images must be (N, H, W, C) and labels (N,); got {images.shape} and {labels.shape}"
        )
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    if images.min() < 0 or images.max() > 1 or np.isnan(images).any():
        raise ValueError(
            f"images must lie in [0, 1], got range [{images.min():.4g}, {images.max():.4g}]"
        )
    if logits_fn is not None:
        out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32))
        d = int(out.shape[-1])
        if labels.max() >= d:
            raise ValueError(f"labels must lie in [0, {d}) for this model, got {labels.max()}")
    return images, labels


def check_batch_size(batch_size) -> int:
    """``batch_size`` if it is an integer >= 1, else a one-line ``ValueError``."""
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise ValueError(f"bad batch size {batch_size!r}; it must be an integer >= 1")
    return int(batch_size)


def check_inputs(images, labels, indices, batch_size, logits_fn=None):
    images, labels = check_data(images, labels, logits_fn)
    check_batch_size(batch_size)
    indices = np.arange(len(images)) if indices is None else np.asarray(indices, np.int64)
    if indices.shape != (len(images),):
        raise ValueError(f"indices must have shape ({len(images)},), got {indices.shape}")
    return images, labels, indices


def resolve_context(context, calib_images, input_std, images) -> AttackContext:
    """``context`` with its gaps filled: calibration images (default: the evaluated
    images, in order) and the model's input std.

    ``calib_images`` and ``input_std`` are the deprecated loose keywords of
    :func:`evaluate_attack` and :func:`~qadv.evaluate.evaluate_ensemble`: they still
    work, with a ``DeprecationWarning``; pass ``context=AttackContext(...)`` instead."""
    loose = [
        k for k, v in (("calib_images", calib_images), ("input_std", input_std)) if v is not None
    ]
    if loose:
        warnings.warn(
            f"{' and '.join(loose)} are deprecated; pass "
            f"context=AttackContext({', '.join(f'{k}=...' for k in loose)})",
            DeprecationWarning,
            stacklevel=3,
        )
    context = context or AttackContext()
    calib = context.calib_images if context.calib_images is not None else calib_images
    return dataclasses.replace(
        context,
        calib_images=as_images(images if calib is None else calib),
        input_std=context.input_std if context.input_std is not None else input_std,
    )


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, a result file that cannot be written (one line)."""
    records.check_output_path(path, folder=False)


def check_seed(seed) -> int:
    """``seed`` if it is a whole number >= 0, else a one-line ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"bad seed {seed!r}; it must be an integer >= 0")
    return int(seed)
