"""How many attack steps one loop iteration holds on this backend (``lax.scan``'s unroll).

:func:`cpu_unroll` is the rule :func:`~qadv.attacks.gradient.run_attack` follows; it is
measured by ``benchmarks/perf/unroll.py``.
"""

from __future__ import annotations

import jax
from jax.extend import core as jax_core

__all__ = ["CPU_UNROLL", "CPU_UNROLL_CONV_STEPS", "bounded_while", "cpu_unroll"]


CPU_UNROLL = 4
"""On a CPU, loops of steps without a convolution hold this many steps per iteration."""

CPU_UNROLL_CONV_STEPS = 32
"""On a CPU, loops of at most this many steps with a convolution are unrolled."""


def _has_convolution(jaxpr) -> bool:
    """Whether ``jaxpr`` (or a jaxpr nested in it: jit, custom_vjp, scan, ...) convolves."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        if any(_has_convolution(sub) for sub in jax_core.jaxprs_in_params(eqn.params)):
            return True
    return False


def cpu_unroll(step, state, steps: int) -> int:
    """Steps per loop iteration of :func:`~qadv.attacks.gradient.run_attack` on this backend.

    Measured with ``benchmarks/perf/unroll.py`` (PGD-20, batch 250, 2-core CPU): XLA's
    CPU code runs a loop whose body holds a convolution about 3.7 times slower than the
    same steps unrolled (the Fashion-MNIST CNN), so such loops are unrolled up to
    :data:`CPU_UNROLL_CONV_STEPS` steps; without convolutions (MLPs) unrolling buys no
    run time and multiplies the compile time (3.6 times for the demo's MLP), so those
    loops hold :data:`CPU_UNROLL` steps per iteration. GPU/TPU loops hold one step.
    """
    if jax.default_backend() != "cpu" or steps < 1:
        return 1
    if steps <= CPU_UNROLL_CONV_STEPS and _has_convolution(jax.make_jaxpr(step)(state).jaxpr):
        return steps
    return min(CPU_UNROLL, steps)


def bounded_while(cond, body, init, max_steps: int):
    """``lax.while_loop(cond, body, init)`` for a loop known to stop within ``max_steps``
    iterations, as a ``lax.scan`` of ``max_steps`` whose iterations after the stop leave
    the carry alone (``lax.cond``): the same result, and reverse-mode differentiable
    (a ``while_loop`` is not), so the attacks that stop early when every example is
    broken (APGD's restarts, Square's queries) can be differentiated through.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = lambda a: bounded_while(lambda c: c < 10.0, lambda c: c * a, 1.0, 8)
        >>> float(f(3.0)), float(jax.grad(f)(3.0))  # 1 -> 3 -> 9 -> 27: 3 steps, d/da a^3
        (27.0, 27.0)
    """

    def step(carry, _):
        return jax.lax.cond(cond(carry), body, lambda c: c, carry), None

    return jax.lax.scan(step, init, None, length=int(max_steps))[0]
