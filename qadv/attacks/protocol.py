"""The one shape every attack fits: a config that builds a pure, jitted run with a
per-example result.

An attack is a small frozen dataclass, its **config** (hashable: it is a static argument
of the compiled run), registered by name in :mod:`qadv.attacks.registry`. It has

- ``validate()``: raises ``ValueError`` naming the bad value and what is allowed;
- ``label``: its column name in tables (e.g. ``"APGD-CE L∞"``);
- ``norm`` and ``eps``: the threat model it is scored in;
- ``prepare(logits_fn, context) -> data``: everything computed *once* per model and not
  per batch (NJS's calibrated ``beta1``, a surrogate's weights); a pytree of arrays,
  ``()`` if nothing;
- ``run(data, logits_fn, x, y, keys) -> AttackResult``: the attack itself, pure and
  jit-able, on a batch with one PRNG key per example.

:func:`execute` compiles ``run`` once per (config, model function, shapes) and reuses it;
:func:`attack` is the one-call convenience. Randomness is per example: example ``i`` of
an evaluated set gets ``fold_in(key, i)`` (:func:`example_keys`), so results do not depend
on the batch size, on which other examples share the batch, or on the device count.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from qadv.attacks import registry
    >>> f = lambda x: jnp.concatenate([x.reshape(x.shape[0], -1), -x.reshape(x.shape[0], -1)], 1)
    >>> cfg = registry.make("pgd", eps=0.1, steps=3)
    >>> res = attack(cfg, f, jnp.full((2, 1, 1, 1), 0.5), jnp.array([0, 1]), key=jax.random.key(0))
    >>> res.x_adv.shape, res.success.shape, res.queries.tolist()
    ((2, 1, 1, 1), (2,), [4, 4])
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qadv.attacks.keys import example_keys
from qadv.losses import at_least_float32, cw_margin, wide_dtype
from qadv.static_fn import split_logits_fn

__all__ = [
    "AttackContext",
    "AttackResult",
    "attack",
    "example_keys",
    "execute",
    "finish",
    "finish_min_norm",
    "prepare",
    "split_logits_fn",
]

LogitsFn = Callable[[jax.Array], jax.Array]


class AttackResult(NamedTuple):
    """Per-example outcome of an attack on a batch of ``B`` examples.

    Attributes:
        x_adv: ``(B, H, W, C)`` the attack's best point; always in the ``eps``-ball of its
            norm and in ``[0, 1]``.
        success: ``(B,)`` bool, ``argmax f(x_adv) != y``.
        margin: ``(B,)`` ``max_{i != y} f_i - f_y`` at ``x_adv`` (positive iff success,
            ties aside).
        distance: ``(B,)`` norm of the smallest adversarial perturbation found, ``+inf``
            where none was found. Bounded attacks report ``||x_adv - x||`` where they
            succeed; minimum-norm attacks (FAB, DeepFool) report what they found even
            beyond ``eps``, so robust accuracy can be read at every radius from one run.
        queries: ``(B,)`` int32 model evaluations spent (a forward or a
            forward-and-backward pass counts one).
        aux: dict of attack-specific ``(B,)`` arrays (e.g. ``beta``, ``fallback``).
        found: ``(B, H, W, C)`` or ``None``: for minimum-norm attacks, the smallest
            adversarial point found, also beyond ``eps`` (the clean image where none was
            found), so that an evaluation can verify the distances it reports.

    ``distance`` is the attack's own account. :func:`qadv.evaluate.evaluate_attack` never
    scores it: it re-runs the model on ``x_adv`` (and ``found``) and measures the norms on
    the float32 images itself.
    """

    x_adv: jax.Array
    success: jax.Array
    margin: jax.Array
    distance: jax.Array
    queries: jax.Array
    aux: dict
    found: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class AttackContext:
    """What ``prepare`` may need besides the model (all optional).

    Attributes:
        calib_images: NJS calibration images (the paper's release: the first 101 test
            images, in order).
        input_std: the model's per-channel normalisation std (NJS in normalised space).
        surrogate: a surrogate model's logits function (transfer attacks).
        calib_mask: ``None``, or ``(M,)`` float weights of ``calib_images`` (0 on padding
            rows of a padded batch: adversarial training calibrates on its own batch).
    """

    calib_images: Any = None
    input_std: tuple[float, ...] | None = None
    surrogate: LogitsFn | None = None
    calib_mask: Any = None


def finish(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    x_adv: jax.Array,
    *,
    norm,
    queries,
    aux: Mapping[str, jax.Array] | None = None,
    distance: jax.Array | None = None,
) -> AttackResult:
    """Score ``x_adv`` on the model and fill an :class:`AttackResult` (inside ``run``).

    ``distance`` defaults to ``||x_adv - x||`` where successful and ``+inf`` elsewhere.
    """
    logits = logits_fn(x_adv)
    success = jnp.argmax(logits, axis=-1).astype(y.dtype) != y
    margin = cw_margin(logits, y)
    if distance is None:
        dist = norm.distance(x_adv, x)
        distance = jnp.where(success, dist, jnp.full_like(dist, jnp.inf))
    q = jnp.broadcast_to(jnp.asarray(queries, jnp.int32), y.shape)
    return AttackResult(x_adv, success, margin, distance, q, dict(aux or {}))


def finish_min_norm(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    x_found: jax.Array,
    distance: jax.Array,
    *,
    norm,
    eps,
    queries,
    aux: Mapping[str, jax.Array] | None = None,
) -> AttackResult:
    """:func:`finish` for minimum-norm attacks (FAB, DeepFool).

    ``x_found`` is the smallest adversarial point found and ``distance`` its norm (``inf``
    if none); the returned ``x_adv`` is ``x_found`` where that lies within ``eps`` and the
    clean ``x`` elsewhere, while ``distance`` is reported as found, even beyond ``eps``.
    """
    inside = distance <= jnp.asarray(eps, x.dtype)
    x_adv = jnp.where(inside.reshape((-1,) + (1,) * (x.ndim - 1)), x_found, x)
    res = finish(logits_fn, x, y, x_adv, norm=norm, queries=queries, aux=aux, distance=distance)
    return res._replace(found=x_found)


def widened(x: jax.Array) -> jax.Array:
    """``x`` in float32 if it is a narrower float (float16, bfloat16), else ``x``: attacks
    that iterate on linearisations (FAB, DeepFool) do their arithmetic in float32 and
    hand their point back with :func:`narrowed`."""
    return at_least_float32(x)


def logits_in(logits_fn: LogitsFn, dtype) -> LogitsFn:
    """``logits_fn`` whose logits are cast to ``dtype``: the iteration carries of FAB and
    DeepFool keep one dtype whatever the model returns (float64 logits of float32
    images, say)."""
    return lambda z: logits_fn(z).astype(dtype)


def narrowed(logits_fn: LogitsFn, x, y, x_found, distance, *, norm) -> tuple[jax.Array, jax.Array]:
    """``(x_found, distance)`` for images ``x`` of a narrower dtype than ``x_found``: the
    point cast to ``x.dtype`` and its distance measured again (``inf`` where the cast
    point is no longer adversarial). Unchanged when the dtypes agree."""
    if x_found.dtype == x.dtype:
        return x_found, distance
    x_found = x_found.astype(x.dtype)
    adv = jnp.argmax(logits_fn(x_found), axis=-1).astype(y.dtype) != y
    dist = norm.distance(x_found.astype(jnp.float32), x.astype(jnp.float32))
    return x_found, jnp.where(adv & jnp.isfinite(distance), dist, jnp.inf)


TRACED_FIELDS: tuple[str, ...] = ("eps", "step_size")
"""Config fields passed to the compiled run as traced scalars, not compiled in: a sweep
over radii or step sizes reuses one compiled attack per shape."""


def _traced_scalars(config) -> dict[str, Any]:
    """``config``'s real-valued :data:`TRACED_FIELDS` (numbers, or scalar arrays and
    tracers, e.g. a radius differentiated through)."""
    out = {}
    for name in TRACED_FIELDS:
        v = getattr(config, name, None)
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float | np.number) or (
            isinstance(v, jax.Array | np.ndarray) and v.ndim == 0
        ):
            out[name] = v
    return out


def _replace_fields(config, values: Mapping[str, Any]):
    """A copy of the frozen ``config`` with ``values`` set as they are (no
    ``__post_init__``, no validation: the values may be tracers)."""
    config = copy.copy(config)
    for name, v in values.items():
        object.__setattr__(config, name, v)
    return config


@functools.partial(jax.jit, static_argnames=("config", "fn_static"))
def _execute(config, scalars, data, fn_static, fn_dyn, x, y, keys) -> AttackResult:
    logits_fn = fn_static if fn_static is not None else fn_dyn
    config = _replace_fields(config, scalars)
    res = config.run(data, logits_fn, x, y, keys)
    if jnp.finfo(x.dtype).bits < 32 and hasattr(config, "geometry") and hasattr(config, "eps"):
        res = _into_ball(config, logits_fn, x, y, res)
    return res


def _into_ball(config, logits_fn: LogitsFn, x, y, res: AttackResult) -> AttackResult:
    """``res`` with ``x_adv`` projected onto the ball once more, rounded towards ``x``
    (:meth:`Norm.project`), for images narrower than float32: steps taken in their dtype
    can round past the radius. Rows that move are scored again."""
    x_in = config.geometry.project(res.x_adv, x, config.eps)
    moved = jnp.any((x_in != res.x_adv).reshape(x.shape[0], -1), axis=1)
    logits = logits_fn(x_in)
    success = jnp.argmax(logits, axis=-1).astype(y.dtype) != y
    dist = config.geometry.distance(x_in.astype(jnp.float32), x.astype(jnp.float32))
    distance = jnp.where(success, dist.astype(res.distance.dtype), jnp.inf)
    return res._replace(
        x_adv=x_in,
        success=jnp.where(moved, success, res.success),
        margin=jnp.where(moved, cw_margin(logits, y).astype(res.margin.dtype), res.margin),
        distance=jnp.where(moved, distance, res.distance),
    )


def execute(config, data, logits_fn: LogitsFn, x, y, keys) -> AttackResult:
    """Run a prepared attack, compiled once per (config, model function, shapes).

    The radius and step size (:data:`TRACED_FIELDS`) are arguments of the compiled
    function, not constants in it: configs that differ only there share one compiled
    attack (a sweep over ε or η compiles once).

    Args:
        config: a validated attack config (see :mod:`qadv.attacks.registry`).
        data: ``config.prepare(...)``'s output (for PGD, its temperature strategy:
            ``qadv.attacks.pgd`` passes the runtime strategy it was given).
        logits_fn: images ``(B, H, W, C)`` in ``[0, 1]`` -> logits ``(B, d)``.
        x: ``(B, H, W, C)`` float images in ``[0, 1]``.
        y: ``(B,)`` integer labels.
        keys: ``(B,)`` per-example PRNG keys (:func:`example_keys`), or ``None`` for a
            run that draws nothing (PGD with ``random_init=False``).
    """
    fn_static, fn_dyn = split_logits_fn(logits_fn)
    scalars = _traced_scalars(config)
    static = _replace_fields(config, {name: 0.0 for name in scalars})
    # the radius and step in at least float32: a bfloat16 0.1 is 0.1001
    dtype = wide_dtype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    traced = {name: jnp.asarray(v, dtype) for name, v in scalars.items()}
    y = jnp.asarray(y).astype(jnp.int32)
    return _execute(static, traced, data, fn_static, fn_dyn, x, y, keys)


def prepare(config, logits_fn: LogitsFn, context: AttackContext | None = None):
    """Validate ``config`` and compute its once-per-model data."""
    config.validate()
    return config.prepare(logits_fn, context if context is not None else AttackContext())


def attack(
    config,
    logits_fn: LogitsFn,
    x,
    y,
    *,
    key,
    context: AttackContext | None = None,
) -> AttackResult:
    """Validate, prepare and run ``config`` on one batch (per-example keys from ``key``).

    ``key`` is one PRNG key (example ``i`` of the batch then uses ``fold_in(key, i)``) or
    a ``(B,)`` batch of keys. NJS calibrates on ``context.calib_images`` (default:
    ``x`` itself).
    """
    from qadv.attacks.validation import check_batch

    if not hasattr(config, "validate_classes"):
        raise ValueError(
            f"config must be an attack config (registry.make(name, ...)), got {config!r}"
        )
    x, y, d = check_batch(logits_fn, x, y)
    config.validate()
    config.validate_image_size(x[0].size)
    config.validate_classes(d)
    if context is None or context.calib_images is None:
        context = dataclasses.replace(context or AttackContext(), calib_images=x)
    data = prepare(config, logits_fn, context)
    return execute(config, data, logits_fn, x, y, example_keys(key, x.shape[0]))
