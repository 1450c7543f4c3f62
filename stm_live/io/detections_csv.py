"""Result records as a detections table: one CSV row per detection, for spreadsheets.

The records are the ones ``stm-live segment --json`` prints and the daemon and
``stm-live batch`` store (:func:`stm_live.publish.documents.result_record`, plus
``scan_id``, ``complete`` and ``sha256`` when stored). The file is UTF-8 with a
byte-order mark, so that Excel reads non-ASCII file names right (LibreOffice,
pandas and ``csv`` with ``encoding="utf-8-sig"`` read it too); numbers use a
decimal point.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DETECTION_COLUMNS", "detection_rows", "write_detections_csv"]

#: Columns of the detections table, in order.
DETECTION_COLUMNS = (
    "source", "scan_id", "sha256", "model_id", "model_name", "channel", "rows", "cols", "width_nm", "height_nm",
    "complete", "detection", "class", "x_nm", "y_nm", "area_nm2", "score",
)


def detection_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row (column -> value) per detection of a result record (pure).

    Fields the record lacks (``scan_id``, ``complete``, ``sha256`` in a bare
    ``segment --json`` record) are empty.

    Examples
    --------
    >>> record = {"source": "a.sxm", "image": {"rows": 4, "cols": 4, "width_nm": 1.0, "height_nm": 1.0,
    ...           "channel": "Z"}, "model": {"id": "m1", "name": "si"}, "classes": ["x"],
    ...           "detections": [{"id": 1, "class": "x", "x_nm": 0.5, "y_nm": 0.25, "area_nm2": 0.1, "score": 0.9}]}
    >>> row = detection_rows(record)[0]
    >>> row["source"], row["class"], row["x_nm"], row["scan_id"]
    ('a.sxm', 'x', 0.5, '')
    """
    image = record.get("image", {})
    model = record.get("model", {})
    common = {
        "source": record.get("source", ""),
        "scan_id": record.get("scan_id", ""),
        "sha256": record.get("sha256", ""),
        "model_id": model.get("id", ""),
        "model_name": model.get("name", ""),
        "channel": image.get("channel", ""),
        "rows": image.get("rows", ""),
        "cols": image.get("cols", ""),
        "width_nm": image.get("width_nm", ""),
        "height_nm": image.get("height_nm", ""),
        "complete": record.get("complete", ""),
    }
    return [
        {**common, "detection": d.get("id", ""), "class": d["class"], "x_nm": d["x_nm"], "y_nm": d["y_nm"],
         "area_nm2": d["area_nm2"], "score": d["score"]}
        for d in record.get("detections", [])
    ]


def write_detections_csv(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> int:
    """Write the detections of ``records`` to a CSV file (atomically); return the number of rows.

    Parameters
    ----------
    path : path-like
        The ``.csv`` file; replaced if it exists.
    records : iterable of Mapping
        Result records, in the order their rows should appear.
    """
    out = Path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=DETECTION_COLUMNS)
            writer.writeheader()
            for record in records:
                rows = detection_rows(record)
                writer.writerows(rows)
                count += len(rows)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
