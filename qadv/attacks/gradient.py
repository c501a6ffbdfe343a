"""PGD / FGSM with optional temperature scaling (PGD++ / FGSM++), as one jitted function.

An attack is an ``(init, step)`` pair over a pytree state (``make_pgd``); ``run_attack``
drives ``step`` with ``lax.scan``, so one compiled step serves every iteration count.
There is one PGD: the registered :class:`PGDConfig` (``registry.make("pgd", ...)``), run
by the protocol (:func:`qadv.attacks.protocol.execute`). ``pgd`` and ``fgsm`` are thin
functions over it: they build the config, validate it (the config's own checks, in
Python, before any compilation) and run it with the runtime temperature strategy they
were given as its prepared data. The random start, the temperature rule (NJS's per-step
``beta2``, HNS's grid search), the loop and the restart selection all compile together.
``logits_fn`` is static, keyed by the arrays it reads (:mod:`qadv.static_fn`: new
weights compile anew; a ``jax.tree_util.Partial``'s bound arrays are arguments instead);
``eps`` and ``step_size`` are traced, so a sweep over them compiles once.

Semantics (see also ``qadv.attacks.norms`` and ``qadv.attacks.temperature``):

- Every step: logits and the VJP at the current iterate ``x_t``; ``beta`` from the
  strategy's rule on those logits; ``g = d loss(beta * f(z), y)/dz`` at ``z = x_t`` with
  ``beta`` held fixed inside that derivative; ``x_{t+1} = project(x_t + eta *
  normalize(g))``. Non-finite gradient entries are replaced by 0 (no move).
- Random start: uniform in the L-inf box / the L2 ball, clipped to ``[0, 1]``. Example
  ``i`` has the key ``k_i = fold_in(key, i)`` (or row ``i`` of a ``(B,)`` batch of keys),
  and restart ``r`` draws its start from ``fold_in(k_i, r)`` (:func:`restart_keys`), so
  restart 0 of ``restarts=R`` is the run of ``restarts=1`` with the same key.
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

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from qadv.attacks import registry
from qadv.attacks.keys import restart_keys
from qadv.attacks.norms import find_norm, get_norm
from qadv.attacks.protocol import example_keys, execute, finish
from qadv.attacks.temperature import BetaInfo, NoTemperature, fixed
from qadv.attacks.unroll import CPU_UNROLL, CPU_UNROLL_CONV_STEPS, cpu_unroll
from qadv.attacks.validation import (
    check_batch,
    check_choice,
    check_int,
    check_scalar,
    is_concrete,
    is_count,
    is_radius,
)
from qadv.losses import LOSS_NAMES, at_least_float32, cw_margin, get_loss, temperature_scaled

__all__ = [
    "CPU_UNROLL",
    "CPU_UNROLL_CONV_STEPS",
    "Attack",
    "AttackInfo",
    "FGSMConfig",
    "PGDConfig",
    "PGDState",
    "cpu_unroll",
    "fgsm",
    "make_pgd",
    "pgd",
    "restart_keys",
    "run_attack",
    "scaled_loss_grad",
    "start_and_run",
]

LogitsFn = Callable[[jax.Array], jax.Array]


class PGDState(NamedTuple):
    """Attack state (a pytree). ``tstate`` is the temperature strategy's own state."""

    x: jax.Array
    y: jax.Array
    x_adv: jax.Array
    tstate: Any
    beta: BetaInfo  # rule outcome at the latest step
    fallback: jax.Array  # (B,) bool: fell back to beta = 1 at any step


class _InitStep(NamedTuple):
    init: Callable[[Any, jax.Array, jax.Array], PGDState]
    step: Callable[[PGDState], PGDState]


class Attack(_InitStep):
    """The pair ``(init, step)``: ``init(key, x, y) -> PGDState``, ``step(PGDState) ->
    PGDState`` (it unpacks as two values).

    ``attack.start(key, x, y)`` equals ``step(init(key, x, y))`` but shares one forward
    pass (and its linearisation) between the temperature rule's set-up and the first
    step: HNS takes its Jacobian rows from the same pullback that gives the first
    gradient. ``start`` is ``None`` for a pair built without it.
    """

    def __new__(cls, init, step, start=None):
        self = super().__new__(cls, init, step)
        self.start = start
        return self


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


def scaled_loss_grad(logits_fn: LogitsFn, strategy, tstate, loss_fn, z, y):
    """Temperature-scaled loss and its input gradient at ``z``, in one forward pass.

    ``beta`` comes from ``strategy.beta(tstate, logits, y)`` on the logits at ``z`` and is
    held fixed inside the derivative. Non-finite gradient entries become 0 (no move).
    Every gradient attack (PGD, APGD, FAB, ...) takes its gradients here, so each of them
    composes with every temperature strategy.

    Args:
        logits_fn: the model.
        strategy: a temperature strategy (``fixed``/``njs``/``hns``), never ``None``.
        tstate: its state (``strategy.init(...)``).
        loss_fn: per-example loss ``(logits (B, d), y (B,)) -> (B,)``.
        z: ``(B, H, W, C)`` current point.
        y: ``(B,)`` labels.

    Returns:
        ``(loss (B,), grad (B, H, W, C), logits (B, d), BetaInfo)``.
    """
    logits, vjp_fn = jax.vjp(logits_fn, z)
    return loss_grad_from_linearisation(logits, vjp_fn, strategy, tstate, loss_fn, y)


def loss_grad_from_linearisation(logits, vjp_fn, strategy, tstate, loss_fn, y):
    """:func:`scaled_loss_grad` given ``logits, vjp_fn = jax.vjp(logits_fn, z)``."""
    binfo = strategy.beta(tstate, logits, y)
    scaled = temperature_scaled(loss_fn, binfo.beta)
    value, pullback = jax.vjp(lambda a: scaled(a, y), logits)
    (g_logits,) = pullback(jnp.ones_like(value))
    g_logits = jnp.where(jnp.isfinite(g_logits), g_logits, jnp.zeros_like(g_logits))
    (g,) = vjp_fn(g_logits)
    g = jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g))
    return value, g, logits, binfo


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

    ``init(key, x, y)`` takes one PRNG key (example ``i`` draws its random start from
    ``fold_in(key, i)``), a ``(B,)`` batch of per-example keys, or ``None`` without
    ``random_init``. :func:`pgd` runs restart ``r`` from ``init(restart_keys(keys, r),
    x, y)``, ``keys = example_keys(key, B)``: the same keys give the same run.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = lambda x: jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], axis=1)
        >>> atk = make_pgd(f, eps=0.1, step_size=0.05, random_init=False)
        >>> s = run_attack(atk, atk.init(None, jnp.full((1, 1, 1, 1), 0.5), jnp.array([0])), 3)
        >>> round(float(s.x_adv[0, 0, 0, 0]), 4)
        0.4
    """
    geometry = get_norm(norm)
    base_loss = get_loss(loss) if isinstance(loss, str) else loss
    strategy = fixed(1.0) if temperature is None else temperature
    model_fn = logits_fn

    def logits_fn(z):  # half-precision logits in float32: β grids, softmax and losses
        return at_least_float32(model_fn(z))

    def start_point(key, x):
        if not random_init:
            return x
        e = jnp.asarray(eps, x.dtype)
        return geometry.random_start(example_keys(key, x.shape[0]), x, e)

    def state_at(x, y, x_adv, tstate) -> PGDState:
        zeros = jnp.zeros((x.shape[0],), jnp.bool_)
        info = BetaInfo(jnp.ones((x.shape[0],), x.dtype), zeros, zeros)
        return PGDState(x, y, x_adv, tstate, info, zeros)

    def init(key, x, y) -> PGDState:
        x_adv = start_point(key, x)
        return state_at(x, y, x_adv, strategy.init(logits_fn, x_adv, y))

    def step(state: PGDState) -> PGDState:
        logits, vjp_fn = jax.vjp(logits_fn, state.x_adv)
        return advance(state, logits, vjp_fn)

    def start(key, x, y) -> PGDState:
        x_adv = start_point(key, x)
        logits, vjp_fn = jax.vjp(logits_fn, x_adv)
        if hasattr(strategy, "init_linearised"):  # HNS: Jacobian rows from this pullback
            tstate, vjp_fn = strategy.init_linearised(logits_fn, x_adv, y, logits, vjp_fn)
        else:
            tstate = strategy.init(logits_fn, x_adv, y)
        return advance(state_at(x, y, x_adv, tstate), logits, vjp_fn)

    def advance(state: PGDState, logits, vjp_fn) -> PGDState:
        x, y, x_adv = state.x, state.y, state.x_adv
        _, g, _, binfo = loss_grad_from_linearisation(
            logits, vjp_fn, strategy, state.tstate, base_loss, y
        )
        # the step in >= float32, rounded back towards x by the projection (half precision)
        wide = at_least_float32(x_adv)
        eta = jnp.asarray(step_size, wide.dtype)
        x_step = wide + eta * geometry.normalize(g.astype(wide.dtype))
        x_new = geometry.project(x_step, x, jnp.asarray(eps, wide.dtype))
        beta = BetaInfo(binfo.beta.astype(x.dtype), binfo.fallback, binfo.default)
        return PGDState(x, y, x_new, state.tstate, beta, state.fallback | binfo.fallback)

    return Attack(init, step, start)


def run_attack(attack: Attack, state: PGDState, steps: int) -> PGDState:
    """Apply ``attack.step`` ``steps`` times with ``lax.scan`` (steps per loop iteration:
    :func:`cpu_unroll`)."""
    if steps == 0:
        return state
    unroll = cpu_unroll(attack.step, state, steps)
    body = lambda s, _: (attack.step(s), None)  # noqa: E731
    return jax.lax.scan(body, state, None, length=steps, unroll=unroll)[0]


def start_and_run(attack: Attack, key, x, y, steps: int) -> PGDState:
    """``run_attack(attack, attack.init(key, x, y), steps)``, with the set-up and the first
    step sharing a forward pass through ``attack.start`` when the attack has one."""
    if steps < 1 or attack.start is None:
        return run_attack(attack, attack.init(key, x, y), steps)
    return run_attack(attack, attack.start(key, x, y), steps - 1)


# ---------------------------------------------------------------------- compiled core


def _single_run(attack, logits_fn, key, x, y, steps, r):
    state = start_and_run(attack, key, x, y, steps)
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


def _pgd_core(
    logits_fn, x, y, keys, strategy, *, eps, step_size, norm, loss, steps, restarts, random_init
):
    """Restarted PGD with the per-example worst case; ``keys`` is ``(B,)`` or ``None``."""
    attack = make_pgd(
        logits_fn,
        eps=eps,
        step_size=step_size,
        norm=norm,
        temperature=strategy,
        loss=loss,
        random_init=random_init,
    )
    best = _single_run(attack, logits_fn, restart_keys(keys, 0), x, y, steps, 0)
    if restarts == 1:
        return best

    def body(carry, r):
        new = _single_run(attack, logits_fn, restart_keys(keys, r), x, y, steps, r)
        return _select(_better(new[1], carry[1]), new, carry), None

    return jax.lax.scan(body, best, jnp.arange(1, restarts, dtype=jnp.int32))[0]


# ------------------------------------------------------------------ direct functions


def _check_temperature(temperature) -> None:
    """A runtime strategy (``fixed``/``njs``/``hns``/``prop1`` or any object with
    ``init``/``beta``/``validate``), or ``None``; names belong to the registry."""
    if temperature is not None and not all(
        callable(getattr(temperature, m, None)) for m in ("init", "beta", "validate")
    ):
        raise ValueError(
            f"unknown temperature {temperature!r}; use None, qadv.attacks.fixed(beta), "
            "qadv.attacks.njs(...), qadv.attacks.hns(...) or an object with "
            "init/beta/validate methods (by name: registry.make('pgd', temperature=...))"
        )


def _run_direct(name, logits_fn, x, y, *, key, temperature, return_info, **options):
    """The registered attack ``name`` with a runtime temperature strategy: the config's
    own validation (a zero radius and step allowed), then the protocol's compiled run with
    ``temperature`` as the config's prepared data."""
    if not isinstance(return_info, bool):
        raise ValueError(f"return_info must be a bool, got {return_info!r}")
    _check_temperature(temperature)
    # None means "the default" in the registry; here only step_size has one (Table 6's)
    unset = sorted(k for k, v in options.items() if v is None and k != "step_size")
    if unset:
        raise ValueError(f"{unset[0]} must be given, got None")
    config = registry.build(name, **options)
    config.validate(zero_radius=True)
    if config.random_init and key is None:
        raise ValueError("key is required when random_init=True (pass key=jax.random.key(...))")
    x, y, d = check_batch(logits_fn, x, y)
    config.validate_image_size(x[0].size)
    config.validate_classes(d)
    if temperature is not None:
        temperature.validate(d, x.shape[0])
    strategy = temperature if temperature is not None else fixed(1.0)
    keys = example_keys(key, x.shape[0]) if config.random_init else None
    res = execute(config, strategy, logits_fn, x, y, keys)
    if not return_info:
        return res.x_adv
    aux = res.aux
    info = AttackInfo(
        aux["beta"], aux["fallback"], aux["default_beta"], res.success, res.margin, aux["restart"]
    )
    return res.x_adv, info


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
        key: PRNG key for the random start (may be ``None`` if ``random_init=False``);
            example ``i`` has the key ``fold_in(key, i)``, so its result does not depend
            on the batch (a ``(B,)`` batch of per-example keys replaces these), and its
            restart ``r`` starts from ``fold_in(that key, r)``.
        eps: radius (L-inf: per pixel; L2: total norm over ``H*W*C``), in ``[0, 1]`` units.
        step_size: step length ``eta`` (``None``: the norm's default, see
            :class:`PGDConfig`).
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
    return _run_direct(
        "pgd",
        logits_fn,
        x,
        y,
        key=key,
        temperature=temperature,
        return_info=return_info,
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=norm,
        random_init=random_init,
        restarts=restarts,
        loss=loss,
    )


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
    return _run_direct(
        "fgsm",
        logits_fn,
        x,
        y,
        key=key,
        temperature=temperature,
        return_info=return_info,
        eps=eps,
        norm=norm,
        random_init=key is not None,
        loss=loss,
    )


# ------------------------------------------------------------------ registry configs


@registry.register("pgd")
@dataclasses.dataclass(frozen=True)
class PGDConfig(registry.AttackConfig):
    """PGD / PGD++ (temperature-scaled) as a registered attack.

    ``step_size=None`` takes the norm's default (paper Table 6: ε/4 for L∞, 2.5·ε/T for
    L2). Queries per example: ``restarts * (steps + 1)``.
    """

    kind: ClassVar[str] = "pgd"

    step_size: float | None = None
    steps: int = 20
    restarts: int = 1
    loss: str = "ce"
    temperature: registry.TemperatureConfig = NoTemperature()
    random_init: bool = True

    def __post_init__(self):
        geometry = find_norm(self.norm)
        if (
            self.step_size is None
            and geometry is not None
            and is_count(self.steps)
            and is_radius(self.eps)
        ):
            # the paper's step for this radius; a traced radius gives a traced step
            concrete = is_concrete(self.eps)
            step = geometry.default_step(float(self.eps) if concrete else self.eps, int(self.steps))
            object.__setattr__(self, "step_size", float(step) if concrete else step)

    def validate(self, *, zero_radius: bool = False) -> None:
        super().validate(zero_radius=zero_radius)
        check_int("steps", self.steps, 1)
        check_scalar("step_size", self.step_size, allow_zero=zero_radius)
        check_int("restarts", self.restarts, 1)
        check_choice("loss", self.loss, LOSS_NAMES)
        if not isinstance(self.random_init, bool):
            raise ValueError(f"random_init must be a bool, got {self.random_init!r}")
        self.temperature.validate()

    def validate_classes(self, d: int) -> None:
        if self.loss == "dlr" and d < 3:
            raise ValueError(f"dlr loss needs at least 3 classes, got d={d}")

    @property
    def label(self) -> str:
        loss = "" if self.loss == "ce" else f"-{self.loss.upper()}"
        return f"{self.kind.upper()}{loss}{self.temperature.suffix} {self.geometry.label}"

    def prepare(self, logits_fn, context):
        strategy = self.temperature.build(logits_fn, context)
        return fixed(1.0) if strategy is None else strategy

    def run(self, data, logits_fn, x, y, keys):
        x_adv, info = _pgd_core(
            logits_fn,
            x,
            y,
            keys if self.random_init else None,
            data,
            eps=self.eps,
            step_size=self.step_size,
            norm=self.norm,
            loss=self.loss,
            steps=self.steps,
            restarts=self.restarts,
            random_init=self.random_init,
        )
        aux = {
            "beta": info.beta,
            "fallback": info.fallback,
            "default_beta": info.default_beta,
            "restart": info.restart,
        }
        return finish(
            logits_fn,
            x,
            y,
            x_adv,
            norm=self.geometry,
            queries=self.restarts * (self.steps + 1),
            aux=aux,
        )


@registry.register("fgsm")
@dataclasses.dataclass(frozen=True)
class FGSMConfig(PGDConfig):
    """FGSM / FGSM++: one step of size ε from a random start (``random_init=False``: from
    the clean point)."""

    kind: ClassVar[str] = "fgsm"

    steps: int = 1

    def __post_init__(self):
        # FGSM is one step of size eps: a step size given here is replaced, but a bad one
        # (negative, zero, not finite) is still refused rather than silently dropped
        if self.step_size is not None:
            check_scalar("step_size", self.step_size, allow_zero=False)
        object.__setattr__(self, "steps", 1)
        concrete = is_concrete(self.eps) and is_radius(self.eps)
        step = float(self.eps) if concrete else self.eps
        object.__setattr__(self, "step_size", step)
