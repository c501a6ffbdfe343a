"""Input checks shared by the whole package: each raises one ``ValueError`` of one line
that names the bad value and what is allowed.

Messages follow three forms, by where the value comes from:

* a **config field** (a config dataclass's ``__post_init__``):
  ``invalid epochs 0; choose a positive integer``;
* a **function argument** (an attack's options, checked before anything is compiled):
  ``steps must be an integer >= 1, got 0``;
* **text** typed on the command line: ``bad n 'x'; use an integer >= 1``.

An unknown name reads the same everywhere: ``unknown optimizer 'rmsprop'; choose one of:
adam, sgd``.

This module imports nothing from qadv (the ground floor); ``jax`` is imported only by the
two checks that look at arrays, so the command line starts without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "check_bool",
    "check_choice",
    "check_count",
    "check_int",
    "check_interval",
    "check_keys",
    "check_mapping",
    "check_number",
    "check_scalar",
    "is_concrete",
    "is_real",
    "parse_fraction",
    "parse_int",
]


def is_real(value: Any) -> bool:
    """A Python or NumPy real number, not a ``bool``.

    Example:
        >>> is_real(0.5), is_real(np.int32(3)), is_real(True), is_real("1")
        (True, True, False, False)
    """
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- names


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> None:
    """``value`` is one of the names ``allowed``.

    Example:
        >>> check_choice("optimizer", "rmsprop", ("adam", "sgd"))
        Traceback (most recent call last):
        ...
        ValueError: unknown optimizer 'rmsprop'; choose one of: adam, sgd
    """
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def check_keys(what: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Every key of ``given`` is one of ``allowed`` (listed in the order given).

    Example:
        >>> check_keys("Cell key", {"name": "a", "colour": 1}, ["axes", "name"])
        Traceback (most recent call last):
        ...
        ValueError: unknown Cell key 'colour'; choose from: axes, name
    """
    bad = sorted(set(given) - set(allowed))
    if bad:
        raise ValueError(f"unknown {what} {bad[0]!r}; choose from: {', '.join(allowed)}")


# ----------------------------------------------------------------------------- config fields


def check_count(name: str, value: Any, *, minimum: int = 1, allow_none: bool = False) -> None:
    """An integer ``>= minimum`` (a positive integer by default), not a ``bool``.

    Example:
        >>> check_count("epochs", 0)
        Traceback (most recent call last):
        ...
        ValueError: invalid epochs 0; choose a positive integer
        >>> check_count("seed", -1, minimum=0)
        Traceback (most recent call last):
        ...
        ValueError: invalid seed -1; choose an integer >= 0
    """
    if allow_none and value is None:
        return
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"invalid {name} {value!r}; choose {what}")


def check_number(
    name: str, value: Any, *, low: float = 0.0, strict: bool = True, allow_none: bool = False
) -> None:
    """A finite real number ``> low`` (``>= low`` unless ``strict``).

    Example:
        >>> check_number("lr", 0.0)
        Traceback (most recent call last):
        ...
        ValueError: invalid lr 0.0; choose a positive number
        >>> check_number("weight_decay", -1, strict=False)
        Traceback (most recent call last):
        ...
        ValueError: invalid weight_decay -1; choose a number >= 0
    """
    if allow_none and value is None:
        return
    if (
        not is_real(value)
        or not (value > low if strict else value >= low)
        or not np.isfinite(value)
    ):
        if strict:
            what = "a positive number" if low == 0 else f"a number > {low:g}"
        else:
            what = f"a number >= {low:g}"
        raise ValueError(f"invalid {name} {value!r}; choose {what}")


def check_interval(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    closed: str = "left",
    allow_none: bool = False,
) -> None:
    """A real number between ``low`` and ``high``; ``closed`` says which ends belong to the
    interval: ``left``, ``right``, ``both`` or ``neither``.

    Example:
        >>> check_interval("momentum", 1.0, 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: invalid momentum 1.0; choose a number in [0, 1)
        >>> check_interval("cycle_peak", 0, 0, 1, closed="neither")
        Traceback (most recent call last):
        ...
        ValueError: invalid cycle_peak 0; choose a number in (0, 1)
    """
    if allow_none and value is None:
        return
    left, right = closed in ("left", "both"), closed in ("right", "both")
    ok = is_real(value) and (low <= value if left else low < value)
    ok = ok and (value <= high if right else value < high)
    if not ok:
        interval = f"{'[' if left else '('}{low:g}, {high:g}{']' if right else ')'}"
        raise ValueError(f"invalid {name} {value!r}; choose a number in {interval}")


def check_bool(name: str, value: Any, *, allow_none: bool = False) -> None:
    """``True`` or ``False``.

    Example:
        >>> check_bool("nesterov", "yes")
        Traceback (most recent call last):
        ...
        ValueError: invalid nesterov 'yes'; choose true or false
    """
    if allow_none and value is None:
        return
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name} {value!r}; choose true or false")


def check_mapping(name: str, value: Any) -> None:
    """A mapping (of options).

    Example:
        >>> check_mapping("arch_opts", [1])
        Traceback (most recent call last):
        ...
        ValueError: invalid arch_opts [1]; expected a mapping
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"invalid {name} {value!r}; expected a mapping")


# ----------------------------------------------------------------------------- function arguments


def is_concrete(value: Any) -> bool:
    """Whether ``value`` is not a JAX tracer (its value can be checked in Python)."""
    import jax

    return not isinstance(value, jax.core.Tracer)


def check_scalar(name: str, v: Any, *, allow_zero: bool = True, maximum: float | None = None):
    """A finite real scalar ``>= 0`` (``> 0`` unless ``allow_zero``), ``<= maximum``; an
    array under ``jit`` is checked for its shape and dtype only.

    Example:
        >>> check_scalar("eps", -0.1)
        Traceback (most recent call last):
        ...
        ValueError: eps must be finite and >= 0, got -0.1
    """
    import jax.numpy as jnp

    if isinstance(v, bool | str | bytes) or v is None:
        hint = " (pass a number, e.g. 8 / 255)" if isinstance(v, str) else ""
        raise ValueError(f"{name} must be a number, got {v!r}{hint}")
    arr = jnp.asarray(v) if not isinstance(v, int | float | np.number) else np.asarray(v)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    if not jnp.issubdtype(arr.dtype, jnp.floating) and not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(f"{name} must be a real number, got dtype {arr.dtype}")
    if is_concrete(arr):
        val = float(arr)
        if not np.isfinite(val) or val < 0 or (val == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{name} must be finite and {bound}, got {val}")
        if maximum is not None and val > maximum:
            raise ValueError(f"{name} must be <= {maximum}, got {val}")


def check_int(name: str, v: Any, minimum: int) -> None:
    """An integer ``>= minimum``, not a ``bool``.

    Example:
        >>> check_int("steps", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: steps must be an integer >= 1, got 0
    """
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")


# ----------------------------------------------------------------------------- text


def parse_fraction(text: str | float | int, *, name: str = "value") -> float:
    """Parse ``"8/255"``, ``"0.03"`` or a number into a float.

    Example:
        >>> round(parse_fraction("8/255"), 6)
        0.031373
        >>> parse_fraction("0.5")
        0.5
        >>> parse_fraction("1/0", name="eps")
        Traceback (most recent call last):
        ...
        ValueError: bad eps '1/0'; use a number like 0.03 or a fraction like 8/255
    """
    if isinstance(text, int | float):
        return float(text)
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"bad {name} {text!r}; use a number like 0.03 or a fraction like 8/255"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"bad {name} {text!r}; it must be finite")
    return value


def parse_int(text: str, *, name: str = "value", minimum: int | None = None) -> int:
    """Parse an integer (``>= minimum`` when given).

    Example:
        >>> parse_int("3", name="n", minimum=1)
        3
        >>> parse_int("0", name="n", minimum=1)
        Traceback (most recent call last):
        ...
        ValueError: bad n '0'; use an integer >= 1
    """
    want = "an integer" if minimum is None else f"an integer >= {minimum}"
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"bad {name} {text!r}; use {want}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"bad {name} {text!r}; use {want}")
    return value
