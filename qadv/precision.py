"""The float32 precision policy: one place decides how matrix products and convolutions
on float32 arrays are computed, for model calls, attacks, diagnostics, verification and
scoring alike.

Why it matters: on NVIDIA GPUs JAX's *default* precision for float32 matrix products and
convolutions is TF32 (a 10-bit mantissa), not float32; on TPUs it is bfloat16 passes.
Jacobians, Hessian norms, finite-difference checks, CLEVER and FAB distances then change
by about 4e-3 relative, enough to flip a masking verdict. qadv therefore sets JAX's
``jax_default_matmul_precision`` to ``"float32"`` when it is imported, so a number
computed on a GPU or TPU is the float32 number a CPU computes (up to summation order).

Policies (:data:`PRECISIONS`):

- ``"float32"`` (default): full float32 products (on a GPU: no TF32; on a TPU: 6 bf16
  passes). Verdicts and numbers as on a CPU;
- ``"tensorfloat32"``: TF32 products on GPUs that have them (faster, ~1e-3 relative
  error); on a CPU the same as float32;
- ``"bfloat16"``: one bfloat16 pass per product (fastest, ~8e-3 relative error); on a CPU
  the same as float32.

Reduced *storage* (weights and activations in bfloat16) is a separate, explicit choice:
:func:`qadv.models.precision.with_compute_dtype`. Whatever the policy, the softmax, the
losses and all attack arithmetic happen on float32 logits.

Who wins: ``QADV_PRECISION`` in the environment, else a precision that the user set for
JAX before importing qadv (``JAX_DEFAULT_MATMUL_PRECISION`` or
``jax.config.update``), else ``"float32"``. :func:`set_precision` changes it later
(``qadv --precision`` on the command line); :func:`scope` changes it for a block. The
policy is part of JAX's trace context, so each policy compiles its own functions and
switching never reuses a function compiled under another. Every result record names the
policy in force (:func:`describe`, through :func:`qadv.records.environment`).

Example:
    >>> import qadv.precision as P
    >>> P.current() in P.PRECISIONS or P.current().startswith("jax:")
    True
    >>> with P.scope("bfloat16"):
    ...     P.current()
    'bfloat16'
    >>> P.set_precision("float64")
    Traceback (most recent call last):
    ...
    ValueError: unknown precision 'float64'; choose one of: float32, tensorfloat32, bfloat16
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax

__all__ = [
    "DEFAULT",
    "PRECISIONS",
    "apply_default",
    "check_precision",
    "current",
    "describe",
    "relative_epsilon",
    "scope",
    "set_precision",
]

PRECISIONS: tuple[str, ...] = ("float32", "tensorfloat32", "bfloat16")
"""The policies, from the most to the least precise (names as JAX spells them)."""

DEFAULT = "float32"
"""The policy in force unless the user chose another."""

_EPSILON = {"float32": 2.0**-23, "tensorfloat32": 2.0**-10, "bfloat16": 2.0**-7}
# JAX's own names for the same precisions
_ALIASES = {"highest": "float32", "high": "bfloat16_3x", "default": "default"}


def check_precision(name: object) -> str:
    """``name`` if it is one of :data:`PRECISIONS`, else a one-line ``ValueError``."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of: " + ", ".join(PRECISIONS))
    return str(name)


def current() -> str:
    """The policy in force: one of :data:`PRECISIONS`, or ``"jax:<value>"`` for any other
    JAX setting the user made (``"jax:default"`` when nothing is set: the backend's
    default, TF32 on NVIDIA GPUs)."""
    value = jax.config.jax_default_matmul_precision
    value = _ALIASES.get(value, value) if value is not None else "default"
    return value if value in PRECISIONS else f"jax:{value}"


def set_precision(name: str) -> str:
    """Make ``name`` the policy from now on; return the previous one (:func:`current`)."""
    previous = current()
    jax.config.update("jax_default_matmul_precision", check_precision(name))
    return previous


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Use the policy ``name`` inside a ``with`` block (JAX's trace context: functions
    traced inside compile under it)."""
    with jax.default_matmul_precision(check_precision(name)):
        yield


def apply_default() -> str:
    """Install the policy at import time (see the module docstring); return it."""
    chosen = os.environ.get("QADV_PRECISION")
    if chosen:
        set_precision(chosen.strip())
    elif jax.config.jax_default_matmul_precision is None:
        set_precision(DEFAULT)
    return current()


def relative_epsilon(name: str | None = None) -> float:
    """The unit roundoff of one product under the policy ``name`` (default: the one in
    force): what tests and checks derive their tolerances from. A JAX setting outside
    :data:`PRECISIONS` is treated as bfloat16, the least precise."""
    name = current() if name is None else name
    return _EPSILON.get(name, _EPSILON["bfloat16"])


def describe() -> dict[str, str]:
    """What a result record states about precision: the policy and the backend."""
    return {"matmul_precision": current(), "backend": jax.default_backend()}
