"""Auto-PGD (APGD; Croce & Hein 2020): PGD with momentum and a step size that halves
itself at checkpoints. APGD-CE, APGD-DLR and APGD-T (targeted DLR) are one config.

One run of ``steps`` iterations, per example (``B`` examples, images ``(B, H, W, C)``):

- start at a random point of the ball (``norm.random_start``) with step ``eta = 2 eps``;
- iterate ``z = P(x_t + eta * normalize(g_t))`` and
  ``x_{t+1} = P(x_t + a (z - x_t) + (1 - a)(x_t - x_{t-1}))`` with ``a = momentum``
  (``a = 1`` at the first step), ``P`` the projection onto the ball and ``[0, 1]``;
- at each checkpoint ``w_j = ceil(p_j N)`` (:func:`checkpoints`), halve ``eta`` and go
  back to the best point found so far (and its gradient) if either
  (1) at most ``checkpoint_rho`` of the steps since the last checkpoint increased the loss
  (the reference code's ``<=``; the paper writes "fewer than": the two differ only when
  exactly 75 % of a window increased it, which at N = 100 means 12 of the 16 steps
  before step 57; qadv keeps the reference's rule so its numbers are AutoAttack's), or
  (2) ``eta`` was not halved at the last checkpoint and the best loss has not increased
  since;
- track the point of highest loss and the first misclassified point; a run returns the
  latter if there is one, else the former.

Runs: ``restarts`` random restarts (restart ``r`` draws from ``fold_in(keys[i], r)``),
times ``min(n_targets, d - 1)`` target classes for ``loss="dlr-targeted"`` (target
``k`` is the ``k``-th highest non-true logit at the clean point; its runs also fold in
``k``). The per-example worst case is returned: the first run (targets outer, restarts
inner) that succeeds, else the run whose best point has the largest margin
``max_{i != y} f_i - f_y``. A run only costs what the authors' cascade would spend:
runs stop once every example of the batch has succeeded, and ``queries`` counts, per
example, the clean forward pass plus ``steps + 1`` for every run up to its first
success. Clean-misclassified examples return ``x`` itself (1 query). As for PGD, a
temperature rule's own evaluations (HNS's Jacobian at each start point) are not counted.

Gradients come from :func:`qadv.attacks.gradient.scaled_loss_grad`, so any temperature
config (NJS, HNS, fixed β) gives APGD++; the loss tracked for the step-size rule is the
temperature-scaled loss.

Differences from the authors' release (``autoattack/autopgd_base.py``):

- checkpoints are ``ceil(p_j N)`` from the paper's sequence computed exactly (rational
  arithmetic); the release's integer rule (windows ``int(0.22 N)`` shrinking by
  ``int(0.03 N)`` down to ``int(0.06 N)``) gives the same checkpoints whenever ``N`` is
  a multiple of 100 (``N = 100``: 22, 41, 57, 70, 80, 87, 93, 99) and denser ones for
  small ``N``;
- the first step of the first window is compared with the loss at the start point (the
  release compares it with 0, through a wrapped-around index);
- the random start is uniform in the ball (the release scales a uniform / Gaussian draw
  onto the ball's surface) and the L2 ball is over the total norm;
- a run keeps the *first* misclassified iterate (the release keeps the last);
- restarts and targets are combined per example in one compiled loop, not by re-running
  the attack on the still-robust subset.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qadv.attacks import registry
from qadv.attacks.gradient import scaled_loss_grad
from qadv.attacks.protocol import finish
from qadv.attacks.temperature import NoTemperature, fixed
from qadv.attacks.unroll import bounded_while
from qadv.attacks.validation import check_choice, check_int
from qadv.losses import cross_entropy, cw_margin, dlr

__all__ = [
    "APGD_LOSSES",
    "APGDConfig",
    "APGDState",
    "checkpoints",
    "dlr_targeted",
    "target_classes",
]

APGD_LOSSES: tuple[str, ...] = ("ce", "dlr", "dlr-targeted")
_MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr-targeted": 4}


# ----------------------------------------------------------------------------- pieces


def checkpoints(steps: int) -> tuple[int, ...]:
    """Iteration counts ``w_j = ceil(p_j * steps) <= steps`` after which APGD checks its step.

    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``,
    computed exactly; repeated values (small ``steps``) appear once.

    Example:
        >>> checkpoints(100)
        (22, 41, 57, 70, 80, 87, 93, 99)
        >>> checkpoints(10)
        (3, 5, 6, 7, 8, 9, 10)
    """
    check_int("steps", steps, 1)
    prev, p = Fraction(0), Fraction(22, 100)
    out: list[int] = []
    while (w := math.ceil(p * steps)) <= steps:
        if not out or w > out[-1]:
            out.append(w)
        prev, p = p, p + max(p - prev - Fraction(3, 100), Fraction(6, 100))
    return tuple(out)


def _schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration ``t = 0..steps-1``: is ``t + 1`` a checkpoint, and its window length."""
    is_check = np.zeros((steps,), np.bool_)
    window = np.zeros((steps,), np.int32)
    last = 0
    for w in checkpoints(steps):
        is_check[w - 1] = True
        window[w - 1] = w - last
        last = w
    return is_check, window


def _label_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)[:, 0]


def dlr_targeted(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
    """Targeted difference of logits ratio, ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2)``.

    ``z_pi1 >= z_pi2 >= ...`` are the sorted logits (``1e-12`` is added to the
    denominator). Higher is more adversarial; needs at least 4 classes.

    Args:
        logits: ``(B, d)`` logits.
        labels: ``(B,)`` true labels ``y``.
        targets: ``(B,)`` target classes ``t``.

    Returns:
        ``(B,)`` losses.

    Example:
        >>> import jax.numpy as jnp
        >>> z = jnp.array([[4.0, 2.0, 1.0, 0.0]])
        >>> round(float(dlr_targeted(z, jnp.array([0]), jnp.array([1]))[0]), 4)  # -2 / 3.5
        -0.5714
    """
    d = logits.shape[-1]
    if d < 4:
        raise ValueError(f"dlr-targeted loss needs at least 4 classes, got d={d}")
    top = jax.lax.top_k(logits, 4)[0]
    denom = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + jnp.asarray(1e-12, logits.dtype)
    return (_label_logit(logits, targets) - _label_logit(logits, labels)) / denom


def target_classes(logits: jax.Array, labels: jax.Array, n: int) -> jax.Array:
    """The ``n`` highest-scoring classes other than the label, best first: ``(B, n)`` int32.

    Ties go to the lower class index; the label is never chosen (``n <= d - 1``).

    Example:
        >>> import jax.numpy as jnp
        >>> target_classes(jnp.array([[0.5, 3.0, 2.0, 1.0]]), jnp.array([1]), 2).tolist()
        [[2, 3]]
    """
    d = logits.shape[-1]
    if not 1 <= n <= d - 1:
        raise ValueError(f"need 1 <= n <= d - 1 = {d - 1} target classes, got {n}")
    is_label = jnp.arange(d, dtype=jnp.int32)[None, :] == labels[:, None].astype(jnp.int32)
    score = jnp.where(jnp.isnan(logits), jnp.full_like(logits, -jnp.inf), logits)
    order = jnp.lexsort((-score, is_label), axis=-1)  # non-labels first, then by logit
    return order[:, :n].astype(jnp.int32)


# ------------------------------------------------------------------------- one run


class APGDState(NamedTuple):
    """State of one APGD run (a pytree). Images are ``(B, H, W, C)``, the rest ``(B,)``.

    Attributes:
        x_adv: current iterate ``x_t``.
        x_prev: previous iterate ``x_{t-1}`` (momentum).
        grad: loss gradient used by the next step.
        loss: loss at ``x_t``.
        step: step size ``eta``.
        n_up: steps since the last checkpoint that increased the loss (int32).
        reduced: ``eta`` was halved at the last checkpoint.
        loss_at_check: best loss at the last checkpoint.
        x_best: point of highest loss so far, ``grad_best`` its gradient,
            ``loss_best`` its loss and ``margin_best`` its margin.
        x_found: first misclassified point (valid where ``found``), ``margin_found``
            its margin.
        found: a misclassified point was reached.
        beta: temperature at the latest step.
        fallback: the temperature fell back to 1 at some step.
    """

    x_adv: jax.Array
    x_prev: jax.Array
    grad: jax.Array
    loss: jax.Array
    step: jax.Array
    n_up: jax.Array
    reduced: jax.Array
    loss_at_check: jax.Array
    x_best: jax.Array
    grad_best: jax.Array
    loss_best: jax.Array
    margin_best: jax.Array
    x_found: jax.Array
    margin_found: jax.Array
    found: jax.Array
    beta: jax.Array
    fallback: jax.Array


class _Outcome(NamedTuple):
    x_adv: jax.Array
    success: jax.Array
    margin: jax.Array
    beta: jax.Array
    fallback: jax.Array
    restart: jax.Array
    target: jax.Array


def _expand(v: jax.Array, like: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _where(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(_expand(mask, a), a, b)


def _run_once(cfg, strategy, logits_fn, loss_fn, x, y, keys) -> APGDState:
    """One APGD run from a random start drawn from ``keys`` (``(B,)``)."""
    geometry = cfg.geometry
    dt = x.dtype
    eps = jnp.asarray(cfg.eps, dt)

    def evaluate(tstate, z):
        loss, g, logits, binfo = scaled_loss_grad(logits_fn, strategy, tstate, loss_fn, z, y)
        missed = jnp.argmax(logits, axis=-1).astype(y.dtype) != y
        return loss.astype(dt), g, cw_margin(logits, y).astype(dt), missed, binfo

    x0 = geometry.random_start(keys, x, eps)
    tstate = strategy.init(logits_fn, x0, y)
    loss0, g0, margin0, missed0, binfo0 = evaluate(tstate, x0)
    b = x.shape[0]
    state = APGDState(
        x_adv=x0,
        x_prev=x0,
        grad=g0,
        loss=loss0,
        step=jnp.full((b,), 2 * cfg.eps, dt),
        n_up=jnp.zeros((b,), jnp.int32),
        reduced=jnp.ones((b,), jnp.bool_),
        loss_at_check=loss0,
        x_best=x0,
        grad_best=g0,
        loss_best=loss0,
        margin_best=margin0,
        x_found=x0,
        margin_found=margin0,
        found=missed0,
        beta=binfo0.beta.astype(dt),
        fallback=binfo0.fallback,
    )
    momentum = jnp.asarray(cfg.momentum, dt)
    rho = jnp.asarray(cfg.checkpoint_rho, dt)

    def body(s: APGDState, inputs) -> tuple[APGDState, None]:
        t, is_check, window = inputs
        a = jnp.where(t == 0, jnp.ones((), dt), momentum)
        z = geometry.project(s.x_adv + _expand(s.step, x) * geometry.normalize(s.grad), x, eps)
        x_new = geometry.project(
            s.x_adv + a * (z - s.x_adv) + (1 - a) * (s.x_adv - s.x_prev), x, eps
        )
        loss, g, margin, missed, binfo = evaluate(tstate, x_new)

        first = missed & ~s.found
        better = loss > s.loss_best
        loss_best = jnp.where(better, loss, s.loss_best)
        n_up = s.n_up + (loss > s.loss).astype(jnp.int32)

        # checkpoint: halve the step and go back to the best point
        few_up = n_up.astype(dt) <= rho * window.astype(dt)
        stalled = ~s.reduced & (s.loss_at_check >= loss_best)
        halve = is_check & (few_up | stalled)
        x_best = _where(better, x_new, s.x_best)
        grad_best = _where(better, g, s.grad_best)
        new = APGDState(
            x_adv=_where(halve, x_best, x_new),
            x_prev=s.x_adv,
            grad=_where(halve, grad_best, g),
            loss=loss,
            step=jnp.where(halve, 0.5 * s.step, s.step),
            n_up=jnp.where(is_check, jnp.zeros_like(n_up), n_up),
            reduced=jnp.where(is_check, halve, s.reduced),
            loss_at_check=jnp.where(is_check, loss_best, s.loss_at_check),
            x_best=x_best,
            grad_best=grad_best,
            loss_best=loss_best,
            margin_best=jnp.where(better, margin, s.margin_best),
            x_found=_where(first, x_new, s.x_found),
            margin_found=jnp.where(first, margin, s.margin_found),
            found=s.found | missed,
            beta=binfo.beta.astype(dt),
            fallback=s.fallback | binfo.fallback,
        )
        return new, None

    is_check, window = _schedule(cfg.steps)
    xs = (jnp.arange(cfg.steps, dtype=jnp.int32), jnp.asarray(is_check), jnp.asarray(window))
    return jax.lax.scan(body, state, xs)[0]


# ------------------------------------------------------------------- all runs, selection


def _apgd(cfg, strategy, logits_fn, x, y, keys) -> tuple[_Outcome, jax.Array]:
    """Every (target, restart) run with the per-example worst case; also the runs spent."""
    clean = logits_fn(x)
    d = clean.shape[-1]
    need = _MIN_CLASSES[cfg.loss]
    if d < need:
        raise ValueError(f"APGD loss {cfg.loss!r} needs at least {need} classes, got d={d}")
    if callable(getattr(strategy, "validate", None)):
        strategy.validate(d, x.shape[0])
    targeted = cfg.loss == "dlr-targeted"
    n_targets = min(cfg.n_targets, d - 1) if targeted else 1
    n_runs = n_targets * cfg.restarts
    targets = target_classes(clean, y, n_targets) if targeted else None

    b = x.shape[0]
    missed = jnp.argmax(clean, axis=-1).astype(y.dtype) != y
    start = _Outcome(
        x_adv=x,
        success=missed,
        margin=jnp.where(missed, cw_margin(clean, y), jnp.full((b,), -jnp.inf, clean.dtype)).astype(
            x.dtype
        ),
        beta=jnp.ones((b,), x.dtype),
        fallback=jnp.zeros((b,), jnp.bool_),
        restart=jnp.zeros((b,), jnp.int32),
        target=jnp.full((b,), -1, jnp.int32),
    )

    def one(j):
        k, r = j // cfg.restarts, j % cfg.restarts
        run_keys = jax.vmap(lambda key: jax.random.fold_in(key, r))(keys)
        if targeted:
            run_keys = jax.vmap(lambda key: jax.random.fold_in(key, k + 1))(run_keys)
            target = jax.lax.dynamic_index_in_dim(targets, k, axis=1, keepdims=False)
            loss_fn = functools.partial(dlr_targeted, targets=target)
        else:
            target = jnp.full((b,), -1, jnp.int32)
            loss_fn = cross_entropy if cfg.loss == "ce" else dlr
        s = _run_once(cfg, strategy, logits_fn, loss_fn, x, y, run_keys)
        return _Outcome(
            x_adv=_where(s.found, s.x_found, s.x_best),
            success=s.found,
            margin=jnp.where(s.found, s.margin_found, s.margin_best),
            beta=s.beta,
            fallback=s.fallback,
            restart=jnp.full((b,), r, jnp.int32),
            target=target,
        )

    def cond(carry):
        j, best, _ = carry
        return (j < n_runs) & jnp.any(~best.success)

    def body(carry):
        j, best, runs = carry
        new = one(j)
        open_ = ~best.success
        take = open_ & (new.success | (new.margin > best.margin))
        best = jax.tree_util.tree_map(lambda a, c: _where(take, a, c), new, best)
        return j + 1, best, runs + open_.astype(jnp.int32)

    _, best, runs = bounded_while(
        cond, body, (jnp.zeros((), jnp.int32), start, jnp.zeros((b,), jnp.int32)), n_runs
    )
    return best, runs


# ------------------------------------------------------------------------- the config


@registry.register("apgd")
@dataclasses.dataclass(frozen=True)
class APGDConfig(registry.AttackConfig):
    """APGD (Croce & Hein 2020) as a registered attack; see the module docstring.

    Registered as ``apgd`` and as the variants ``apgd-ce``, ``apgd-dlr`` and ``apgd-t``
    (``loss="dlr-targeted"``, AutoAttack's APGD-T). With a ``temperature`` it is APGD++.

    Attributes:
        steps: iterations ``N`` per run.
        restarts: random restarts per target.
        loss: ``"ce"``, ``"dlr"`` (``d >= 3``) or ``"dlr-targeted"`` (``d >= 4``).
        n_targets: targeted only: runs per restart, one per target class (the top
            ``min(n_targets, d - 1)`` non-true classes at the clean point).
        momentum: the paper's ``alpha``, the weight ``a`` of the new gradient step against
            the previous move (``1``: no momentum; ``0`` would ignore the gradient, so
            it is refused).
        checkpoint_rho: a checkpoint halves the step if at most this fraction of the steps since
            the previous one increased the loss.
        temperature: a temperature config (``NoTemperature()``: β = 1).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.attacks import attack, registry
        >>> f = lambda x: x.reshape(x.shape[0], 4)  # 2x2 images, one logit per pixel
        >>> x, y = jnp.array([0.6, 0.4, 0.3, 0.1]).reshape(1, 2, 2, 1), jnp.array([0])
        >>> cfg = registry.make("apgd-t", eps=0.15, steps=10, n_targets=2)
        >>> cfg.label
        'APGD-T L∞'
        >>> res = attack(cfg, f, x, y, key=jax.random.key(0))
        >>> bool(res.success[0]), int(res.aux["target"][0]), res.queries.tolist()
        (True, 1, [12])
    """

    kind: ClassVar[str] = "apgd"

    steps: int = 100
    restarts: int = 1
    loss: str = "ce"
    n_targets: int = 9
    momentum: float = 0.75
    checkpoint_rho: float = 0.75
    temperature: registry.TemperatureConfig = NoTemperature()

    def validate(self) -> None:
        super().validate()
        check_choice("loss", self.loss, APGD_LOSSES)
        check_int("steps", self.steps, 1)
        check_int("restarts", self.restarts, 1)
        check_int("n_targets", self.n_targets, 1)
        if not _is_real(self.momentum) or not 0.0 < self.momentum <= 1.0:
            raise ValueError(f"momentum must lie in (0, 1], got {self.momentum!r}")
        if not _is_real(self.checkpoint_rho) or not 0.0 < self.checkpoint_rho < 1.0:
            raise ValueError(f"checkpoint_rho must lie in (0, 1), got {self.checkpoint_rho!r}")
        if not isinstance(self.temperature, registry.TemperatureConfig):
            raise ValueError(
                f"temperature must be a temperature config, got {self.temperature!r}; "
                "use registry.make(..., temperature='hns') or a registered name"
            )
        self.temperature.validate()

    @property
    def label(self) -> str:
        loss = {"ce": "CE", "dlr": "DLR", "dlr-targeted": "T"}.get(self.loss, self.loss.upper())
        return f"APGD-{loss}{self.temperature.suffix} {self.geometry.label}"

    def prepare(self, logits_fn, context) -> Any:
        strategy = self.temperature.build(logits_fn, context)
        return fixed(1.0) if strategy is None else strategy

    def run(self, data, logits_fn, x, y, keys):
        best, runs = _apgd(self, data, logits_fn, x, y, keys)
        return finish(
            logits_fn,
            x,
            y,
            best.x_adv,
            norm=self.geometry,
            queries=1 + runs * (self.steps + 1),
            aux={
                "beta": best.beta,
                "fallback": best.fallback,
                "restart": best.restart,
                "target": best.target,
            },
        )


def _is_real(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


registry.register("apgd-ce", loss="ce")(APGDConfig)
registry.register("apgd-dlr", loss="dlr")(APGDConfig)
registry.register("apgd-t", loss="dlr-targeted")(APGDConfig)
