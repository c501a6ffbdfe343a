"""Data parallelism over a ``jax.sharding.Mesh``: batch sharded, parameters replicated.

One mechanism serves training and evaluation, on one device, several devices or several
hosts:

* :func:`initialize` starts JAX's distributed system (TPU pods, multi-GPU hosts under
  SLURM or Open MPI, or explicit coordinator arguments); on a single process it does
  nothing;
* :func:`make_mesh` is a 1-D mesh over all devices (global: every host's), with the one
  axis ``"batch"``; :func:`batch_sharding` splits the leading axis over it and
  :func:`replicated` copies an array onto every device;
* :func:`pad_to_multiple` pads a host batch to a multiple of the device count and
  returns the mask of its real rows: a batch is padded and masked, never dropped;
* :func:`place` puts a host batch onto the mesh (every process holds the same global
  batch and keeps its own rows); :func:`to_host` brings a sharded result back as numpy
  on every process;
* :func:`masked_batch_norm` makes every Flax ``BatchNorm`` in training mode compute its
  batch statistics over the real rows only, and :func:`detach_padding` stops gradients
  from flowing out of the padding rows, so that a padded batch trains exactly like the
  unpadded one.

Results do not depend on the device count: per-example PRNG keys come from the example's
index (``fold_in(key, i)``), and padding rows are appended after the real ones.

Multi-host runs are the same program on every host (SPMD): each process loads the same
data, builds the same global batches, and :func:`place` hands each device its rows.
Only the process :func:`is_main_process` writes result files; orbax checkpoints are
written by all processes together. The multi-host path follows JAX's documented API but
is tested here only with one process (8 emulated CPU devices).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "BATCH_AXIS",
    "batch_sharding",
    "detach_padding",
    "initialize",
    "is_main_process",
    "make_mesh",
    "masked_batch_norm",
    "pad_to_multiple",
    "place",
    "replicate",
    "replicated",
    "round_up",
    "to_host",
]

BATCH_AXIS = "batch"


# ----------------------------------------------------------------------------- processes


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
) -> bool:
    """Starts JAX's distributed system (``jax.distributed.initialize``); safe on one process.

    Call it first, before any JAX computation. Without arguments JAX detects the cluster
    (Cloud TPU VMs and pods, SLURM, Open MPI, ``JAX_COORDINATOR_ADDRESS``); where it finds
    none, the program is a single process and nothing happens. A second call is a no-op.

    Args:
        coordinator_address: ``host:port`` of process 0 (``None``: detected).
        num_processes: number of processes (``None``: detected).
        process_id: this process's index in ``0 .. num_processes - 1`` (``None``: detected).
        local_device_ids: restricts this process to these local devices.

    Returns:
        Whether the distributed system is running (``False``: a single process).

    Raises:
        ValueError: the cluster was found or described but could not be joined, or JAX
            already ran a computation (one line).

    Example:
        >>> initialize(num_processes=1)  # one process: nothing to start
        False
    """
    if jax.distributed.is_initialized():
        return True
    given = (coordinator_address, num_processes, process_id, local_device_ids)
    if num_processes == 1 and coordinator_address is None:
        return False
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id, local_device_ids=local_device_ids
        )
    except ValueError as e:
        if all(g is None for g in given) and "coordinator_address" in str(e):
            return False  # no cluster detected: one process
        raise ValueError(f"cannot start the distributed system: {_one_line(e)}") from None
    except RuntimeError as e:
        raise ValueError(f"cannot start the distributed system: {_one_line(e)}") from None
    return True


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def is_main_process() -> bool:
    """Whether this is process 0, the one that writes result files."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------- mesh


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """1-D mesh with the axis ``"batch"`` over ``devices`` (default: ``jax.devices()``,
    every host's devices).

    Example:
        >>> make_mesh(jax.devices()[:1]).axis_names
        ('batch',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("a mesh needs at least one device")
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (parameters, optimizer state, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def round_up(n: int, k: int) -> int:
    """``n`` rounded up to a multiple of ``k``.

    Example:
        >>> round_up(13, 8), round_up(16, 8), round_up(5, 1)
        (16, 16, 5)
    """
    k = max(int(k), 1)
    return -(-int(n) // k) * k


def pad_to_multiple(x, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x padded to a multiple of k rows, float32 mask)``: padding repeats the last row
    (so it is valid data of the right dtype) after the real rows; ``mask`` is 1 on the
    real rows and 0 on the padding.

    Example:
        >>> xp, mask = pad_to_multiple(np.arange(5), 4)
        >>> xp.tolist(), mask.tolist()
        ([0, 1, 2, 3, 4, 4, 4, 4], [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    """
    x = np.asarray(x)
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot pad an empty batch")
    size = round_up(n, k)
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    if size > n:
        x = np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)], axis=0)
    return x, mask


# ----------------------------------------------------------------------------- placement


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def place(x, sharding: NamedSharding) -> jax.Array:
    """Puts the global batch ``x`` (numpy or array, the same on every process) onto the
    devices of ``sharding``.

    One process: ``jax.device_put``. Several: ``jax.make_array_from_process_local_data``
    with the global shape, so each process feeds only the rows of its own devices.
    Typed PRNG key arrays are placed through their key data.

    Example:
        >>> mesh = make_mesh(jax.devices()[:1])
        >>> place(np.arange(4.0), batch_sharding(mesh)).shape
        (4,)
    """
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if _is_key(x):
        data = place(np.asarray(jax.random.key_data(x)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    local = to_host(x) if isinstance(x, jax.Array) else np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, local, local.shape)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` replicated over ``mesh`` (leaves already there are kept)."""
    rep = replicated(mesh)

    def one(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == rep:
            return leaf
        return place(leaf, rep)

    return jax.tree.map(one, tree)


def to_host(x) -> np.ndarray:
    """``x`` as a numpy array on this process; a global array sharded over several hosts
    is gathered first (every process gets the whole array)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ----------------------------------------------------------------------------- masking


def _rows(mask: jax.Array, like: jax.Array) -> jax.Array | None:
    """``mask (B,)`` broadcast to ``like (B, ...)``, or ``None`` if ``like`` is not a batch
    of ``B`` rows (e.g. one example inside ``vmap``: its statistics are its own)."""
    if like.ndim == 0 or like.shape[0] != mask.shape[0]:
        return None
    return jnp.broadcast_to(mask.reshape((-1,) + (1,) * (like.ndim - 1)), like.shape)


@contextlib.contextmanager
def masked_batch_norm(mask: jax.Array | None) -> Iterator[None]:
    """Within this context, every ``flax.linen.BatchNorm`` call on a batch of ``B`` rows
    computes its batch statistics (training mode) over the rows where ``mask (B,)`` is
    true: padding rows change neither the normalisation of the real rows nor the running
    averages. ``mask=None`` changes nothing.

    Implemented with ``flax.linen.intercept_methods`` (no model needs to know): the
    interceptor passes ``mask=`` (combined with any mask the call already has) to
    ``BatchNorm.__call__``. Calls on other leading sizes (one example under ``vmap``)
    are left alone.

    Example:
        >>> bn = nn.BatchNorm(use_running_average=False, momentum=0.0)
        >>> x = jnp.array([[1.0], [3.0], [100.0]])
        >>> v = bn.init(jax.random.key(0), x)
        >>> with masked_batch_norm(jnp.array([True, True, False])):
        ...     y, s = bn.apply(v, x, mutable=["batch_stats"])
        >>> s["batch_stats"]["mean"].tolist()  # mean(1, 3): the third row is padding
        [2.0]
    """
    if mask is None:
        yield
        return
    mask = jnp.asarray(mask).astype(jnp.bool_)

    def interceptor(next_fun, args, kwargs, context):
        if (
            isinstance(context.module, nn.BatchNorm)
            and context.method_name == "__call__"
            and args
            and (rows := _rows(mask, jnp.asarray(args[0]))) is not None
        ):
            given = kwargs.get("mask")
            kwargs = {**kwargs, "mask": rows if given is None else jnp.logical_and(rows, given)}
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield


def detach_padding(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``x`` with no gradient through the rows where ``mask (B,)`` is false (values
    unchanged). Applied to the logits, it keeps padding rows out of every gradient, also
    where BatchNorm couples the rows of a batch. ``mask=None`` returns ``x``.

    Example:
        >>> g = jax.grad(lambda x: detach_padding(x, jnp.array([True, False])).sum())
        >>> g(jnp.ones(2)).tolist()
        [1.0, 0.0]
    """
    if mask is None:
        return x
    rows = _rows(jnp.asarray(mask).astype(jnp.bool_), x)
    if rows is None:
        return x
    return jnp.where(rows, x, jax.lax.stop_gradient(x))
