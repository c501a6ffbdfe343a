"""Temperature strategies for FGSM++/PGD++ (Gupta & Ajanthan, Algorithms 1 and 2).

A strategy is a small pytree object with two rules, and the attack never asks which one
it holds:

- ``init(logits_fn, x, y) -> state`` runs once, at the random-start point;
- ``beta(state, logits, y) -> BetaInfo`` runs at every step on the current logits
  (computed anyway for the gradient, so it costs no extra forward pass).

``BetaInfo.beta`` is the per-example temperature ``(B,)``; ``fallback`` marks examples
where the rule could not produce a finite, positive, prediction-preserving ``beta``
(tied top logits, non-finite logits, overflow) and ``beta = 1`` was used instead;
``default`` marks examples where the rule itself prescribes ``beta = 1`` (HNS: the grid
argmax is an end point or the example is misclassified at the start point).

Strategies:

- ``fixed(beta)``: a constant (scalar or per-example) temperature.
- ``njs(logits_fn, x_calib, rho=0.01)``: network Jacobian scaling. ``beta1 = 1 / mean``
  of all ``d`` Jacobian singular values over ``x_calib``, computed once here (pixel
  space by default; pass ``input_std`` to differentiate w.r.t. mean/std-normalised
  inputs as the authors' release does, which makes ``beta1`` roughly ``1/std`` larger).
  At every step, with ``p' = softmax(beta1 a)``: if ``1 - p'_y <= rho`` then
  ``beta2 = -log(rho / ((d-1)(1-rho))) / gamma`` with ``gamma = max - min`` of the
  ``beta1``-scaled logits, else ``beta2 = 1``; the loss uses ``beta2 * beta1``. The test
  ``1 - p'_y <= rho`` is done in log space. ``rho`` is a parameter (the release
  hard-codes it).
- ``hns(grid_size=100, exact=False, top_k=None)``: Hessian norm scaling. Per example, the ``beta``
  maximising ``||d2 CE(beta a, y)/dx2||_F`` over ``grid_size`` equally spaced values from
  Proposition 1 with ``rho = 1 - 1/d - 0.01`` to ``rho = 1e-72`` (``gamma`` = top-1 minus
  top-2 logit, constants in float64 log space), chosen once at the random-start point.
  The Jacobian rows come from the pullback of the first attack step
  (``make_pgd(...).start``), so HNS adds ``d`` reverse passes to PGD and no forward pass.
  ``top_k=k`` keeps the rows of the ``k`` largest logits only (``k`` passes instead of
  ``d``, for 100 or 1,000 classes). ``exact=True`` adds the curvature term for smooth
  networks (costly, see ``qadv.signal``).
- ``prop1(rho)``: the paper's Table 14 ablation. Per example, at the random-start point,
  ``beta`` from Proposition 1 so that ``1 - softmax(beta a)_y > rho``:
  ``beta = -log(rho / ((d-1)(1-rho))) / gamma`` with ``gamma = max - min`` logit, for
  correctly classified examples (``beta = 1`` otherwise); no NJS ``beta1``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qadv import signal
from qadv.attacks import registry
from qadv.losses import at_least_float32
from qadv.static_fn import split_logits_fn

__all__ = [
    "HNS",
    "NJS",
    "BetaInfo",
    "Fixed",
    "FixedTemperature",
    "HNSTemperature",
    "NJSTemperature",
    "NoTemperature",
    "Prop1",
    "Prop1Temperature",
    "fixed",
    "hns",
    "njs",
    "prop1",
]


class BetaInfo(NamedTuple):
    """Per-example temperature and how it was obtained (all ``(B,)``)."""

    beta: jax.Array
    fallback: jax.Array
    default: jax.Array


def _is_concrete(v) -> bool:
    return not isinstance(v, jax.core.Tracer)


def _guard(beta: jax.Array, logits: jax.Array, default: jax.Array) -> BetaInfo:
    """Replace ``beta`` by 1 wherever it is unusable; flag those examples as fallbacks.

    Usable: finite logits (``-inf`` entries allowed), ``beta`` finite and positive, and
    ``beta * a`` finite wherever ``a`` is (so scaling cannot create ties or change the
    argmax through overflow).
    """
    bad_logits = jnp.any(jnp.isnan(logits) | (logits == jnp.inf), axis=-1)
    finite_a = jnp.where(jnp.isfinite(logits), logits, jnp.zeros_like(logits))
    scaled_ok = jnp.all(jnp.isfinite(beta[:, None] * finite_a), axis=-1)
    ok = ~bad_logits & jnp.isfinite(beta) & (beta > 0) & scaled_ok
    one = jnp.ones_like(beta)
    return BetaInfo(jnp.where(ok, beta, one), ~ok, default & ok)


def _batch_beta(value: jax.Array, logits: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(value, logits.dtype), logits.shape[:1])


# ------------------------------------------------------------------------------ fixed


@dataclasses.dataclass(frozen=True)
class Fixed:
    """Constant temperature; ``value`` is a scalar or a per-example ``(B,)`` array."""

    value: jax.Array

    def validate(self, d: int, batch: int) -> None:
        v = jnp.asarray(self.value)
        if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != batch):
            raise ValueError(f"fixed beta must be a scalar or shape ({batch},), got {v.shape}")

    def init(self, logits_fn, x, y) -> Any:
        return ()

    def beta(self, state, logits, y) -> BetaInfo:
        b = _batch_beta(self.value, logits)
        return _guard(b, logits, jnp.zeros(b.shape, jnp.bool_))


jax.tree_util.register_dataclass(Fixed, data_fields=["value"], meta_fields=[])


def fixed(beta: float | jax.Array) -> Fixed:
    """A constant temperature ``beta > 0`` (scalar or per-example ``(B,)``).

    Example:
        >>> import jax.numpy as jnp
        >>> fixed(0.5).beta((), jnp.zeros((2, 3)), jnp.array([0, 1])).beta.tolist()
        [0.5, 0.5]
    """
    v = jnp.asarray(beta, jnp.float32)
    if v.ndim > 1:
        raise ValueError(f"fixed beta must be a scalar or 1-D, got shape {v.shape}")
    if _is_concrete(v):
        arr = np.asarray(v)
        if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
            raise ValueError(f"fixed beta must be finite and > 0, got {arr.tolist()}")
    return Fixed(v)


# -------------------------------------------------------------------------------- NJS


@dataclasses.dataclass(frozen=True)
class NJS:
    """Network Jacobian scaling (Algorithm 1); build with ``njs(...)``."""

    beta1: jax.Array
    rho: float
    log_rho: float
    log1m_rho: float

    def validate(self, d: int, batch: int) -> None:
        if not self.rho < (d - 1) / d:
            raise ValueError(
                f"njs rho must be < (d-1)/d = {(d - 1) / d:.4g} for d={d}, got {self.rho}"
            )

    def init(self, logits_fn, x, y) -> Any:
        return ()

    def beta(self, state, logits, y) -> BetaInfo:
        d = logits.shape[-1]
        dt = logits.dtype
        b1 = jnp.asarray(self.beta1, dt)
        z = b1 * logits
        log_p = jax.nn.log_softmax(z, axis=-1)
        is_label = jnp.arange(d, dtype=jnp.int32)[None, :] == y[:, None].astype(jnp.int32)
        others = jnp.where(is_label, jnp.full_like(log_p, -jnp.inf), log_p)
        log_1m_py = jax.nn.logsumexp(others, axis=-1)  # log(1 - p'_y), accurate
        saturated = log_1m_py <= jnp.asarray(self.log_rho, dt)
        gamma = jnp.max(z, axis=-1) - jnp.min(z, axis=-1)
        const = jnp.asarray(-self.log_rho + self.log1m_rho + float(np.log(d - 1)), dt)
        safe_gamma = jnp.where(gamma > 0, gamma, jnp.ones_like(gamma))
        beta2 = jnp.where(
            saturated,
            jnp.where(gamma > 0, const / safe_gamma, jnp.full_like(gamma, jnp.inf)),
            jnp.ones_like(gamma),
        )
        return _guard(b1 * beta2, logits, jnp.zeros(gamma.shape, jnp.bool_))


jax.tree_util.register_dataclass(
    NJS, data_fields=["beta1"], meta_fields=["rho", "log_rho", "log1m_rho"]
)


@functools.partial(jax.jit, static_argnames="fn_static")
def _mean_singular_value(fn_static, fn_dyn, x, std, weights):
    """Mean of all ``d`` Jacobian singular values over the batch (optionally ``J * std``),
    each example weighted by ``weights`` (``(M,)``; ``None``: all equal)."""
    jac = signal.jacobian(fn_static if fn_static is not None else fn_dyn, x)
    jac = at_least_float32(jac)  # no half-precision eigh
    if std is not None:
        jac = jac * std.astype(jac.dtype).reshape((1,) * (jac.ndim - 1) + (std.shape[0],))
    ev = jnp.linalg.eigvalsh(signal.gram(jac))
    sv = jnp.sqrt(jnp.clip(ev, 0.0, None))  # (M, d)
    if weights is None:
        return jnp.mean(sv)
    w = weights.astype(sv.dtype)
    return jnp.sum(sv * w[:, None]) / (jnp.sum(w) * sv.shape[1])


def njs(logits_fn, x_calib: jax.Array, *, rho: float = 0.01, input_std=None, weights=None) -> NJS:
    """Network Jacobian scaling; ``beta1`` is computed here, once, from ``x_calib``.

    Args:
        logits_fn: batched logits function on ``[0, 1]`` images.
        x_calib: ``(M, H, W, C)`` calibration images (the release uses the first 101 test
            images, misclassified ones included).
        rho: threshold on ``1 - p'_y``, in ``(0, 1)`` and ``< (d-1)/d``.
        input_std: ``None`` for Jacobians w.r.t. ``[0, 1]`` pixels, or the per-channel std
            (scalar or ``(C,)``) to take them w.r.t. ``(x - mean) / std`` like the release.
        weights: ``None``, or ``(M,)`` weights of the calibration images in the mean (0 for
            padding rows of a padded batch).

    Raises:
        ValueError: bad ``rho``, or all singular values zero (``beta1`` undefined).

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: 4.0 * jnp.concatenate([x.reshape(x.shape[0], -1)] * 2, axis=1)
        >>> round(float(njs(f, jnp.zeros((2, 1, 1, 1))).beta1), 4)  # svals (4*sqrt(2), 0)
        0.3536
    """
    rho = float(rho)
    if not (np.isfinite(rho) and 0.0 < rho < 1.0):
        raise ValueError(f"njs rho must lie in (0, 1), got {rho}")
    x_calib = jnp.asarray(x_calib)
    if x_calib.ndim < 2 or x_calib.shape[0] == 0:
        raise ValueError(f"x_calib must be a non-empty batch (M, H, W, C), got {x_calib.shape}")
    std = None if input_std is None else jnp.asarray(input_std, jnp.float32).reshape(-1)
    if weights is not None:
        weights = jnp.asarray(weights)
        if weights.shape != x_calib.shape[:1]:
            raise ValueError(
                f"njs weights must have shape ({x_calib.shape[0]},), got {weights.shape}"
            )
    mean_sv = _mean_singular_value(*split_logits_fn(logits_fn), x_calib, std, weights)
    if _is_concrete(mean_sv):
        m = float(mean_sv)
        if not (np.isfinite(m) and m > 0):
            raise ValueError(f"mean Jacobian singular value on x_calib is {m}; NJS needs > 0")
    return NJS(1.0 / mean_sv, rho, float(np.log(rho)), float(np.log1p(-rho)))


# -------------------------------------------------------------------------------- HNS


def _pullback_from_rows(rows: jax.Array, classes: jax.Array):
    """``c -> (J^T c,)`` per example from the Jacobian rows of ``classes`` (all ``d``)."""

    def pull(c):
        w = jnp.take_along_axis(c, classes, axis=1).astype(rows.dtype)  # (B, d) in row order
        flat = rows.reshape(rows.shape[0], rows.shape[1], -1)
        g = jnp.einsum("bk,bkn->bn", w, flat, precision=jax.lax.Precision.HIGHEST)
        return (g.reshape(rows.shape[:1] + rows.shape[2:]),)

    return pull


@dataclasses.dataclass(frozen=True)
class HNS:
    """Hessian norm scaling (Algorithm 2); build with ``hns(...)``."""

    grid_size: int = 100
    exact: bool = False
    top_k: int | None = None
    memory_budget: int | None = None

    def validate(self, d: int, batch: int) -> None:
        return None

    def grid(self, logits: jax.Array) -> jax.Array:
        """The per-example ``beta`` grid ``(B, grid_size)`` (``inf``/``nan`` rows if gap 0)."""
        d = logits.shape[-1]
        dt = logits.dtype
        gap = signal.logit_gap(logits)
        lo = signal.prop1_beta(gap, 1.0 - 1.0 / d - 0.01, d)
        hi = signal.prop1_beta(gap, 1e-72, d)
        t = jnp.linspace(0.0, 1.0, self.grid_size, dtype=dt)
        return lo[:, None] + (hi - lo)[:, None] * t[None, :]

    def select(self, log_norms: jax.Array, grid: jax.Array, logits, y) -> BetaInfo:
        """Grid rule: Hessian-norm argmax; ``beta = 1`` at an end point or if misclassified."""
        k = self.grid_size
        ln = jnp.where(jnp.isnan(log_norms), -jnp.inf, log_norms)
        idx = jnp.argmax(ln, axis=-1).astype(jnp.int32)
        chosen = jnp.take_along_axis(grid, idx[:, None], axis=1)[:, 0]
        misclassified = jnp.argmax(logits, axis=-1).astype(y.dtype) != y
        valid = jnp.all(jnp.isfinite(grid), axis=-1) & (grid[:, 0] > 0)
        default = misclassified | (idx == 0) | (idx == k - 1)
        beta = jnp.where(default, jnp.ones_like(chosen), chosen)
        info = _guard(jnp.where(valid, beta, jnp.full_like(beta, jnp.nan)), logits, default)
        return info

    def num_rows(self, d: int) -> int:
        """Jacobian rows per example: ``d``, or ``top_k`` when that is smaller."""
        return d if self.top_k is None else int(min(self.top_k, d))

    def _rows(self, logits_fn, x, logits, pull):
        """``(classes (B, k), rows or None, G' (B, k, k))``: the ``k`` largest-logit classes
        (top first), their Jacobian rows and the Gram matrix of the rows minus the top row.

        The rows come from the linearisation ``pull`` (no new forward pass) when the
        ``B k N`` rows fit the memory budget, ``c`` classes at a time
        (:func:`qadv.signal.class_chunk`: one at a time from batch 128 on, within the
        budget); otherwise from chunks of examples, each with its own forward pass (and
        ``rows`` is ``None``: they were never held at once).
        """
        b, d = logits.shape
        k = self.num_rows(d)
        classes = signal.top_classes(logits, k)
        budget = signal.resolve_memory_budget(self.memory_budget)
        n = int(np.prod(x.shape[1:]))
        item = jnp.dtype(x.dtype).itemsize
        if b * k * n * item <= budget:
            per_pair = signal.activation_bytes(logits_fn, x.shape[1:], x.dtype) + n * item
            chunk = signal.class_chunk(b, k, budget // (b * per_pair))
            rows = signal.jacobian_rows(pull, logits, classes, class_chunk=chunk)
            flat = rows.reshape(b, k, -1)
            return classes, rows, signal.gram(flat - flat[:, :1])
        gc = signal.centred_jacobian_gram(logits_fn, x, classes, memory_budget=budget)
        return classes, None, gc

    def init(self, logits_fn, x, y) -> BetaInfo:
        logits, pull = jax.vjp(logits_fn, x)
        return self.init_linearised(logits_fn, x, y, logits, pull)[0]

    def init_linearised(self, logits_fn, x, y, logits, pull):
        """:meth:`init` given ``logits, pull = jax.vjp(logits_fn, x)``, shared with the
        attack's first step; returns ``(state, pull)``.

        When all ``d`` Jacobian rows were taken from ``pull``, the returned pullback is
        ``c -> J^T c`` from those rows: the first step's gradient then costs no reverse
        pass of its own (equal to ``pull`` up to float rounding).
        """
        grid = self.grid(logits)
        valid = jnp.all(jnp.isfinite(grid), axis=-1) & (grid[:, 0] > 0)
        safe_grid = jnp.where(valid[:, None], grid, jnp.ones_like(grid))
        safe_logits = jnp.where(jnp.isfinite(logits), logits, jnp.zeros_like(logits))
        if self.exact:
            jac = signal.jacobian(logits_fn, x, memory_budget=self.memory_budget)
            curv = signal.curvature_terms(logits_fn, x, jac)
            log_norms = signal.log_hessian_norm_from_gram(
                signal.gram(jac), safe_logits, safe_grid, curv, y
            )
            return self.select(log_norms, grid, logits, y), pull
        classes, rows, gc = self._rows(logits_fn, x, safe_logits, pull)
        log_norms = signal.log_hessian_norm_topk(gc, safe_logits, classes, safe_grid)
        if rows is not None and rows.shape[1] == logits.shape[1]:
            pull = _pullback_from_rows(rows, classes)
        return self.select(log_norms, grid, logits, y), pull

    def beta(self, state: BetaInfo, logits, y) -> BetaInfo:
        return state


jax.tree_util.register_dataclass(
    HNS, data_fields=[], meta_fields=["grid_size", "exact", "top_k", "memory_budget"]
)


def hns(
    *,
    grid_size: int = 100,
    exact: bool = False,
    top_k: int | None = None,
    memory_budget: int | None = None,
) -> HNS:
    """Hessian norm scaling with a ``grid_size``-point per-example grid search.

    Args:
        grid_size: number of ``beta`` values on each example's grid (>= 3).
        exact: add the curvature term (smooth networks; costly).
        top_k: use the Jacobian rows of the ``top_k`` largest-logit classes only (the
            others move with the top class): ``top_k`` reverse passes instead of ``d``,
            for ``d = 100`` or ``1000`` classes. ``None``: all classes (the paper).
        memory_budget: bytes for the Jacobian's working set (default
            ``$QADV_JACOBIAN_MEMORY_MB`` or 1 GiB); the chunks follow from it.

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([[2.0, -1.0, 0.5], [0.3, 1.0, -2.0]])
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
        >>> x, y = jnp.array([[0.9, 0.1]]).reshape(1, 2, 1, 1), jnp.array([0])
        >>> info = hns(grid_size=50).init(f, x, y)
        >>> bool(info.beta[0] > 0), bool(info.fallback[0])
        (True, False)
    """
    if isinstance(grid_size, bool) or int(grid_size) != grid_size or grid_size < 3:
        raise ValueError(f"hns grid_size must be an integer >= 3, got {grid_size}")
    if not isinstance(exact, bool):
        raise ValueError(f"hns exact must be a bool, got {exact!r}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 2):
        raise ValueError(f"hns top_k must be None (all classes) or an integer >= 2, got {top_k}")
    if top_k is not None and exact:
        raise ValueError("hns top_k applies to the Gauss-Newton norm only; use exact=False")
    if memory_budget is not None:
        signal.resolve_memory_budget(memory_budget)
    return HNS(
        int(grid_size),
        exact,
        None if top_k is None else int(top_k),
        None if memory_budget is None else int(memory_budget),
    )


# ------------------------------------------------------------------ Proposition 1


@dataclasses.dataclass(frozen=True)
class Prop1:
    """Proposition-1 temperature chosen once per example (paper Table 14); ``prop1(rho)``."""

    rho: float

    def validate(self, d: int, batch: int) -> None:
        if not self.rho < (d - 1) / d:
            raise ValueError(
                f"prop1 rho must be < (d-1)/d = {(d - 1) / d:.4g} for d={d}, got {self.rho}"
            )

    def init(self, logits_fn, x, y) -> BetaInfo:
        logits = logits_fn(x)
        d = logits.shape[-1]
        gamma = jnp.max(logits, axis=-1) - jnp.min(logits, axis=-1)
        beta = signal.prop1_beta(jnp.where(gamma > 0, gamma, jnp.nan), self.rho, d)
        misclassified = jnp.argmax(logits, axis=-1).astype(y.dtype) != y
        beta = jnp.where(misclassified, jnp.ones_like(beta), beta)
        return _guard(beta, logits, misclassified)

    def beta(self, state: BetaInfo, logits, y) -> BetaInfo:
        return state


jax.tree_util.register_dataclass(Prop1, data_fields=[], meta_fields=["rho"])


def prop1(rho: float) -> Prop1:
    """Per-example ``beta`` from Proposition 1 with threshold ``rho`` (paper Table 14).

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ jnp.array([[2.0, 0.0, -2.0]])
        >>> info = prop1(0.01).init(f, jnp.ones((1, 1, 1, 1)), jnp.array([0]))
        >>> round(float(info.beta[0]), 4)  # (log 99 + log 2) / 4
        1.3221
    """
    rho = float(rho)
    if not 0.0 < rho < 1.0:
        raise ValueError(f"bad rho {rho!r}; it must lie in (0, 1)")
    return Prop1(rho)


# ------------------------------------------------------------- configs (the registry)
# A temperature *config* is the hashable description a gradient attack config holds;
# ``build`` turns it into the strategy above (NJS calibrates here, once per model).


@registry.register_temperature
@dataclasses.dataclass(frozen=True)
class NoTemperature(registry.TemperatureConfig):
    """β = 1: the plain attack."""

    kind: ClassVar[str] = "none"

    @property
    def suffix(self) -> str:
        return ""

    def build(self, logits_fn, context) -> None:
        return None


@registry.register_temperature
@dataclasses.dataclass(frozen=True)
class FixedTemperature(registry.TemperatureConfig):
    """A constant β > 0 (the paper's fixed-β rows)."""

    kind: ClassVar[str] = "fixed"
    beta: float = 1.0

    def validate(self) -> None:
        if isinstance(self.beta, bool) or not (np.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"bad beta {self.beta!r}; a fixed temperature must be > 0")

    @property
    def suffix(self) -> str:
        return f" (β={self.beta:g})"

    def build(self, logits_fn, context) -> Fixed:
        return fixed(self.beta)


NJS_SPACES = ("pixel", "normalized")


@registry.register_temperature
@dataclasses.dataclass(frozen=True)
class NJSTemperature(registry.TemperatureConfig):
    """NJS: ``beta1`` from the first ``calib_size`` calibration images, threshold ``rho``;
    ``njs_space`` is the Jacobian's input space (``pixel`` or ``normalized``)."""

    kind: ClassVar[str] = "njs"
    rho: float = 0.01
    calib_size: int = 101
    njs_space: str = "pixel"

    def validate(self) -> None:
        if not (isinstance(self.rho, int | float) and 0.0 < self.rho < 1.0):
            raise ValueError(f"bad rho {self.rho!r}; it must lie in (0, 1)")
        if (
            isinstance(self.calib_size, bool)
            or int(self.calib_size) != self.calib_size
            or (self.calib_size < 1)
        ):
            raise ValueError(f"bad calibration size {self.calib_size!r}; it must be >= 1")
        if self.njs_space not in NJS_SPACES:
            raise ValueError(
                f"unknown NJS Jacobian space {self.njs_space!r}; choose one of: "
                + ", ".join(NJS_SPACES)
            )

    def build(self, logits_fn, context) -> NJS:
        calib = None if context is None else context.calib_images
        if calib is None or len(calib) == 0:
            raise ValueError("NJS needs calibration images (the first test images, in order)")
        std = None
        if self.njs_space == "normalized":
            if context.input_std is None:
                raise ValueError("NJS in normalized space needs the model's input std")
            std = tuple(float(s) for s in context.input_std)
        mask = context.calib_mask
        return njs(
            logits_fn,
            jnp.asarray(calib[: self.calib_size]),
            rho=self.rho,
            input_std=std,
            weights=None if mask is None else jnp.asarray(mask[: self.calib_size]),
        )


@registry.register_temperature
@dataclasses.dataclass(frozen=True)
class HNSTemperature(registry.TemperatureConfig):
    """HNS: per-example Hessian-norm grid search over ``grid_size`` β values."""

    kind: ClassVar[str] = "hns"
    grid_size: int = 100
    hns_exact: bool = False
    hns_top_k: int = 0

    def _strategy(self) -> HNS:
        top_k = None if self.hns_top_k == 0 else self.hns_top_k
        return hns(grid_size=self.grid_size, exact=self.hns_exact, top_k=top_k)

    def validate(self) -> None:
        self._strategy()

    @property
    def suffix(self) -> str:
        return "++ (HNS)" if self.hns_top_k == 0 else f"++ (HNS, top-{self.hns_top_k})"

    def build(self, logits_fn, context) -> HNS:
        return self._strategy()


@registry.register_temperature
@dataclasses.dataclass(frozen=True)
class Prop1Temperature(registry.TemperatureConfig):
    """Proposition 1 per example with threshold ``rho`` (paper Table 14)."""

    kind: ClassVar[str] = "prop1"
    rho: float = 0.01

    def validate(self) -> None:
        if isinstance(self.rho, bool) or not (
            isinstance(self.rho, int | float) and 0.0 < self.rho < 1.0
        ):
            raise ValueError(f"bad rho {self.rho!r}; it must lie in (0, 1)")

    @property
    def suffix(self) -> str:
        return f"++ (Prop. 1, ρ={self.rho:g})"

    def build(self, logits_fn, context) -> Prop1:
        return prop1(self.rho)
