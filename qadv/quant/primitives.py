"""Quantizer primitives: pure, straight-through functions of weights and activations.

Every quantizer here is a pure function that works under ``jit``, ``vmap`` and every
autodiff mode (``grad``, ``jacrev``, ``jacfwd``, ``jvp``, ``hessian``). Straight-through
estimators (STE) are written either with ``jax.custom_jvp`` (:func:`sign_ste`) or with the
``x + stop_gradient(q(x) - x)`` identity, both of which support forward and reverse mode.

Families (see ``/shared/seeds/004_*`` and the references there):

* BNN-WQ / BNN-WAQ: :func:`binarize_weights` (BinaryConnect, GD-tanh, MD-tanh-S) and
  :func:`sign_ste` for activations.
* XNOR-Net: :func:`xnor_weights` (``sign(W)`` times mean ``|W|`` per output channel) with
  :func:`sign_ste` activations (no activation scaling factor ``K``).
* PACT k-bit: :func:`pact_activation` (learned clip ``alpha``) and
  :func:`dorefa_weights` (DoReFa k-bit uniform weights).
* ABC-Net multi-bit (MBN M×N): :func:`mbn_weight_bases`, :func:`mbn_weights`,
  :func:`mbn_activation_bases`, :func:`mbn_activations`.

Which quantizer a layer uses is decided by a quantization policy
(:mod:`qadv.quant.policy`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "WQ_METHODS",
    "binarize_weights",
    "check_bits",
    "dorefa_weights",
    "mbn_activation_bases",
    "mbn_activations",
    "mbn_shifts",
    "mbn_weight_bases",
    "mbn_weights",
    "pact_activation",
    "round_ste",
    "sign_ste",
    "straight_through",
    "uniform_quantize",
    "xnor_weights",
]

WQ_METHODS: tuple[str, ...] = ("bc", "gd_tanh", "md_tanh_s")

# ----------------------------------------------------------------------------- primitives


@jax.custom_jvp
def sign_ste(x: jax.Array) -> jax.Array:
    """Binarise to ±1 with the hardtanh straight-through estimator.

    Forward: ``sign(x)`` with ``sign(0) = +1``. Derivative: ``1{|x| <= 1}``.
    Built with ``jax.custom_jvp`` so that forward mode (``jacfwd``, ``jvp``,
    ``hessian``) works as well as reverse mode.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> sign_ste(jnp.array([-2.0, 0.0, 0.5])).tolist()
        [-1.0, 1.0, 1.0]
        >>> jax.grad(lambda x: sign_ste(x).sum())(jnp.array([-2.0, 0.0, 0.5])).tolist()
        [0.0, 1.0, 1.0]
    """
    return jnp.where(x >= 0, jnp.ones_like(x), -jnp.ones_like(x))


@sign_ste.defjvp
def _sign_ste_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    mask = (jnp.abs(x) <= 1).astype(t.dtype)
    return sign_ste(x), mask * t


def straight_through(x: jax.Array, q: jax.Array) -> jax.Array:
    """Forward value ``q``, derivative that of ``x`` (identity STE)."""
    return x + jax.lax.stop_gradient(q - x)


def round_ste(x: jax.Array) -> jax.Array:
    """Round to the nearest integer with an identity straight-through derivative.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> round_ste(jnp.array([0.4, 1.6])).tolist()
        [0.0, 2.0]
        >>> jax.grad(lambda x: round_ste(x).sum())(jnp.array([0.4, 1.6])).tolist()
        [1.0, 1.0]
    """
    return straight_through(x, jnp.round(x))


def uniform_quantize(x: jax.Array, *, bits: int) -> jax.Array:
    """Quantize values in ``[0, 1]`` to ``2**bits`` uniform levels (STE for ``round``).

    Args:
        x: array with values in ``[0, 1]``.
        bits: number of bits, ``>= 1``.

    Returns:
        ``round(x * (2**bits - 1)) / (2**bits - 1)``, derivative 1.

    Example:
        >>> import jax.numpy as jnp
        >>> uniform_quantize(jnp.array([0.0, 0.3, 1.0]), bits=2).tolist()
        [0.0, 0.3333333432674408, 1.0]
    """
    check_bits(bits)
    n = jnp.asarray(2**bits - 1, dtype=x.dtype)
    return round_ste(x * n) / n


def check_bits(bits: int) -> None:
    """Raise ``ValueError`` unless ``bits`` is an integer in 1..8."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"invalid bits {bits!r}; choose an integer in 1..8")


# ----------------------------------------------------------------------------- BNN weights


def binarize_weights(
    w: jax.Array, *, method: str, beta: float | jax.Array = 1.0, hard: bool = False
) -> jax.Array:
    """Binarise latent weights for BNN training and evaluation.

    Methods:
        * ``"bc"`` — BinaryConnect: forward ``sign(w)``, hardtanh straight-through
          derivative (:func:`sign_ste`).
        * ``"gd_tanh"`` — forward ``tanh(beta * w)``, full chain-rule derivative
          ``beta * (1 - tanh(beta * w)**2)``.
        * ``"md_tanh_s"`` — mirror descent with the tanh mirror map, "S" variant
          (Ajanthan et al., 2021): forward ``x = tanh(beta * w)``; the derivative is the
          identity, so a gradient step on ``w`` is ``w <- w - lr * dL/dx`` (the update of
          the dual/latent variable is the gradient with respect to the primal ``x``).

    With ``hard=True`` every method returns exactly ±1 (``sign`` with ``sign(0) = +1``,
    straight-through derivative); this is what evaluation uses. ``beta = inf`` (the end
    of annealing) gives the same ±1 forward pass inside training, with the hardtanh
    straight-through derivative for ``gd_tanh`` and the identity for ``md_tanh_s``.

    Args:
        w: latent weights, any shape.
        method: one of ``"bc"``, ``"gd_tanh"``, ``"md_tanh_s"``.
        beta: tanh annealing factor (ignored by ``"bc"`` and by ``hard=True``).
        hard: return exactly ±1.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> w = jnp.array([-0.5, 0.0, 2.0])
        >>> binarize_weights(w, method="md_tanh_s", hard=True).tolist()
        [-1.0, 1.0, 1.0]
        >>> jax.grad(lambda w: binarize_weights(w, method="md_tanh_s", beta=3.0).sum())(w).tolist()
        [1.0, 1.0, 1.0]
    """
    if method not in WQ_METHODS:
        raise ValueError(
            f"unknown weight binarization method {method!r}; choose one of: "
            + ", ".join(WQ_METHODS)
        )
    if hard or method == "bc":
        return sign_ste(w)
    beta = jnp.asarray(beta, dtype=w.dtype)
    at_inf = jnp.isinf(beta)  # the end of annealing: hard signs inside training
    soft = jnp.tanh(jnp.where(at_inf, jnp.ones_like(beta), beta) * w)
    if method == "gd_tanh":
        return jnp.where(at_inf, sign_ste(w), soft)
    return straight_through(
        w, jnp.where(at_inf, jnp.where(w >= 0, 1.0, -1.0).astype(w.dtype), soft)
    )


# ----------------------------------------------------------------------------- XNOR


def xnor_weights(w: jax.Array) -> jax.Array:
    """XNOR-Net weights: ``sign(W) * mean|W|`` per output channel (last axis).

    The sign uses the hardtanh STE; the scale ``mean|W|`` is differentiated normally.

    Args:
        w: kernel ``(..., out)`` (Flax layout: ``(kh, kw, in, out)`` or ``(in, out)``).

    Example:
        >>> import jax.numpy as jnp
        >>> xnor_weights(jnp.array([[1.0, -0.5], [-3.0, 0.5]])).tolist()
        [[2.0, -0.5], [-2.0, 0.5]]
    """
    axes = tuple(range(w.ndim - 1))
    alpha = jnp.mean(jnp.abs(w), axis=axes, keepdims=True)
    return sign_ste(w) * alpha


# ----------------------------------------------------------------------------- PACT / DoReFa


def pact_activation(x: jax.Array, alpha: jax.Array, *, bits: int) -> jax.Array:
    """PACT k-bit activation: clip to ``[0, alpha]``, then ``bits``-bit uniform levels.

    ``y = clip(x, 0, alpha)``; ``y_q = round(y * n / alpha) * alpha / n`` with
    ``n = 2**bits - 1``. Derivatives as in PACT (Choi et al., 2018): ``round`` is
    straight-through, so ``dy_q/dx = 1{0 <= x <= alpha}`` and ``dy_q/dalpha = 1{x >= alpha}``.

    Args:
        x: activations, any shape.
        alpha: positive scalar clip level (a learned parameter).
        bits: activation bits, 1..8.

    Example:
        >>> import jax.numpy as jnp
        >>> pact_activation(jnp.array([-1.0, 0.4, 0.6, 5.0]), jnp.array(3.0), bits=2).tolist()
        [0.0, 0.0, 1.0, 3.0]
    """
    check_bits(bits)
    alpha = jnp.asarray(alpha, dtype=x.dtype)
    # jnp.where (not min/max) so that the derivative at the clip points is 1, not 1/2.
    y = jnp.where(x < 0, jnp.zeros_like(x), jnp.where(x > alpha, alpha, x))
    # at x == alpha both indicator derivatives are 1: add alpha - sg(alpha) (value 0)
    tie = jnp.where(x == alpha, alpha - jax.lax.stop_gradient(alpha), jnp.zeros_like(x))
    y = y + tie
    n = jnp.asarray(2**bits - 1, dtype=x.dtype)
    scale = jax.lax.stop_gradient(alpha) / n
    q = jnp.round(y / scale) * scale
    return straight_through(y, q)


def dorefa_weights(w: jax.Array, *, bits: int) -> jax.Array:
    """DoReFa-Net k-bit uniform weights in ``[-1, 1]`` (STE for ``round``).

    ``t = tanh(w)``; ``u = t / (2 max|t|) + 1/2`` in ``[0, 1]``;
    ``w_q = 2 * round(u * n) / n - 1`` with ``n = 2**bits - 1`` (per-layer max).

    Args:
        w: weights, any shape.
        bits: weight bits, 1..8.

    Example:
        >>> import jax.numpy as jnp
        >>> dorefa_weights(jnp.array([-1.0, 0.0, 1.0]), bits=2).tolist()
        [-1.0, 0.3333333730697632, 1.0]
    """
    check_bits(bits)
    t = jnp.tanh(w)
    m = jnp.max(jnp.abs(t))
    u = t / (2 * m + jnp.asarray(1e-12, w.dtype)) + jnp.asarray(0.5, w.dtype)
    return 2 * uniform_quantize(u, bits=bits) - 1


# ----------------------------------------------------------------------------- ABC-Net MBN


def mbn_shifts(num: int) -> jax.Array:
    """ABC-Net weight shifts ``u_m = -1 + 2 (m - 1) / (M - 1)`` (``u = 0`` when ``M = 1``).

    Example:
        >>> mbn_shifts(3).tolist()
        [-1.0, 0.0, 1.0]
    """
    if num < 1:
        raise ValueError(f"invalid number of bases {num!r}; choose an integer >= 1")
    if num == 1:
        return jnp.zeros((1,), jnp.float32)
    return jnp.linspace(-1.0, 1.0, num, dtype=jnp.float32)


def mbn_weight_bases(w: jax.Array, *, m_bases: int) -> tuple[jax.Array, jax.Array]:
    """ABC-Net weight bases and their least-squares scales.

    ``B_m = sign(W - mean(W) + u_m std(W))`` with fixed shifts from :func:`mbn_shifts`;
    ``alpha = argmin ||W - sum_m alpha_m B_m||^2`` (solved with a
    pseudo-inverse, so coinciding bases are fine). The scales are recomputed from the
    current ``W`` at every call (as in ABC-Net, Lin et al. 2017, Sec. 3.1) and are *not*
    learned parameters; they are treated as
    constants for differentiation and the signs use the hardtanh STE, so
    ``d(sum alpha_m B_m)/dW = sum_m alpha_m 1{|.| <= 1}`` (004, Eq. 3).

    Args:
        w: weights, any shape (statistics over the whole layer).
        m_bases: number of weight bases ``M >= 1``.

    Returns:
        ``(bases, alphas)`` with shapes ``(M, *w.shape)`` and ``(M,)``.

    Example:
        >>> import jax.numpy as jnp
        >>> b, a = mbn_weight_bases(jnp.array([-2.0, -1.0, 1.0, 2.0]), m_bases=1)
        >>> b.tolist(), [round(v, 4) for v in a.tolist()]
        ([[-1.0, -1.0, 1.0, 1.0]], [1.5])
    """
    shifts = mbn_shifts(m_bases).astype(w.dtype)
    sg = jax.lax.stop_gradient
    centred = w - sg(jnp.mean(w))
    std = sg(jnp.std(w))
    shape = (m_bases,) + (1,) * w.ndim
    bases = sign_ste(jnp.expand_dims(centred, 0) + shifts.reshape(shape) * std)
    # the least-squares fit runs in at least float32 (bfloat16 has no pseudo-inverse, and
    # its sums over a whole layer would be coarse); the ±1 bases are exact in any dtype
    solve_dtype = jnp.promote_types(w.dtype, jnp.float32)
    flat_b = sg(bases).reshape(m_bases, -1).astype(solve_dtype)
    gram = flat_b @ flat_b.T
    rhs = flat_b @ sg(w).reshape(-1).astype(solve_dtype)
    alphas = jnp.linalg.pinv(gram, hermitian=True) @ rhs
    return bases, alphas.astype(w.dtype)


def mbn_weights(w: jax.Array, *, m_bases: int) -> jax.Array:
    """Effective ABC-Net weights ``sum_m alpha_m B_m`` (see :func:`mbn_weight_bases`).

    Example:
        >>> import jax.numpy as jnp
        >>> mbn_weights(jnp.array([-2.0, -1.0, 1.0, 2.0]), m_bases=1).tolist()
        [-1.5, -1.5, 1.5, 1.5]
    """
    bases, alphas = mbn_weight_bases(w, m_bases=m_bases)
    return jnp.tensordot(alphas, bases, axes=1)


def mbn_activation_bases(x: jax.Array, shifts: jax.Array) -> jax.Array:
    """ABC-Net binary activation bases ``A_n = sign(x - v_n)`` with the hardtanh STE.

    Args:
        x: activations, any shape.
        shifts: learnable shifts ``v`` of shape ``(N,)``.

    Returns:
        ``(N, *x.shape)`` array of ±1.

    Example:
        >>> import jax.numpy as jnp
        >>> mbn_activation_bases(jnp.array([-0.2, 0.3]), jnp.array([0.0, 0.5])).tolist()
        [[-1.0, 1.0], [-1.0, -1.0]]
    """
    shifts = shifts.astype(x.dtype).reshape((-1,) + (1,) * x.ndim)
    return sign_ste(jnp.expand_dims(x, 0) - shifts)


def mbn_activations(x: jax.Array, shifts: jax.Array, scales: jax.Array) -> jax.Array:
    """Effective ABC-Net activations ``sum_n beta_n sign(x - v_n)`` (learnable ``v``, ``beta``).

    Example:
        >>> import jax.numpy as jnp
        >>> mbn_activations(jnp.array([-0.2, 0.3]), jnp.array([0.0]), jnp.array([2.0])).tolist()
        [-2.0, 2.0]
    """
    bases = mbn_activation_bases(x, shifts)
    return jnp.tensordot(scales.astype(x.dtype), bases, axes=1)
