"""What happens to one file of a batch, wherever it runs (this process or a Dask worker).

Two steps, so that a rerun costs one read of each file and no segmentation:
:func:`hash_file` (the content hash the daemon uses, :func:`stm_live.ingest.watch.file_sha256`),
then, for content not stored yet, :func:`segment_file`: the watcher's
completeness check, the reader, the model, and the result record built by
:func:`compose_record`, the one place that calls the daemon's own record
builders.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ModelError, ScanReadError
from ..frame import Frame, Segmentation
from ..ingest.watch import Complete, Incomplete, file_sha256, file_state
from ..io import read_frame
from ..io.gwy import gwy_bytes, gwy_container
from ..level import LevelError
from ..model.prepare import level_for_model
from ..model.runtime import SegmentationModel
from ..model.tiles import applicability
from ..publish import documents as docs
from ..publish.documents import position, result_record, stored_record
from ..publish.store import CLASS_COLOURS

__all__ = ["BatchSettings", "FileResult", "Hashed", "compose_record", "hash_file", "result_gwy", "segment_file"]

Status = Literal["done", "skipped", "bad"]


@dataclass(frozen=True)
class BatchSettings:
    """How every file of a batch is read and segmented (the daemon's ``input`` and ``model`` options).

    Attributes
    ----------
    channel, direction : str
        Which image of each file (config ``input.channel`` / ``input.direction``).
    width_nm, height_nm : float or None
        Physical size of array files, which store none.
    min_score, min_area_nm2 : float or None
        Detection filters for every class; None keeps the model's calibrated ones.
    """

    channel: str = "Z"
    direction: str = "forward"
    width_nm: float | None = None
    height_nm: float | None = None
    min_score: float | None = None
    min_area_nm2: float | None = None


@dataclass(frozen=True)
class Hashed:
    """A file read once for its content hash: ``sha256`` of its bytes."""

    path: str
    sha256: str


@dataclass(frozen=True, eq=False)
class FileResult:
    """What became of one file.

    Attributes
    ----------
    path : str
        The file.
    status : {"done", "skipped", "bad"}
        Segmented now; skipped (its content was stored, or found bad, before);
        or bad (``reason`` says why).
    sha256 : str or None
        Content hash; None when the file could not even be read.
    record : dict or None
        The stored result record (:func:`compose_record`) when done.
    class_map : numpy.ndarray or None
        ``(rows, cols)`` uint8 when done.
    levelled : numpy.ndarray or None
        The image the model saw, levelled, ``(rows, cols)`` float32 in the
        channel's unit, NaN where not acquired, when done (the overlay PNG's image).
    gwy : bytes or None
        The frame's ``.gwy`` file (:func:`result_gwy`), when done and asked for:
        made where the file is segmented, so that Dask workers share that work.
    reason : str
        Why the file is bad (or was skipped).
    seconds : float
        Time spent on it where it ran.
    """

    path: str
    status: Status
    sha256: str | None = None
    record: dict[str, Any] | None = None
    class_map: np.ndarray | None = None
    levelled: np.ndarray | None = None
    gwy: bytes | None = None
    reason: str = ""
    seconds: float = 0.0


def compose_record(path: str | os.PathLike[str], frame: Frame, seg: Segmentation, *, sha256: str) -> dict[str, Any]:
    """The stored result record of a file: what the daemon stores for the same file and model.

    The one call of the daemon's record builders in ``stm-live batch``
    (:func:`stm_live.publish.documents.result_record` and
    :func:`~stm_live.publish.documents.stored_record`, with the daemon's
    ``scan_id``, ``complete`` and ``position``); only ``timings_ms`` and the
    path in ``source`` can differ from the daemon's record.
    """
    return stored_record(
        result_record(str(path), frame, seg), scan_id=Path(path).stem, complete=frame.complete, sha256=sha256,
        where=position(frame),
    )


def result_gwy(record: Mapping[str, Any], levelled: np.ndarray, class_map: np.ndarray, *, unit: str,
               levelling: Mapping[str, Any]) -> bytes:
    """The ``.gwy`` file of one result: the levelled image, one masked channel per class, the record's provenance."""
    image = record["image"]
    counts = dict.fromkeys(record["classes"], 0)
    for d in record["detections"]:
        counts[d["class"]] = counts.get(d["class"], 0) + 1
    meta = {
        "stm-live source": record["source"],
        "stm-live sha256": record.get("sha256", ""),
        "stm-live model": f"{record['model']['name']} [{record['model']['id']}]",
        "stm-live levelling": f"as the model levels ({dict(levelling).get('method', 'step-aware')})",
        **{f"stm-live detections {c}": n for c, n in counts.items()},
    }
    container = gwy_container(levelled, class_map, record["classes"], width_m=image["width_nm"] * 1e-9,
                              height_m=image["height_nm"] * 1e-9, unit=unit, channel=image["channel"],
                              colours=CLASS_COLOURS, meta=meta)
    return gwy_bytes(container)


def hash_file(path: str) -> Hashed | FileResult:
    """Read a file for its content hash; a :class:`FileResult` marked bad if it cannot be read."""
    t0 = time.perf_counter()
    try:
        return Hashed(path, file_sha256(path))
    except OSError as exc:
        return FileResult(path, "bad", reason=f"cannot read the file: {exc.strerror or exc}",
                          seconds=time.perf_counter() - t0)


def segment_file(
    model: SegmentationModel, path: str, sha256: str, settings: BatchSettings, *, gwy: bool = False
) -> FileResult:
    """Judge, read and segment one file, as the daemon does with a file its watcher found complete.

    Parameters
    ----------
    model : SegmentationModel
        The model (built once per process or worker).
    path : str
        The scan file.
    sha256 : str
        Its content hash (:func:`hash_file`).
    settings : BatchSettings
        Channel, direction, sizes and detection filters.
    gwy : bool
        Also make the frame's ``.gwy`` file (:func:`result_gwy`).

    Returns
    -------
    FileResult
        ``done`` with the record, class map, levelled image (and ``.gwy``), or ``bad``
        with the reason (a file the watcher would not call complete, that
        the reader refuses, or that the model cannot segment). Never raises
        for a bad file.
    """
    t0 = time.perf_counter()

    def bad(reason: str) -> FileResult:
        return FileResult(path, "bad", sha256, reason=reason, seconds=time.perf_counter() - t0)

    state = file_state(path)
    if isinstance(state, Incomplete):
        return bad(f"truncated or still being written: {state.describe()}")
    if not isinstance(state, Complete):
        return bad(getattr(state, "reason", "the file is gone"))
    try:
        frame = read_frame(path, channel=settings.channel, direction=settings.direction,
                           width_nm=settings.width_nm, height_nm=settings.height_nm)
        reason = applicability(model, frame)
        if reason is not None:  # as the daemon: a record that says why, so the file is done
            record = docs.not_segmented(Path(path).stem, frame, model_id=model.id, model_name=model.name,
                                        reason=reason, source=str(path), complete=frame.complete,
                                        sha256=sha256).local["record"]
            return FileResult(path, "done", sha256, record=record, seconds=time.perf_counter() - t0)
        levelled = None
        if frame.rows_valid:
            # Levelled here, once, as SegmentationModel.segment would: the same pixels go to
            # the model, and the levelled image is what the .gwy and overlay files show.
            rows = frame.valid_rows
            acquired = level_for_model(frame.data[rows], model.info)
            levelled = np.full(frame.data.shape, np.nan, dtype=acquired.dtype)
            levelled[rows] = acquired
        seg = model.segment(frame, levelled=levelled, min_score=settings.min_score,
                            min_area_nm2=settings.min_area_nm2)
    except ScanReadError as exc:
        return bad(exc.reason)
    except (ModelError, LevelError, ValueError) as exc:
        return bad(f"cannot segment it: {exc}")
    record = compose_record(path, frame, seg, sha256=sha256)
    gwy_file = None
    if gwy and levelled is not None:
        gwy_file = result_gwy(record, levelled, seg.class_map, unit=frame.unit, levelling=model.info.levelling)
    return FileResult(path, "done", sha256, record=record, class_map=seg.class_map, levelled=levelled, gwy=gwy_file,
                      seconds=time.perf_counter() - t0)
