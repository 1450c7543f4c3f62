"""Re-segmenting archives of scan files: ``stm-live batch``.

The flow is the daemon's for a complete file (content hash, completeness,
reader, model, the same result record), run over folders in parallel:

* :mod:`~stm_live.batch.inputs`: which files (folders searched recursively);
* :mod:`~stm_live.batch.work`: one file, wherever it runs (hash, then segment);
* :mod:`~stm_live.batch.local` and :mod:`~stm_live.batch.dask_cluster`:
  where the files run (this process, or Dask workers, each with its own
  onnxruntime session built once);
* :mod:`~stm_live.batch.store`: the results folder of one model (records,
  class maps, overlays, ``.gwy`` files, the processed set, bad files);
* :mod:`~stm_live.batch.summary`: the table per folder and class;
* :mod:`~stm_live.batch.run`: :func:`run_batch`, which wires them.
"""

from .inputs import DEFAULT_PATTERNS, find_inputs
from .run import BatchReport, run_batch
from .work import BatchSettings, FileResult, compose_record

__all__ = ["DEFAULT_PATTERNS", "BatchReport", "BatchSettings", "FileResult", "compose_record", "find_inputs",
           "run_batch"]
