"""Reduced-precision model compute with float32 logits.

:func:`with_compute_dtype` runs a model in bfloat16 (floating weights, BatchNorm
statistics and input images cast to bfloat16 inside the function) and hands its logits
back in float32. An attack only sees ``logits_fn: (B, H, W, C) float32 -> (B, d)
float32``, so everything it computes itself stays in float32: its loss, the softmax,
the temperature (NJS, HNS), the projection and the perturbation. Gradients with respect
to the float32 input flow through the casts and come back in float32.

What changes, and what does not:

* the model is a slightly different function. Binarised weights (±1) and activations
  are exact in bfloat16, but sums, BatchNorm and float layers are rounded to 8
  significant bits, so a few predictions (those whose top two logits nearly tie) can
  differ from float32. Every number of an evaluation (clean and adversarial accuracy,
  each re-run of the model on an adversarial image) is then of the bfloat16 model;
* the images too are rounded to 8 significant bits (steps of 1/256 above 0.5), so a
  perturbation much smaller than 1/255 per pixel can vanish inside the model. Keep
  float32 for radii below about 2/255;
* bfloat16 keeps float32's exponent range: the logits' cotangent (the softmax error
  ``ψ``, as small as 1e-38 on saturated examples) is not flushed to zero on its way back
  through the model. float16 would flush anything below 6e-8 and fake exactly the
  vanishing gradients qadv looks for; it is not offered.

Example:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.ones((4, 2))
    >>> f = jax.tree_util.Partial(lambda w, x: x.reshape(x.shape[0], -1) @ w, w)
    >>> g = with_compute_dtype(f, "bfloat16")
    >>> g(jnp.full((3, 2, 2, 1), 0.5)).dtype
    dtype('float32')
    >>> with_compute_dtype(f, "float32") is f
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["COMPUTE_DTYPES", "cast_floating", "check_compute_dtype", "with_compute_dtype"]

COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
"""Model compute dtypes: float32 (the default, exact as trained) and bfloat16."""


def check_compute_dtype(dtype: Any) -> str:
    """The canonical name of a compute dtype (a name, numpy or JAX dtype).

    Raises:
        ValueError: ``dtype`` is not one of :data:`COMPUTE_DTYPES`.

    Example:
        >>> check_compute_dtype(jnp.bfloat16)
        'bfloat16'
        >>> check_compute_dtype("float16")
        Traceback (most recent call last):
        ...
        ValueError: unknown compute dtype 'float16'; choose one of: float32, bfloat16
    """
    try:
        name = jnp.dtype(dtype).name
    except (TypeError, ValueError):
        name = None
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"unknown compute dtype {str(dtype)!r}; choose one of: " + ", ".join(COMPUTE_DTYPES)
        )
    return name


def cast_floating(tree: Any, dtype: Any) -> Any:
    """``tree`` with every floating array leaf cast to ``dtype`` (others untouched).

    Example:
        >>> t = cast_floating({"w": jnp.ones(2), "n": jnp.arange(2)}, jnp.bfloat16)
        >>> t["w"].dtype.name, t["n"].dtype.name
        ('bfloat16', 'int32')
    """

    def cast(a):
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dtype:
            return jnp.asarray(a).astype(dtype)
        return a

    return jax.tree_util.tree_map(cast, tree)


@dataclasses.dataclass(frozen=True)
class _InDtype:
    """``fn`` run on its arguments cast to ``dtype``, floating outputs cast to float32.

    A frozen dataclass: equal (and equally hashed) for equal ``fn`` and ``dtype``, so a
    jitted attack that takes it as a static argument compiles once per model.
    """

    fn: Callable
    dtype: str

    def __call__(self, *args, **kwargs):
        args, kwargs = cast_floating((args, kwargs), jnp.dtype(self.dtype))
        return cast_floating(self.fn(*args, **kwargs), jnp.float32)


def with_compute_dtype(fn: Callable, dtype: Any = "float32") -> Callable:
    """``fn`` computing in ``dtype``, taking and returning float32 arrays.

    Args:
        fn: a logits function ``x (B, H, W, C) -> (B, d)``, or any function of arrays
            (e.g. ``apply(variables, x)``). A ``jax.tree_util.Partial`` (what
            :func:`qadv.models.make_logits_fn` and ``LoadedModel.logits_fn`` return)
            gets its bound floating arrays, the weights, cast once here; it stays a
            pytree whose function is hashable, so attacks keep taking the weights as
            arguments and compile once per model. Any other callable has its
            arguments cast on every call; weights it closes over are not reachable and
            stay as they are (the qadv layers cast their kernels to the input's dtype,
            but a float32 BatchNorm or bias would bring the compute back to float32).
        dtype: one of :data:`COMPUTE_DTYPES` (a name or a dtype).

    Returns:
        ``fn`` itself for float32; otherwise a function with the same signature whose
        arguments are cast to ``dtype`` and whose floating outputs are float32.

    Raises:
        ValueError: ``dtype`` is not one of :data:`COMPUTE_DTYPES`.
    """
    name = check_compute_dtype(dtype)
    if name == "float32":
        return fn
    if isinstance(fn, jax.tree_util.Partial):
        inner = fn.func.fn if isinstance(fn.func, _InDtype) else fn.func
        args, keywords = cast_floating((fn.args, fn.keywords), jnp.dtype(name))
        return jax.tree_util.Partial(_InDtype(inner, name), *args, **keywords)
    if isinstance(fn, _InDtype):
        fn = fn.fn
    return _InDtype(fn, name)
