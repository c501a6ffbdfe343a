"""Square Attack: gradient-free random search (Andriushchenko et al. 2020).

*Square Attack: a query-efficient black-box adversarial attack via random search*, as
in AutoAttack (fra31/auto-attack, ``autoattack/square.py``), compiled: one
``lax.while_loop`` over iterations, static shapes, forward passes of ``logits_fn`` only
(no gradient is ever taken, so masked or zero gradients do not stop it).

Each iteration proposes, for every example, a change of the current best point inside
one square window of side ``s`` at a uniformly random position, queries the model once
and keeps the proposal only if it raises the adversarial loss (the CW margin
``max_{i != y} z_i - z_y`` by default) or misclassifies. The side follows the
reference's schedule: ``p`` (the fraction of pixels a window covers) starts at
``p_init`` and halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and
8000, and ``s = max(round(sqrt(p * H * W)), 1)``. With ``rescale_schedule=True`` (the
reference's ``SquareAttack`` default) these bounds are for a 10,000-query budget and the
iteration is rescaled to ``queries``; with ``False`` they count real iterations, as
AutoAttack's ``standard`` version builds Square (``resc_schedule=False``, 5,000 queries:
``p`` then halves seven times, the last after iteration 4000). See :func:`p_selection`.

- **L∞**: start from vertical stripes (``x ± ε``, one random sign per column and
  channel); a proposal sets the window to ``x ± ε`` with one random sign per channel.
- **L2**: start from a grid of ``H//5``-pixel blocks, each a ±(:func:`window_pattern`)
  per channel, scaled to norm ``ε``; a proposal moves the mass of the perturbation from
  a second random window into the first, adds a fresh ±(:func:`window_pattern`) there,
  rescales it with the remaining budget (``sqrt(max(ε² - ||δ||², 0)/C + ||δ_windows||²)``
  per channel), and rescales the whole perturbation to norm ``ε``. Windows have odd side
  ``>= 3``.

Examples that are misclassified stop: they keep their point and spend no more queries.
Queries per example count every forward pass spent on it while it was still correctly
classified: one on the clean image (a misclassified clean image is returned as it is,
with ``queries == 1``), then per restart one on the start point and one per iteration.
A restart runs ``queries - 2`` iterations, so one restart spends at most ``queries``
forward passes, and ``restarts`` restarts at most ``1 + restarts * (queries - 1)``.

Randomness: restart ``r`` of example ``i`` uses ``k = fold_in(keys[i], r)``; its start
point draws from ``fold_in(k, 0)`` and iteration ``t`` from ``fold_in(k, t + 1)``. Nothing
is shared between the examples of a batch, so a result does not depend on the batch.

Differences from the reference:

- every example draws its own window position, signs and (L2) pattern orientation; the
  reference shares them across the batch at each iteration;
- window positions are uniform over all ``H - s + 1`` rows (and columns); the reference
  draws ``floor(U * (H - s))`` and so never places a window on the last valid row or
  column (unless ``s == H``);
- the budget counts the clean forward pass and each start point, so a restart runs
  ``queries - 2`` iterations (the reference runs ``queries`` after them);
- success and stopping use ``argmax f(x) != y`` (the reference stops at a margin
  ``<= 0``, ties included), as every attack here is scored;
- several restarts return, per example, the successful point if any, else the point
  with the largest margin (the clean image if no restart beats it); the reference keeps
  the clean image unless a restart succeeds;
- images smaller than 5 pixels get 1-pixel L2 start blocks (the reference divides by
  zero), and L2 start blocks that would cross the border are cut there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qadv.attacks import registry
from qadv.attacks.norms import L2, LINF, Norm, get_norm
from qadv.attacks.protocol import finish
from qadv.attacks.unroll import bounded_while
from qadv.attacks.validation import check_choice, check_int, check_scalar
from qadv.losses import cross_entropy, cw_margin

__all__ = [
    "SQUARE_LOSSES",
    "SquareConfig",
    "SquareState",
    "p_selection",
    "square_attack",
    "window_pattern",
    "window_sides",
]

LogitsFn = Callable[[jax.Array], jax.Array]

#: Losses the attack can ascend (higher = more adversarial).
SQUARE_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "margin": cw_margin,
    "ce": cross_entropy,
}

# Iterations (of a 10,000-query budget) after which p halves, as in the reference.
_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


# ------------------------------------------------------------------ schedule (host side)


def p_selection(
    iteration: int, *, queries: int, p_init: float = 0.8, rescale: bool = True
) -> float:
    """The fraction ``p`` of pixels a window covers at ``iteration`` (0-based).

    With ``rescale`` the iteration is first rescaled to a 10,000-query budget,
    ``int(iteration / queries * 10000)``; without it, it is used as it is (AutoAttack's
    ``standard``: ``resc_schedule=False``). Then ``p = p_init / 2**k`` with ``k`` the
    number of bounds (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000) it exceeds.

    Example:
        >>> [p_selection(i, queries=5000) for i in (0, 5, 6, 26, 4999)]
        [0.8, 0.8, 0.4, 0.2, 0.0015625]
        >>> [p_selection(i, queries=5000, rescale=False) for i in (0, 10, 11, 51, 4999)]
        [0.8, 0.8, 0.4, 0.2, 0.00625]
    """
    it = int(iteration / queries * 10000) if rescale else int(iteration)
    return p_init / 2 ** sum(it > b for b in _BOUNDS)


def window_sides(
    norm: str,
    image_shape: tuple[int, int, int],
    *,
    queries: int,
    p_init: float,
    iterations: int,
    rescale: bool = True,
) -> np.ndarray:
    """Window side ``s`` at each of ``iterations`` iterations, ``(iterations,)`` int32.

    ``p`` is :func:`p_selection` (``rescale`` as there);
    ``s = max(round(sqrt(p * H * W)), 1)`` for L∞; for L2 at least 3 and odd (an even
    side gets one more pixel); both at most ``min(H, W)``.

    Example:
        >>> window_sides("linf", (28, 28, 1), queries=5000, p_init=0.8, iterations=8).tolist()
        [25, 25, 25, 25, 25, 25, 18, 18]
    """
    h, w, c = image_shape
    n_features = h * w * c
    sides = []
    for i in range(iterations):
        p = p_selection(i, queries=queries, p_init=p_init, rescale=rescale)
        s = round(math.sqrt(p * n_features / c))
        if _rules(get_norm(norm)).odd_windows:
            s = max(s, 3)
            s += 1 - s % 2
        sides.append(min(max(s, 1), h, w))
    return np.asarray(sides, np.int32).reshape(iterations)


def _rectangle(rows: int, cols: int) -> np.ndarray:
    """Nested rectangles around ``(rows // 2, cols // 2)``: a cell at Chebyshev distance
    ``d`` from the centre is ``sum_{k=d}^{K-1} 1/(k+1)^2``, ``K = max(rows, cols) // 2 + 1``;
    unit L2 norm."""
    if rows == 0:
        return np.zeros((0, cols))
    k = max(rows // 2, cols // 2) + 1
    inv_sq = 1.0 / np.arange(1, k + 1) ** 2
    tail = np.cumsum(inv_sq[::-1])[::-1]  # tail[d] = sum_{k >= d} 1/(k+1)^2
    i = np.abs(np.arange(rows) - rows // 2)[:, None]
    j = np.abs(np.arange(cols) - cols // 2)[None, :]
    r = tail[np.maximum(i, j)]
    return r / np.sqrt(np.sum(r * r))


def window_pattern(s: int) -> np.ndarray:
    """The L2 attack's ``(s, s)`` window perturbation, of unit L2 norm.

    The top ``s // 2`` rows are one :func:`_rectangle` bump, the other rows minus
    another (the reference's "meta pseudo-gaussian" ``eta``); the attack also uses its
    transpose.

    Example:
        >>> p = window_pattern(3)
        >>> p.shape, round(float((p * p).sum()), 6), bool((p[:1] > 0).all() and (p[1:] < 0).all())
        ((3, 3), 1.0, True)
    """
    top = _rectangle(s // 2, s)
    bottom = _rectangle(s - s // 2, s)
    eta = np.concatenate([top, -bottom], axis=0)
    return eta / np.sqrt(np.sum(eta * eta))


def _pattern_table(size: int) -> np.ndarray:
    """``table[s]`` is :func:`window_pattern` ``(s)`` in the top-left of a zero
    ``(size, size)`` array, for ``s`` in ``0..size``."""
    table = np.zeros((size + 1, size, size))
    for s in range(1, size + 1):
        table[s, :s, :s] = window_pattern(s)
    return table


class _Blocks(NamedTuple):
    """The L2 start grid, per pixel ``(H, W)``: block index (``-1`` outside any block)
    and the pixel's row/column inside its block; ``count`` blocks of side ``side``."""

    index: np.ndarray
    row: np.ndarray
    col: np.ndarray
    count: int
    side: int


def _start_blocks(h: int, w: int) -> _Blocks:
    side = max(h // 5, 1)
    offset = max((h - 5 * side) // 2, 0)
    index = np.full((h, w), -1, np.int32)
    row = np.zeros((h, w), np.int32)
    col = np.zeros((h, w), np.int32)
    count = 0
    for bi in range(h // side):
        for bj in range(w // side):
            r0, c0 = offset + bi * side, offset + bj * side
            rows, cols = slice(r0, min(r0 + side, h)), slice(c0, min(c0 + side, w))
            if r0 >= h or c0 >= w:
                continue
            index[rows, cols] = count
            row[rows, cols] = np.arange(rows.stop - r0)[:, None]
            col[rows, cols] = np.arange(cols.stop - c0)[None, :]
            count += 1
    return _Blocks(index, row, col, count, side)


# --------------------------------------------------------------- proposals (per example)


def _clip01(v: jax.Array) -> jax.Array:
    return jnp.clip(v, jnp.zeros((), v.dtype), jnp.ones((), v.dtype))


def _window(h: int, w: int, top: jax.Array, left: jax.Array, s: jax.Array) -> jax.Array:
    """``(H, W, 1)`` bool: rows in ``[top, top + s)`` and columns in ``[left, left + s)``."""
    rows = jax.lax.broadcasted_iota(jnp.int32, (h, w, 1), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (h, w, 1), 1)
    return (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)


def _uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """All of one proposal's randomness in one draw (one hash call to compile, not many)."""
    return jax.random.uniform(key, shape, jnp.float32)


def _corner(u: jax.Array, h: int, w: int, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-left corner of an ``s x s`` window inside ``H x W``, uniform over all
    ``(H - s + 1) (W - s + 1)`` positions, from two uniforms ``u`` in ``[0, 1)``."""
    span = jnp.stack([h - s + 1, w - s + 1])
    pos = jnp.minimum(jnp.floor(u * span.astype(u.dtype)).astype(jnp.int32), span - 1)
    return pos[0], pos[1]


def _signs(u: jax.Array, dtype) -> jax.Array:
    """``±1`` with probability 1/2 each, from uniforms ``u`` in ``[0, 1)``."""
    one = jnp.ones((), dtype)
    return jnp.where(u < 0.5, -one, one)


def _channel_norm(v: jax.Array) -> jax.Array:
    """``(1, 1, C)`` L2 norm over the pixels of each channel of an ``(H, W, C)`` array."""
    return jnp.sqrt(jnp.sum(v * v, axis=(0, 1), keepdims=True))


def _rescale(delta: jax.Array, eps: jax.Array) -> jax.Array:
    """``delta`` scaled to L2 norm ``eps`` (``delta / (||delta|| + 1e-12) * eps``)."""
    n = jnp.sqrt(jnp.sum(delta * delta))
    return delta / (n + jnp.asarray(1e-12, delta.dtype)) * eps


def _linf_start(key, x, eps):
    """Vertical stripes: ``x ± ε`` with one sign per column and channel."""
    _, w, c = x.shape
    stripes = jnp.broadcast_to(_signs(_uniform(key, (1, w, c)), x.dtype), x.shape)
    return _clip01(x + eps * stripes)


def _linf_propose(key, x, x_best, s, eps):
    """The window at a random position set to ``x ± ε`` (one random sign per channel)."""
    h, w, c = x.shape
    u = _uniform(key, (2 + c,))
    top, left = _corner(u[:2], h, w, s)
    inside = _window(h, w, top, left, s)
    corner = _clip01(x + eps * _signs(u[2:].reshape(1, 1, c), x.dtype))
    return jnp.where(inside, corner, x_best)


def _l2_start(key, x, eps):
    """A grid of ``±window_pattern`` blocks (one sign per block and channel), norm ``ε``."""
    h, w, c = x.shape
    blocks = _start_blocks(h, w)
    eta = jnp.asarray(window_pattern(blocks.side), x.dtype)
    u = _uniform(key, (blocks.count, 1 + c))
    flip = u[:, 0] < 0.5
    signs = _signs(u[:, 1:], x.dtype)
    index = jnp.asarray(np.maximum(blocks.index, 0))
    row, col = jnp.asarray(blocks.row), jnp.asarray(blocks.col)
    value = jnp.where(flip[index], eta[col, row], eta[row, col])  # (H, W)
    value = jnp.where(jnp.asarray(blocks.index >= 0), value, jnp.zeros_like(value))
    delta = value[:, :, None] * signs[index]  # (H, W, 1) * (H, W, C)
    return _clip01(x + _rescale(delta, eps))


def _l2_propose(key, x, x_best, s, eps, table):
    """Move the perturbation's mass from a second window into the first, add a fresh
    ``±window_pattern`` there, rescale with the remaining budget, and the whole to ``ε``."""
    h, w, c = x.shape
    tiny = jnp.asarray(1e-12, x.dtype)
    zero = jnp.zeros((), x.dtype)
    u = _uniform(key, (5 + c,))
    top, left = _corner(u[0:2], h, w, s)
    top2, left2 = _corner(u[2:4], h, w, s)
    first = _window(h, w, top, left, s)
    second = _window(h, w, top2, left2, s)
    delta = x_best - x

    norm_first = _channel_norm(jnp.where(first, delta, zero))
    norm_windows = _channel_norm(jnp.where(first | second, delta, zero))
    norm_image = jnp.sqrt(jnp.sum(delta * delta))

    size = table.shape[-1]
    row = jnp.clip(jax.lax.broadcasted_iota(jnp.int32, (h, w), 0) - top, 0, size - 1)
    col = jnp.clip(jax.lax.broadcasted_iota(jnp.int32, (h, w), 1) - left, 0, size - 1)
    eta = table[s]
    flip = u[4] < 0.5
    pattern = jnp.where(flip, eta[col, row], eta[row, col])[:, :, None]  # (H, W, 1)
    fresh = pattern * _signs(u[5:].reshape(1, 1, c), x.dtype)
    old = jnp.where(first, delta, zero) / (norm_first + tiny)
    new = jnp.where(first, fresh + old, zero)
    budget = jnp.sqrt(jnp.maximum(eps * eps - norm_image * norm_image, zero) / c + norm_windows**2)
    new = new / (_channel_norm(new) + tiny) * budget

    delta = jnp.where(first, new, jnp.where(second, zero, delta))
    return _clip01(x + _rescale(delta, eps))


class _SquareRules(NamedTuple):
    """Square's own moves in one threat model: the start, the proposal (``table``: the
    L2 window pattern is built per image size) and whether windows have odd sides."""

    start: Callable
    propose: Callable
    odd_windows: bool
    pattern_table: bool


_RULES = {
    LINF: _SquareRules(_linf_start, _linf_propose, odd_windows=False, pattern_table=False),
    L2: _SquareRules(_l2_start, _l2_propose, odd_windows=True, pattern_table=True),
}


def _rules(geometry: Norm) -> _SquareRules:
    """Square's moves in ``geometry`` (keyed by the norm's record, not its name)."""
    return _RULES[geometry]


# ------------------------------------------------------------------------ compiled core


class SquareState(NamedTuple):
    """One restart's search state (a pytree; ``B`` examples).

    Attributes:
        t: ``()`` int32 iteration.
        x_best: ``(B, H, W, C)`` best point so far.
        loss: ``(B,)`` adversarial loss at ``x_best`` (higher = more adversarial).
        margin: ``(B,)`` ``max_{i != y} f_i - f_y`` at ``x_best``.
        fooled: ``(B,)`` bool, ``x_best`` is misclassified.
        queries: ``(B,)`` int32 forward passes spent.
    """

    t: jax.Array
    x_best: jax.Array
    loss: jax.Array
    margin: jax.Array
    fooled: jax.Array
    queries: jax.Array


def _per_example(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)


def _fold(keys: jax.Array, i) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)


def _score(logits_fn, loss_fn, z, y):
    logits = logits_fn(z)
    fooled = jnp.argmax(logits, axis=-1).astype(y.dtype) != y
    return loss_fn(logits, y), cw_margin(logits, y), fooled


def _restart(logits_fn, loss_fn, x, y, keys, alive, *, norm, eps, sides) -> SquareState:
    """One restart on the examples with ``alive`` (``(B,)`` bool); the others spend no
    queries (their state is meaningless)."""
    h, w = x.shape[1:3]
    rules = _rules(get_norm(norm))
    start, propose = rules.start, rules.propose
    if rules.pattern_table:
        propose = functools.partial(propose, table=jnp.asarray(_pattern_table(min(h, w)), x.dtype))
    x0 = jax.vmap(start, in_axes=(0, 0, None))(_fold(keys, 0), x, eps)
    loss, margin, fooled = _score(logits_fn, loss_fn, x0, y)
    state = SquareState(jnp.zeros((), jnp.int32), x0, loss, margin, fooled, alive.astype(jnp.int32))
    if sides.shape[0] == 0:
        return state
    sides = jnp.asarray(sides)

    def searching(st: SquareState) -> jax.Array:
        return alive & ~st.fooled

    def cond(st: SquareState) -> jax.Array:
        return (st.t < sides.shape[0]) & jnp.any(searching(st))

    def body(st: SquareState) -> SquareState:
        cand = jax.vmap(propose, in_axes=(0, 0, 0, None, None))(
            _fold(keys, st.t + 1), x, st.x_best, sides[st.t], eps
        )
        loss, margin, fooled = _score(logits_fn, loss_fn, cand, y)
        active = searching(st)
        accept = active & ((loss > st.loss) | fooled)
        return SquareState(
            st.t + 1,
            _per_example(accept, cand, st.x_best),
            jnp.where(accept, loss, st.loss),
            jnp.where(accept, margin, st.margin),
            st.fooled | (accept & fooled),
            st.queries + active.astype(jnp.int32),
        )

    return bounded_while(cond, body, state, sides.shape[0])


def square_attack(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    keys: jax.Array,
    *,
    norm: str = "linf",
    eps: float = 8 / 255,
    queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    loss: str = "margin",
    rescale_schedule: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Square Attack on a batch, pure and jit-able (no validation, no jit).

    Args:
        logits_fn: images ``(B, H, W, C)`` in ``[0, 1]`` -> logits ``(B, d)``; only
            called forward.
        x: ``(B, H, W, C)`` clean images in ``[0, 1]``.
        y: ``(B,)`` int32 labels.
        keys: ``(B,)`` per-example PRNG keys.
        norm: ``"linf"`` or ``"l2"``.
        eps: radius.
        queries: forward-pass budget of one restart (clean pass included).
        p_init: initial fraction of pixels a window covers.
        restarts: independent restarts for the examples not yet misclassified.
        loss: ``"margin"`` or ``"ce"`` (ascended).
        rescale_schedule: run the ``p`` schedule on a 10,000-query budget rescaled to
            ``queries`` (the reference class's default) rather than on ``queries`` itself
            (``False``: AutoAttack's ``standard``).

    Returns:
        ``(x_adv (B, H, W, C), queries (B,) int32)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = lambda z: jnp.concatenate([jnp.full((1, 1), 0.5), z.mean((1, 2, 3))[:, None]], 1)
        >>> keys = jax.random.key(0)[None]
        >>> adv, q = square_attack(f, jnp.full((1, 4, 4, 1), 0.45), jnp.array([0]), keys,
        ...                        eps=0.1, queries=50)
        >>> bool(f(adv).argmax() == 1), int(q[0]) <= 50
        (True, True)
    """
    if x.ndim != 4:
        raise ValueError(f"square attack needs images (B, H, W, C), got shape {x.shape}")
    loss_fn = SQUARE_LOSSES[loss]
    e = jnp.asarray(eps, x.dtype)
    clean_logits = logits_fn(x)
    fooled = jnp.argmax(clean_logits, axis=-1).astype(y.dtype) != y
    margin = cw_margin(clean_logits, y)
    spent = jnp.ones(y.shape, jnp.int32)
    if queries < 2:
        return x, spent
    sides = window_sides(
        norm,
        x.shape[1:],
        queries=queries,
        p_init=p_init,
        iterations=max(queries - 2, 0),
        rescale=rescale_schedule,
    )
    run = functools.partial(_restart, logits_fn, loss_fn, x, y, norm=norm, eps=e, sides=sides)

    def one(carry, r):
        x_adv, fooled, margin, spent = carry
        alive = ~fooled
        st = run(_fold(keys, r), alive)
        better = alive & (st.fooled | (st.margin > margin))
        return (
            _per_example(better, st.x_best, x_adv),
            fooled | (alive & st.fooled),
            jnp.where(better, st.margin, margin),
            spent + st.queries,
        ), None

    carry = (x, fooled, margin, spent)
    carry, _ = jax.lax.scan(one, carry, jnp.arange(restarts, dtype=jnp.int32))
    return carry[0], carry[3]


# --------------------------------------------------------------------- registry config


@registry.register("square")
@dataclasses.dataclass(frozen=True)
class SquareConfig(registry.AttackConfig):
    """Square Attack (gradient-free random search) as a registered attack.

    Attributes:
        queries: forward-pass budget per example and restart (AutoAttack's 5,000).
        p_init: initial fraction of pixels a window covers.
        restarts: independent restarts for the examples not yet misclassified.
        loss: ``"margin"`` (CW margin, AutoAttack's untargeted Square) or ``"ce"``.
        rescale_schedule: ``True`` (the reference ``SquareAttack``'s default) runs the
            window-size schedule on a 10,000-query budget rescaled to ``queries``;
            ``False`` runs it on the real budget, as AutoAttack's ``standard`` version
            (and qadv's ``standard`` preset) builds Square. CLI: ``--no-rescale-schedule``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from qadv.attacks import attack, registry
        >>> cfg = registry.make("square", eps=0.1, queries=50)
        >>> cfg.label
        'Square L∞'
        >>> f = lambda z: jnp.concatenate([jnp.full((2, 1), 0.5), z.mean((1, 2, 3))[:, None]], 1)
        >>> res = attack(cfg, f, jnp.full((2, 4, 4, 1), 0.45), jnp.array([0, 1]),
        ...              key=jax.random.key(0))
        >>> res.success.tolist(), bool(res.queries[1] == 1)  # example 1 was misclassified
        ([True, True], True)
    """

    kind: ClassVar[str] = "square"

    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    loss: str = "margin"
    rescale_schedule: bool = True

    def validate(self) -> None:
        super().validate()
        check_int("queries", self.queries, 1)
        check_scalar("p_init", self.p_init, allow_zero=False, maximum=1.0)
        check_int("restarts", self.restarts, 1)
        check_choice("loss", self.loss, SQUARE_LOSSES)
        if not isinstance(self.rescale_schedule, bool):
            raise ValueError(f"rescale_schedule must be a bool, got {self.rescale_schedule!r}")

    @property
    def label(self) -> str:
        loss = "" if self.loss == "margin" else f"-{self.loss.upper()}"
        return f"Square{loss} {self.geometry.label}"

    def run(self, data, logits_fn, x, y, keys):
        x_adv, spent = square_attack(
            logits_fn,
            x,
            y,
            keys,
            norm=self.norm,
            eps=self.eps,
            queries=self.queries,
            p_init=float(self.p_init),
            restarts=self.restarts,
            loss=self.loss,
            rescale_schedule=self.rescale_schedule,
        )
        return finish(logits_fn, x, y, x_adv, norm=self.geometry, queries=spent)
