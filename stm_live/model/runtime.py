"""Running a model: onnxruntime session, metadata, and the frame -> Segmentation path.

:class:`SegmentationModel` is what the ``segment`` command and the daemon
use. Its :meth:`~SegmentationModel.segment` takes a :class:`~stm_live.frame.Frame`
(complete or partial) and returns a :class:`~stm_live.frame.Segmentation` at the
frame's own pixel grid, with per-stage timings:

``level`` (whole-frame levelling of the acquired rows, unless already levelled)
-> ``prepare`` (resample to the model's nm/px, normalise)
-> ``infer`` (onnxruntime) -> ``instances`` (class map -> detections)
-> ``map`` (class map back to the input grid).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ModelError
from ..frame import Detection, Frame, Segmentation
from .contrast import ContrastGate
from .format import EMBEDDING_NAME, INPUT_NAME, PROBS_NAME, ModelInfo, has_head, load_onnx, read_info
from .instances import class_map_from_probs, find_instances
from .prepare import level_for_model, prepare_image, to_image_grid

__all__ = [
    "DEFAULT_MODEL",
    "SegmentationModel",
    "bundled_model_path",
    "create_session",
    "import_onnxruntime",
    "onnxruntime_install_problem",
    "polarity_mismatch",
    "provider_chain",
    "select_providers",
]

log = logging.getLogger(__name__)

#: Name of the model used when none is given.
DEFAULT_MODEL = "si001-ash3"


def bundled_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a model shipped with stm-live (``models/<name>.onnx``).

    Looks in the installed package data first, then in the source checkout.

    Raises
    ------
    ModelError
        No bundled model of that name; the message lists the ones there are.
    """
    from importlib import resources

    filename = name if name.endswith(".onnx") else f"{name}.onnx"
    candidates: list[Path] = []
    # Installed: models/ is the package data stm_live.bundled_models (setup.py);
    # a source tree that was never installed has only the folder.
    with contextlib.suppress(ModuleNotFoundError, TypeError):
        candidates.append(Path(str(resources.files("stm_live.bundled_models") / filename)))
    candidates.append(Path(__file__).resolve().parents[2] / "models" / filename)
    for path in candidates:
        if path.is_file():
            return path
    available = sorted({p.stem for c in candidates for p in c.parent.glob("*.onnx")}) if candidates else []
    raise ModelError(
        f"no bundled model {name!r} (looked in {', '.join(str(c.parent) for c in candidates)}); "
        f"available: {', '.join(available) or 'none'}"
    )


#: The CPU provider every onnxruntime build has: the last resort of every chain.
CPU_PROVIDER = "CPUExecutionProvider"
#: GPU providers in order of preference (TensorRT, then plain CUDA); each falls back to the next.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
#: Python distributions that all install the same ``onnxruntime`` package; exactly one may be installed.
ONNXRUNTIME_DISTRIBUTIONS = (
    "onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn",
    "onnxruntime-rocm", "onnxruntime-training",
)
_INSTALL_HINT = "pip install 'stm-live[cpu]' (or 'stm-live[gpu]' on a machine with an NVIDIA GPU)"


def onnxruntime_install_problem(installed: Mapping[str, str]) -> str | None:
    """What is wrong with the installed onnxruntime distributions, or None (pure).

    ``onnxruntime`` and ``onnxruntime-gpu`` (and the other builds) all install
    the same Python package ``onnxruntime``: with two of them installed, one
    overwrites the other's files and uninstalling either breaks both.

    Parameters
    ----------
    installed : Mapping[str, str]
        Installed distribution name (any spelling) -> version.

    Examples
    --------
    >>> onnxruntime_install_problem({"onnxruntime": "1.20.0", "numpy": "2.1"}) is None
    True
    >>> print(onnxruntime_install_problem({"onnxruntime": "1.20.0", "onnxruntime_gpu": "1.20.0"}))
    ... # doctest: +NORMALIZE_WHITESPACE
    onnxruntime 1.20.0 and onnxruntime-gpu 1.20.0 are installed together; they install the same package
    and overwrite each other's files. Keep exactly one: pip uninstall -y onnxruntime onnxruntime-gpu,
    then pip install 'stm-live[gpu]' for an NVIDIA GPU or 'stm-live[cpu]'
    """
    found = {
        canonical: version
        for name, version in installed.items()
        if (canonical := re.sub(r"[-_.]+", "-", name).lower()) in ONNXRUNTIME_DISTRIBUTIONS
    }
    if not found:
        return f"onnxruntime is not installed; install exactly one build: {_INSTALL_HINT}"
    if len(found) > 1:
        names = sorted(found, key=ONNXRUNTIME_DISTRIBUTIONS.index)
        listed = " and ".join(f"{n} {found[n]}" for n in names)
        return (
            f"{listed} are installed together; they install the same package and overwrite each other's "
            f"files. Keep exactly one: pip uninstall -y {' '.join(names)}, then pip install 'stm-live[gpu]' "
            "for an NVIDIA GPU or 'stm-live[cpu]'"
        )
    return None


def _installed_onnxruntime() -> dict[str, str]:
    from importlib import metadata

    installed = {}
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return installed


def import_onnxruntime() -> ModuleType:
    """``import onnxruntime``, after checking that exactly one onnxruntime build is installed.

    Raises
    ------
    ModelError
        None or several of ``onnxruntime``, ``onnxruntime-gpu``, ... are
        installed; the message says what to install or uninstall.
    """
    problem = onnxruntime_install_problem(_installed_onnxruntime())
    if problem is not None:
        raise ModelError(problem)
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(f"onnxruntime cannot be imported ({exc}); reinstall it: {_INSTALL_HINT}") from None
    return onnxruntime


def provider_chain(provider: str, available: Sequence[str]) -> list[list[str]]:
    """The execution-provider lists to try, best first, for ``"auto"``, ``"cpu"`` or ``"cuda"`` (pure).

    Each list is what one ``InferenceSession`` is created with; when a GPU
    provider cannot start (no device, CUDA or TensorRT libraries missing),
    the next list is tried. ``auto`` ends on the CPU; ``cuda`` does not (the
    user asked for the GPU, so not getting it is an error).

    Parameters
    ----------
    provider : {"auto", "cpu", "cuda"}
        The choice (config ``model.provider``, ``--provider``).
    available : sequence of str
        ``onnxruntime.get_available_providers()``.

    Raises
    ------
    ModelError
        ``cuda`` while onnxruntime offers no CUDA provider, or an unknown choice.

    Examples
    --------
    >>> provider_chain("auto", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    ... # doctest: +NORMALIZE_WHITESPACE
    [['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider'],
     ['CUDAExecutionProvider', 'CPUExecutionProvider'], ['CPUExecutionProvider']]
    >>> provider_chain("auto", ["AzureExecutionProvider", "CPUExecutionProvider"])
    [['CPUExecutionProvider']]
    >>> provider_chain("cuda", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    [['CUDAExecutionProvider', 'CPUExecutionProvider']]
    """
    if provider == "cpu":
        return [[CPU_PROVIDER]]
    if provider not in ("auto", "cuda"):
        raise ModelError(f"unknown onnxruntime provider choice {provider!r}; expected 'auto', 'cpu' or 'cuda'")
    if provider == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                "model.provider is 'cuda' but onnxruntime offers no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install stm-live[gpu] (instead of stm-live[cpu]) "
                "or use 'auto'/'cpu'"
            )
        return [["CUDAExecutionProvider", CPU_PROVIDER]]
    gpu = [p for p in GPU_PROVIDERS if p in available]
    return [[*gpu[i:], CPU_PROVIDER] for i in range(len(gpu))] + [[CPU_PROVIDER]]


def select_providers(provider: str = "auto") -> list[str]:
    """The preferred onnxruntime execution providers for ``"auto"``, ``"cpu"`` or ``"cuda"``.

    ``auto`` takes TensorRT and CUDA when the installed onnxruntime offers
    them (the ``gpu`` extra) and the CPU otherwise; ``cuda`` without CUDA is
    an error. :class:`SegmentationModel` falls back along
    :func:`provider_chain` when a GPU provider is offered but cannot start.
    """
    ort = import_onnxruntime()
    return provider_chain(provider, ort.get_available_providers())[0]


def _tensorrt_cache_dir() -> Path:
    """Where TensorRT keeps the engines it builds (one per input size; building one takes minutes)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stm-live" / "tensorrt"


def _with_options(providers: Sequence[str]) -> list[str | tuple[str, dict[str, str]]]:
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache = _tensorrt_cache_dir()
            out.append((name, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}))
        else:
            out.append(name)
    return out


def create_session(
    model: bytes, options: Any, provider: str, *, source: str, available: Sequence[str] | None = None
) -> tuple[Any, list[str]]:
    """An onnxruntime session on the best provider that starts, and the providers it runs on.

    Tries each list of :func:`provider_chain` in turn. onnxruntime's own
    fallback is off (it prints to stdout, which would corrupt
    ``segment --json``); instead, ending on the CPU although a GPU provider
    was offered is said in one warning line with the reason.

    Parameters
    ----------
    model : bytes
        The ONNX model.
    options : onnxruntime.SessionOptions
        Session options.
    provider : {"auto", "cpu", "cuda"}
        The choice (:func:`provider_chain`).
    source : str
        The model's name for messages (its path).
    available : sequence of str, optional
        The providers to choose from; default what the installed onnxruntime
        offers (given explicitly, a provider the build lacks behaves as one
        that does not start).

    Raises
    ------
    ModelError
        No provider list works (the model itself is broken: the CPU error is
        given), or ``cuda`` was asked for and the CUDA provider did not start.
    """
    ort = import_onnxruntime()
    chain = provider_chain(provider, ort.get_available_providers() if available is None else available)
    failures: list[str] = []
    for providers in chain:
        if "TensorrtExecutionProvider" in providers:
            _tensorrt_cache_dir().mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings(record=True) as said:
                # onnxruntime warns (Python warnings) about providers it does not have; they are
                # part of the one line below instead.
                warnings.simplefilter("always")
                session = ort.InferenceSession(model, options, providers=_with_options(providers), enable_fallback=0)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/EPFail types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failures.append(f"{providers[0]}: {first_line}")
            if providers == [CPU_PROVIDER]:
                raise ModelError(f"{source}: onnxruntime cannot load the model: {exc}") from None
            continue
        active = list(session.get_providers())
        if active[0] != providers[0]:
            # The provider's library loaded but could not start (no device, CUDA/cuDNN missing):
            # onnxruntime then leaves it out of the session, which still works on what remains.
            detail = "; ".join(str(w.message) for w in said) or f"the session runs on {', '.join(active)}"
            failures.append(f"{providers[0]}: did not start ({detail})")
        if provider == "cuda" and active[0] == CPU_PROVIDER:
            raise ModelError(f"{source}: model.provider is 'cuda' but CUDA did not start: {'; '.join(failures)}")
        if active[0] == CPU_PROVIDER and failures:
            log.warning("%s: no usable GPU, running on the CPU (%s)", source, "; ".join(failures))
        elif active[0] != CPU_PROVIDER:
            log.info("%s: running on %s", source, active[0])
        return session, active
    raise ModelError(f"{source}: no execution provider could start the model: {'; '.join(failures)}")


class SegmentationModel:
    """An stm-live ONNX model ready to run.

    Parameters
    ----------
    path : path-like, optional
        Model file; default the bundled :data:`DEFAULT_MODEL`.
    provider : {"auto", "cpu", "cuda"}
        Execution provider choice (see :func:`select_providers`).
    threads : int
        Intra-op threads; 0 lets onnxruntime decide.
    allow_spinning : bool
        Let idle intra-op threads spin-wait for the next run (onnxruntime's
        default: fastest for one caller alone). The daemon turns it off: its
        live and whole-frame threads share the cores, and spinning threads
        starve them (p99 latency on 2 cores: ~30 ms with, ~12 ms without).

    Raises
    ------
    ModelError
        Missing or corrupt file, not an stm-live model, or no head (a bare
        encoder can be adapted, not used to segment).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        provider: str = "auto",
        threads: int = 0,
        allow_spinning: bool = True,
    ):
        ort = import_onnxruntime()

        self.path = Path(path) if path is not None else bundled_model_path()
        proto = load_onnx(self.path)
        self.info: ModelInfo = read_info(proto, source=str(self.path))
        self.has_head = has_head(proto)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if not allow_spinning:
            # Idle intra-op threads then sleep instead of spinning: what a service sharing
            # a few cores with other threads (and the microscope's software) needs.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session, self.providers = create_session(
            proto.SerializeToString(), options, provider, source=str(self.path)
        )
        outputs = [o.name for o in self.session.get_outputs()]
        if EMBEDDING_NAME not in outputs:
            raise ModelError(f"{self.path}: model has no 'embedding' output (outputs: {outputs})")
        self._outputs = outputs
        self._polarity_warned: set[str] = set()
        #: Detections fainter than their class's gate are not reported (adapted models; :mod:`.contrast`).
        self.contrast_gate = ContrastGate(self.info.detection.get("min_contrast"))

    # ------------------------------------------------------------------ basics
    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    def thresholds(
        self, min_score: float | None = None, min_area_nm2: float | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Per-class detection thresholds: the model's calibrated ones unless overridden.

        A number given here applies to every class instead of the model's
        calibrated value; None keeps the calibration (0 where there is none).
        """
        calibrated = self.info.detection
        scores = calibrated.get("min_score", {})
        areas = calibrated.get("min_area_nm2", {})
        return (
            {c: float(scores.get(c, 0.0)) if min_score is None else float(min_score) for c in self.classes},
            {c: float(areas.get(c, 0.0)) if min_area_nm2 is None else float(min_area_nm2) for c in self.classes},
        )

    def __repr__(self) -> str:
        return f"SegmentationModel({self.info.name!r}, id={self.info.id}, classes={self.info.classes})"

    def run(self, image: np.ndarray, *, embedding: bool = False) -> dict[str, np.ndarray]:
        """Run the graph on a prepared ``(H, W)`` or ``(N, 1, H, W)`` image.

        Returns ``{"probs": (N, 1+C, H, W)}`` and, when asked (or when the
        model has no head), ``{"embedding": (N, D, H, W)}``.
        """
        x = np.ascontiguousarray(image, dtype=np.float32)
        if x.ndim == 2:
            x = x[None, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"model input must be (H, W) or (N, 1, H, W), got {image.shape}")
        wanted = []
        if self.has_head:
            wanted.append(PROBS_NAME)
        if embedding or not self.has_head:
            wanted.append(EMBEDDING_NAME)
        values = self.session.run(wanted, {INPUT_NAME: x})
        return dict(zip(wanted, values, strict=True))

    # ------------------------------------------------------------ frame path
    def _acquired(self, frame: Frame, levelled: np.ndarray | None) -> tuple[np.ndarray, slice]:
        """The acquired rows of ``frame``, levelled for the model, and which rows they are."""
        rows = frame.valid_rows
        if rows.stop - rows.start == 0:
            raise ModelError(f"{frame.source or 'frame'}: no rows acquired yet, nothing to segment")
        if levelled is not None:
            if np.shape(levelled) != frame.data.shape:
                raise ValueError(f"levelled image {np.shape(levelled)} does not match the frame {frame.data.shape}")
            return np.asarray(levelled)[rows], rows
        return level_for_model(frame.data[rows], self.info), rows

    def prepare(
        self, frame: Frame, *, levelled: np.ndarray | None = None, nm_per_px: float | None = None
    ) -> tuple[np.ndarray, slice]:
        """The model input for ``frame``'s acquired rows, and which rows those are.

        ``levelled`` is the frame's data already levelled (the live path
        levels line by line); otherwise the acquired rows are levelled here
        the way the model was trained. ``nm_per_px`` overrides the model's
        pitch (adapting to a surface with another lattice constant).
        """
        data, rows = self._acquired(frame, levelled)
        image = prepare_image(
            data,
            nm_per_px=frame.nm_per_px,
            target_nm_per_px=nm_per_px or self.info.nm_per_px,
            normalisation=self.info.normalisation,
        )
        return image, rows

    def segment(
        self,
        frame: Frame,
        *,
        levelled: np.ndarray | None = None,
        min_score: float | None = None,
        min_area_nm2: float | None = None,
    ) -> Segmentation:
        """Segment a frame (complete or partial) at its own pixel grid.

        Parameters
        ----------
        frame : Frame
            The image; only its acquired rows (``frame.valid_rows``) are used.
        levelled : numpy.ndarray, optional
            ``frame.data`` already levelled (same shape); default: level here.
        min_score, min_area_nm2 : float, optional
            Detection filters (mean probability 0..1, area nm^2) for every
            class; None uses the model's per-class calibrated thresholds.

        Returns
        -------
        Segmentation
            ``class_map`` uint8 at the frame's grid (rows not acquired are 0),
            detections in nm from the image's top-left corner, and
            ``timings_ms`` for ``level``, ``prepare``, ``infer``,
            ``instances``, ``map`` and ``total``.
        """
        if not self.has_head:
            raise ModelError(
                f"{self.path}: this is a bare encoder without prototypes; make a model from it with `stm-live adapt`"
            )
        warning = polarity_mismatch(self.info, frame)
        if warning and (frame.source or "") not in self._polarity_warned:
            self._polarity_warned.add(frame.source or "")
            log.warning(warning)
        t0 = time.perf_counter()
        data, rows = self._acquired(frame, levelled)
        t1 = time.perf_counter()
        image = prepare_image(
            data,
            nm_per_px=frame.nm_per_px,
            target_nm_per_px=self.info.nm_per_px,
            normalisation=self.info.normalisation,
        )
        t2 = time.perf_counter()
        probs = self.run(image)[PROBS_NAME][0]
        t3 = time.perf_counter()
        detections, class_map_model = self._instances(probs, frame, rows, data.shape, min_score, min_area_nm2)
        if self.contrast_gate:
            detections = self.contrast_gate.keep(detections, data, frame.nm_per_px, unit=frame.unit,
                                                 row0=rows.start)
        t4 = time.perf_counter()
        full = np.zeros(frame.data.shape, np.uint8)
        full[rows] = to_image_grid(
            class_map_model, data.shape, nm_per_px=frame.nm_per_px, target_nm_per_px=self.info.nm_per_px
        )
        t5 = time.perf_counter()
        timings = {
            "level": (t1 - t0) * 1e3,
            "prepare": (t2 - t1) * 1e3,
            "infer": (t3 - t2) * 1e3,
            "instances": (t4 - t3) * 1e3,
            "map": (t5 - t4) * 1e3,
            "total": (t5 - t0) * 1e3,
        }
        return Segmentation(
            classes=self.info.classes,
            class_map=full,
            detections=tuple(detections),
            model_id=self.info.id,
            model_name=self.info.name,
            timings_ms=timings,
            rows_done=frame.rows_valid,
        )

    def detect(
        self,
        probs: np.ndarray,
        frame: Frame,
        *,
        min_score: float | None = None,
        min_area_nm2: float | None = None,
    ) -> list[Detection]:
        """The detections in ``probs`` (the ``probs`` output for :meth:`prepare` of ``frame``).

        What :meth:`segment` finds, from probabilities computed (or changed) by the
        caller: calibration runs the graph once per frame and tries many priors.
        """
        rows = frame.valid_rows
        shape = (rows.stop - rows.start, frame.data.shape[1])
        return self._instances(probs, frame, rows, shape, min_score, min_area_nm2)[0]

    def _instances(
        self,
        probs: np.ndarray,
        frame: Frame,
        rows: slice,
        data_shape: tuple[int, ...],
        min_score: float | None,
        min_area_nm2: float | None,
    ) -> tuple[list[Detection], np.ndarray]:
        class_map = class_map_from_probs(probs)
        # The model grid has exactly the model's pitch, from the image's top-left corner.
        px_x = px_y = self.info.nm_per_px
        scores, areas = self.thresholds(min_score, min_area_nm2)
        detections = find_instances(
            class_map,
            probs,
            self.info.classes,
            nm_per_px=(px_x, px_y),
            min_score=scores,
            min_area_nm2=areas,
            merge_within_nm=self.info.detection.get("merge_within_nm", 0.0),
            split_within_nm=self.info.detection.get("split_within_nm", 0.0),
        )
        if rows.start:
            shift = rows.start * frame.nm_per_px[1]
            detections = [
                Detection(d.class_name, d.x_nm, d.y_nm + shift, d.area_nm2, d.score, d.id) for d in detections
            ]
        return detections, class_map

    def embed(self, frame: Frame, *, nm_per_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel embeddings of ``frame``'s acquired rows at the model grid, and the prepared image.

        Returns ``(embedding (D, h, w), image (h, w))``; ``nm_per_px`` as in :meth:`prepare`.
        """
        image, _ = self.prepare(frame, nm_per_px=nm_per_px)
        return self.run(image, embedding=True)[EMBEDDING_NAME][0], image


def polarity_mismatch(info: ModelInfo, frame: Frame) -> str | None:
    """A warning when ``frame`` was taken at the other bias polarity than the model's labelled images.

    The polarity is what ``stm-live adapt`` recorded (``provenance.bias_polarity``);
    None when either side is unknown or they agree. On these surfaces contrast
    inverts with the bias, so the prototypes do not describe such a frame.

    >>> from stm_live.model.format import ModelInfo
    >>> info = ModelInfo("m", ("a",), 0.1, 4, provenance={"bias_polarity": "negative"})
    >>> polarity_mismatch(info, Frame(np.zeros((2, 2), np.float32), 1e-9, 1e-9, bias_v=1.5)) is not None
    True
    """
    polarity = info.provenance.get("bias_polarity") if isinstance(info.provenance, dict) else None
    if polarity not in ("positive", "negative") or frame.bias_v is None or frame.bias_v == 0:
        return None
    here = "positive" if frame.bias_v > 0 else "negative"
    if here == polarity:
        return None
    return (f"{frame.source or 'frame'}: taken at {here} sample bias ({frame.bias_v:g} V) but model "
            f"{info.name!r} was adapted on {polarity}-bias images; contrast inverts between polarities, so its "
            "detections are unreliable here (adapt a model on a frame of this polarity)")

