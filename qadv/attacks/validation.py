"""Input checks shared by every attack entry point: one ``ValueError`` naming the bad value
and what is allowed, raised in Python before anything is compiled."""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_batch", "check_choice", "check_int", "check_scalar", "is_concrete"]


def is_concrete(v) -> bool:
    return not isinstance(v, jax.core.Tracer)


def check_choice(name: str, value, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def check_scalar(name, v, *, allow_zero=True, maximum: float | None = None) -> None:
    """A finite real scalar ``>= 0`` (``> 0`` unless ``allow_zero``), ``<= maximum``."""
    if isinstance(v, bool) or v is None:
        raise ValueError(f"{name} must be a number, got {v!r}")
    arr = jnp.asarray(v) if not isinstance(v, int | float | np.number) else np.asarray(v)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    if not jnp.issubdtype(arr.dtype, jnp.floating) and not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(f"{name} must be a real number, got dtype {arr.dtype}")
    if is_concrete(arr):
        val = float(arr)
        if not np.isfinite(val) or val < 0 or (val == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{name} must be finite and {bound}, got {val}")
        if maximum is not None and val > maximum:
            raise ValueError(f"{name} must be <= {maximum}, got {val}")


def check_int(name, v, minimum: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")


def check_batch(logits_fn, x, y, *, min_classes: int = 2) -> tuple[jax.Array, jax.Array, int]:
    """Check images, labels and the model's output shape; return ``(x, y int32, d)``."""
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    x = x if isinstance(x, jax.Array) else jnp.asarray(x)
    y = y if isinstance(y, jax.Array) else jnp.asarray(y)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of images (B, H, W, C), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point in [0, 1], got dtype {x.dtype}")
    if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be integer labels of shape (B,), got {y.dtype} {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"batch sizes differ: x has {x.shape[0]} images, y has {y.shape[0]}")
    out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"logits_fn must map (B, ...) images to (B, d) logits, got {got}")
    d = int(out.shape[1])
    if d < min_classes:
        raise ValueError(f"need at least {min_classes} classes, logits_fn returns d={d}")
    if is_concrete(x):
        xa = np.asarray(x)
        if np.isnan(xa).any():
            raise ValueError("x contains NaN; images must lie in [0, 1]")
        if xa.size and (xa.min() < 0 or xa.max() > 1):
            raise ValueError(f"x must lie in [0, 1], got range [{xa.min():.4g}, {xa.max():.4g}]")
    if is_concrete(y):
        ya = np.asarray(y)
        if ya.size and (ya.min() < 0 or ya.max() >= d):
            raise ValueError(f"labels must lie in [0, {d}), got range [{ya.min()}, {ya.max()}]")
    return x, y.astype(jnp.int32), d
