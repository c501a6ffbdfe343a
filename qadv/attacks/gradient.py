"""PGD / FGSM with optional temperature scaling (PGD++ / FGSM++), as one jitted function.

An attack is an ``(init, step)`` pair over a pytree state (``make_pgd``); ``run_attack``
drives ``step`` with ``lax.scan``, so one compiled step serves every iteration count.
``pgd`` and ``fgsm`` validate their inputs in Python (before any compilation), then call
one module-level ``jax.jit`` function: the random start, the temperature rule (NJS's
per-step ``beta2``, HNS's grid search), the loop and the restart selection all compile
together. ``logits_fn`` is a static argument: pass the *same* function object to reuse
the compiled attack (a ``jax.tree_util.Partial`` is passed as a pytree instead, so its
bound arrays, e.g. model variables, may change without recompiling).

Semantics (see also ``qadv.attacks.norms`` and ``qadv.attacks.temperature``):

- Every step: logits and the VJP at the current iterate ``x_t``; ``beta`` from the
  strategy's rule on those logits; ``g = d loss(beta * f(z), y)/dz`` at ``z = x_t`` with
  ``beta`` held fixed inside that derivative; ``x_{t+1} = project(x_t + eta *
  normalize(g))``. Non-finite gradient entries are replaced by 0 (no move).
- Random start: uniform in the L-inf box / the L2 ball, clipped to ``[0, 1]``; restart
  ``r`` uses ``jax.random.fold_in(key, r)``, so restart 0 of ``restarts=R`` is the run of
  ``restarts=1`` with the same key.
- Restarts: the per-example worst case is returned: a restart whose output is
  misclassified (``argmax f(x_adv) != y``) if any, else the one with the largest
  margin ``max_{i != y} f_i - f_y``; ties keep the earlier restart. (The margin never
  saturates, unlike the cross-entropy, so it ranks restarts even where ``p_y == 1``.)
- FGSM is PGD with one step of size ``eps`` (from a random start when given a key).

Differences from the authors' release: gradients are taken at the current iterate (its
L2 iterate drifts towards ``x + 2 delta``), the L2 ball is over the total norm (not per
channel), restarts are combined per example (not by keeping the last batch), NJS's
``rho`` is a parameter, and NJS's Jacobian is taken in pixel space unless ``input_std``
is given.

The output is differentiable (e.g. w.r.t. model parameters closed over by
``logits_fn``, or ``x``); ``sign`` makes L-inf steps piecewise constant, L2 steps are
smooth away from the projection's kinks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qadv.attacks.norms import NORMS, get_norm
from qadv.attacks.temperature import HNS, NJS, BetaInfo, Fixed, fixed
from qadv.losses import LOSS_NAMES, cw_margin, get_loss, temperature_scaled

__all__ = [
    "Attack",
    "AttackInfo",
    "PGDState",
    "fgsm",
    "make_pgd",
    "pgd",
    "run_attack",
]

LogitsFn = Callable[[jax.Array], jax.Array]
_STRATEGIES = (Fixed, NJS, HNS)


class PGDState(NamedTuple):
    """Attack state (a pytree). ``tstate`` is the temperature strategy's own state."""

    x: jax.Array
    y: jax.Array
    x_adv: jax.Array
    tstate: Any
    beta: BetaInfo  # rule outcome at the latest step
    fallback: jax.Array  # (B,) bool: fell back to beta = 1 at any step


class Attack(NamedTuple):
    """``init(key, x, y) -> PGDState`` and ``step(PGDState) -> PGDState``."""

    init: Callable[[Any, jax.Array, jax.Array], PGDState]
    step: Callable[[PGDState], PGDState]


class AttackInfo(NamedTuple):
    """Per-example diagnostics of an attack (all ``(B,)``).

    Attributes:
        beta: temperature used at the last step (constant over steps except for NJS).
        fallback: ``beta`` fell back to 1 at some step (tied/zero gap, non-finite logits,
            overflow); ``int(fallback.sum())`` is the fallback count.
        default_beta: the rule itself chose ``beta = 1`` (HNS: grid end point, or the
            example was misclassified at the random-start point).
        success: the returned image is misclassified.
        margin: ``max_{i != y} f_i - f_y`` at the returned image.
        restart: index of the restart the returned image comes from.
    """

    beta: jax.Array
    fallback: jax.Array
    default_beta: jax.Array
    success: jax.Array
    margin: jax.Array
    restart: jax.Array


def make_pgd(
    logits_fn: LogitsFn,
    *,
    eps,
    step_size,
    norm: str = "linf",
    temperature=None,
    loss: str = "ce",
    random_init: bool = True,
) -> Attack:
    """Build the ``(init, step)`` pair of (temperature-scaled) PGD. No validation, no jit.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = lambda x: jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], axis=1)
        >>> atk = make_pgd(f, eps=0.1, step_size=0.05, random_init=False)
        >>> s = run_attack(atk, atk.init(None, jnp.full((1, 1, 1, 1), 0.5), jnp.array([0])), 3)
        >>> round(float(s.x_adv[0, 0, 0, 0]), 4)
        0.4
    """
    geometry = get_norm(norm)
    base_loss = get_loss(loss)
    strategy = fixed(1.0) if temperature is None else temperature

    def init(key, x, y) -> PGDState:
        e = jnp.asarray(eps, x.dtype)
        x_adv = geometry.random_start(key, x, e) if random_init else x
        tstate = strategy.init(logits_fn, x_adv, y)
        b = x.shape[0]
        zeros = jnp.zeros((b,), jnp.bool_)
        info = BetaInfo(jnp.ones((b,), x.dtype), zeros, zeros)
        return PGDState(x, y, x_adv, tstate, info, zeros)

    def step(state: PGDState) -> PGDState:
        x, y, x_adv = state.x, state.y, state.x_adv
        logits, vjp_fn = jax.vjp(logits_fn, x_adv)
        binfo = strategy.beta(state.tstate, logits, y)
        scaled = temperature_scaled(base_loss, binfo.beta)
        g_logits = jax.grad(lambda z: jnp.sum(scaled(z, y)))(logits)
        g_logits = jnp.where(jnp.isfinite(g_logits), g_logits, jnp.zeros_like(g_logits))
        (g,) = vjp_fn(g_logits)
        g = jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g))
        eta = jnp.asarray(step_size, x.dtype)
        e = jnp.asarray(eps, x.dtype)
        x_new = geometry.project(x_adv + eta * geometry.normalize(g), x, e)
        beta = BetaInfo(binfo.beta.astype(x.dtype), binfo.fallback, binfo.default)
        return PGDState(x, y, x_new, state.tstate, beta, state.fallback | binfo.fallback)

    return Attack(init, step)


def run_attack(attack: Attack, state: PGDState, steps: int) -> PGDState:
    """Apply ``attack.step`` ``steps`` times with ``lax.scan``."""
    return jax.lax.scan(lambda s, _: (attack.step(s), None), state, None, length=steps)[0]


# ---------------------------------------------------------------------- compiled core


def _single_run(attack, logits_fn, key, x, y, steps, r):
    state = run_attack(attack, attack.init(key, x, y), steps)
    logits = logits_fn(state.x_adv)
    margin = cw_margin(logits, y)
    success = jnp.argmax(logits, axis=-1).astype(y.dtype) != y
    info = AttackInfo(
        state.beta.beta,
        state.fallback,
        state.beta.default,
        success,
        margin,
        jnp.full(y.shape, r, jnp.int32),
    )
    return state.x_adv, info


def _better(new: AttackInfo, best: AttackInfo) -> jax.Array:
    return (new.success & ~best.success) | (
        (new.success == best.success) & (new.margin > best.margin)
    )


def _select(mask, new, best):
    def pick(a, b):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
        return jnp.where(m, a, b)

    return jax.tree_util.tree_map(pick, new, best)


@functools.partial(
    jax.jit,
    static_argnames=("fn_static", "norm", "loss", "steps", "restarts", "random_init"),
)
def _pgd_compiled(
    fn_static,
    fn_dyn,
    x,
    y,
    key,
    eps,
    step_size,
    temperature,
    *,
    norm,
    loss,
    steps,
    restarts,
    random_init,
):
    logits_fn = fn_static if fn_static is not None else fn_dyn
    attack = make_pgd(
        logits_fn,
        eps=eps,
        step_size=step_size,
        norm=norm,
        temperature=temperature,
        loss=loss,
        random_init=random_init,
    )

    def key_for(r):
        return None if key is None else jax.random.fold_in(key, r)

    best = _single_run(attack, logits_fn, key_for(0), x, y, steps, 0)
    if restarts == 1:
        return best

    def body(carry, r):
        new = _single_run(attack, logits_fn, key_for(r), x, y, steps, r)
        return _select(_better(new[1], carry[1]), new, carry), None

    return jax.lax.scan(body, best, jnp.arange(1, restarts, dtype=jnp.int32))[0]


# -------------------------------------------------------------------------- validation


def _concrete(v) -> bool:
    return not isinstance(v, jax.core.Tracer)


def _check_scalar(name, v, *, allow_zero=True):
    if isinstance(v, bool):
        raise ValueError(f"{name} must be a number, got {v!r}")
    arr = jnp.asarray(v) if not isinstance(v, (int, float, np.number)) else np.asarray(v)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    if not jnp.issubdtype(arr.dtype, jnp.floating) and not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(f"{name} must be a real number, got dtype {arr.dtype}")
    if _concrete(arr):
        val = float(arr)
        if not np.isfinite(val) or val < 0 or (val == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{name} must be finite and {bound}, got {val}")


def _check_int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")


def _validate(
    logits_fn, x, y, *, eps, step_size, steps, norm, restarts, temperature, loss, key, random_init
):
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    if not isinstance(loss, str) or loss not in LOSS_NAMES:
        raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSS_NAMES)}")
    if temperature is not None and not isinstance(temperature, _STRATEGIES):
        raise ValueError(
            f"unknown temperature {temperature!r}; use None, qadv.attacks.fixed(beta), "
            "qadv.attacks.njs(...) or qadv.attacks.hns(...)"
        )
    _check_scalar("eps", eps)
    _check_scalar("step_size", step_size)
    _check_int("steps", steps, 1)
    _check_int("restarts", restarts, 1)
    if not isinstance(random_init, bool):
        raise ValueError(f"random_init must be a bool, got {random_init!r}")
    if random_init and key is None:
        raise ValueError("key is required when random_init=True (pass key=jax.random.key(...))")
    x = x if isinstance(x, jax.Array) else jnp.asarray(x)
    y = y if isinstance(y, jax.Array) else jnp.asarray(y)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of images (B, H, W, C), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point in [0, 1], got dtype {x.dtype}")
    if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be integer labels of shape (B,), got {y.dtype} {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"batch sizes differ: x has {x.shape[0]} images, y has {y.shape[0]}")
    out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"logits_fn must map (B, ...) images to (B, d) logits, got {got}")
    d = int(out.shape[1])
    if d < 2:
        raise ValueError(f"need at least 2 classes, logits_fn returns d={d}")
    if loss == "dlr" and d < 3:
        raise ValueError(f"dlr loss needs at least 3 classes, got d={d}")
    if temperature is not None:
        temperature.validate(d, x.shape[0])
    if _concrete(x):
        xa = np.asarray(x)
        if np.isnan(xa).any():
            raise ValueError("x contains NaN; images must lie in [0, 1]")
        if xa.size and (xa.min() < 0 or xa.max() > 1):
            raise ValueError(f"x must lie in [0, 1], got range [{xa.min():.4g}, {xa.max():.4g}]")
    if _concrete(y):
        ya = np.asarray(y)
        if ya.size and (ya.min() < 0 or ya.max() >= d):
            raise ValueError(f"labels must lie in [0, {d}), got range [{ya.min()}, {ya.max()}]")
    return x, y.astype(jnp.int32)


def pgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key,
    eps,
    step_size,
    steps: int,
    norm: str = "linf",
    random_init: bool = True,
    restarts: int = 1,
    temperature=None,
    loss: str = "ce",
    return_info: bool = False,
):
    """Projected gradient ascent (PGD; PGD++ with a temperature strategy).

    Args:
        logits_fn: maps images ``(B, H, W, C)`` in ``[0, 1]`` to logits ``(B, d)``; examples
            must be independent (eval mode). Static under jit: reuse the same object.
        x: ``(B, H, W, C)`` clean images in ``[0, 1]``.
        y: ``(B,)`` integer labels in ``[0, d)``.
        key: PRNG key for the random start (may be ``None`` if ``random_init=False``).
        eps: radius (L-inf: per pixel; L2: total norm over ``H*W*C``), in ``[0, 1]`` units.
        step_size: step length ``eta``.
        steps: number of iterations ``T >= 1``.
        norm: ``"linf"`` or ``"l2"``.
        random_init: start from a uniform random point in the ball.
        restarts: number of random restarts; the per-example worst case is returned.
        temperature: ``None`` (``beta = 1``), ``fixed(beta)``, ``njs(...)`` or ``hns(...)``.
        loss: ``"ce"``, ``"dlr"`` or ``"cw"``; temperature scales its logits.
        return_info: also return an ``AttackInfo``.

    Returns:
        ``x_adv`` of the shape of ``x`` (and ``AttackInfo`` if ``return_info``).

    Raises:
        ValueError: on bad arguments, before anything is compiled.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.attacks import hns
        >>> # saturated: logits +-300, the softmax is exactly one-hot, the gradient exactly 0
        >>> f = lambda x: 1e4 * jnp.concatenate([x[:, 0, 0] - 0.02, 0.02 - x[:, 0, 0]], 1)
        >>> x, y, k = jnp.full((1, 1, 1, 1), 0.05), jnp.array([0]), jax.random.key(0)
        >>> adv = pgd(f, x, y, key=k, eps=0.05, step_size=0.02, steps=5)
        >>> bool(jnp.argmax(f(adv), axis=1)[0] != y[0])  # plain PGD never moves
        False
        >>> adv, info = pgd(f, x, y, key=k, eps=0.05, step_size=0.02, steps=5,
        ...                 temperature=hns(), return_info=True)
        >>> bool(info.success[0]), bool(jnp.abs(adv - x).max() <= 0.05 + 1e-7)
        (True, True)
    """
    if not isinstance(return_info, bool):
        raise ValueError(f"return_info must be a bool, got {return_info!r}")
    x, y = _validate(
        logits_fn,
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=norm,
        restarts=restarts,
        temperature=temperature,
        loss=loss,
        key=key,
        random_init=random_init,
    )
    if isinstance(logits_fn, jax.tree_util.Partial):
        fn_static, fn_dyn = None, logits_fn
    else:
        fn_static, fn_dyn = logits_fn, None
    strategy = temperature if temperature is not None else Fixed(jnp.ones((), jnp.float32))
    x_adv, info = _pgd_compiled(
        fn_static,
        fn_dyn,
        x,
        y,
        key if random_init else None,
        jnp.asarray(eps, x.dtype),
        jnp.asarray(step_size, x.dtype),
        strategy,
        norm=norm,
        loss=loss,
        steps=int(steps),
        restarts=int(restarts),
        random_init=random_init,
    )
    return (x_adv, info) if return_info else x_adv


def fgsm(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    eps,
    norm: str = "linf",
    key=None,
    temperature=None,
    loss: str = "ce",
    return_info: bool = False,
):
    """FGSM (FGSM++ with a temperature): PGD with one step of size ``eps``.

    With a ``key`` it starts from a uniform random point in the ball (as the paper
    does); without one it starts at ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], axis=1)
        >>> float(fgsm(f, jnp.full((1, 1, 1, 1), 0.5), jnp.array([0]), eps=0.25)[0, 0, 0, 0])
        0.25
    """
    return pgd(
        logits_fn,
        x,
        y,
        key=key,
        eps=eps,
        step_size=eps,
        steps=1,
        norm=norm,
        random_init=key is not None,
        restarts=1,
        temperature=temperature,
        loss=loss,
        return_info=return_info,
    )
