"""Run foolbox 3 attacks on qadv models: a qadv model as a ``foolbox.JAXModel``.

qadv models map images ``(B, H, W, C)`` in ``[0, 1]`` to logits ``(B, d)``; foolbox's
``JAXModel`` expects exactly such a function (channels last), so any qadv checkpoint can
be attacked with foolbox's attacks (``LinfPGD``, ``L2CarliniWagnerAttack``,
``L2BrendelBethgeAttack``, ...), e.g. to cross-check qadv's own attacks against an
independent implementation.

foolbox is an optional dependency (``pip install 'qadv[foolbox]'``); it is imported only
when one of these functions is called. Notes on foolbox 3.3 with current JAX:

- foolbox (through eagerpy) works with JAX 0.10 as it is; the wrapped model is jitted,
  since eagerpy otherwise runs it op by op.
- foolbox's own numerics assume JAX's default promotion rules: under
  ``jax.numpy_dtype_promotion("strict")`` some attacks fail (Brendel-Bethge adds a bool
  to a float), under ``jax_numpy_rank_promotion="raise"`` some may. :func:`run_foolbox_attack`
  therefore runs the attack under ``standard`` dtype and ``allow`` rank promotion.
- ``L2BrendelBethgeAttack`` also needs ``numba`` (not a foolbox dependency), and
  compiles its optimizer on first use (tens of seconds).
- foolbox draws its random starts from eagerpy's one global JAX key;
  :func:`run_foolbox_attack`'s ``seed`` resets it, for reproducible runs.

Example:
    >>> import pytest; fb = pytest.importorskip("foolbox")  # pip install 'qadv[foolbox]'
    >>> import jax.numpy as jnp
    >>> f = lambda x: jnp.concatenate([x.reshape(x.shape[0], -1), -x.reshape(x.shape[0], -1)], 1)
    >>> x, y = jnp.full((2, 1, 1, 1), 0.45), jnp.array([1, 1])
    >>> res = run_foolbox_attack(f, fb.attacks.LinfPGD(steps=3), x, y, eps=0.1, seed=0)
    >>> res.success.tolist(), res.x_adv.shape
    ([True, True], (2, 1, 1, 1))
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FOOLBOX_MISSING", "FoolboxResult", "run_foolbox_attack", "to_foolbox"]

FOOLBOX_MISSING = "qadv.interop.foolbox needs foolbox: pip install 'qadv[foolbox]'"

LogitsFn = Callable[[jax.Array], jax.Array]


class FoolboxResult(NamedTuple):
    """What a foolbox attack found, as numpy arrays (unpacks as ``x_adv, success``).

    Attributes:
        x_adv: ``(B, H, W, C)`` float32 adversarial images, clipped to the ``eps``-ball
            (foolbox's ``clipped`` output) and to the model's bounds.
        success: ``(B,)`` bool, ``x_adv`` is misclassified (for a clean-misclassified
            example, foolbox returns it unchanged and counts it as a success).
    """

    x_adv: np.ndarray
    success: np.ndarray


def _import_foolbox():
    try:
        import foolbox
    except ImportError as e:
        raise ImportError(FOOLBOX_MISSING) from e
    return foolbox


@jax.jit
def _apply(fn, x):
    return fn(x)


def _jitted(fn: LogitsFn) -> LogitsFn:
    """``jax.jit(fn)``; a ``Partial``'s bound arrays stay arguments of the compiled call."""
    if isinstance(fn, jax.tree_util.Partial):
        return functools.partial(_apply, fn)
    return jax.jit(fn)


def _logits_fn(model: Any) -> LogitsFn:
    """The logits function of a qadv model: a callable or a ``LoadedModel``."""
    if callable(model):
        return model
    fn = getattr(model, "logits_fn", None)
    if callable(fn):
        return fn
    raise ValueError(
        "model must be a logits function (B, H, W, C) -> (B, d) or a qadv LoadedModel "
        f"(with .logits_fn), got {type(model).__name__}"
    )


def _check_bounds(bounds) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with low < high, got {bounds!r}")
    return lo, hi


def to_foolbox(model: Any, *, bounds: tuple[float, float] = (0, 1), jit: bool = True):
    """Wrap a qadv model as a ``foolbox.JAXModel`` (channels last).

    Args:
        model: a logits function, images ``(B, H, W, C)`` in ``[0, 1]`` -> logits
            ``(B, d)``, or a :class:`qadv.checkpoint.LoadedModel` (its ``.logits_fn``).
        bounds: the pixel range foolbox works in (its ``epsilons`` are in these units);
            ``(0, 255)`` rescales inputs to ``[0, 1]`` before the model.
        jit: jit the model (a ``jax.tree_util.Partial``, as ``LoadedModel.logits_fn``
            gives, passes its weights as arguments, not compiled-in constants).

    Returns:
        A ``foolbox.JAXModel`` with ``bounds``.

    Raises:
        ImportError: foolbox is not installed (the message names what to install).
        ValueError: ``model`` is not a model or ``bounds`` is not a range.

    Example:
        >>> import pytest; fb = pytest.importorskip("foolbox")
        >>> import jax.numpy as jnp
        >>> f = lambda x: x.reshape(x.shape[0], -1) @ jnp.eye(4, 3)
        >>> fmodel = to_foolbox(f, bounds=(0, 255))
        >>> fmodel.bounds, fmodel(jnp.full((1, 2, 2, 1), 255.0)).tolist()
        (Bounds(lower=0.0, upper=255.0), [[1.0, 1.0, 1.0]])
    """
    fn = _logits_fn(model)
    lo, hi = _check_bounds(bounds)
    fb = _import_foolbox()
    if jit:
        fn = _jitted(fn)
    if (lo, hi) != (0.0, 1.0):
        fn = functools.partial(_rescaled, fn, lo, hi)
    return fb.JAXModel(fn, bounds=(lo, hi), data_format="channels_last")


def _rescaled(fn: LogitsFn, lo: float, hi: float, x: jax.Array) -> jax.Array:
    return fn((x - lo) / (hi - lo))


@contextlib.contextmanager
def _foolbox_numerics():
    """JAX's default promotion rules, which foolbox's numerics are written for."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def run_foolbox_attack(
    model: Any,
    attack: Any,
    x,
    y,
    eps: float | None,
    *,
    bounds: tuple[float, float] = (0, 1),
    seed: int | None = None,
) -> FoolboxResult:
    """Run one foolbox attack on a qadv model; numpy adversarials and success flags.

    Args:
        model: a logits function, a qadv ``LoadedModel`` or an already wrapped foolbox
            model (:func:`to_foolbox`).
        attack: a foolbox attack instance, e.g. ``foolbox.attacks.LinfPGD(steps=20)``.
        x: ``(B, H, W, C)`` images within ``bounds``.
        y: ``(B,)`` integer labels.
        eps: radius in ``bounds`` units (``None`` for a minimum-norm attack run without a
            bound; then ``success`` is misclassification at any distance).
        bounds: the pixel range of ``x`` (when ``model`` is not yet wrapped).
        seed: resets eagerpy's global JAX key (foolbox's random starts) first, so a run
            is reproducible; ``None`` continues its stream.

    Returns:
        :class:`FoolboxResult` ``(x_adv, success)``: robust accuracy at ``eps`` is
        ``mean(~success)`` (clean-misclassified examples count as successes).

    Raises:
        ImportError: foolbox is not installed.
        ValueError: bad shapes.
    """
    fb = _import_foolbox()
    fmodel = model if isinstance(model, fb.models.Model) else to_foolbox(model, bounds=bounds)
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"x must be a batch of images (B, H, W, C), got shape {x.shape}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be {x.shape[0]} integer labels, got {y.dtype} {y.shape}")
    if seed is not None:
        from eagerpy.tensor.jax import JAXTensor

        JAXTensor.key = jax.random.PRNGKey(seed)
    with _foolbox_numerics():
        xj, yj = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
        _, clipped, success = attack(fmodel, xj, yj, epsilons=eps)
        clipped = jax.block_until_ready(clipped)
    return FoolboxResult(np.asarray(clipped, np.float32), np.asarray(success, bool))
