"""``python -m stm_live.wire``: regenerate (or check) the schema files and the docs' field tables.

Usage::

    python -m stm_live.wire --schemas --docs          # rewrite what is out of date
    python -m stm_live.wire --check                   # exit 1 and say what is out of date
    python -m stm_live.wire --docs path/to/protocol.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .docs import SCHEMA_DIR, marked_topics, render_docs, stale_schemas, write_schemas

DEFAULT_DOCS = Path("docs/protocol.md")


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate or check the files derived from :mod:`stm_live.wire.topics`; 0 when all is up to date."""
    parser = argparse.ArgumentParser(
        prog="python -m stm_live.wire",
        description="Regenerate the JSON schemas and the docs' field tables from the message definitions "
        "(stm_live/wire/topics.py).",
    )
    parser.add_argument("--schemas", action="store_true", help=f"rewrite the schema files in {SCHEMA_DIR}")
    parser.add_argument("--docs", nargs="?", const=DEFAULT_DOCS, type=Path, metavar="PATH",
                        help=f"rewrite the marked field tables of PATH (default {DEFAULT_DOCS})")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the schemas or the docs (--docs PATH, default "
                        f"{DEFAULT_DOCS}) are out of date")
    args = parser.parse_args(argv)
    if not (args.schemas or args.docs or args.check):
        parser.error("nothing to do: give --schemas, --docs or --check")
    docs_path: Path | None = args.docs or (DEFAULT_DOCS if args.check else None)
    docs_text = None
    if docs_path is not None:
        try:
            docs_text = docs_path.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"error: {docs_path}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
            return 2
        if not marked_topics(docs_text):
            print(f"error: {docs_path}: no '<!-- fields: TOPIC -->' marker to fill in", file=sys.stderr)
            return 2
    try:
        new_docs = None if docs_text is None else render_docs(docs_text)
    except ValueError as exc:
        print(f"error: {docs_path}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = [str(p) for p in stale_schemas()]
        if new_docs is not None and new_docs != docs_text:
            stale.append(str(docs_path))
        for name in stale:
            print(f"out of date: {name} (run: python -m stm_live.wire --schemas --docs)")
        return 1 if stale else 0
    if args.schemas:
        for written in write_schemas():
            print(f"wrote {written}")
    if docs_path is not None and new_docs is not None and new_docs != docs_text:
        docs_path.write_text(new_docs, encoding="utf-8")
        print(f"wrote {docs_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
