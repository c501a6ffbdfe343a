"""Quantizers and quantization policies.

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

The layer-wise choice of quantizer is described by a :class:`QuantPolicy`
(see :func:`get_policy`); ``qadv.models`` applies it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "POLICY_KINDS",
    "WQ_METHODS",
    "LayerCost",
    "QuantPolicy",
    "binarize_weights",
    "bops",
    "dorefa_weights",
    "get_policy",
    "layer_bits",
    "mbn_activation_bases",
    "mbn_activations",
    "mbn_shifts",
    "mbn_weight_bases",
    "mbn_weights",
    "pact_activation",
    "round_ste",
    "sign_ste",
    "uniform_quantize",
    "xnor_weights",
]

WQ_METHODS: tuple[str, ...] = ("bc", "gd_tanh", "md_tanh_s")
POLICY_KINDS: tuple[str, ...] = ("ref", "bnn_wq", "bnn_waq", "mbn", "pact", "xnor")


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


def _straight_through(x: jax.Array, q: jax.Array) -> jax.Array:
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
    return _straight_through(x, jnp.round(x))


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
    _check_bits(bits)
    n = jnp.asarray(2**bits - 1, dtype=x.dtype)
    return round_ste(x * n) / n


def _check_bits(bits: int) -> None:
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
    return _straight_through(
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
    _check_bits(bits)
    alpha = jnp.asarray(alpha, dtype=x.dtype)
    # jnp.where (not min/max) so that the derivative at the clip points is 1, not 1/2.
    y = jnp.where(x < 0, jnp.zeros_like(x), jnp.where(x > alpha, alpha, x))
    n = jnp.asarray(2**bits - 1, dtype=x.dtype)
    scale = jax.lax.stop_gradient(alpha) / n
    q = jnp.round(y / scale) * scale
    return _straight_through(y, q)


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
    _check_bits(bits)
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


# ----------------------------------------------------------------------------- policies


@dataclasses.dataclass(frozen=True)
class QuantPolicy:
    """How a network is quantized (hashable; used as a Flax module attribute).

    Attributes:
        kind: ``"ref"`` (float), ``"bnn_wq"`` (binary weights, real ReLU activations,
            BatchNorm without affine, no scaling factor), ``"bnn_waq"`` (BinaryNet: binary
            weights and activations, real image into the first layer, affine BatchNorm,
            real biases and logits), ``"mbn"`` (ABC-Net M×N), ``"pact"`` (PACT k-bit
            activations + DoReFa k-bit weights), ``"xnor"`` (XNOR-Net).
        wq_method: BNN weight method during training: ``"bc"`` (default), ``"gd_tanh"``
            or ``"md_tanh_s"``. Evaluation always uses hard ±1 weights. BinaryConnect
            trains with the same ±1 forward pass that evaluation uses; the tanh methods
            train on ``tanh(beta w)`` and need ``beta`` annealed until it saturates
            (``TrainConfig.anneal_end``), else the hard network differs from the trained
            one (BatchNorm statistics included).
        m_bases: MBN weight bases M.
        n_bases: MBN activation bases N.
        bits: PACT bits for weights and activations.
        float_first: keep the first layer entirely in float.
        float_last: keep the last (classifier) layer entirely in float.
        float_bias: keep biases in float for ``bnn_wq`` (otherwise they are binarised
            like the weights). Biases are always float for the other kinds.

    Example:
        >>> get_policy("mbn", m_bases=3, n_bases=1).name
        'mbn3x1'
    """

    kind: str = "ref"
    wq_method: str = "bc"
    m_bases: int = 3
    n_bases: int = 1
    bits: int = 4
    float_first: bool = False
    float_last: bool = False
    float_bias: bool = False

    def __post_init__(self):
        if self.kind not in POLICY_KINDS:
            raise ValueError(
                f"unknown quantization policy {self.kind!r}; choose one of: "
                + ", ".join(POLICY_KINDS)
            )
        if self.wq_method not in WQ_METHODS:
            raise ValueError(
                f"unknown wq_method {self.wq_method!r}; choose one of: " + ", ".join(WQ_METHODS)
            )
        for field in ("m_bases", "n_bases"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 16:
                raise ValueError(f"invalid {field} {v!r}; choose an integer in 1..16")
        _check_bits(self.bits)
        for field in ("float_first", "float_last", "float_bias"):
            v = getattr(self, field)
            if not isinstance(v, bool):
                raise ValueError(f"invalid {field} {v!r}; choose True or False")

    @property
    def name(self) -> str:
        """Short display name, e.g. ``"ref"``, ``"pact4"``, ``"mbn3x1"``."""
        if self.kind == "pact":
            return f"pact{self.bits}"
        if self.kind == "mbn":
            return f"mbn{self.m_bases}x{self.n_bases}"
        return self.kind

    @property
    def binary_activations(self) -> bool:
        """Whether hidden layers see binarised (or multi-binary) inputs."""
        return self.kind in ("bnn_waq", "xnor", "mbn")

    @property
    def bn_affine(self) -> bool:
        """BatchNorm has learnable scale/bias (False only for ``bnn_wq``)."""
        return self.kind != "bnn_wq"

    def is_float_layer(self, role: str) -> bool:
        """Whether a layer with ``role`` in {"first", "hidden", "last"} stays in float."""
        if role not in _ROLES:
            raise ValueError(f"unknown layer role {role!r}; choose one of: " + ", ".join(_ROLES))
        if self.kind == "ref":
            return True
        return (role == "first" and self.float_first) or (role == "last" and self.float_last)

    def to_dict(self) -> dict:
        """Plain dict of the fields (for checkpoint metadata); inverse of ``QuantPolicy(**d)``."""
        return dataclasses.asdict(self)


_ROLES = ("first", "hidden", "last")


def get_policy(name: str, **opts) -> QuantPolicy:
    """Build a :class:`QuantPolicy` from a kind name and options.

    Names are the kinds (``ref``, ``bnn_wq``, ``bnn_waq``, ``mbn``, ``pact``, ``xnor``);
    shorthands ``"pact<k>"``/``"pact:<k>"`` (e.g. ``"pact2"``) and
    ``"mbn<M>x<N>"``/``"mbn:<M>x<N>"`` (e.g. ``"mbn:3x1"``) are accepted too.
    Options are the other dataclass fields.

    Example:
        >>> get_policy("pact2").bits
        2
        >>> get_policy("bnn_wq", wq_method="bc", float_last=True).float_last
        True
    """
    if not isinstance(name, str):
        raise ValueError(f"invalid policy name {name!r}; choose one of: " + ", ".join(POLICY_KINDS))
    fields = {f.name for f in dataclasses.fields(QuantPolicy)} - {"kind"}
    bad = sorted(set(opts) - fields)
    if bad:
        raise ValueError(
            f"unknown policy option {bad[0]!r}; choose from: " + ", ".join(sorted(fields))
        )
    if ":" in name:  # colon forms: "mbn:3x1", "pact:4"
        head, _, tail = name.partition(":")
        name = head + tail if head in ("mbn", "pact") and tail else name
    kind = name
    if name not in POLICY_KINDS:
        if name.startswith("pact") and name[4:].isdigit():
            kind, opts = "pact", {"bits": int(name[4:]), **opts}
        elif name.startswith("mbn") and "x" in name[3:]:
            m, _, n = name[3:].partition("x")
            if m.isdigit() and n.isdigit():
                kind, opts = "mbn", {"m_bases": int(m), "n_bases": int(n), **opts}
    if kind not in POLICY_KINDS:
        raise ValueError(
            f"unknown quantization policy {name!r}; choose one of: "
            + ", ".join(POLICY_KINDS)
            + " (or pact:<k>, mbn:<M>x<N>)"
        )
    return QuantPolicy(kind=kind, **opts)


# ----------------------------------------------------------------------------- BOPS


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Multiply-accumulate count of one conv/dense layer and its role.

    Attributes:
        macs: multiply-accumulates for one example.
        role: ``"first"``, ``"hidden"`` or ``"last"``.
        name: the layer's module path (e.g. ``"stage1_block0/conv1"``), when known.
        params: its weight and bias count.
        kind: ``"conv"`` or ``"dense"`` (``""`` when unknown).
        out_shape: its output shape for one example.
    """

    macs: int
    role: str
    name: str = ""
    params: int = 0
    kind: str = ""
    out_shape: tuple[int, ...] = ()


def bops(layers: Sequence[LayerCost | Mapping], policy: QuantPolicy) -> int:
    """Bit-operations (BOPS) of one forward pass, in the convention of 004 (Table 2).

    Per layer: ``MACs * b_w * b_a``. Float layers (``ref``) count as 8×8 bits; the first and
    last layers always count as 8×8 bits; PACT uses ``bits × bits``; MBN ``M × N`` binary
    operations; BNN-WQ ``1 × 8`` (binary weights, 8-bit activations); BNN-WAQ and XNOR
    ``1 × 1``. Operations outside conv/dense layers (BatchNorm, pooling, additions,
    scaling by ``alpha``/``beta``) are not counted, as in 004.

    Args:
        layers: per-layer MAC counts (``LayerCost`` or mappings with keys ``macs``, ``role``),
            e.g. from ``qadv.models.layer_costs``.
        policy: the quantization policy.

    Example:
        >>> bops([LayerCost(10, "first"), LayerCost(100, "hidden")], get_policy("pact2"))
        1040
    """
    total = 0
    for layer in layers:
        macs, role = (
            (layer["macs"], layer["role"])
            if isinstance(layer, Mapping)
            else (layer.macs, layer.role)
        )
        bw, ba = layer_bits(role, policy)
        total += int(macs) * bw * ba
    return total


def layer_bits(role: str, policy: QuantPolicy) -> tuple[int, int]:
    """``(weight bits, activation bits)`` of a layer with ``role`` in the BOPS convention
    of :func:`bops` (MBN: ``(M, N)`` binary bases; first and last layers: ``(8, 8)``).

    Example:
        >>> layer_bits("hidden", get_policy("mbn:3x1")), layer_bits("first", get_policy("xnor"))
        ((3, 1), (8, 8))
    """
    if role not in _ROLES:
        raise ValueError(f"unknown layer role {role!r}; choose one of: " + ", ".join(_ROLES))
    if role != "hidden":
        return 8, 8
    return {
        "ref": (8, 8),
        "bnn_wq": (1, 8),
        "bnn_waq": (1, 1),
        "xnor": (1, 1),
        "pact": (policy.bits, policy.bits),
        "mbn": (policy.m_bases, policy.n_bases),
    }[policy.kind]
