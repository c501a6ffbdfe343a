"""Signal quantities against the temperature β (Gupta & Ajanthan, Figures 4 and 5).

For each β of a log-spaced grid and each of the first correctly classified images:

- ``psi_norm``: ``‖ψ(β)‖₂ = ‖softmax(β a) − onehot(y)‖₂``, the error signal;
- ``softmax_jsv_mean``: the mean singular value of the softmax Jacobian
  ``∂p(β)/∂x = β S(β) J`` (``S = diag(p) − p pᵀ``, ``J = ∂a/∂x``), from the
  eigenvalues of ``β² S G S`` with ``G = J Jᵀ``, centred on the top class as
  :func:`qadv.signal.hessian_norm` does (accurate where ``p`` is nearly one-hot);
- ``hessian_norm``: ``‖∂²ℓ(β)/∂x²‖_F`` (:func:`qadv.signal.hessian_norm`, Gauss-Newton:
  exact almost everywhere for ReLU, max-pool and straight-through networks);
- ``grad_norm`` and ``sign_grad_norm``: ``‖∂ℓ(β)/∂x‖₂`` and ``‖sign ∂ℓ(β)/∂x‖₂`` of
  the input gradient as float32 autodiff computes it (Figure 5: both vanish when ``p``
  saturates to one-hot, for large β, and the gradient norm as β → 0).

The error signal and the gradients are computed as float autodiff computes them, as the
attacks see them: a softmax that rounds to one-hot gives exactly zero, which is the point
of Figure 5. The JSV and the Hessian norm are the accurate values of the same quantities.

Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> w = jnp.array([[30.0, -30.0], [-30.0, 30.0]])
    >>> f = lambda x: x.reshape(x.shape[0], -1) @ w
    >>> x = np.array([[[[1.0]], [[0.0]]]], np.float32).reshape(1, 2, 1, 1)
    >>> s = beta_sweep(f, x, np.array([0]), betas=[0.01, 1.0, 100.0])
    >>> [round(v, 3) for v in s["median"]["psi_norm"]]
    [0.501, 0.0, 0.0]
    >>> [round(v, 3) for v in s["median"]["sign_grad_norm"]]  # p rounds to one-hot at 100
    [1.414, 1.414, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import records, signal
from qadv.evaluate.core import clean_predictions
from qadv.evaluate.inputs import as_images

__all__ = ["DEFAULT_BETAS", "QUANTITIES", "beta_sweep", "format_beta_sweep", "plot_beta_sweep"]

#: The quantities of :func:`beta_sweep`, with the label their plots and tables use.
QUANTITIES: dict[str, str] = {
    "psi_norm": "‖ψ(β)‖₂",
    "softmax_jsv_mean": "mean JSV of ∂p(β)/∂x",
    "hessian_norm": "‖∂²ℓ(β)/∂x²‖_F",
    "grad_norm": "‖∂ℓ(β)/∂x‖₂",
    "sign_grad_norm": "‖sign ∂ℓ(β)/∂x‖₂",
}

#: 31 temperatures, 10⁻⁴ … 10², five per decade.
DEFAULT_BETAS: tuple[float, ...] = tuple(float(b) for b in np.logspace(-4, 2, 31))


def _softmax_jsv_mean(gc: jax.Array, logits: jax.Array, beta: jax.Array):
    """Mean singular value of ``β S J`` from the centred Gram matrix ``gc`` (top class
    ``t``), as ``(log scale, mean relative to it)`` ``(B,)`` each: their product is the mean.

    ``S = diag(p) V`` with ``V = I - 1 pᵀ`` and ``V J = J' - 1 pᵀJ'`` (``J'`` the rows
    minus row ``t``), so ``β S J = β s diag(w) R`` with ``s`` the second largest
    probability, ``w_j = p_j / s`` (``w_t = p_t``), ``R_j = J'_j - s q̃ᵀJ'`` and
    ``R_t = -q̃ᵀJ'`` (``q̃ = p / s`` with entry ``t`` zero). Every entry of ``R Rᵀ``
    comes from ``G'`` and ``q̃`` without products of small probabilities, which underflow
    float32 long before the singular values do (``p_j ≈ 1e-20`` at β = 20 already).
    """
    log_p = jax.nn.log_softmax(beta * logits, axis=-1)
    top = logits.argmax(-1)
    on_t = jnp.arange(logits.shape[-1])[None, :] == top[:, None]
    log_s = jax.lax.top_k(log_p, 2)[0][:, 1]
    q = jnp.where(on_t, 0.0, jnp.exp(jnp.minimum(log_p - log_s[:, None], 0.0)))
    w = jnp.where(on_t, jnp.exp(log_p), q)
    s = jnp.exp(log_s)[:, None]
    a = jnp.einsum("bij,bj->bi", gc, q)  # G' q̃
    sig = jnp.einsum("bi,bi->b", q, a)[:, None]  # q̃ᵀ G' q̃
    rr = gc - s[:, :, None] * (a[:, :, None] + a[:, None, :]) + (s * s * sig)[:, :, None]
    row_t = -a + s * sig  # R_t R_jᵀ
    rr = jnp.where(on_t[:, :, None], row_t[:, None, :], rr)
    rr = jnp.where(on_t[:, None, :], row_t[:, :, None], rr)
    rr = jnp.where(on_t[:, :, None] & on_t[:, None, :], sig[:, :, None], rr)
    m = w[:, :, None] * w[:, None, :] * rr
    eig = jnp.linalg.eigvalsh(0.5 * (m + jnp.swapaxes(m, 1, 2)))
    return jnp.log(beta) + log_s, jnp.sqrt(jnp.clip(eig, 0.0)).mean(-1)


def beta_sweep(
    logits_fn,
    images,
    labels,
    *,
    betas: Sequence[float] | None = None,
    max_examples: int = 20,
    batch_size: int = 100,
) -> dict[str, Any]:
    """The quantities of :data:`QUANTITIES` over ``betas`` on the first ``max_examples``
    correctly classified images.

    Returns:
        ``betas``; ``examples`` (their indices into ``images``); ``per_example[q]`` a
        ``(n, K)`` list per quantity; ``median[q]``, ``q25[q]`` and ``q75[q]`` of length
        ``K``. With no correctly classified image every list is empty.
    """
    grid = np.asarray(DEFAULT_BETAS if betas is None else betas, np.float64)
    if grid.ndim != 1 or not len(grid) or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ValueError(f"invalid betas {betas!r}; choose a sequence of finite numbers > 0")
    if max_examples < 1:
        raise ValueError(f"invalid max_examples {max_examples!r}; choose an integer >= 1")
    images = as_images(images)
    labels = np.asarray(labels)
    pred = clean_predictions(logits_fn, images, batch_size=min(batch_size, len(images)))
    idx = np.flatnonzero(pred == labels)[:max_examples]
    x, y = jnp.asarray(images[idx]), jnp.asarray(labels[idx], jnp.int32)
    per: dict[str, np.ndarray] = {q: np.zeros((len(idx), len(grid))) for q in QUANTITIES}
    if len(idx):
        logits = logits_fn(x)
        g = signal.centred_gram(signal.gram(signal.jacobian(logits_fn, x)), logits.argmax(-1))
        dtype = logits.dtype
        per["hessian_norm"] = np.asarray(
            signal.hessian_norm(logits_fn, x, y, jnp.asarray(grid, dtype)), np.float64
        )

        @jax.jit
        def at(beta):
            return (
                signal.error_signal_norm(logits, y, beta),
                _softmax_jsv_mean(g, logits, beta),
                signal.input_gradient_norm(logits_fn, x, y, beta),
                signal.sign_gradient_norm(logits_fn, x, y, beta),
            )

        for k, b in enumerate(grid):
            vals = at(jnp.asarray(b, dtype))
            names = ("psi_norm", "softmax_jsv_mean", "grad_norm", "sign_grad_norm")
            for q, v in zip(names, vals, strict=True):
                if q == "softmax_jsv_mean":  # (log scale, relative mean): exp in float64
                    v = np.exp(np.asarray(v[0], np.float64)) * np.asarray(v[1], np.float64)
                per[q][:, k] = np.asarray(v, np.float64)
    out: dict[str, Any] = {"betas": grid.tolist(), "examples": idx.tolist(), "per_example": {}}
    for name, fn in (("median", np.median), ("q25", None), ("q75", None)):
        out[name] = {}
        for q, a in per.items():
            if not len(idx):
                out[name][q] = []
            elif fn is not None:
                out[name][q] = fn(a, axis=0).tolist()
            else:
                out[name][q] = np.quantile(a, 0.25 if name == "q25" else 0.75, axis=0).tolist()
    out["per_example"] = {q: a.tolist() for q, a in per.items()}
    return out


def plot_beta_sweep(out_dir: str | Path, sweep: Mapping[str, Any]) -> list[str]:
    """``beta_sweep_signal.png`` (ψ, softmax JSV, Hessian norm: Figure 4) and
    ``beta_sweep_gradients.png`` (gradient and sign-gradient norms: Figure 5), medians
    over the images; returns the file names written (none without images)."""
    if not sweep.get("examples"):
        return []
    betas = sweep["betas"]
    n = len(sweep["examples"])
    files = []
    for name, keys, title in (
        ("beta_sweep_signal.png", ("psi_norm", "softmax_jsv_mean", "hessian_norm"), "Fig. 4"),
        ("beta_sweep_gradients.png", ("grad_norm", "sign_grad_norm"), "Fig. 5"),
    ):
        curves = {}
        for q in keys:  # a log axis cannot show exact zeros: those points are left out
            ys = np.asarray(sweep["median"][q], np.float64)
            keep = ys > 0
            if keep.sum() >= 2:
                curves[QUANTITIES[q]] = (np.asarray(betas)[keep], ys[keep])
        if not curves:
            continue
        records.plot_curves(
            Path(out_dir) / name,
            curves,
            xlabel="β",
            ylabel=f"median over {n} images",
            title=f"{title}: against the temperature β (zeros not drawn)",
            logx=True,
            logy=True,
        )
        files.append(name)
    return files


def format_beta_sweep(sweep: Mapping[str, Any], rows: int = 13) -> str:
    """A markdown table of the medians at about ``rows`` of the temperatures."""
    if not sweep.get("examples"):
        return "No correctly classified image: no β sweep.\n"
    betas = sweep["betas"]
    pick = sorted(set(np.linspace(0, len(betas) - 1, min(rows, len(betas))).round().astype(int)))
    header = ["β", *QUANTITIES.values()]
    body = [
        [f"{v:.3g}" for v in (betas[k], *(sweep["median"][q][k] for q in QUANTITIES))] for k in pick
    ]
    return records.format_table(header, body)
