"""``stm-live model-id FILE...``: check (or re-stamp) the id stored in model files."""

from __future__ import annotations

import argparse
import logging

HELP = "check that model files' stored ids match what they contain (--write re-stamps them)"
DESCRIPTION = """\
A model's id is a hash of everything that decides what it does (graph, weights, prototypes,
pitch, levelling, normalisation, detection thresholds, ...) and of nothing else; see
docs/model.md. A file edited by hand or by another tool, or one written by an stm-live whose id
was computed otherwise, carries a stale id: this prints the stored and the recomputed id of each
file, and exits 1 if any is stale. --write re-saves stale files with the recomputed id (and
without debugging information such as the exporter's stack traces).
"""
log = logging.getLogger(__name__)

#: Exit status when a stored id is stale (and --write was not given).
EXIT_STALE = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="M", help="ONNX model files or bundled model names")
    parser.add_argument("--write", action="store_true", help="re-stamp files whose stored id is stale")


def run(args: argparse.Namespace) -> int:
    from ..model.format import load_onnx, model_id, read_info, restamp
    from .segment import resolve_model_path

    stale = 0
    for name in args.files:
        path = resolve_model_path(name)
        model = load_onnx(path)
        stored, computed = read_info(model, source=str(path)).id, model_id(model)
        if stored == computed:
            print(f"{path}: {stored} ok")
        elif args.write:
            restamp(path)
            print(f"{path}: {stored or '(none)'} -> {computed} re-stamped")
        else:
            stale += 1
            print(f"{path}: stored {stored or '(none)'}, contents {computed}: stale (--write re-stamps it)")
    return EXIT_STALE if stale else 0
