"""The ``stm-live`` command line: one sub-command per user task.

Each sub-command lives in its own module of this package and exposes

* ``HELP``: the one-line description shown by ``stm-live --help``;
* ``add_arguments(parser)``: its options;
* ``run(args) -> int``: the work, returning the exit status.

Command modules import heavy libraries (onnxruntime, torch, scipy) inside
``run`` so that ``stm-live --help`` stays fast and never imports torch.
User mistakes (:class:`~stm_live.errors.StmLiveError`) end in one clear line
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import StmLiveError

__all__ = ["COMMANDS", "main"]

#: Sub-command name -> module under ``stm_live.cli``, in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "info": "info",
    "config": "config",
    "level": "level",
    "simulate": "simulate",
    "segment": "segment",
    "batch": "batch",
    "adapt": "adapt",
    "discover": "discover",
    "evaluate": "evaluate",
    "train": "train",
    "model-id": "model_id",
    "run": "run",
    "status": "status",
    "demo": "demo",
    "keys": "keys",
    "bridge": "bridge",
    "quality": "quality",
    "view": "view",
    "label": "label",
}

EXIT_USAGE = 2
log = logging.getLogger("stm_live")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stm-live",
        description="Real-time segmentation of STM scans, line by line, next to the microscope.",
    )
    parser.add_argument("--version", action="version", version=f"stm-live {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        help_text = module.HELP
        p = sub.add_parser(name, help=help_text, description=getattr(module, "DESCRIPTION", help_text))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("stm_live")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stm-live`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args)
    try:
        return int(args._run(args))
    except StmLiveError as exc:
        print(f"stm-live {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"stm-live {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of ours.
        sys.stderr.close()
        return 0
