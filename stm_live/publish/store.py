"""The result store: per-frame results, the processed set and quarantine, written atomically.

What it writes is built by pure functions (:func:`overlay_rgb`, :func:`array_sha256`;
records come from :mod:`stm_live.publish.documents`) that tests check on their own.
:class:`ResultStore` keeps, in ``results.dir``::

    frames/<name>-<sha256[:16]>.json   the result record (documents.stored_record)
    frames/<name>-<sha256[:16]>.npy    the uint8 class map
    frames/<name>-<sha256[:16]>.png    the overlay (results.overlay_png)
    processed.jsonl                    one line per stored result: the processed set
    quarantine/<file>, <file>.reason.txt   bad inputs and why

Every file is written to a temporary name, flushed, fsynced and renamed
(``os.replace``), and the result's line is appended to ``processed.jsonl``
(and fsynced) only after its files are in place, so a ``kill -9`` at any
moment leaves either no trace of a result (it is processed again after a
restart, into the same file names) or a complete one that is never
processed again.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

__all__ = [
    "CLASS_COLOURS",
    "ResultStore",
    "StoredResult",
    "array_sha256",
    "atomic_write",
    "jsonable",
    "overlay_rgb",
    "utc_iso",
]

log = logging.getLogger(__name__)

#: Overlay colours of classes 1, 2, ... (cycled); background shows the image only.
CLASS_COLOURS: Final = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240),
    (245, 130, 48), (240, 50, 230),
)
_OVERLAY_ALPHA: Final = 0.45
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


# --------------------------------------------------------------------------
# Pure builders
# --------------------------------------------------------------------------


def array_sha256(data: np.ndarray) -> str:
    """SHA-256 (hex) of an array's values as native-endian C-ordered bytes.

    The content hash of a frame that arrived over the wire (files are
    hashed by their bytes, :func:`stm_live.ingest.watch.file_sha256`).

    Examples
    --------
    >>> array_sha256(np.zeros((2, 2), np.float32))[:12]
    '374708fff771'
    """
    arr = np.ascontiguousarray(data)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def overlay_rgb(data: np.ndarray, class_map: np.ndarray) -> np.ndarray:
    """The image in grey with the classes painted over it.

    Parameters
    ----------
    data : numpy.ndarray
        ``(rows, cols)`` image, any real dtype; NaN (unscanned) shows black.
        Grey levels span the 1st..99th percentile of the finite values.
    class_map : numpy.ndarray
        ``(rows, cols)`` uint8; 0 is background, ``k`` gets colour
        ``CLASS_COLOURS[(k - 1) % 8]`` at 45 % opacity.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 3)`` uint8 RGB.

    Examples
    --------
    >>> rgb = overlay_rgb(np.arange(4.0).reshape(2, 2), np.array([[0, 1], [0, 0]], np.uint8))
    >>> rgb.shape, rgb.dtype.name, rgb[0, 0].tolist()
    ((2, 2, 3), 'uint8', [0, 0, 0])
    """
    image = np.asarray(data, dtype=np.float32)
    cmap = np.asarray(class_map)
    if image.ndim != 2 or cmap.shape != image.shape:
        raise ValueError(f"overlay_rgb needs a 2-D image and a class map of its shape, got {image.shape}, {cmap.shape}")
    finite = np.isfinite(image)
    values = image[finite]
    if values.size > 65536:  # percentiles of a strided sample: as good for display, ~10x faster
        values = values[:: values.size // 65536]
    grey = np.zeros(image.shape, dtype=np.uint8)
    if values.size:
        lo, hi = np.percentile(values, [1.0, 99.0])
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        with np.errstate(invalid="ignore"):
            scaled = np.clip((image - np.float32(lo)) * np.float32(scale), 0.0, 255.0)
        grey = np.where(finite, np.rint(scaled), 0.0).astype(np.uint8)
    rgb = np.empty((*image.shape, 3), dtype=np.uint8)
    rgb[...] = grey[:, :, None]
    labelled = cmap > 0
    if labelled.any():
        palette = np.array(CLASS_COLOURS, dtype=np.float32)
        colours = palette[(cmap[labelled].astype(np.int64) - 1) % len(CLASS_COLOURS)]
        blended = (1.0 - _OVERLAY_ALPHA) * rgb[labelled].astype(np.float32) + _OVERLAY_ALPHA * colours
        rgb[labelled] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return rgb


def _safe_name(name: str, limit: int = 80) -> str:
    """A file-name-safe version of a scan id or file stem."""
    safe = _UNSAFE.sub("_", name).strip("._") or "scan"
    return safe[:limit]


def jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def utc_iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    # A rename is durable only once the folder's entry is; Windows cannot open folders.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: Path, write: Callable[[IO[bytes]], object], *, fsync: bool = True, fsync_dir: bool = True
) -> None:
    """Write ``path`` through a temporary file and ``os.replace``: it is either old, or new and complete.

    With ``fsync`` the data is on disk before the rename; with ``fsync_dir`` as
    well the rename itself (leave it to the caller when it renames several files).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync and fsync_dir:
        _fsync_dir(path.parent)


@dataclass(frozen=True)
class StoredResult:
    """Where :meth:`ResultStore.store` put one result."""

    record: Path
    class_map: Path | None
    overlay: Path | None
    sha256: str


class ResultStore:
    """Per-frame results, the processed set and quarantine, all under ``results_dir``.

    Parameters
    ----------
    results_dir : path-like
        Created if missing (config ``results.dir``).
    overlay_png : bool
        Also write an overlay PNG per frame (config ``results.overlay_png``).
    fsync : bool
        fsync files and folders so results survive a power cut, not only a
        crash (turn off only in tests of speed).

    Notes
    -----
    Not safe for several processes on one folder; one daemon owns it.
    """

    def __init__(self, results_dir: str | os.PathLike[str], *, overlay_png: bool = True, fsync: bool = True) -> None:
        self.dir = Path(results_dir)
        self.frames_dir = self.dir / "frames"
        self.quarantine_dir = self.dir / "quarantine"
        self.processed_path = self.dir / "processed.jsonl"
        self.overlay_png = overlay_png
        self.fsync = fsync
        self._lock = threading.Lock()
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.frames_dir.glob(".*.tmp"):  # left by a crash mid-write
            stale.unlink(missing_ok=True)
        self._processed: dict[str, str] = self._load_processed()

    # -- the processed set -------------------------------------------------

    def _load_processed(self) -> dict[str, str]:
        processed: dict[str, str] = {}
        try:
            raw = self.processed_path.read_bytes()
        except FileNotFoundError:
            return processed
        if raw and not raw.endswith(b"\n"):
            # A crash mid-append left a torn last line; end it so the next append starts clean.
            with open(self.processed_path, "ab") as fh:
                fh.write(b"\n")
        for n, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                processed[str(entry["sha256"])] = str(entry.get("result", ""))
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d is damaged (a crash while writing it?); ignored", self.processed_path, n)
        return processed

    def is_processed(self, sha256: str) -> bool:
        """True when a result for this content hash is durably stored."""
        return sha256 in self._processed

    def __len__(self) -> int:
        return len(self._processed)

    def _mark_processed(self, sha256: str, source: str, result: str) -> None:
        line = json.dumps({"sha256": sha256, "source": source, "result": result, "t": round(time.time(), 3)})
        with open(self.processed_path, "ab") as fh:
            fh.write(line.encode("utf-8") + b"\n")
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        self._processed[sha256] = result

    # -- results -----------------------------------------------------------

    def result_stem(self, record: Mapping[str, Any]) -> str:
        """``<name>-<sha256[:16]>``: the same input always gets the same file names."""
        source = str(record.get("source", ""))
        name = Path(source).stem if source and source != "zmq" else str(record.get("scan_id", "scan"))
        return f"{_safe_name(name)}-{str(record['sha256'])[:16]}"

    def store(
        self,
        record: Mapping[str, Any],
        class_map: np.ndarray | None,
        *,
        image: np.ndarray | None = None,
    ) -> StoredResult:
        """Store one frame's result durably, then add it to the processed set.

        Parameters
        ----------
        record : Mapping
            From :func:`stm_live.publish.documents.stored_record` (needs ``sha256`` and ``source``).
        class_map : numpy.ndarray or None
            ``(rows, cols)`` uint8 class map, saved as ``.npy``; None for a
            frame that was not segmented (the record says why).
        image : numpy.ndarray, optional
            The frame's image, for the overlay PNG (skipped when None or
            ``overlay_png`` is off); it may be the frame subsampled by a
            whole step in both directions.

        Returns
        -------
        StoredResult
            The paths written.
        """
        sha = str(record["sha256"])
        cmap = None if class_map is None else np.ascontiguousarray(class_map)
        if cmap is not None and (cmap.dtype != np.uint8 or cmap.ndim != 2):
            raise ValueError(f"class_map must be a 2-D uint8 array, got {cmap.dtype} {cmap.shape}")
        stem = self.result_stem(record)
        rgb = None
        if self.overlay_png and image is not None and cmap is not None:
            # A large frame's image comes subsampled (every step-th pixel): subsample its map alike.
            step = max(1, -(-cmap.shape[0] // max(1, image.shape[0])))
            rgb = overlay_rgb(image, cmap[::step, ::step] if step > 1 else cmap)
        text = json.dumps(jsonable(record), indent=1, allow_nan=False).encode("utf-8") + b"\n"
        with self._lock:
            map_path = None
            if cmap is not None:
                map_path = self.frames_dir / f"{stem}.npy"
                atomic_write(map_path, lambda fh: np.save(fh, cmap, allow_pickle=False), fsync=self.fsync,
                             fsync_dir=False)
            overlay_path = None
            if rgb is not None:
                overlay_path = self.frames_dir / f"{stem}.png"
                atomic_write(overlay_path, lambda fh: _save_png(fh, rgb), fsync=self.fsync, fsync_dir=False)
            record_path = self.frames_dir / f"{stem}.json"
            atomic_write(record_path, lambda fh: fh.write(text), fsync=self.fsync, fsync_dir=False)
            if self.fsync:
                _fsync_dir(self.frames_dir)  # all three renames durable at once
            # Only now, with every file in place, is the input done.
            self._mark_processed(sha, str(record.get("source", "")), record_path.name)
        return StoredResult(record=record_path, class_map=map_path, overlay=overlay_path, sha256=sha)

    # -- quarantine --------------------------------------------------------

    def quarantine(self, path: str | os.PathLike[str], reason: str) -> Path | None:
        """Move a bad input file to ``quarantine/`` and write ``<name>.reason.txt`` beside it.

        Returns
        -------
        Path or None
            Where the file went; None if it had vanished (nothing to move;
            the reason is logged).
        """
        src = Path(path)
        with self._lock:
            dest = self.quarantine_dir / src.name
            n = 1
            while dest.exists() or dest.with_name(dest.name + ".reason.txt").exists():
                dest = self.quarantine_dir / f"{src.stem}-{n}{src.suffix}"
                n += 1
            try:
                shutil.move(src, dest)
            except FileNotFoundError:
                log.warning("%s: cannot quarantine, the file is gone (%s)", src, reason)
                return None
            note = (
                f"file: {src}\nquarantined: {utc_iso(time.time())}\nreason: {reason}\n"
            ).encode()
            atomic_write(dest.with_name(dest.name + ".reason.txt"), lambda fh: fh.write(note), fsync=self.fsync)
        log.warning("%s: quarantined as %s: %s", src, dest, reason)
        return dest


def _save_png(fh: IO[bytes], rgb: np.ndarray) -> None:
    from PIL import Image  # imported on first use: start-up stays fast

    # Level 1: a quarter of the time of the default for a file about as small (noisy images).
    Image.fromarray(rgb).save(fh, format="PNG", compress_level=1)


