"""Input checks of the attack entry points: one ``ValueError`` naming the bad value and what
is allowed, raised in Python before anything is compiled.

:func:`check_batch` (images, labels and a model's output) is the attacks' own; the scalar
and name checks are those of :mod:`qadv.validation`, re-exported here."""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
import numpy as np

from qadv.validation import check_choice, check_int, check_scalar, is_concrete

__all__ = [
    "check_batch",
    "check_choice",
    "check_int",
    "check_scalar",
    "is_concrete",
    "is_count",
    "is_radius",
]


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
    if x.shape[0] == 0:
        raise ValueError("the batch is empty: x has 0 images")
    out = jax.eval_shape(_weakly_referable(logits_fn), jax.ShapeDtypeStruct(x.shape, x.dtype))
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"logits_fn must map (B, ...) images to (B, d) logits, got {got}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"logits_fn must return floating-point logits, got dtype {out.dtype}")
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


def is_count(v) -> bool:
    """Whether ``v`` can be a number of steps (checked with its message by ``validate``)."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 1


def is_radius(v) -> bool:
    """Whether ``v`` can be a radius: a finite real scalar, or a traced one (``validate``
    refuses the rest with a message naming it)."""
    if isinstance(v, bool | str | bytes) or v is None or np.ndim(v) != 0:
        return False
    if not is_concrete(v):
        return True
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def _weakly_referable(fn):
    """``fn`` itself (jax caches its shape by a weak reference: no new trace on the next
    call), or a wrapper of it for an object that cannot be weakly referenced (a
    ``__slots__`` class without ``__weakref__``)."""
    try:
        weakref.ref(fn)
    except TypeError:
        return lambda z: fn(z)
    return fn
