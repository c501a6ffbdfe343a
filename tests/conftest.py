"""Strict test environment, shared fixtures and scheduling.

Rank promotion raises everywhere and warnings are errors (pyproject). Strict dtype
promotion is applied to qadv's own numerics (attacks, signal, quantizers) through the
``strict_dtypes`` fixture: Flax's pooling and parts of Optax promote int/float
internally, so it cannot be switched on globally.

The suite is compile-bound: it builds thousands of small XLA programs and runs each on
a few images. Four settings make that cheaper without changing what is tested:

- compiled programs are kept in JAX's persistent compilation cache, in the user's cache
  folder (``$QADV_CACHE_DIR/tests``, else ``~/.cache/qadv/jax-tests``; set
  ``JAX_COMPILATION_CACHE_DIR`` to put it elsewhere, or delete it to start cold), so a
  second run of the suite on the same machine, from any clone, reads most programs back;
- on a CPU-only machine XLA compiles at backend optimisation level 1 instead of its
  default 3 (fewer of LLVM's passes): the same HLO programs, compiled about a third
  faster and run a little slower, which this suite of tiny inputs gains from. (Level 0
  is as fast but changes results in the last bit: a jitted PGD no longer equals the
  same steps run op by op, and a MILP counterexample on a decision boundary flips.)
  The suite passed at level 3 before the switch and passes at level 1;
- on the same machines XLA's CPU backend emits fused loops with its older emitter
  (``--xla_cpu_use_fusion_emitters=false``): the same fusions, compiled faster (a
  trivial jitted op: about 23 ms instead of 32 ms; ``test_protocol.py`` plus
  ``test_attacks.py``: 101 instead of 134 user-seconds from an empty cache), with
  every test passing as before;
- and each program is compiled by LLVM as one module
  (``--xla_cpu_parallel_codegen_split_count=1``) instead of being split into parts for
  parallel code generation, which only adds work for programs this small when both
  cores already run a test each: ``test_protocol.py`` plus ``test_attacks.py`` in 80-91
  instead of 101-102 user-seconds from an empty cache, every test passing as before.

A fifth setting is on every machine: JAX's lowerings share one MLIR context per thread
(``tests/mlir_contexts.py``) instead of building one per program, about 5 ms each over
some 8,800 programs; the programs are the same, text for text.

The library and the CLI always compile with XLA's defaults. Set
``QADV_TEST_XLA_OPT=default`` (or put ``--xla_backend_optimization_level`` in
``XLA_FLAGS``) to test at the defaults.
"""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")


def _accelerator_plugin() -> bool:
    """Whether a JAX GPU/TPU plugin is installed (the backend is not started yet)."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return False
    names = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")
    return any(importlib.util.find_spec(n) is not None for n in names)


if (
    os.environ.get("QADV_TEST_XLA_OPT", "1") != "default"
    and "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]
    and not _accelerator_plugin()
):
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=1"
    if "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"
    if "xla_cpu_parallel_codegen_split_count" not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] += " --xla_cpu_parallel_codegen_split_count=1"

import jax  # noqa: E402  (after XLA_FLAGS is set)
import pytest  # noqa: E402
from mlir_contexts import share_contexts  # noqa: E402
from synthetic import mnist_like_dir  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
share_contexts()


def _test_cache_dir() -> Path:
    root = os.environ.get("QADV_CACHE_DIR")
    if root:
        return Path(root) / "tests"
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(home) / "qadv" / "jax-tests"


if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(_test_cache_dir()))
# the suite compiles thousands of small programs (op by op under ``disable_jit`` too):
# all of them are kept, most take well under the 1 s default threshold
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
# (no size limit: JAX's limit needs the optional filelock package, and without it JAX
# silently stops caching)


@pytest.fixture
def strict_dtypes():
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def key():
    return jax.random.key(0)


# ----------------------------------------------------------------------------- shared model


@pytest.fixture(scope="session")
def trained_mlp(tmp_path_factory):
    """``(run_dir, data_dir)``: ``qadv train`` of a BNN-WQ MLP (2 epochs, batch 32) on a
    learnable MNIST-like set of 256 training and 40 test images. Tests only read the run
    folder (every output goes elsewhere). Built once per xdist worker; the tests that use
    it share one worker (see ``pytest_collection_modifyitems``)."""
    from qadv.apps import cli

    root, data_dir = mnist_like_dir(tmp_path_factory, "trained_mlp", n_train=256, n_test=40)
    out = root / "run"
    argv = ["train", "--dataset", "mnist", "--arch", "mlp", "--quant", "bnn_wq"]
    argv += ["--epochs", "2", "--batch-size", "32", "--out", str(out)]
    assert cli.main([*argv, "--data-dir", str(data_dir), "--no-progress"]) == 0
    return out, data_dir


# ----------------------------------------------------------------------------- markers


def pytest_configure(config):
    # registered by pytest-xdist too; here for runs without it (-p no:xdist)
    config.addinivalue_line("markers", "xdist_group(name): run on one xdist worker")


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("needs_devices")
    if marker is not None and len(jax.devices()) < marker.args[0]:
        pytest.skip(f"needs {marker.args[0]} JAX devices, found {len(jax.devices())}")


# ----------------------------------------------------------------------------- collection

#: Modules by their cost in the default run, heaviest first (each file alone on 2 CPU
#: cores). They start first so that no long module is left running alone at the end;
#: test_cli.py leads because its tests and test_precision.py's share one trained model
#: (one xdist group, one worker).
HEAVY_FIRST = (
    "test_cli.py",
    "test_demo.py",
    "test_evaluate.py",
    "test_chunked_hns.py",
    "test_attacks.py",
    "test_models.py",
    "test_protocol.py",
    "test_bounds.py",
    "test_parallel.py",
    "test_fab.py",
    "test_design_space.py",
    "test_masking.py",
    "test_precision.py",
)


def _has_tfds() -> bool:
    return importlib.util.find_spec("tensorflow_datasets") is not None


# tryfirst: pytest-xdist's own hook turns the xdist_group markers into node ids, so
# they must be in place before it runs
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Skip doctests that need tensorflow_datasets where it is missing; put the heavy
    modules first (a stable sort, so each module keeps its order); and give every test
    that uses a module- or session-scoped fixture of its own an ``xdist_group``, so
    that ``--dist loadgroup`` builds each such fixture on one worker only."""
    if not _has_tfds():
        skip = pytest.mark.skip(reason="tensorflow_datasets is not installed")
        for item in items:
            dtest = getattr(item, "dtest", None)
            if dtest is not None and any(
                "tensorflow_datasets" in ex.source for ex in dtest.examples
            ):
                item.add_marker(skip)

    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))

    for item in items:
        group = _own_fixture_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def _own_fixture_group(item) -> str | None:
    """The name of the first session-scoped fixture of this file that ``item`` uses, or
    its module's file name if it uses a module-scoped fixture of its module; ``None``
    if neither."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    own = (item.module.__name__, __name__) if hasattr(item, "module") else (__name__,)
    for name in item.fixturenames:
        defs = info.name2fixturedefs.get(name)
        if not defs or defs[-1].scope == "function" or defs[-1].func.__module__ not in own:
            continue
        return name if defs[-1].scope == "session" else item.path.name
    return None
