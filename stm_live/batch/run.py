"""``run_batch``: re-segment folders of scans with one model, resumably, and summarise."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ModelError, StmLiveError
from ..ingest.watch import file_sha256
from ..io.detections_csv import write_detections_csv
from ..model.format import ModelInfo, has_head, load_onnx, read_info
from .inputs import DEFAULT_PATTERNS, find_inputs
from .store import BatchStore
from .summary import FileLine, SummaryRow, summarise, summary_columns
from .work import BatchSettings, FileResult

__all__ = ["BatchReport", "run_batch"]

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Where files are segmented: :class:`~stm_live.batch.local.LocalRunner` or ``DaskRunner``."""

    description: str

    def results(self, paths: Sequence[str], known: Any) -> Iterable[FileResult]: ...

    def close(self) -> None: ...


@dataclass
class BatchReport:
    """What a batch did.

    Attributes
    ----------
    folder : Path
        The model's results folder inside ``--out``.
    classes : tuple of str
        The model's classes.
    lines : list of FileLine
        Every input file with its status and record.
    bad : list of (str, str)
        Bad files and why, in the order they were found.
    bad_before : int
        How many of them an earlier run had found bad (not tried again).
    rows : list of SummaryRow
        The summary per folder, then the total.
    detections_csv, summary_csv : Path
        The tables written.
    runner : str
        Where the files were segmented.
    seconds : float
        Wall time of the segmentation phase (after start-up).
    """

    folder: Path
    classes: tuple[str, ...]
    lines: list[FileLine] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    bad_before: int = 0
    rows: list[SummaryRow] = field(default_factory=list)
    detections_csv: Path | None = None
    summary_csv: Path | None = None
    runner: str = ""
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """How many files ended with ``status`` (done, skipped, bad)."""
        return sum(1 for line in self.lines if line.status == status)


def model_info(model_path: Path) -> ModelInfo:
    """The model's metadata, checked to be a model that segments (not a bare encoder)."""
    proto = load_onnx(model_path)
    info = read_info(proto, source=str(model_path))
    if not has_head(proto):
        raise ModelError(f"{model_path}: this is a bare encoder without prototypes; make a model from it with "
                         "`stm-live adapt`")
    return info


def _runner(
    model_path: Path, info: ModelInfo, settings: BatchSettings, *, scheduler: str | None, workers: int | None,
    provider: str, timeout_s: float, gwy: bool,
) -> Runner:
    if scheduler is None and workers == 0:
        from .local import LocalRunner

        return LocalRunner(model_path, settings, provider=provider, gwy=gwy)
    try:
        from .dask_cluster import DaskRunner, cores_available
    except ImportError as exc:
        raise StmLiveError(
            f"stm-live batch runs on Dask distributed, which cannot be imported ({exc}): "
            "pip install 'stm-live[batch]', or give --workers 0 to segment in this process"
        ) from None
    if workers is None:
        workers = cores_available() if scheduler is None else 1  # a cluster without workers would wait forever
    return DaskRunner(model_path, info.id, settings, scheduler=scheduler, workers=workers, provider=provider,
                      timeout_s=timeout_s, gwy=gwy)


def _write_summary_csv(path: Path, rows: Sequence[SummaryRow], classes: Sequence[str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=summary_columns(classes))
        writer.writeheader()
        writer.writerows(r.as_dict(classes) for r in rows)
    os.replace(tmp, path)


def run_batch(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model_path: Path,
    settings: BatchSettings | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    provider: str = "auto",
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    gwy: bool = True,
    png: bool = True,
    retry_bad: bool = False,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> BatchReport:
    """Segment every scan file under ``paths`` not done yet with this model; store and summarise.

    Parameters
    ----------
    paths : sequence of path-like
        Files and folders (searched recursively for ``patterns``).
    out : path-like
        Results root; results go to ``out/<model name>-<model id>/``
        (:mod:`stm_live.batch.store`).
    model_path : Path
        The ONNX model.
    settings : BatchSettings, optional
        Channel, direction, array sizes, detection filters (default: the daemon's defaults).
    scheduler : str, optional
        Address or scheduler file of a running Dask cluster; None starts a
        local one (or, with ``workers=0``, runs in this process).
    workers : int, optional
        Local cluster size (default: one worker per core); with ``scheduler``,
        how many workers to wait for.
    provider : {"auto", "cpu", "cuda"}
        onnxruntime provider choice on the workers.
    patterns : sequence of str
        File name patterns looked for in folders.
    gwy, png : bool
        Write a ``.gwy`` file / an overlay PNG per frame.
    retry_bad : bool
        Try again files found bad by an earlier run (default: skip them).
    progress : bool
        Show a progress bar on stderr (only when it is a terminal).
    timeout_s : float
        How long to wait for the Dask scheduler and workers.

    Returns
    -------
    BatchReport
        Every file's fate, the summary rows and the tables written.

    Raises
    ------
    StmLiveError
        A missing input path, an unusable model or cluster, or results that
        cannot be written. Bad input files never raise: they are reported.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    settings = settings or BatchSettings()
    if gwy:
        from ..io.gwy import require_gwyfile

        require_gwyfile()  # here, in one line, rather than once per file
    info = model_info(model_path)
    files = [str(p) for p in find_inputs(paths, patterns=patterns, exclude=out)]
    # What changes the result of every file; array sizes only make bare arrays readable.
    identity = {"model_sha256": file_sha256(model_path),
                **{k: v for k, v in dataclasses.asdict(settings).items() if k not in ("width_nm", "height_nm")}}
    store = BatchStore(Path(out), info, png=png, identity=identity)
    report = BatchReport(store.dir, info.classes)
    runner = _runner(model_path, info, settings, scheduler=scheduler, workers=workers, provider=provider,
                     timeout_s=timeout_s, gwy=gwy)
    report.runner = runner.description
    log.info("%d file(s) to look at, on %s; results in %s", len(files), runner.description, store.dir)
    t0 = time.perf_counter()
    try:
        bar = tqdm(total=len(files), unit="file", disable=None if progress else True, desc="batch", leave=False)
        # Log lines go through the bar while it is shown, so that they do not tear it.
        redirect = logging_redirect_tqdm(loggers=[logging.getLogger("stm_live")]) if not bar.disable else (
            contextlib.nullcontext())
        with redirect, bar:
            for result in runner.results(files, lambda sha: store.known(sha, retry_bad=retry_bad)):
                store.accept(result)
                status, record = result.status, result.record
                if status == "skipped" and result.sha256 is not None and store.was_bad(result.sha256):
                    status = "bad"  # still bad; not tried again (--retry-bad does)
                    report.bad.append((result.path, result.reason))
                    report.bad_before += 1
                elif status == "skipped" and result.sha256 is not None:
                    record = store.stored_record(result.sha256)
                elif status == "bad":
                    report.bad.append((result.path, result.reason))
                    log.warning("%s: bad file: %s", result.path, result.reason)
                report.lines.append(FileLine(result.path, status, record))
                del result  # its arrays and .gwy bytes are stored; keep only the record
                bar.update()
    finally:
        runner.close()
        store.close()
    report.seconds = time.perf_counter() - t0
    report.rows = summarise(report.lines, info.classes)
    try:
        report.detections_csv = store.dir / "detections.csv"
        write_detections_csv(report.detections_csv, store.records())
        report.summary_csv = store.dir / "summary.csv"
        _write_summary_csv(report.summary_csv, report.rows, info.classes)
    except OSError as exc:
        raise StmLiveError(f"cannot write the tables in {store.dir}: {exc}") from None
    return report
