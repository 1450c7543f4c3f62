"""Running a batch in this process, one file after the other (``stm-live batch --workers 0``).

The reference the Dask runner is measured and tested against: the same
steps (:func:`~stm_live.batch.work.hash_file`, then
:func:`~stm_live.batch.work.segment_file`) with one model in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..model.runtime import SegmentationModel
from .work import BatchSettings, FileResult, hash_file, segment_file

__all__ = ["LocalRunner"]

log = logging.getLogger(__name__)


class LocalRunner:
    """Segments files in this process with one onnxruntime session.

    Parameters
    ----------
    model_path : path-like
        The ONNX model.
    settings : BatchSettings
        How files are read and segmented.
    provider : {"auto", "cpu", "cuda"}
        onnxruntime provider choice.
    threads : int
        Intra-op threads (0: onnxruntime's default, all cores).
    gwy : bool
        Make a ``.gwy`` file per frame.
    """

    description = "this process"

    def __init__(self, model_path: Path, settings: BatchSettings, *, provider: str = "auto", threads: int = 0,
                 gwy: bool = True):
        self.model = SegmentationModel(model_path, provider=provider, threads=threads)
        self.settings = settings
        self.gwy = gwy

    def results(self, paths: Sequence[str], known: Callable[[str], str | None]) -> Iterator[FileResult]:
        """Each file's :class:`FileResult`, in order; content ``known`` (reason returned) is skipped."""
        for path in paths:
            try:
                hashed = hash_file(path)
                if isinstance(hashed, FileResult):
                    yield hashed
                    continue
                why = known(hashed.sha256)
                if why is not None:
                    yield FileResult(path, "skipped", hashed.sha256, reason=why)
                    continue
                yield segment_file(self.model, path, hashed.sha256, self.settings, gwy=self.gwy)
            except Exception as exc:  # a bug, not a bad file; still never fatal for the batch
                log.exception("%s: unexpected error", path)
                yield FileResult(path, "bad", reason=f"unexpected error: {exc!r}")

    def close(self) -> None:
        """Nothing to release (kept for the runner interface)."""

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
