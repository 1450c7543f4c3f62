"""Running a batch on Dask distributed: a local cluster, or an existing one given its address.

Each worker builds its onnxruntime session once, when :class:`ModelPlugin` is
registered (sessions do not pickle, and building one per file would cost more
than segmenting it), with intra-op threads set explicitly to its share of the
cores: onnxruntime ignores the ``OMP_NUM_THREADS=1`` Dask sets for its
workers and would otherwise start a thread per core in every worker. Files
go to the workers by path (they must see the same paths: a local cluster, or
a shared file system); results come back to this process, the only writer.

Dask moves tasks and results between processes with pickle: connect only to
a cluster you trust. The local cluster listens on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

from ..errors import StmLiveError
from ..model.runtime import SegmentationModel
from .work import BatchSettings, FileResult, Hashed, hash_file, segment_file

__all__ = ["DaskRunner", "ModelPlugin", "cores_available"]

log = logging.getLogger(__name__)


def cores_available() -> int:
    """CPU cores this process may use (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ModelPlugin(WorkerPlugin):
    """Builds a :class:`SegmentationModel` once per worker, from the model's bytes.

    Parameters
    ----------
    model : bytes
        The ONNX file's content (shipped, so workers on other machines need no copy).
    name : str
        Plugin name: one per model and settings (``stm-live-<model id>-...``).
    provider : str
        onnxruntime provider choice.
    threads : int or None
        Intra-op threads; None takes the worker's own share of the cores,
        its Dask ``nthreads``. Segmentations on one worker run one at a time
        (a lock), so that a worker with several Dask threads does not run
        several sessions of that many threads each.
    gwy : bool
        The worker will make ``.gwy`` files: check that it can.
    """

    idempotent = False

    def __init__(self, model: bytes, name: str, *, provider: str, threads: int | None, gwy: bool = False) -> None:
        self.model_bytes = model
        self.gwy = gwy
        self.name = name
        self.provider = provider
        self.threads = threads
        self.model: SegmentationModel | None = None
        self.lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["model"] = None
        del state["lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def setup(self, worker: Any) -> None:
        if self.gwy:
            from ..io.gwy import require_gwyfile

            require_gwyfile()  # the workers make the .gwy files
        threads = self.threads or max(1, int(worker.state.nthreads))
        path = Path(worker.local_directory) / f"{self.name}.onnx"
        path.write_bytes(self.model_bytes)
        self.model = SegmentationModel(path, provider=self.provider, threads=threads, allow_spinning=False)
        log.info("worker %s: model %s ready, %d intra-op thread(s) on %s", worker.address, self.model.name,
                 threads, self.model.providers[0])

    def teardown(self, worker: Any) -> None:
        self.model = None


def _hash_task(path: str) -> Hashed | FileResult:
    return hash_file(path)


def _segment_task(path: str, sha256: str, settings: BatchSettings, plugin_name: str, gwy: bool) -> FileResult:
    plugin = get_worker().plugins[plugin_name]
    assert isinstance(plugin, ModelPlugin) and plugin.model is not None, "the model plugin is not set up"
    with plugin.lock:
        return segment_file(plugin.model, path, sha256, settings, gwy=gwy)


class DaskRunner:
    """Segments files on Dask workers.

    Parameters
    ----------
    model_path : Path
        The ONNX model (read here, shipped to the workers).
    model_id : str
        Its id, for the plugin's name.
    settings : BatchSettings
        How files are read and segmented.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) or the path of
        its scheduler file (``dask scheduler --scheduler-file``); None starts
        a local cluster of ``workers`` processes.
    workers : int
        Local cluster: how many worker processes (each one Dask thread and
        ``cores // workers`` intra-op threads). Existing cluster: wait until
        at least this many workers are connected (0: do not wait).
    provider : str
        onnxruntime provider choice on the workers.
    timeout_s : float
        How long to wait for the scheduler and the workers.
    gwy : bool
        Have the workers make a ``.gwy`` file per frame.

    Raises
    ------
    StmLiveError
        The scheduler cannot be reached, or the workers do not come.
    """

    def __init__(
        self,
        model_path: Path,
        model_id: str,
        settings: BatchSettings,
        *,
        scheduler: str | None = None,
        workers: int = 1,
        provider: str = "auto",
        timeout_s: float = 60.0,
        gwy: bool = True,
    ) -> None:
        self.settings = settings
        self.gwy = gwy
        self.cluster: LocalCluster | None = None
        threads: int | None
        try:
            if scheduler is None:
                if workers < 1:
                    raise StmLiveError(f"--workers {workers}: a local Dask cluster needs at least one worker")
                self.cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None, silence_logs=logging.WARNING,
                )
                self.client = Client(self.cluster, timeout=timeout_s)
                threads = max(1, cores_available() // workers)
                self.description = f"a local Dask cluster of {workers} worker(s), {threads} thread(s) each"
            else:
                if Path(scheduler).is_file():
                    self.client = Client(scheduler_file=scheduler, timeout=timeout_s)
                else:
                    self.client = Client(scheduler, timeout=timeout_s)
                if workers:
                    self.client.wait_for_workers(workers, timeout=timeout_s)
                threads = None
                count = len(self.client.scheduler_info(n_workers=-1)["workers"])
                self.description = f"the Dask cluster at {self.client.scheduler.address} ({count} worker(s))"
        except (OSError, TimeoutError) as exc:
            self.close()
            where = scheduler or "a local cluster"
            raise StmLiveError(f"cannot start or reach the Dask scheduler ({where}): {exc}") from None
        self.plugin_name = f"stm-live-{model_id}-{os.getpid()}-{id(self):x}"
        try:
            self.client.register_plugin(
                ModelPlugin(model_path.read_bytes(), self.plugin_name, provider=provider, threads=threads, gwy=gwy)
            )
        except BaseException:
            self.close()
            raise

    def results(self, paths: Sequence[str], known: Callable[[str], str | None]) -> Iterator[FileResult]:
        """Each file's :class:`FileResult` as it completes; content ``known`` (reason returned) is skipped.

        Every file is hashed by a task first; segmentation tasks, submitted
        for the content not known yet, have priority over the remaining hashes
        so that results flow from the start.
        """
        client = self.client
        pending = as_completed()
        origin: dict[Any, str] = {}
        for path in paths:
            future = client.submit(_hash_task, path, pure=False)
            origin[future.key] = path
            pending.add(future)
        for future in pending:
            path = origin.pop(future.key)
            try:
                value = future.result()
            except Exception as exc:  # a worker died on it repeatedly, or a bug: reported, never fatal
                log.debug("%s: task failed", path, exc_info=True)
                yield FileResult(path, "bad", reason=f"unexpected error on the worker: {exc!r}")
                continue
            finally:
                future.release()
            if isinstance(value, FileResult):
                yield value
                continue
            why = known(value.sha256)
            if why is not None:
                yield FileResult(path, "skipped", value.sha256, reason=why)
                continue
            task = client.submit(_segment_task, path, value.sha256, self.settings, self.plugin_name, self.gwy,
                                 pure=False, priority=10)
            origin[task.key] = path
            pending.add(task)

    def close(self) -> None:
        """Unregister the model from the workers and close the client (and the local cluster)."""
        client = getattr(self, "client", None)
        if client is not None:
            if self.cluster is None and getattr(self, "plugin_name", None):
                try:
                    client.unregister_worker_plugin(self.plugin_name)
                except Exception:  # the cluster may be gone already; nothing to free then
                    log.debug("could not unregister %s", self.plugin_name, exc_info=True)
            client.close()
        if self.cluster is not None:
            # A worker slow to exit (a loaded machine) is killed after a few seconds, which Dask
            # reports as a warning; nothing is lost by then (every result is in), so keep it quiet.
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(logging.ERROR)
            try:
                self.cluster.close()
            finally:
                nanny.setLevel(level)

    def __enter__(self) -> DaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
