"""``stm-live run``: the daemon, with flags that override ``config.yaml``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

HELP = "run the daemon: segment streamed scan lines and watched files, publish and store the results"
DESCRIPTION = (
    "Run the stm-live daemon until SIGTERM or Ctrl-C: scan lines streamed over ZeroMQ (ingest.endpoint) are "
    "levelled and segmented as they arrive (seg.partial), finished scans and complete files in the watched "
    "folders are segmented whole (seg.frame), results are published (publish.endpoint) and stored in the "
    "results folder. The flags override config.yaml (which holds these and every other setting); see "
    "docs/daemon.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="configuration file (default: $STM_LIVE_CONFIG, else ./config.yaml)")
    parser.add_argument("--watch", action="append", type=Path, metavar="DIR",
                        help="watch this folder for finished scan files (repeatable; replaces watch.folders)")
    parser.add_argument("--results", type=Path, metavar="DIR", help="results folder (results.dir)")
    parser.add_argument("--ingest", metavar="ENDPOINT",
                        help="ZeroMQ endpoint to bind for scan lines (ingest.endpoint), e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--publish", metavar="ENDPOINT",
                        help="ZeroMQ endpoint to bind for results (publish.endpoint), e.g. tcp://127.0.0.1:5556")
    parser.add_argument("--model", metavar="PATH", help="ONNX model file or bundled model name (model.path)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line values as dotted configuration keys (None: flag not given)."""
    model = None
    if args.model is not None:
        from .segment import resolve_model_path

        model = str(resolve_model_path(args.model))
    return {
        "watch.folders": [str(p.resolve()) for p in args.watch] if args.watch else None,
        "results.dir": str(args.results.resolve()) if args.results is not None else None,
        "ingest.endpoint": args.ingest,
        "publish.endpoint": args.publish,
        "model.path": model,
    }


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..viewer.pages import run_with_page

    config = load_config(args.config, overrides=overrides(args))
    if not (getattr(args, "verbose", False) or getattr(args, "quiet", False)):
        logging.getLogger("stm_live").setLevel(config.log.level)
    return run_with_page(config)  # the daemon, and its page unless viewer.enabled is false
