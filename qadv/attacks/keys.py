"""Per-example randomness: example ``i`` of an evaluated set draws from ``fold_in(key, i)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["example_keys", "restart_keys"]


def example_keys(key, n_or_indices) -> jax.Array:
    """One PRNG key per example: ``fold_in(key, i)`` for each example index ``i``.

    Args:
        key: a PRNG key (``jax.random.key``), or already a ``(B,)`` batch of keys
            (returned unchanged; its length must be the number of examples).
        n_or_indices: the batch size ``B`` (indices ``0..B-1``) or the examples' indices
            in the evaluated set.

    Example:
        >>> import jax
        >>> k = jax.random.key(0)
        >>> bool((jax.random.key_data(example_keys(k, 3)[2])
        ...       == jax.random.key_data(example_keys(k, [7, 2])[1])).all())
        True
    """
    key = _as_key(key)
    if key.ndim == 1:
        n = n_or_indices if isinstance(n_or_indices, int | np.integer) else len(n_or_indices)
        if key.shape[0] != n:
            raise ValueError(f"key is a batch of {key.shape[0]} keys for {n} examples")
        return key
    if key.ndim != 0:
        raise ValueError(f"key must be one PRNG key or a (B,) batch of keys, got {key.shape}")
    idx = (
        jnp.arange(n_or_indices, dtype=jnp.uint32)
        if isinstance(n_or_indices, int | np.integer)
        else jnp.asarray(n_or_indices).astype(jnp.uint32)
    )
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def restart_keys(keys, r):
    """The ``(B,)`` keys of restart ``r`` of a restarted PGD run with example keys ``keys``
    (``fold_in(k, r)``; ``None`` stays ``None``). Whatever traces a run step by step
    (:func:`qadv.evaluate.accuracy_curve`) takes its keys from here, so it follows the
    same random starts."""
    return None if keys is None else jax.vmap(lambda k: jax.random.fold_in(k, r))(keys)


def _as_key(key) -> jax.Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if (
        isinstance(key, jax.Array | np.ndarray)
        and key.dtype == np.uint32
        and key.shape[-1:] == (2,)
    ):
        return jax.random.wrap_key_data(key)
    raise ValueError(f"key must be a PRNG key from jax.random.key(seed), got {type(key).__name__}")
