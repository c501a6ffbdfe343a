"""Input-output Jacobians in bounded memory, their Gram matrices and singular values.

A Jacobian is ``d`` reverse passes per example. They are taken from one batched
linearisation (``jax.vjp`` of the model on a chunk of examples) by pulling back the
one-hot cotangents of a chunk of classes at a time (``lax.map`` with ``batch_size``),
so peak memory is bounded by ``memory_budget`` instead of growing with ``B * d``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qadv.static_fn import jit_over_model

LogitsFn = Callable[[jax.Array], jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Default bytes for the working set of a Jacobian (``QADV_JACOBIAN_MEMORY_MB`` overrides)."""


def resolve_memory_budget(budget: int | None = None) -> int:
    """The Jacobian working-set budget in bytes: ``budget``, else ``$QADV_JACOBIAN_MEMORY_MB``,
    else :data:`DEFAULT_MEMORY_BUDGET` (1 GiB).

    Example:
        >>> resolve_memory_budget(1 << 20)
        1048576
    """
    if budget is None:
        env = os.environ.get("QADV_JACOBIAN_MEMORY_MB")
        if env:
            try:
                budget = int(float(env) * (1 << 20))
            except ValueError:
                raise ValueError(f"QADV_JACOBIAN_MEMORY_MB must be a number, got {env!r}") from None
        else:
            budget = DEFAULT_MEMORY_BUDGET
    if isinstance(budget, bool) or int(budget) != budget or budget <= 0:
        raise ValueError(f"Jacobian memory budget must be a positive number of bytes, got {budget}")
    return int(budget)


def _traced_bytes(logits_fn: LogitsFn, shape, dtype) -> int:
    jaxpr = jax.make_jaxpr(logits_fn)(jax.ShapeDtypeStruct(tuple(shape), dtype)).jaxpr
    total = 0

    def visit(jx):
        nonlocal total
        for eqn in jx.eqns:
            for v in eqn.outvars:
                aval = getattr(v, "aval", None)
                if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                    total += int(np.prod(aval.shape)) * jnp.dtype(aval.dtype).itemsize
            for sub in jax.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr)
    return total


def activation_bytes(logits_fn: LogitsFn, example_shape, dtype=jnp.float32) -> int:
    """Bytes of the intermediate values one more example adds to a forward pass (an upper
    bound on what its reverse pass keeps alive), from the traced program (batch 2 minus
    batch 1, so weights and constants do not count); never runs the model.

    Example:
        >>> import jax.numpy as jnp
        >>> n = activation_bytes(lambda x: x.reshape(x.shape[0], -1) @ jnp.ones((4, 3)), (2, 2, 1))
        >>> 28 <= n <= 4096  # 28 on a CPU; a GPU aligns its buffers (1024)
        True
    """
    shape = tuple(example_shape)
    try:
        per = _traced_bytes(logits_fn, (2, *shape), dtype) - _traced_bytes(
            logits_fn, (1, *shape), dtype
        )
    except Exception:  # pragma: no cover - untraceable at batch 1/2: assume 64 input copies
        per = 64 * int(np.prod(shape)) * jnp.dtype(dtype).itemsize
    return max(int(per), 1)


def jacobian_chunks(
    logits_fn: LogitsFn, x: jax.Array, num_rows: int, *, memory_budget: int | None = None
) -> tuple[int, int]:
    """``(examples, classes)`` computed at once so that a Jacobian of ``num_rows`` rows per
    example stays within the memory budget (see :func:`resolve_memory_budget`).

    One (example, class) pair costs the example's activations (its reverse pass) plus one
    Jacobian row. Examples are batched first (what the model is built for), then classes
    up to :func:`class_chunk`.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ jnp.ones((4, 3))
        >>> jacobian_chunks(f, jnp.zeros((8, 2, 2, 1)), 3, memory_budget=10**9)
        (8, 3)
        >>> examples, classes = jacobian_chunks(f, jnp.zeros((8, 2, 2, 1)), 3, memory_budget=88)
        >>> examples < 8 and classes == 1  # (2, 1) on a CPU; buffer sizes differ by backend
        True
    """
    b = x.shape[0]
    per_pair = (
        activation_bytes(logits_fn, x.shape[1:], x.dtype)
        + int(np.prod(x.shape[1:])) * jnp.dtype(x.dtype).itemsize
    )
    pairs = max(1, resolve_memory_budget(memory_budget) // per_pair)
    examples = int(max(1, min(b, pairs)))  # (an empty batch still gets a chunk of 1)
    return examples, class_chunk(examples, num_rows, pairs // examples)


PAIRS_PER_PASS = 128
"""(example, class) pairs a batched reverse pass should carry to keep a device busy."""


def class_chunk(examples: int, num_rows: int, limit: int | None = None) -> int:
    """Classes pulled back at once through a linearisation of ``examples`` examples.

    Just enough to give each reverse pass :data:`PAIRS_PER_PASS` (example, class) pairs:
    one class at a time for a batch of 128 or more (the pullbacks then run one after the
    other, each as large as a PGD step's), more for small batches; never more than
    ``num_rows`` or ``limit`` (the memory budget's).

    Example:
        >>> class_chunk(256, 10), class_chunk(8, 10), class_chunk(8, 10, limit=4)
        (1, 10, 4)
    """
    want = -(-PAIRS_PER_PASS // max(int(examples), 1))
    cap = num_rows if limit is None else min(num_rows, limit)
    return int(max(1, min(want, cap)))


def _class_rows(
    vjp_fn, logits: jax.Array, classes: jax.Array | None, class_chunk: int | None
) -> jax.Array:
    """Jacobian rows ``(B, k, ...)`` of the classes ``classes (B, k)`` (all ``d`` if None)
    from a batched linearisation ``vjp_fn``, ``class_chunk`` cotangents at a time."""
    b, d = logits.shape
    if classes is None:
        classes = jnp.broadcast_to(jnp.arange(d, dtype=jnp.int32), (b, d))
    k = classes.shape[1]
    cot = jax.nn.one_hot(classes, d, dtype=logits.dtype)  # (B, k, d)
    cot = jnp.moveaxis(cot, 1, 0)  # (k, B, d)
    chunk = k if class_chunk is None else int(max(1, min(k, class_chunk)))
    pull = jax.vmap(lambda c: vjp_fn(c)[0])
    n_chunks = -(-k // chunk)
    if chunk >= k:
        rows = pull(cot)
    elif n_chunks <= UNROLL_CHUNKS and jax.default_backend() == "cpu":
        # XLA's CPU code runs a pullback inside a loop much slower than unrolled
        rows = jnp.concatenate([pull(cot[i : i + chunk]) for i in range(0, k, chunk)])
    else:
        rows = jax.lax.map(lambda c: vjp_fn(c)[0], cot, batch_size=chunk)
    return jnp.moveaxis(rows, 0, 1)


UNROLL_CHUNKS = 32
"""On a CPU, at most this many class chunks are unrolled instead of looped."""


def jacobian_rows(
    vjp_fn, logits: jax.Array, classes: jax.Array | None = None, *, class_chunk: int | None = None
) -> jax.Array:
    """Rows of the per-example Jacobian from an existing batched linearisation.

    ``logits, vjp_fn = jax.vjp(logits_fn, x)`` is what a gradient step computes anyway;
    pulling back one-hot cotangents gives the Jacobian without a second forward pass
    (valid because examples are independent).

    Args:
        vjp_fn: the pullback of ``logits_fn`` at ``x`` (batched).
        logits: ``(B, d)`` logits at ``x``.
        classes: ``(B, k)`` class indices per example (``None``: all ``d``, in order).
        class_chunk: cotangents pulled back at once (``None``: all).

    Returns:
        ``(B, k, H, W, C)`` rows ``d logits[b, classes[b, j]] / dx[b]``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ jnp.array([[1.0, 2.0], [3.0, 4.0]])
        >>> a, pull = jax.vjp(f, jnp.ones((1, 2, 1, 1)))
        >>> jacobian_rows(pull, a, jnp.array([[1]])).reshape(-1).tolist()
        [2.0, 4.0]
    """
    return _class_rows(vjp_fn, logits, classes, class_chunk)


def _resolve_chunks(logits_fn, x, num_rows, chunk, budget) -> tuple[int, int]:
    if chunk is None:
        return jacobian_chunks(logits_fn, x, num_rows, memory_budget=budget)
    ex, cl = (chunk, num_rows) if isinstance(chunk, int | np.integer) else chunk
    for v in (ex, cl):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"Jacobian chunk sizes must be integers >= 1, got {chunk}")
    return int(max(1, min(ex, x.shape[0]))), int(min(cl, num_rows))


def map_examples(fn, xs, examples: int):
    """``fn`` over the leading axis of the pytree ``xs``, ``examples`` at a time (``lax.map``);
    ``fn`` maps a batch of one example's leaves (without the batch axis) to its outputs."""
    b = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if examples >= b:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=int(examples))


@jit_over_model(static_argnames=("chunk", "memory_budget"))
def jacobian(
    logits_fn: LogitsFn,
    x: jax.Array,
    *,
    classes: jax.Array | None = None,
    chunk: int | tuple[int, int] | None = None,
    memory_budget: int | None = None,
) -> jax.Array:
    """Per-example input-output Jacobian ``da/dx``, computed in bounded memory.

    Examples are processed ``chunk[0]`` at a time (one batched forward pass each) and
    classes ``chunk[1]`` at a time (reverse passes of that forward); with ``chunk=None``
    both come from :func:`jacobian_chunks` and the memory budget. Any chunking gives the
    same Jacobian up to float rounding (sums in another order: the last bit).

    Args:
        logits_fn: maps images ``(B, H, W, C)`` to logits ``(B, d)``; examples independent.
        x: images ``(B, H, W, C)``.
        classes: optional ``(B, k)`` class indices: only those rows.
        chunk: ``None`` (automatic), ``examples`` or ``(examples, classes)``.
        memory_budget: bytes for the automatic chunks (see :func:`resolve_memory_budget`).

    Returns:
        ``(B, d, H, W, C)`` Jacobians (``(B, k, ...)`` with ``classes``).

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.arange(6.0).reshape(3, 2)
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> jacobian(f, jnp.ones((1, 3, 1, 1))).shape
        (1, 2, 3, 1, 1)
        >>> bool(jnp.all(jacobian(f, jnp.ones((3, 3, 1, 1)), chunk=(1, 1)) ==
        ...              jacobian(f, jnp.ones((3, 3, 1, 1)))))
        True
    """
    d = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)).shape[-1]
    k = d if classes is None else classes.shape[1]
    examples, classes_at_once = _resolve_chunks(logits_fn, x, k, chunk, memory_budget)

    def one(args):
        xi, ci = args
        logits, pull = jax.vjp(logits_fn, xi[None])
        return _class_rows(pull, logits, None if ci is None else ci[None], classes_at_once)[0]

    return map_examples(one, (x, classes), examples)


def centred_jacobian_gram(
    logits_fn: LogitsFn,
    x: jax.Array,
    classes: jax.Array,
    *,
    memory_budget: int | None = None,
) -> jax.Array:
    """Gram matrices ``(B, k, k)`` of the Jacobian rows of ``classes`` minus row 0, in
    chunks of examples so that neither the ``(B, k, N)`` rows nor ``B`` reverse passes
    are ever held at once (see :func:`centred_gram`).

    Each chunk of ``e`` examples holds its ``e k N`` rows plus ``e c`` reverse passes
    (``c`` classes at a time); ``e`` and ``c`` come from the budget.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ jnp.array([[1.0, 0.0], [0.0, 2.0]])
        >>> centred_jacobian_gram(f, jnp.ones((1, 2, 1, 1)), jnp.array([[1, 0]])).tolist()
        [[[0.0, 0.0], [0.0, 5.0]]]
    """
    b, k = classes.shape
    budget = resolve_memory_budget(memory_budget)
    item = jnp.dtype(x.dtype).itemsize
    row = int(np.prod(x.shape[1:])) * item
    act = activation_bytes(logits_fn, x.shape[1:], x.dtype)
    chunk = int(max(1, min(k, (budget - k * row) // max(act, 1))))
    examples = int(max(1, min(b, budget // (k * row + chunk * act))))
    chunk = class_chunk(examples, k, chunk)

    def one(args):
        xi, ci = args
        logits, pull = jax.vjp(logits_fn, xi[None])
        rows = _class_rows(pull, logits, ci[None], chunk)[0].reshape(k, -1)
        rows = rows - rows[:1]
        return jnp.einsum("in,jn->ij", rows, rows, precision=_HIGHEST)

    return map_examples(one, (x, classes), examples)


def gram(jac: jax.Array) -> jax.Array:
    """Gram matrices ``G = J J^T`` ``(B, d, d)`` of Jacobians ``(B, d, ...)``.

    Example:
        >>> import jax.numpy as jnp
        >>> gram(jnp.ones((1, 2, 3))).tolist()
        [[[3.0, 3.0], [3.0, 3.0]]]
    """
    jf = jac.reshape(jac.shape[0], jac.shape[1], -1)
    return jnp.einsum("bin,bjn->bij", jf, jf, precision=_HIGHEST)


@jit_over_model()
def jacobian_singular_values(logits_fn: LogitsFn, x: jax.Array) -> jax.Array:
    """All ``d`` singular values of each example's Jacobian, largest first.

    A singular value decomposition of each ``d x n`` Jacobian (LAPACK's on a CPU), so the
    small singular values are as accurate as the large ones: a rank-deficient Jacobian
    (``d > n``, dead ReLUs, binary activations) gets zeros where it has them. (Square
    roots of the Gram matrix's eigenvalues would be cheaper at ``d = 1000`` but err by
    about ``sqrt(float32 eps) * max singular value`` there: 8e-3 instead of 0 at
    ``max = 16``.)

    Returns:
        ``(B, d)`` singular values.

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([[3.0, 0.0], [0.0, 4.0]])
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> jacobian_singular_values(f, jnp.ones((1, 2, 1, 1))).round(5).tolist()
        [[4.0, 3.0]]
    """
    jac = jacobian(logits_fn, x)
    b, d = jac.shape[:2]
    sv = jnp.linalg.svd(jac.reshape(b, d, -1), compute_uv=False)  # (B, min(d, n))
    return jnp.pad(sv, ((0, 0), (0, d - sv.shape[1])))  # d > n: the other d - n are 0
