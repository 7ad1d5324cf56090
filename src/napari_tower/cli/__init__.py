"""Command line: `napari-tower pretrain|preview|demo|finetune|predict|evaluate|bench|prototypes|export|doctor`.

Builds the same config dataclasses as the widget and calls the same core functions. User errors
print one `error: ...` line and exit with status 2; SIGINT/SIGTERM during training stop at the
next step, keep a resumable checkpoint, and exit with status 130.

Each command is a module here exposing NAME, HELP, BUILDS (the config classes it builds from the
arguments), add_arguments(parser) and run(args) -> int; `COMMANDS` is the one registry of them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType

from .. import __version__
from . import bench, demo, doctor, evaluate, export, finetune, predict, pretrain, preview, prototypes, retrain
from .console import EXIT_INTERRUPTED, EXIT_USER_ERROR, run_reporting_errors

# In the order `napari-tower --help` and docs/cli.md list them.
COMMANDS: tuple[ModuleType, ...] = (pretrain, preview, demo, finetune, predict, retrain, evaluate, bench, prototypes,
                                    export, doctor)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (docs/cli.md is generated from it)."""
    parser = argparse.ArgumentParser(prog="napari-tower", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-tower {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=getattr(command, "DESCRIPTION", None))
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def _out_of_memory(exc: BaseException) -> bool:
    from ..segment.retry import is_out_of_memory

    return is_out_of_memory(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv), run the command, return its exit status."""
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: args.run(args), args.debug, _out_of_memory)


__all__ = ["COMMANDS", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "build_parser", "main"]
