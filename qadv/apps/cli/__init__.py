"""The ``qadv`` command line: train, info, eval, attack, evaluate, attacks, diagnose,
table, signal, study, verify, masking, demo.

Each command is one module of this package with ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args)`` (optionally ``DESCRIPTION``, and ``OUT_IS_FILE`` when its ``--out`` is a
file rather than a folder); :data:`COMMAND_MODULES` lists them in the order of ``qadv
--help``. Every user error (unknown names, bad numbers, missing data or checkpoints) is
reported as one line on stderr, with exit status 2 and no traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from qadv.apps.cli.options import Parser, add_common

__all__ = ["COMMANDS", "COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "train",
    "info",
    "eval",
    "attack",
    "evaluate",
    "attacks",
    "diagnose",
    "table",
    "signal",
    "study",
    "verify",
    "masking",
    "demo",
)
"""The command modules of :mod:`qadv.apps.cli`; a new command is one module plus its name here."""


def _commands() -> dict[str, ModuleType]:
    modules = [importlib.import_module(f"qadv.apps.cli.{m}") for m in COMMAND_MODULES]
    return {m.NAME: m for m in modules}


COMMANDS: dict[str, ModuleType] = _commands()
"""Command name -> its module."""


def build_parser() -> Parser:
    """The parser of every command, each with its own flags and the common ones
    (``--precision``, ``--no-compile-cache``)."""
    parser = Parser(
        prog="qadv",
        description="Honest robustness evaluation of quantized networks (FGSM++/PGD++).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", None))
        module.add_arguments(p)
        add_common(p)
    return parser


def _compile_cache(disabled: bool) -> None:
    """JAX's persistent compilation cache in the user's cache folder, so a rerun (a
    resumed evaluation, the next model of a sweep) does not compile again."""
    import jax

    if disabled or os.environ.get("QADV_COMPILE_CACHE", "1") in ("0", "false", "no"):
        return
    if jax.config.jax_compilation_cache_dir:  # the user chose one
        return
    root = os.environ.get("QADV_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qadv", "jax"
    )
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        return  # an unwritable cache folder only costs compile time
    jax.config.update("jax_compilation_cache_dir", root)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _prepare(args) -> None:
    """What every command does first: precision, compilation cache, a check that ``--out``
    can be written, and joining the distributed system."""
    if args.precision is not None:
        from qadv import precision

        precision.set_precision(args.precision)
    _compile_cache(args.no_compile_cache)
    if getattr(args, "out", None):
        from qadv.records import check_output_path

        out_is_file = getattr(COMMANDS[args.command], "OUT_IS_FILE", False)
        check_output_path(args.out, folder=not out_is_file)
    if getattr(args, "distributed", False):
        from qadv import parallel

        parallel.initialize()  # before any JAX computation


def main(argv: list[str] | None = None) -> int:
    """Runs ``qadv`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status
    (0, 2 for a user error reported in one line, 130 when interrupted). A bad command line
    exits through argparse with status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        parser.error(
            f"unrecognized option {argv[0]!r} before the command; options follow a COMMAND "
            f"({', '.join(COMMANDS)})"
        )
    args = parser.parse_args(argv)
    try:
        _prepare(args)
        COMMANDS[args.command].run(args)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"qadv {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"qadv {args.command}: interrupted; rerun the same command to resume", file=sys.stderr
        )
        return 130
    return 0
