"""Signal-propagation diagnostics: input-output Jacobians, input Hessian norms, gradients.

Notation (Gupta & Ajanthan): logits ``a = f(x)`` with ``d`` classes, ``p(beta) =
softmax(beta a)``, loss ``l(beta) = CE(beta a, y)``, error signal ``psi = p - onehot(y)``,
Jacobian ``J = da/dx`` (``d x N`` with ``N = H*W*C``) and Gram matrix ``G = J J^T``.

The input Hessian of the temperature-scaled cross-entropy is (paper Eq. 8)::

    H(beta) = beta * sum_k psi_k d2a_k/dx2  +  beta^2 J^T S J,    S = diag(p) - p p^T.

For ReLU, max-pool and straight-through (``sign_ste``) networks the first term vanishes
almost everywhere, and ``||H||_F = beta^2 sqrt(tr(S G S G))``: one Jacobian per example
(``d`` reverse passes, taken from one batched linearisation in chunks that fit a memory
budget, see :func:`jacobian`) and then ``O(d^2)`` per ``beta``; the ``N x N`` Hessian is
never formed. ``tr(S G S G)`` is evaluated as ``sum_ij p_i p_j Gc_ij^2`` with
``Gc = V G' V^T``, ``V = I - 1 p^T`` and ``G'`` the Gram matrix of the rows minus the top
class's row (:func:`centred_gram`): the rows of ``V`` sum to zero, so ``G'`` gives the
same product, and it stays accurate (and non-negative) when ``p`` is nearly one-hot.
:func:`log_hessian_norm_topk` keeps the rows of the ``k`` largest logits only (HNS at 100
or 1,000 classes).

``hessian_norm(..., exact=True)`` adds the curvature term for smooth networks (tanh,
GELU, softplus) through the ``beta``-independent matrices ``Q_kl = <d2a_k, d2a_l>_F``
and ``R_k = J (d2a_k) J^T``; building ``Q`` costs ``N`` Jacobian-vector products of the
Jacobian per example (forward-over-reverse), so exact mode is meant for small inputs or
few examples. Every ``beta`` then costs ``O(d^3)``.

All functions are batched over the leading axis, pure, and usable under ``jax.jit``.
``logits_fn`` must treat examples independently (eval mode).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qadv.losses import get_loss, temperature_scaled

LogitsFn = Callable[[jax.Array], jax.Array]

__all__ = [
    "activation_bytes",
    "centred_gram",
    "centred_jacobian_gram",
    "class_chunk",
    "curvature_terms",
    "error_signal_norm",
    "gram",
    "hessian_norm",
    "input_gradient",
    "input_gradient_norm",
    "jacobian",
    "jacobian_chunks",
    "jacobian_rows",
    "jacobian_singular_values",
    "log_hessian_norm_from_gram",
    "log_hessian_norm_topk",
    "logit_gap",
    "prop1_beta",
    "prop1_log_constant",
    "resolve_memory_budget",
    "sign_gradient_norm",
    "top_classes",
    "zero_gradient_fraction",
    "zero_gradient_mask",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def _single(logits_fn: LogitsFn) -> Callable[[jax.Array], jax.Array]:
    """Per-example view ``x_i (H,W,C) -> logits (d,)`` of a batched logits function."""
    return lambda xi: logits_fn(xi[None])[0]


def _feature_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _scaled_l2(v: jax.Array) -> jax.Array:
    """Per-example L2 norm over non-batch axes that does not underflow for tiny entries."""
    axes = _feature_axes(v)
    m = jnp.max(jnp.abs(v), axis=axes, keepdims=True)
    safe = jnp.where(m > 0, m, jnp.ones_like(m))
    return jnp.sqrt(jnp.sum(jnp.square(v / safe), axis=axes)) * m.reshape(v.shape[0])


# ----------------------------------------------------------------------- Jacobians
# A Jacobian is ``d`` reverse passes per example. They are taken from one batched
# linearisation (``jax.vjp`` of the model on a chunk of examples) by pulling back the
# one-hot cotangents of a chunk of classes at a time (``lax.map`` with ``batch_size``),
# so peak memory is bounded by ``memory_budget`` instead of growing with ``B * d``.

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
    examples = int(min(b, pairs))
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
    ex, cl = (chunk, num_rows) if isinstance(chunk, int) else chunk
    for v in (ex, cl):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"Jacobian chunk sizes must be integers >= 1, got {chunk}")
    return int(min(ex, x.shape[0])), int(min(cl, num_rows))


def map_examples(fn, xs, examples: int):
    """``fn`` over the leading axis of the pytree ``xs``, ``examples`` at a time (``lax.map``);
    ``fn`` maps a batch of one example's leaves (without the batch axis) to its outputs."""
    b = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if examples >= b:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=int(examples))


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
    same Jacobian.

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


def jacobian_singular_values(logits_fn: LogitsFn, x: jax.Array) -> jax.Array:
    """All ``d`` singular values of each example's Jacobian, largest first.

    Square roots of the eigenvalues of the ``d x d`` Gram matrix (clipped at 0).

    Returns:
        ``(B, d)`` singular values.

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([[3.0, 0.0], [0.0, 4.0]])
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> jacobian_singular_values(f, jnp.ones((1, 2, 1, 1))).round(5).tolist()
        [[4.0, 3.0]]
    """
    ev = jnp.linalg.eigvalsh(gram(jacobian(logits_fn, x)))
    return jnp.sqrt(jnp.clip(ev, 0.0, None))[:, ::-1]


def logit_gap(logits: jax.Array) -> jax.Array:
    """Top-1 minus runner-up logit per example, ``(B, d) -> (B,)``.

    Example:
        >>> import jax.numpy as jnp
        >>> logit_gap(jnp.array([[1.0, 5.0, 2.0]])).tolist()
        [3.0]
    """
    top2 = jax.lax.top_k(logits, 2)[0]
    return top2[:, 0] - top2[:, 1]


def prop1_log_constant(rho: float, d: int) -> float:
    """``-log(rho / ((d-1)(1-rho))) = -log rho + log(1-rho) + log(d-1)`` in float64.

    Computed in log space so that ``rho = 1e-72`` (which underflows float32) works.

    Raises:
        ValueError: unless ``d >= 2`` and ``0 < rho < 1``.

    Example:
        >>> round(prop1_log_constant(1e-72, 10), 3)  # 72 log(10) + log(9)
        167.983
    """
    if int(d) != d or d < 2:
        raise ValueError(f"number of classes d must be an integer >= 2, got {d}")
    rho = float(rho)
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must lie in (0, 1), got {rho}")
    return -math.log(rho) + math.log1p(-rho) + math.log(d - 1)


def prop1_beta(gap: jax.Array, rho: float, d: int) -> jax.Array:
    """Proposition 1 bound: ``1 - softmax(beta a)_1 > rho`` for every ``beta`` below it.

    ``beta* = (-log rho + log(1-rho) + log(d-1)) / gap`` where ``gap = a_1 - a_d``
    (max minus min logit) makes the proposition hold; HNS uses the top-1 minus top-2 gap.
    The constant is computed in float64 log space (``rho = 1e-72`` is fine). A zero gap
    gives ``inf``.

    Args:
        gap: ``(...)`` positive logit gaps.
        rho: Python float in ``(0, 1)``; must be ``< (d-1)/d`` for a positive bound.
        d: number of classes (``>= 2``).

    Example:
        >>> import jax.numpy as jnp
        >>> b = prop1_beta(jnp.array([2.0]), 0.01, 10)
        >>> round(float(b[0]), 4)  # (log(99) + log(9)) / 2
        3.3962
    """
    gap = jnp.asarray(gap)
    return jnp.asarray(prop1_log_constant(rho, d), gap.dtype) / gap


# ----------------------------------------------------------------------------- Hessian


def _probs_and_complements(logits: jax.Array, betas: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``p = softmax(beta a)`` ``(B, K, d)`` and ``q_i = sum_{k != i} p_k`` (accurate 1 - p_i)."""
    z = betas[:, :, None] * logits[:, None, :]
    p = jax.nn.softmax(z, axis=-1)
    d = logits.shape[-1]
    off = jnp.ones((d, d), p.dtype) - jnp.eye(d, dtype=p.dtype)
    q = jnp.einsum("bkm,mi->bki", p, off, precision=_HIGHEST)
    return p, q


def centred_gram(g: jax.Array, top: jax.Array) -> jax.Array:
    """Gram matrix of the Jacobian rows minus the top class's row, from ``G = J J^T``.

    ``G'_ij = (J_i - J_t)(J_j - J_t)^T`` with ``t = top`` ``(B,)``; row and column ``t``
    are zero. Because every row of ``V = I - 1 p^T`` sums to zero when ``sum(p) = 1``,
    ``V G V^T = V G' V^T``, and ``G'`` keeps that product accurate when ``p`` is nearly
    one-hot on ``t`` (which it is for large ``beta``).

    Example:
        >>> import jax.numpy as jnp
        >>> centred_gram(jnp.array([[[4.0, 1.0], [1.0, 2.0]]]), jnp.array([0])).tolist()
        [[[0.0, 0.0], [0.0, 4.0]]]
    """
    gt = jnp.take_along_axis(g, top[:, None, None].astype(jnp.int32), axis=1)[:, 0, :]  # (B, d)
    gtt = jnp.take_along_axis(gt, top[:, None].astype(jnp.int32), axis=1)[:, 0]
    return g - gt[:, None, :] - gt[:, :, None] + gtt[:, None, None]


def _gauss_newton_trace(gc: jax.Array, p: jax.Array) -> jax.Array:
    """``tr(S G S G) = sum_ij p_i p_j (V G' V^T)_ij^2`` ``(B, K)`` for centred ``G'``
    ``(B, m, m)`` and distributions ``p`` ``(B, K, m)`` (``O(m^2)`` per ``beta``)."""
    a = jnp.einsum("bij,bkj->bki", gc, p, precision=_HIGHEST)  # G' p
    s = jnp.einsum("bki,bki->bk", p, a, precision=_HIGHEST)  # p^T G' p
    c = gc[:, None, :, :] - a[..., :, None] - a[..., None, :] + s[..., None, None]
    w = p[..., :, None] * p[..., None, :]
    return jnp.sum(w * c * c, axis=(-2, -1))


def _log_norm(inner: jax.Array, betas: jax.Array, scale: jax.Array) -> jax.Array:
    inner = jnp.maximum(inner, 0.0)
    log_inner = jnp.where(inner > 0, jnp.log(jnp.where(inner > 0, inner, 1.0)), -jnp.inf)
    return 2.0 * jnp.log(betas) + jnp.log(scale)[:, None] + 0.5 * log_inner


def _gram_scale(g: jax.Array) -> jax.Array:
    tiny = jnp.finfo(g.dtype).tiny
    return jnp.maximum(jnp.max(jnp.abs(g), axis=(1, 2)), tiny)  # (B,)


def top_classes(logits: jax.Array, k: int) -> jax.Array:
    """``(B, k)`` indices of the ``k`` largest logits per example, largest first.

    Example:
        >>> import jax.numpy as jnp
        >>> top_classes(jnp.array([[0.1, 3.0, 2.0]]), 2).tolist()
        [[1, 2]]
    """
    safe = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
    return jax.lax.top_k(safe, int(k))[1].astype(jnp.int32)


def _truncated_probs(logits: jax.Array, classes: jax.Array, betas: jax.Array) -> jax.Array:
    """``softmax(beta a)`` restricted to ``classes`` plus the remaining mass as a last
    column, ``(B, K, k + 1)``, each entry computed in log space (no ``1 - sum``)."""
    z = betas[:, :, None] * logits[:, None, :]  # (B, K, d)
    lse = jax.nn.logsumexp(z, axis=-1)  # (B, K)
    picked = jnp.take_along_axis(logits, classes, axis=1)  # (B, k)
    in_top = jnp.zeros(logits.shape, jnp.bool_)
    in_top = jax.vmap(lambda m, c: m.at[c].set(True))(in_top, classes)
    rest = jnp.where(in_top, -jnp.inf, logits)
    lse_rest = jax.nn.logsumexp(betas[:, :, None] * rest[:, None, :], axis=-1)  # (B, K)
    log_p = betas[:, :, None] * picked[:, None, :] - lse[..., None]
    log_p = jnp.concatenate([log_p, (lse_rest - lse)[..., None]], axis=-1)
    return jnp.exp(log_p)


def log_hessian_norm_topk(
    gc: jax.Array, logits: jax.Array, classes: jax.Array, betas: jax.Array
) -> jax.Array:
    """``log ||H(beta)||_F`` from the Jacobian rows of ``k`` classes only (Gauss-Newton).

    The ``d - k`` other classes are treated as moving with the top class (their rows are
    replaced by the top class's row), which is exact when ``k = d`` and loses only terms
    weighted by their probability mass, which is tiny at the large ``beta`` that HNS
    picks when the ``k`` classes are those with the largest logits. Costs ``k`` reverse
    passes and ``O(K k^2)`` per example instead of ``d`` passes and ``O(K d^2)``.

    Args:
        gc: ``(B, k, k)`` centred Gram matrix of the rows of ``classes`` (see
            :func:`centred_gram`; ``classes[:, 0]`` must be the top class).
        logits: ``(B, d)`` logits (all classes: the remaining mass needs them).
        classes: ``(B, k)`` class indices, top class first (:func:`top_classes`).
        betas: ``(B, K)`` temperatures.

    Returns:
        ``(B, K)`` log-norms.
    """
    p = _truncated_probs(logits, classes, betas)  # (B, K, k + 1)
    scale = _gram_scale(gc)
    gs = jnp.pad(gc / scale[:, None, None], ((0, 0), (0, 1), (0, 1)))  # rest row: zero
    return _log_norm(_gauss_newton_trace(gs, p), betas, scale)


def _as_beta_grid(betas: jax.Array, batch: int, dtype) -> jax.Array:
    betas = jnp.asarray(betas, dtype)
    if betas.ndim == 0:
        betas = betas[None]
    if betas.ndim == 1:
        betas = jnp.broadcast_to(betas[None, :], (batch, betas.shape[0]))
    if betas.ndim != 2 or betas.shape[0] != batch:
        raise ValueError(f"betas must have shape (K,) or (B, K) with B={batch}, got {betas.shape}")
    return betas


def log_hessian_norm_from_gram(
    g: jax.Array, logits: jax.Array, betas: jax.Array, curvature=None, labels=None
) -> jax.Array:
    """``log ||d2 CE(beta a, y)/dx2||_F`` from precomputed per-example quantities.

    Args:
        g: ``(B, d, d)`` Gram matrices ``J J^T``.
        logits: ``(B, d)`` logits ``a``.
        betas: ``(B, K)`` temperatures.
        curvature: ``None`` (piecewise-linear network: curvature term dropped) or a pair
            ``(Q (B, d, d), R (B, d, d, d))`` from ``curvature_terms`` (exact mode).
        labels: ``(B,)`` labels, needed only with ``curvature``.

    Returns:
        ``(B, K)`` log-norms (``-inf`` where the norm is exactly zero). Working in logs keeps
        ``beta^2`` from overflowing for the very large ``beta`` of the HNS grid.
    """
    p, q = _probs_and_complements(logits, betas)
    top = jnp.argmax(jnp.where(jnp.isnan(logits), -jnp.inf, logits), axis=-1)
    gc = centred_gram(g, top)
    scale = _gram_scale(gc)
    inner = _gauss_newton_trace(gc / scale[:, None, None], p)  # ||H||^2 / (beta^4 scale^2)
    if curvature is not None:
        qm, r = curvature
        d = logits.shape[-1]
        onehot = jax.nn.one_hot(labels, d, dtype=p.dtype)[:, None, :]
        psi = jnp.where(onehot > 0, -q, p)  # p - onehot(y), accurate at the label
        s = jnp.where(
            jnp.eye(d, dtype=jnp.bool_), (p * q)[..., :, None], -p[..., :, None] * p[..., None, :]
        )
        quad = jnp.einsum("bki,bij,bkj->bk", psi, qm, psi, precision=_HIGHEST)
        cross = jnp.einsum("bkc,bkij,bcij->bk", psi, s, r, precision=_HIGHEST)
        inner = (
            inner
            + quad / (betas * betas * scale[:, None] * scale[:, None])
            + 2.0 * cross / (betas * scale[:, None] * scale[:, None])
        )
    return _log_norm(inner, betas, scale)


def curvature_terms(logits_fn: LogitsFn, x: jax.Array, jac: jax.Array):
    """``Q_kl = <d2a_k, d2a_l>_F`` ``(B,d,d)`` and ``R_kij = J_i d2a_k J_j^T`` ``(B,d,d,d)``."""
    jac_fn = jax.jacrev(_single(logits_fn))

    def per_example(xi, ji):
        n = xi.size
        d = ji.shape[0]

        def djac(v):  # directional derivative of the Jacobian: (d, N)
            return jax.jvp(jac_fn, (xi,), (v.reshape(xi.shape),))[1].reshape(d, n)

        chunk = int(max(1, min(n, (1 << 20) // max(1, d * n))))
        n_chunks = -(-n // chunk)

        def body(i, acc):
            idx = i * chunk + jnp.arange(chunk)
            basis = jax.nn.one_hot(idx, n, dtype=xi.dtype)  # rows beyond n are zero
            dj = jax.vmap(djac)(basis)  # (chunk, d, N)
            return acc + jnp.einsum("cKn,cLn->KL", dj, dj, precision=_HIGHEST)

        qm = jax.lax.fori_loop(0, n_chunks, body, jnp.zeros((d, d), xi.dtype))
        jf = ji.reshape(d, n)
        ej = jax.vmap(djac)(jf)  # (d_j, d_k, N): d2a_k J_j^T
        r = jnp.einsum("in,jkn->kij", jf, ej, precision=_HIGHEST)
        return qm, r

    return jax.vmap(per_example)(x, jac)


def hessian_norm(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    betas: jax.Array,
    *,
    exact: bool = False,
) -> jax.Array:
    """Frobenius norm of the input Hessian ``||d2 CE(beta f(x), y) / dx2||_F`` per example.

    Default mode drops the curvature term ``beta psi . dJ/dx``, which is exactly zero almost
    everywhere for ReLU / max-pool / straight-through networks:
    ``beta^2 sqrt(tr(S G S G))`` from one Jacobian per example; never forms ``N x N``.
    ``exact=True`` includes it (``N`` extra Jacobian-vector products of the Jacobian per
    example; use it for smooth networks with small inputs).

    Args:
        logits_fn: batched logits function.
        x: ``(B, H, W, C)`` images.
        y: ``(B,)`` labels (only used by the curvature term).
        betas: ``(K,)`` temperatures shared by all examples, or ``(B, K)``.
        exact: include the curvature term.

    Returns:
        ``(B, K)`` Hessian norms.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> w = jnp.array([[1.0, -1.0], [2.0, 0.5]])
        >>> f = lambda x: jax.nn.relu(x.reshape(x.shape[0], -1)) @ w
        >>> x, y = jnp.full((1, 2, 1, 1), 0.5), jnp.array([0])
        >>> ref = jax.hessian(lambda z: -jax.nn.log_softmax(2.0 * f(z[None]))[0, 0])(x[0])
        >>> bool(jnp.allclose(hessian_norm(f, x, y, jnp.array([2.0]))[0, 0],
        ...                   jnp.linalg.norm(ref.reshape(2, 2))))
        True
    """
    logits = logits_fn(x)
    jac = jacobian(logits_fn, x)
    betas = _as_beta_grid(betas, x.shape[0], logits.dtype)
    curv = curvature_terms(logits_fn, x, jac) if exact else None
    return jnp.exp(log_hessian_norm_from_gram(gram(jac), logits, betas, curv, y))


# ---------------------------------------------------------------------- gradients, psi


def error_signal_norm(logits: jax.Array, y: jax.Array, beta: jax.Array | float = 1.0) -> jax.Array:
    """``||softmax(beta a) - onehot(y)||_2`` per example, as float autodiff computes it.

    (The norm itself is computed with rescaling, so entries ~1e-20 do not underflow.)

    In float32, ``p_y`` rounds to exactly 1 once the label leads by more than ~17 (and
    the other ``p_k`` underflow beyond ~88-104), which is what makes gradients vanish.

    Example:
        >>> import jax.numpy as jnp
        >>> error_signal_norm(jnp.array([[200.0, 0.0]]), jnp.array([0])).tolist()
        [0.0]
    """
    b = jnp.asarray(beta, logits.dtype)
    b = b[:, None] if b.ndim == 1 else b
    p = jax.nn.softmax(b * logits, axis=-1)
    psi = p - jax.nn.one_hot(y, logits.shape[-1], dtype=p.dtype)
    return _scaled_l2(psi)


def input_gradient(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    beta: jax.Array | float = 1.0,
    *,
    loss: str = "ce",
) -> jax.Array:
    """Per-example input gradient ``d loss(beta f(x), y) / dx``, same shape as ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], axis=1)
        >>> input_gradient(f, jnp.zeros((1, 1, 1, 1)), jnp.array([0])).shape
        (1, 1, 1, 1)
    """
    loss_fn = temperature_scaled(get_loss(loss), beta)
    return jax.grad(lambda z: jnp.sum(loss_fn(logits_fn(z), y)))(x)


def input_gradient_norm(logits_fn, x, y, beta=1.0, *, loss: str = "ce") -> jax.Array:
    """``||d loss(beta f(x), y)/dx||_2`` per example ``(B,)`` (paper Table 13).

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], axis=1)
        >>> round(float(input_gradient_norm(f, jnp.zeros((1, 1, 1, 1)), jnp.array([0]))[0]), 4)
        1.0
    """
    g = input_gradient(logits_fn, x, y, beta, loss=loss)
    return _scaled_l2(g)


def sign_gradient_norm(logits_fn, x, y, beta=1.0, *, loss: str = "ce") -> jax.Array:
    """``||sign(d loss/dx)||_2`` per example ``(B,)``: sqrt of the number of non-zero entries.

    Its maximum is ``sqrt(N)`` (55.4 for 32x32x3); exactly-zero gradients lower it.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: jnp.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], axis=1)
        >>> sign_gradient_norm(f, jnp.zeros((1, 2, 2, 1)), jnp.array([0])).tolist()
        [2.0]
    """
    g = input_gradient(logits_fn, x, y, beta, loss=loss)
    nonzero = (g != 0).astype(g.dtype)
    return jnp.sqrt(jnp.sum(nonzero, axis=_feature_axes(g)))


def zero_gradient_mask(logits_fn, x, y, beta=1.0, *, loss: str = "ce") -> jax.Array:
    """``(B,)`` bool: the example's input gradient is exactly zero everywhere.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: 500.0 * jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], 1)
        >>> zero_gradient_mask(f, jnp.ones((1, 1, 1, 1)), jnp.array([0])).tolist()
        [True]
    """
    g = input_gradient(logits_fn, x, y, beta, loss=loss)
    return jnp.all(g == 0, axis=_feature_axes(g))


def zero_gradient_fraction(logits_fn, x, y, beta=1.0, *, loss: str = "ce") -> float:
    """Fraction of examples whose input gradient is exactly zero (a Python float).

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: 500.0 * jnp.concatenate([x.reshape(2, -1), -x.reshape(2, -1)], 1)
        >>> zero_gradient_fraction(f, jnp.array([1.0, 0.0]).reshape(2, 1, 1, 1), jnp.array([0, 0]))
        0.5
    """
    mask = zero_gradient_mask(logits_fn, x, y, beta, loss=loss)
    return float(np.mean(np.asarray(mask)))
