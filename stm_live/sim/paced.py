"""A folder filled the way a microscope controller fills it: for the watcher's tests and the demo.

A controller writes a scan file when the frame completes, under its final
name, in chunks, while the next frame is already being acquired. A watcher
therefore sees a file appear, grow, and stop growing. :func:`write_paced`
reproduces that with simulated scans: every ``frame_time_s`` one ``.sxm``
appears in ``out_dir`` and grows by ``chunk_bytes`` every
``chunk_interval_s``. The ground-truth sidecars go to ``truth_dir`` (by
default ``out_dir/truth``), written atomically *before* their scan file
appears, so a watched folder holds scan files only (``.mask.npy`` would
otherwise look like a scan array to a reader of ``.npy`` files).

This is an I/O edge: time and sleeping are injected, so tests run it with a
fake clock and no waiting.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .scan import SimulatedScan
from .truth import scan_file_bytes, write_truth

__all__ = ["PacedFile", "write_paced"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PacedFile:
    """One file the paced writer finished: where, how big, when (clock time) it appeared and completed."""

    path: Path
    size: int
    appeared_s: float
    completed_s: float


def write_paced(
    scans: Iterable[tuple[str, SimulatedScan]],
    out_dir: str | os.PathLike[str],
    *,
    frame_time_s: float,
    chunk_bytes: int = 65536,
    chunk_interval_s: float = 0.02,
    truth_dir: str | os.PathLike[str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_file: Callable[[PacedFile], None] | None = None,
) -> list[PacedFile]:
    """Write each ``(stem, scan)`` as ``out_dir/stem.sxm`` at the pace of a microscope.

    Parameters
    ----------
    scans : iterable of (str, SimulatedScan)
        File stems and scans, consumed lazily (a generator can simulate the
        next frame while the previous one "is acquired").
    out_dir : str or path-like
        The folder a watcher watches; created if needed.
    frame_time_s : float
        Acquisition time of one frame, s: file ``k`` starts to appear
        ``(k + 1) * frame_time_s`` after the call (later if generating or
        writing fell behind).
    chunk_bytes : int
        Bytes written per chunk.
    chunk_interval_s : float
        Pause after each chunk but the last, s.
    truth_dir : str or path-like, optional
        Where the ``.truth.json`` / ``.mask.npy`` sidecars go (default ``out_dir/truth``).
    sleep, clock : callable
        ``time.sleep`` and ``time.monotonic`` unless a test injects others.
    on_file : callable, optional
        Called with each :class:`PacedFile` once it is complete.

    Returns
    -------
    list of PacedFile
    """
    if not (frame_time_s >= 0 and chunk_interval_s >= 0):
        raise ValueError(f"frame_time_s and chunk_interval_s must be >= 0, got {frame_time_s!r}, {chunk_interval_s!r}")
    if not (isinstance(chunk_bytes, int) and chunk_bytes > 0):
        raise ValueError(f"chunk_bytes must be a positive integer, got {chunk_bytes!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = out / "truth" if truth_dir is None else Path(truth_dir)
    done: list[PacedFile] = []
    deadline = clock()
    for stem, scan in scans:
        blob = scan_file_bytes(scan)
        write_truth(scan, truth, stem)
        deadline += frame_time_s
        wait = deadline - clock()
        if wait > 0:
            sleep(wait)
        else:
            deadline = clock()  # fell behind: do not try to catch up with a burst
        path = out / f"{stem}.sxm"
        appeared = clock()
        with open(path, "wb") as fh:
            for start in range(0, len(blob), chunk_bytes):
                fh.write(blob[start:start + chunk_bytes])
                fh.flush()
                if start + chunk_bytes < len(blob) and chunk_interval_s > 0:
                    sleep(chunk_interval_s)
        item = PacedFile(path, len(blob), appeared, clock())
        log.info("wrote %s (%d bytes in %.2f s)", path, item.size, item.completed_s - item.appeared_s)
        done.append(item)
        if on_file is not None:
            on_file(item)
    return done
