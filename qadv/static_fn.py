"""A model function as a static argument of a compiled program, keyed by what it reads.

``jax.jit`` caches a static argument by ``hash``/``==``: a function object whose weights
change (an attribute set on its object, a global or closure variable rebound, a
``functools.partial`` over new arrays) would otherwise be attacked with the weights
compiled in at its first call, silently. :class:`StaticFn` compares equal only while the
arrays the function reads are the same objects (and NumPy arrays hold the same bytes),
so new weights compile anew and unchanged ones reuse the compiled program.

What is looked at: a function's closure cells, the globals its code (and the functions
defined inside it) names, and those names' attributes of the user's own modules; a bound
method's object; a ``functools.partial``'s or ``Partial``'s function, arguments and
keywords; objects' attributes (``__dict__``, ``__slots__``, arrays held by their class);
dicts, lists, tuples and registered pytrees to their leaves (a flax ``variables`` dict at
any nesting). Objects are followed :data:`DEPTH` levels deep, at most
:data:`MAX_OBJECTS` of them per call. Not seen: arrays deeper than that, or reached only
through a property or ``__getattr__``, and the content of a NumPy array larger than
:data:`NUMPY_DIGEST_BYTES` changed in place. Each set of weights is one entry of the
compilation cache, which holds them (up to JAX's cache size). For a model whose weights
change often (adversarial evaluation every epoch), pass a ``jax.tree_util.Partial``:
its bound arrays are arguments of the compiled program, never compiled in, so new
weights neither recompile nor go stale.

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
import itertools
import sys
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = [
    "DEPTH",
    "MAX_OBJECTS",
    "NUMPY_DIGEST_BYTES",
    "NUMPY_DIGEST_TOTAL",
    "StaticFn",
    "array_state",
    "jit_over_model",
    "split_logits_fn",
]

#: How many levels of objects are followed (containers and pytrees cost no level: a
#: flax ``variables`` dict is read to its leaves whatever its nesting).
DEPTH = 8

#: At most this many objects are looked at per call (a model that names a global holding
#: a million Python objects is not walked through them all).
MAX_OBJECTS = 20_000

#: NumPy arrays up to this size are compared by content (they can change in place), up to
#: :data:`NUMPY_DIGEST_TOTAL` bytes per call; larger ones by identity.
NUMPY_DIGEST_BYTES = 1 << 22
NUMPY_DIGEST_TOTAL = 1 << 24

_SKIP = (types.ModuleType, str, bytes, int, float, complex, bool, type(None), types.CodeType)


def _code_names(code: types.CodeType) -> list[str]:
    """Global and attribute names of ``code`` and of the functions defined inside it."""
    names = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names += _code_names(c)
    return names


def _attributes(obj: Any) -> list[Any]:
    """An object's instance attributes (``__dict__`` and ``__slots__``) and the arrays
    among its class's attributes (class-level weights)."""
    out: list[Any] = []
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        out += list(state.values())
    for klass in type(obj).__mro__[:-1]:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                out.append(getattr(obj, name))
        out += _class_arrays(klass)
    return out


def _class_arrays(klass: type) -> list[Any]:
    """The arrays among a class's own attributes (class-level weights)."""
    return [v for k, v in vars(klass).items() if not k.startswith("__") and _is_array(v)]


def _children(obj: Any) -> list[Any]:
    """The objects ``obj`` reads its state from (one level; containers flattened)."""
    if isinstance(obj, functools.partial):  # jax.tree_util.Partial included
        return [obj.func, *obj.args, *obj.keywords.values()]
    if isinstance(obj, types.MethodType):
        return [obj.__func__, obj.__self__]
    if isinstance(obj, types.FunctionType):
        out = [c.cell_contents for c in obj.__closure__ or () if _filled(c)]
        g, names = obj.__globals__, _code_names(obj.__code__)
        out += [g[n] for n in names if n in g]
        # attributes the code reads from the user's own modules (``state.W``)
        mods = [v for v in g.values() if isinstance(v, types.ModuleType) and _user_module(v)]
        out += [getattr(m, n) for m in mods for n in set(names) if hasattr(m, n)]
        return out
    if isinstance(obj, type):
        return _class_arrays(obj)
    leaves = jax.tree_util.tree_leaves(obj)  # dicts, lists, tuples, registered pytrees
    if len(leaves) != 1 or leaves[0] is not obj:
        return leaves
    return _attributes(obj)


def _user_module(m: types.ModuleType) -> bool:
    """A module of the user's own (not an installed package nor the standard library):
    its attributes may hold weights."""
    if m.__name__ in sys.builtin_module_names:
        return False
    path = getattr(m, "__file__", None) or ""  # none: made at run time, the user's
    return "site-packages" not in path and "/lib/python" not in path


def _is_array(v: Any) -> bool:
    return isinstance(v, jax.Array | np.ndarray)


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
    level: list[Any] = [fn]
    for _ in range(DEPTH + 1):
        nxt: list[Any] = []
        i = 0
        while i < len(level) and len(seen) < MAX_OBJECTS:
            obj, i = level[i], i + 1
            try:
                if isinstance(obj, _SKIP) or id(obj) in seen:  # numbers cost no budget
                    continue
                seen.add(id(obj))
                if _is_array(obj):
                    found.append(obj)
                elif isinstance(obj, dict | list | tuple):  # containers cost no level
                    items = obj.values() if isinstance(obj, dict) else obj
                    level.extend(itertools.islice(items, MAX_OBJECTS - len(seen)))
                else:
                    nxt.extend(_children(obj))
            except Exception:  # an object that refuses introspection is not followed
                continue
        level = nxt
    return tuple(found)


def _tokens(arrays: tuple[Any, ...]) -> tuple[Any, ...]:
    budget, out = NUMPY_DIGEST_TOTAL, []
    for a in arrays:
        small = isinstance(a, np.ndarray) and not a.dtype.hasobject
        if small and a.nbytes <= min(NUMPY_DIGEST_BYTES, budget):
            budget -= a.nbytes
            digest = hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8)).hexdigest()
            out.append((id(a), digest))
        else:
            out.append(id(a))
    return tuple(out)


class StaticFn:
    """``fn`` with ``hash``/``==`` over ``fn`` and the arrays it reads (held, so their ids
    stay theirs while this key lives in a compilation cache)."""

    __slots__ = ("__weakref__", "_arrays", "_tokens", "fn")

    def __init__(self, fn: Callable):
        self.fn = fn
        self._arrays = array_state(fn)
        self._tokens = _tokens(self._arrays)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __hash__(self) -> int:
        try:
            key = hash(self.fn)
        except Exception:  # an unhashable callable (a dataclass with eq): its identity
            key = id(self.fn)
        return hash((key, self._tokens))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StaticFn) or self._tokens != other._tokens:
            return False
        if self.fn is other.fn:
            return True
        try:
            return bool(self.fn == other.fn)  # bound methods of one object are equal
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"StaticFn({self.fn!r}, {len(self._arrays)} arrays)"


def split_logits_fn(logits_fn: Callable) -> tuple[Any, Any]:
    """``(static, dynamic)``: a ``jax.tree_util.Partial`` travels as a pytree (its bound
    weights are arguments, not compiled-in constants), any other callable as a static
    argument keyed by the function and the arrays it reads (:class:`StaticFn`: the same
    object with the same weights reuses the compiled attack; new weights compile anew)."""
    if isinstance(logits_fn, jax.tree_util.Partial):
        # the arrays bound in the Partial are arguments; its function is keyed like any other
        func = logits_fn.func
        if not isinstance(func, StaticFn):
            func = StaticFn(func)
        return None, jax.tree_util.Partial(func, *logits_fn.args, **logits_fn.keywords)
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
