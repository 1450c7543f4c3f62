"""What is generated from the definitions: the committed JSON schemas, and the field tables of the docs.

``python -m stm_live.wire --schemas`` rewrites ``stm_live/schemas/<topic>.json``;
``python -m stm_live.wire --docs`` rewrites the marked tables of
``docs/protocol.md``; ``--check`` only says what is out of date. Tests fail
when either differs from :mod:`stm_live.wire.topics`.

A table in a markdown file sits between two markers::

    <!-- fields: stm.line -->
    ...generated...
    <!-- end fields -->

``<!-- fields: stm.frame, beyond stm.line -->`` lists only how ``stm.frame``
differs from ``stm.line``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Final

from .schema import Field, ListOf, MessageSpec, ObjectOf
from .topics import SPECS

__all__ = [
    "SCHEMA_DIR",
    "marked_topics",
    "render_docs",
    "render_table",
    "schema_text",
    "stale_schemas",
    "write_schemas",
]

#: Where the committed schema files live (in the source tree, or the installed package).
SCHEMA_DIR: Final = Path(__file__).resolve().parent.parent / "schemas"

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_MARKER = re.compile(
    r"(?P<open><!-- fields: (?P<topic>[\w.]+)(?:, beyond (?P<base>[\w.]+))? -->\n)"
    r"(?P<body>.*?)(?P<close><!-- end fields -->)",
    re.DOTALL,
)


def schema_text(topic: str) -> str:
    """The JSON schema file of ``topic`` (or ``"result"``), as committed: indented JSON, a final newline."""
    return json.dumps(SPECS[topic].schema(), indent=2, ensure_ascii=False) + "\n"


def stale_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    """The schema files in ``folder`` that are missing or differ from the definitions."""
    out = []
    for topic in SPECS:
        path = folder / f"{topic}.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != schema_text(topic):
            out.append(path)
    return out


def write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    """Write every out-of-date schema file into ``folder``; returns the files written."""
    stale = stale_schemas(folder)
    for path in stale:
        path.write_text(schema_text(path.stem), encoding="utf-8")
    return stale


# --------------------------------------------------------------------------
# Markdown tables
# --------------------------------------------------------------------------


def _cell(text: str) -> str:
    # "|" would end the cell; "<f4" could start an HTML tag (but inside `code` "&lt;" would show as such).
    pieces = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else _TAG_START.sub("&lt;", p) for i, p in enumerate(pieces))


def _required(f: Field) -> str:
    if f.required:
        return "yes, may be `null`" if f.nullable else "yes"
    if f.default is not None:
        return f"no, default `{json.dumps(f.default)}`"
    return "no"


def _rows(fields: tuple[Field, ...], prefix: str = "") -> list[str]:
    out = []
    for f in fields:
        name = prefix + f.name
        out.append(f"| `{name}` | {_required(f)} | {_cell(f.expected_text)} | {_cell(f.description)} |")
        kind = f.kind
        if isinstance(kind, ListOf) and isinstance(kind.item, ObjectOf):
            out += _rows(kind.item.fields, f"{name}[].")
        elif isinstance(kind, ObjectOf):
            out += _rows(kind.fields, f"{name}.")
    return out


def _table(fields: tuple[Field, ...]) -> list[str]:
    return ["| field | required | expected | meaning |", "| --- | --- | --- | --- |", *_rows(fields)]


def _rules(texts: list[str], lead: str) -> list[str]:
    if not texts:
        return []
    return ["", lead, "", *(f"* {t}" for t in texts)]


def _rule_texts(spec: MessageSpec) -> list[str]:
    together = [f"`{a}` and `{b}` come together ({why})" for a, b, why in spec.together]
    return together + [r.text for r in spec.rules]


def render_table(topic: str, base: str | None = None) -> str:
    """The markdown of ``topic``'s fields and rules (only what differs from ``base``'s, if given)."""
    spec = SPECS[topic]
    if base is None:
        lines = _table(spec.fields) + _rules(_rule_texts(spec), "Checked across fields:")
        return "\n".join(lines) + "\n"
    other = SPECS[base]
    theirs = {f.name: f for f in other.fields}
    new = tuple(f for f in spec.fields if theirs.get(f.name) != f)
    gone = [f"`{f.name}`" for f in other.fields if f.name not in spec.names]
    head = f"The fields of `{base}`" + (f" without {', '.join(gone)}" if gone else "")
    lines = [head + (", and:" if new else "."), *(["", *_table(new)] if new else [])]
    known = set(_rule_texts(other))
    extra = [t for t in _rule_texts(spec) if t not in known]
    lines += _rules(extra, "Also checked:")
    return "\n".join(lines) + "\n"


def render_docs(text: str) -> str:
    """``text`` (a markdown page) with every marked field table regenerated."""

    def one(m: re.Match[str]) -> str:
        topic, base = m["topic"], m["base"]
        if topic not in SPECS or (base is not None and base not in SPECS):
            raise ValueError(f"unknown topic in marker {m['open'].strip()!r}; expected one of {', '.join(SPECS)}")
        return m["open"] + render_table(topic, base) + m["close"]

    return _MARKER.sub(one, text)


def marked_topics(text: str) -> list[str]:
    """The topics ``text`` has a marked table of."""
    return [m["topic"] for m in _MARKER.finditer(text)]

