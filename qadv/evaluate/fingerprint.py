"""Short hashes that pin a result to its data and to the model that made it.

A cached or resumed record is reused only when all three match: :func:`data_fingerprint`
of the evaluated images, labels and indices, :func:`model_fingerprint` of the model's
logits on a fixed probe batch, its bound weights and the precision policy in force, and
:func:`prepared_fingerprint` of what the attack's ``prepare`` made of its context (a
transfer attack's surrogate, NJS's calibrated temperature).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qadv import precision
from qadv.attacks.protocol import split_logits_fn

__all__ = ["data_fingerprint", "model_fingerprint", "prepared_fingerprint"]


def data_fingerprint(*arrays: np.ndarray) -> str:
    """Short hash of the evaluated data (images, labels, indices)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


_PROBE_SIZE = 8
_PROBE_SEED = 20211


@functools.partial(jax.jit, static_argnames="fn_static")
def _probe_logits(fn_static, fn_dyn, x) -> jax.Array:
    logits_fn = fn_static if fn_static is not None else fn_dyn
    return logits_fn(x)


def model_fingerprint(logits_fn: Callable, images: np.ndarray) -> str:
    """Short hash that tells one model from another: its logits on a fixed probe batch
    (the first 8 of ``images`` and 8 seeded uniform images of their shape), the weights
    bound in a ``jax.tree_util.Partial``, and the precision policy in force.

    Any change of weights, architecture, compute dtype or matmul precision changes it, so
    a cached or resumed record is reused only for the model that made it. On one machine
    it is the same from run to run; on another machine float rounding may differ, and a
    record is then recomputed rather than trusted.

    Args:
        logits_fn: the model, images ``(B, H, W, C)`` in [0, 1] -> logits ``(B, d)``.
        images: float32 ``(N, H, W, C)``, the evaluated set (only the first 8 are used).
    """
    images = np.asarray(images, np.float32)
    rng = np.random.default_rng(_PROBE_SEED)
    noise = rng.random((_PROBE_SIZE, *images.shape[1:]), dtype=np.float32)
    probe = np.concatenate([images[:_PROBE_SIZE], noise])
    fn_static, fn_dyn = split_logits_fn(logits_fn)
    logits = np.asarray(_probe_logits(fn_static, fn_dyn, jnp.asarray(probe)), np.float32)
    h = hashlib.sha256()
    h.update(precision.current().encode())
    h.update(str(logits.shape).encode())
    h.update(np.ascontiguousarray(logits).tobytes())
    if fn_dyn is not None:
        for leaf in jax.tree_util.tree_leaves(fn_dyn):
            _hash_array(h, leaf)  # (several hosts: the logits speak for sharded weights)
    return h.hexdigest()[:16]


def _hash_array(h, a) -> None:
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return  # several hosts: not readable here (every process holds the same inputs)
    a = np.asarray(a)
    h.update(str((a.dtype, a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())


def prepared_fingerprint(prepared, images: np.ndarray) -> str:
    """Short hash of an attack's prepared data (what ``config.prepare(logits_fn, context)``
    returned): its arrays (e.g. the temperature NJS calibrated on the context's images,
    with the model's input std), each model in it by :func:`model_fingerprint` on
    ``images`` (a transfer attack's surrogate), and its plain numbers and strings.

    Everything an attack takes from its :class:`~qadv.attacks.AttackContext` reaches the
    run through the prepared data, so two runs with equal config, data, model and
    prepared fingerprint compute the same thing: a record or partial state made with
    another surrogate or other calibration images is recomputed, never reused.

    Args:
        prepared: the prepared data, any pytree (models as ``jax.tree_util.Partial`` or
            plain callables).
        images: float32 ``(N, H, W, C)``, the evaluated set (a model in ``prepared`` is
            probed on its first 8, as :func:`model_fingerprint` does).
    """
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_leaves(
        prepared, is_leaf=lambda v: isinstance(v, jax.tree_util.Partial)
    )
    for leaf in leaves:
        if isinstance(leaf, jax.Array | np.ndarray | np.generic):
            _hash_array(h, leaf)
        elif isinstance(leaf, bool | int | float | complex | str | bytes) or leaf is None:
            h.update(repr((type(leaf).__name__, leaf)).encode())
        elif callable(leaf):
            h.update(b"model:" + model_fingerprint(leaf, images).encode())
        else:  # an object without a stable byte form: its type only
            h.update(b"object:" + type(leaf).__qualname__.encode())
    return h.hexdigest()[:16]
