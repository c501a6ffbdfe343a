"""Deprecated: the training API under its earlier name; import from :mod:`qadv.training`."""

import warnings

from qadv.training import *  # noqa: F403
from qadv.training import __all__  # noqa: F401

warnings.warn(
    "qadv.train is deprecated; import from qadv.training", DeprecationWarning, stacklevel=2
)
