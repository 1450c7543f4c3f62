"""The end-of-batch summary: per folder, files done / skipped / bad and detections per class (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FileLine", "SummaryRow", "format_table", "summarise", "summary_columns"]


@dataclass(frozen=True)
class FileLine:
    """One file's part in the summary: its status and, when segmented (now or before), its record."""

    path: str
    status: str
    record: Mapping[str, Any] | None = None


@dataclass
class SummaryRow:
    """Totals of one folder (or of everything, ``folder == "total"``)."""

    folder: str
    files: int = 0
    done: int = 0
    skipped: int = 0
    bad: int = 0
    frames: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, line: FileLine, classes: Sequence[str]) -> None:
        self.files += 1
        if line.status == "done":
            self.done += 1
        elif line.status == "skipped":
            self.skipped += 1
        else:
            self.bad += 1
        if line.record is not None:
            self.frames += 1
            for d in line.record.get("detections", []):
                name = str(d.get("class"))
                self.counts[name] = self.counts.get(name, 0) + 1
        for name in classes:
            self.counts.setdefault(name, 0)

    def as_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """Column -> value, the columns of :func:`summary_columns`."""
        return {"folder": self.folder, "files": self.files, "done": self.done, "skipped": self.skipped,
                "bad": self.bad, "frames": self.frames, **{c: self.counts.get(c, 0) for c in classes}}


def summary_columns(classes: Sequence[str]) -> list[str]:
    """Columns of the summary table: folder, file counts, frames with a result, then one per class."""
    return ["folder", "files", "done", "skipped", "bad", "frames", *classes]


def summarise(lines: Iterable[FileLine], classes: Sequence[str]) -> list[SummaryRow]:
    """Rows per folder (sorted), then a ``total`` row.

    ``done`` files were segmented by this run, ``skipped`` ones by an
    earlier run, ``bad`` ones are not readable or not segmentable (found
    now or before); ``frames`` counts files with a result (done, or skipped
    with a stored record) and each class column their detections.

    Examples
    --------
    >>> rec = {"detections": [{"class": "a"}, {"class": "a"}, {"class": "b"}]}
    >>> rows = summarise([FileLine("/d/1.sxm", "done", rec), FileLine("/d/2.sxm", "bad")], ["a", "b"])
    >>> [r.as_dict(["a", "b"]) for r in rows][-1]
    {'folder': 'total', 'files': 2, 'done': 1, 'skipped': 0, 'bad': 1, 'frames': 1, 'a': 2, 'b': 1}
    """
    per_folder: dict[str, SummaryRow] = {}
    total = SummaryRow("total")
    for line in lines:
        folder = str(Path(line.path).parent)
        per_folder.setdefault(folder, SummaryRow(folder)).add(line, classes)
        total.add(line, classes)
    for name in classes:
        total.counts.setdefault(name, 0)
    return [per_folder[k] for k in sorted(per_folder)] + [total]


def format_table(rows: Sequence[SummaryRow], classes: Sequence[str]) -> str:
    """The summary as an aligned text table for the console.

    >>> print(format_table(summarise([FileLine("/d/1.sxm", "done", {"detections": []})], ["a"]), ["a"]))
    folder  files  done  skipped  bad  frames  a
    /d          1     1        0    0       1  0
    total       1     1        0    0       1  0
    """
    columns = summary_columns(classes)
    cells = [columns] + [[str(r.as_dict(classes)[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
