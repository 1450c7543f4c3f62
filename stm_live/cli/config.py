"""``stm-live config [PATH]``: print the effective configuration or what is wrong with it."""

from __future__ import annotations

import argparse
import json

HELP = "print the effective configuration (defaults < file < environment) or the error in it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", nargs="?", metavar="PATH",
        help="configuration file (default: $STM_LIVE_CONFIG, else ./config.yaml if present)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.add_argument("--defaults", action="store_true", help="ignore files and environment: built-in defaults only")


def run(args: argparse.Namespace) -> int:
    from ..config import dump_config, load_config

    if args.defaults:
        config = load_config(use_default_file=False, environ={})
    else:
        config = load_config(args.path)
    if args.json:
        print(json.dumps(config.to_dict(), indent=2))
    else:
        print(dump_config(config), end="")
    return 0
