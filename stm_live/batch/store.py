"""Where a batch's results go: one folder per model inside ``--out``.

::

    OUT/<model name>-<model id>/
        frames/<name>-<sha256[:16]>.json   the result record (the daemon's ResultStore)
        frames/<name>-<sha256[:16]>.npy    the uint8 class map
        frames/<name>-<sha256[:16]>.png    the overlay (unless --no-png)
        frames/<name>-<sha256[:16]>.gwy    the Gwyddion file (unless --no-gwy)
        processed.jsonl                    what is done, by content hash (ResultStore)
        bad.jsonl                          files found bad, by content hash, and why
        batch.json                         the model file's hash and the settings the results were made with
        detections.csv                     one row per detection of every stored record
        summary.csv                        the last run's table per folder and class

The processed set is keyed by content hash inside a folder of one model id,
so a rerun skips what this model has done, and another model starts afresh.
A model's id does not cover its detection thresholds, nor the batch's
channel, direction and filters, so ``batch.json`` records them (and the
model file's SHA-256) and a rerun with others is refused rather than mixed in
(array sizes, ``--width-nm``, are not recorded: they make bare arrays
readable, and arrays done before are not redone with other sizes).
Only the process that runs the batch writes here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import StmLiveError
from ..io.gwy import write_gwy
from ..model.format import ModelInfo
from ..publish import ResultStore
from .work import FileResult

__all__ = ["BatchStore"]

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def model_folder_name(info: ModelInfo) -> str:
    """``<name>-<id>`` made file-name safe (pure).

    >>> model_folder_name(ModelInfo(name="si001 ash3", classes=("a",), nm_per_px=0.1, embedding_dim=8, id="7eab7f62"))
    'si001_ash3-7eab7f62'
    """
    name = _UNSAFE.sub("_", info.name).strip("._") or "model"
    return f"{name}-{_UNSAFE.sub('_', info.id) or 'noid'}"


class BatchStore:
    """The results folder of one model: stored results, their .gwy files, the bad-file ledger.

    Parameters
    ----------
    out : path-like
        ``--out``; the model's folder is made inside it.
    info : ModelInfo
        The model (its name and id name the folder).
    png : bool
        Write an overlay PNG per frame.
    fsync : bool
        Make each result durable before the next (as the daemon does).
    identity : Mapping, optional
        What the results depend on beyond the model id (the model file's
        hash, the settings), checked against ``batch.json``.

    Raises
    ------
    StmLiveError
        The folder cannot be made, or holds results made with another
        model file or other settings.
    """

    def __init__(self, out: Path, info: ModelInfo, *, png: bool = True, fsync: bool = True,
                 identity: Mapping[str, Any] | None = None):
        self.info = info
        self.dir = Path(out) / model_folder_name(info)
        self._identity_pending: dict[str, Any] | None = None
        try:
            self.results = ResultStore(self.dir, overlay_png=png, fsync=fsync)
            if identity is not None:
                self._check_identity(dict(identity))
        except OSError as exc:
            raise StmLiveError(f"--out {out}: cannot use the results folder {self.dir}: {exc}") from None
        self.bad_path = self.dir / "bad.jsonl"
        self._bad = self._load_bad()
        self._stored = {p.name[-21:-5]: p for p in self.results.frames_dir.glob("*.json")}

    def _check_identity(self, identity: dict[str, Any]) -> None:
        path = self.dir / "batch.json"
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._identity_pending = identity  # written with the first result, not before
            return
        except ValueError:
            raise StmLiveError(f"{path} is damaged; move the folder {self.dir} aside") from None
        if recorded != json.loads(json.dumps(identity)):
            changed = ", ".join(f"{k} {recorded.get(k)!r} -> {identity.get(k)!r}" for k in sorted(identity)
                                if recorded.get(k) != identity.get(k))
            raise StmLiveError(
                f"{self.dir} holds results made with another model file or other settings ({changed}); "
                "give another --out, or the earlier settings"
            )

    def _load_bad(self) -> dict[str, str]:
        bad: dict[str, str] = {}
        try:
            lines = self.bad_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return bad
        for n, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
                bad[str(entry["sha256"])] = str(entry.get("reason", ""))
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d is damaged; ignored", self.bad_path, n)
        return bad

    def known(self, sha256: str, *, retry_bad: bool = False) -> str | None:
        """Why content is skipped (done before, or bad before), or None to segment it."""
        if self.results.is_processed(sha256):
            return "done before"
        if not retry_bad and sha256 in self._bad:
            return f"found bad before: {self._bad[sha256]}"
        return None

    def was_bad(self, sha256: str) -> bool:
        """True when an earlier run found this content bad."""
        return sha256 in self._bad

    def stored_record(self, sha256: str) -> dict[str, Any] | None:
        """The stored record of content done before (None if its file is gone)."""
        path = self._stored.get(sha256[:16])
        if path is None:
            return None
        try:
            record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record

    def records(self) -> Iterator[dict[str, Any]]:
        """Every stored record, sorted by source and scan id."""
        loaded = []
        for path in self.results.frames_dir.glob("*.json"):
            try:
                loaded.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                log.warning("%s: not a readable result record; left out of detections.csv", path)
        yield from sorted(loaded, key=lambda r: (str(r.get("source", "")), str(r.get("scan_id", ""))))

    def close(self) -> None:
        """Remove the ``quarantine/`` folder ResultStore makes when it stayed empty (a batch moves no input)."""
        with contextlib.suppress(OSError):
            self.results.quarantine_dir.rmdir()

    def accept(self, result: FileResult) -> None:
        """Store a finished file's result, or note a bad one in the ledger.

        Raises
        ------
        StmLiveError
            A result cannot be written (disk full, no permission): the batch stops.
        """
        try:
            if result.status == "done":
                self._store(result)
            elif result.status == "bad" and result.sha256 is not None:
                self._note_bad(result)
        except OSError as exc:
            raise StmLiveError(f"cannot write the results of {result.path} in {self.dir}: {exc}") from None

    def _store(self, result: FileResult) -> None:
        record = result.record
        assert record is not None and (result.class_map is not None or record.get("not_segmented"))
        if self._identity_pending is not None:
            (self.dir / "batch.json").write_text(json.dumps(self._identity_pending, indent=1) + "\n",
                                                 encoding="utf-8")
            self._identity_pending = None
        stem = self.results.result_stem(record)
        if result.gwy is not None:
            # Before the record: once the record is stored the file counts as done.
            write_gwy(self.results.frames_dir / f"{stem}.gwy", result.gwy)
        stored = self.results.store(record, result.class_map, image=result.levelled)
        self._stored[str(record["sha256"])[:16]] = stored.record

    def _note_bad(self, result: FileResult) -> None:
        assert result.sha256 is not None
        line = json.dumps({"sha256": result.sha256, "path": result.path, "reason": result.reason,
                           "t": round(time.time(), 3)})
        with open(self.bad_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        self._bad[result.sha256] = result.reason
