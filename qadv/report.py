"""The earlier name of :mod:`qadv.records` (result files, provenance, tables and plots)."""

from qadv.records import *  # noqa: F403
from qadv.records import __all__  # noqa: F401
