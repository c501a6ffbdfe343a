"""Strict test environment.

Rank promotion raises everywhere and warnings are errors (pyproject). Strict dtype
promotion is applied to qadv's own numerics (attacks, signal, quantizers) through the
``strict_dtypes`` fixture: Flax's pooling and parts of Optax promote int/float
internally, so it cannot be switched on globally.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def strict_dtypes():
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def key():
    return jax.random.key(0)
