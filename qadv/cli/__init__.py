"""The ``qadv`` command line's entry point; the commands live in :mod:`qadv.apps.cli`."""

from qadv.apps.cli import build_parser, main

__all__ = ["build_parser", "main"]
