"""The training API under its earlier name: everything of :mod:`qadv.training`."""

from qadv.training import *  # noqa: F403
from qadv.training import __all__  # noqa: F401
