"""Python config files of training (``qadv train --config FILE``) and a run's config from
the command line (:func:`build_config`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qadv import config_files
from qadv.training.config.train_config import TrainConfig

__all__ = ["build_config", "load_config_file"]


def load_config_file(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Reads a Python config file: ``get_config()`` returns a :class:`TrainConfig` or a dict.

    Its module docstring should hold the command that launches it, e.g.
    ``qadv train --config experiments/configs/fmnist_pgd_at.py --out runs/x``.
    ``overrides`` (dotted or short names) are applied on top.

    Raises:
        ValueError: a missing file, no ``get_config``, or unknown keys: one line naming
            the file (see :mod:`qadv.config_files`).
    """

    def convert(result) -> TrainConfig:
        config = TrainConfig.from_dict(result)
        return config.replace(**dict(overrides)) if overrides else config

    return config_files.load_config_file(path, "get_config", kind="training", convert=convert)


def build_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    policy_opts: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """A run's config: ``config_file``'s (:func:`load_config_file`) or the defaults, with
    ``overrides`` (dotted or short names, ``seed``) on top, and ``policy_opts`` (options of
    :func:`qadv.quant.get_policy`, e.g. ``float_last``) merged into ``quant.policy_opts``.

    Example:
        >>> overrides = {"arch": "mlp", "policy": "bnn_wq", "optim.lr": 0.1, "seed": 3}
        >>> c = build_config(overrides, policy_opts={"float_last": True})
        >>> c.model.arch, c.optim.lr, c.seed, dict(c.quant.policy_opts)
        ('mlp', 0.1, 3, {'float_last': True})

    Raises:
        ValueError: an unknown key, a bad value or a bad config file (one line).
    """
    overrides = dict(overrides or {})
    base = TrainConfig() if config_file is None else load_config_file(config_file)
    if policy_opts:
        overrides["quant.policy_opts"] = {**base.quant.policy_opts, **policy_opts}
    return base.replace(**overrides) if overrides else base
