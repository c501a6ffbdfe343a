"""A model function as a static argument of a compiled program, keyed by what it reads.

``jax.jit`` caches a static argument by ``hash``/``==``: a function object whose weights
change (an attribute set on its object, a global or closure variable rebound, a
``functools.partial`` over new arrays) would otherwise be attacked with the weights
compiled in at its first call, silently. :class:`StaticFn` compares equal only while the
arrays the function reads are the same objects (and NumPy arrays hold the same bytes),
so new weights compile anew and unchanged ones reuse the compiled program.

What is looked at: a function's closure cells and the globals its code names; a bound
method's object (its attributes); a ``functools.partial``'s function, arguments and
keywords; callable objects' attributes; and the pytree leaves of each of those, to
:data:`DEPTH` levels. Arrays held deeper, or mutated inside a NumPy array of more than
:data:`NUMPY_DIGEST_BYTES`, are not seen: pass such a model as a
``jax.tree_util.Partial`` (its arrays are then arguments of the compiled program, never
compiled in) or as a new function object.

Example:
    >>> import jax.numpy as jnp
    >>> class Model:
    ...     def __init__(self, w):
    ...         self.w = w
    ...     def __call__(self, x):
    ...         return x @ self.w
    >>> m = Model(jnp.ones((2, 2)))
    >>> a = StaticFn(m)
    >>> a == StaticFn(m)
    True
    >>> m.w = -m.w  # new weights: another compiled program
    >>> a == StaticFn(m)
    False
"""

from __future__ import annotations

import functools
import hashlib
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = [
    "DEPTH",
    "NUMPY_DIGEST_BYTES",
    "StaticFn",
    "array_state",
    "jit_over_model",
    "split_logits_fn",
]

#: How many levels of attributes, closures and containers are followed.
DEPTH = 4

#: NumPy arrays up to this size are compared by content (they can change in place).
NUMPY_DIGEST_BYTES = 1 << 24

_SKIP = (types.ModuleType, type, str, bytes, int, float, complex, bool, type(None))


def _children(obj: Any) -> list[Any]:
    """The objects ``obj`` reads its state from (one level)."""
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()]
    if isinstance(obj, types.MethodType):
        return [obj.__func__, obj.__self__]
    if isinstance(obj, types.FunctionType):
        out = [c.cell_contents for c in obj.__closure__ or () if _filled(c)]
        g = obj.__globals__
        out += [g[n] for n in obj.__code__.co_names if n in g]
        return out
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, list | tuple):
        return list(obj)
    leaves = jax.tree_util.tree_leaves(obj)
    if len(leaves) != 1 or leaves[0] is not obj:  # a registered pytree (flax structs, …)
        return leaves
    state = getattr(obj, "__dict__", None)
    return list(state.values()) if isinstance(state, dict) else []


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018  (an empty cell raises)
    except ValueError:
        return False
    return True


def array_state(fn: Callable) -> tuple[Any, ...]:
    """The arrays ``fn`` reads (see the module docstring), in a fixed order."""
    found: list[Any] = []
    seen: set[int] = set()
    frontier = [fn]
    for _ in range(DEPTH + 1):
        nxt = []
        for obj in frontier:
            if id(obj) in seen or isinstance(obj, _SKIP):
                continue
            seen.add(id(obj))
            if isinstance(obj, jax.Array | np.ndarray):
                found.append(obj)
                continue
            try:
                nxt.extend(_children(obj))
            except Exception:  # an object that refuses introspection is not followed
                continue
        frontier = nxt
    return tuple(found)


def _token(a: Any) -> Any:
    if isinstance(a, np.ndarray) and not a.dtype.hasobject and a.nbytes <= NUMPY_DIGEST_BYTES:
        return (id(a), hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8)).hexdigest())
    return id(a)


class StaticFn:
    """``fn`` with ``hash``/``==`` over ``fn`` and the arrays it reads (held, so their ids
    stay theirs while this key lives in a compilation cache)."""

    __slots__ = ("__weakref__", "_arrays", "_tokens", "fn")

    def __init__(self, fn: Callable):
        self.fn = fn
        self._arrays = array_state(fn)
        self._tokens = tuple(_token(a) for a in self._arrays)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __hash__(self) -> int:
        return hash((self.fn, self._tokens))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticFn) and self.fn == other.fn and self._tokens == other._tokens

    def __repr__(self) -> str:
        return f"StaticFn({self.fn!r}, {len(self._arrays)} arrays)"


def split_logits_fn(logits_fn: Callable) -> tuple[Any, Any]:
    """``(static, dynamic)``: a ``jax.tree_util.Partial`` travels as a pytree (its bound
    weights are arguments, not compiled-in constants), any other callable as a static
    argument keyed by the function and the arrays it reads (:class:`StaticFn`: the same
    object with the same weights reuses the compiled attack; new weights compile anew)."""
    if isinstance(logits_fn, jax.tree_util.Partial):
        return None, logits_fn
    if isinstance(logits_fn, StaticFn):
        return logits_fn, None
    return StaticFn(logits_fn), None


def jit_over_model(*, static_argnames: tuple[str, ...] = ()):
    """Decorator: ``fn(logits_fn, *arrays, **options)`` compiled as one program, the model
    passed as :func:`split_logits_fn` passes it (static and keyed by its arrays, or a
    ``Partial``'s arrays as arguments), ``static_argnames`` keyword options compiled in.

    Called outside ``jit``, a function of the model would otherwise run op by op, which
    compiles one small program per operation and shape; called inside, this is the
    same as calling ``fn``.

    Example:
        >>> import jax.numpy as jnp
        >>> @jit_over_model(static_argnames=("power",))
        ... def moment(logits_fn, x, *, power=2):
        ...     return jnp.mean(logits_fn(x) ** power)
        >>> float(moment(lambda x: 2.0 * x, jnp.ones(3), power=3))
        8.0
    """

    def wrap(fn: Callable) -> Callable:
        def compiled(fn_static, fn_dyn, *args, **kwargs):
            return fn(fn_static if fn_static is not None else fn_dyn, *args, **kwargs)

        compiled.__name__ = compiled.__qualname__ = fn.__name__  # the program's name
        compiled = jax.jit(compiled, static_argnames=("fn_static", *static_argnames))

        @functools.wraps(fn)
        def call(logits_fn, *args, **kwargs):
            return compiled(*split_logits_fn(logits_fn), *args, **kwargs)

        return call

    return wrap
