"""Share MLIR contexts between JAX's lowerings in the test processes.

JAX lowers every program in a context of its own: ``mlir.make_ir_context`` builds a new
``ir.Context`` and loads and registers its dialects each time, about 5 ms on the 2-core
machines this suite is timed on, and the suite lowers about 8,800 programs (most of them
single operations run op by op). Reusing one context per thread for :data:`PER_CONTEXT`
lowerings produces the same programs, text for text
(``test_shared_contexts_lower_the_same_programs``), because a context only owns the
types and attributes a module is built from. The default run took 486 instead of 572
CPU-seconds with it (266 instead of 313 s on 2 cores; ``results/tests/README.md``).

This is a test-harness setting, like the XLA flags in ``conftest.py``: the library never
touches JAX's internals. Set ``QADV_TEST_FRESH_MLIR_CONTEXTS=1`` to lower as JAX does.
"""

from __future__ import annotations

import os
import threading

#: lowerings per context before a fresh one, so that no context keeps the types and
#: attributes of the whole run
PER_CONTEXT = 100


def share_contexts() -> bool:
    """Make ``jax._src.interpreters.mlir.make_ir_context`` hand out one context per
    thread, renewed every :data:`PER_CONTEXT` calls. Returns whether it is in force
    (``False`` when switched off by the environment, or when this JAX has no such
    function: then JAX lowers as it always does)."""
    if os.environ.get("QADV_TEST_FRESH_MLIR_CONTEXTS", "") not in ("", "0"):
        return False
    try:
        from jax._src.interpreters import mlir
    except ImportError:
        return False
    fresh = getattr(mlir, "make_ir_context", None)
    if fresh is None:
        return False
    if getattr(fresh, "shared_by_qadv_tests", False):
        return True
    local = threading.local()

    def shared():
        if getattr(local, "uses", PER_CONTEXT) >= PER_CONTEXT:
            local.context, local.uses = fresh(), 0
        local.uses += 1
        return local.context

    shared.shared_by_qadv_tests = True
    shared.fresh = fresh
    mlir.make_ir_context = shared
    return True
