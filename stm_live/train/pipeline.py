"""``stm-live train`` end to end: data, training, calibration, export, report.

Outputs, in ``settings.out_dir``:

* ``<surface>.onnx`` for every trained surface with ``export`` on: the shared
  encoder with that surface's trained prototypes, temperature calibrated on
  validation frames, detection thresholds calibrated on other frames;
* ``base-encoder.onnx``: the encoder alone, the starting point of
  ``stm-live adapt`` for a new surface;

and in ``settings.run_dir``: ``checkpoint.pt`` (resumable), the cached data
sets and ``report.json`` (settings, data hash, losses, validation metrics).
Paths in the report are relative to its folder, so that it says nothing about
the machine it was made on.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..model.format import ModelInfo, Prototypes, attach_head, load_onnx, read_info, save_model, with_class_offsets
from ..model.prepare import DEFAULT_LEVELLING
from ..model.prototypes import fit_temperature
from ..sim.surfaces import RANDOM_SURFACE
from .compare import DEFAULT_TOLERANCE, EXTRA_SETS, EvaluationSet, SetFactory, SimulatedHeldOut, compare_models
from .data import PreparedSet, build_sets, content_digest
from .export import export_model
from .fit import IGNORE, PrototypeBank, fit, summarise
from .net import Encoder, receptive_field_px
from .real_set import real_labelled_set
from .settings import SurfaceSettings, TrainSettings

__all__ = ["calibrate_exports", "export_surface_model", "held_out_geometry", "portable_settings", "relative_to",
           "train_models"]

log = logging.getLogger(__name__)


def _val_embeddings(
    encoder: Encoder, data: PreparedSet, surface: int, limit: int = 6000
) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced sample of validation pixels' embeddings and labels for one surface."""
    rng = np.random.default_rng(0)
    xs, ys = [], []
    with torch.no_grad():
        for i in np.flatnonzero(data.surface == surface):
            e = encoder(torch.from_numpy(data.images[i])[None, None])[0].numpy()
            xs.append(e.reshape(e.shape[0], -1).T)
            ys.append(data.masks[i].reshape(-1))
    x, y = np.concatenate(xs), np.concatenate(ys)
    keep = []
    for k in np.unique(y):
        if k == IGNORE:  # no label (reacted areas of frames with realism)
            continue
        idx = np.flatnonzero(y == k)
        keep.append(idx if len(idx) <= limit else rng.choice(idx, limit, replace=False))
    sel = np.concatenate(keep)
    return x[sel], y[sel].astype(np.int64)


def _surface_prototypes(encoder: Encoder, bank: PrototypeBank, val: PreparedSet, name: str) -> Prototypes:
    s = bank.surfaces.index(name)
    vectors = bank.vectors[s].detach().numpy().astype(np.float32)
    labels = tuple(int(v) for v in bank.labels(s))
    k = val.surfaces.index(name)
    x, y = _val_embeddings(encoder, val, k)
    temperature = fit_temperature(vectors, labels, x, y)
    return Prototypes(vectors, labels, temperature)


def export_surface_model(
    encoder: Encoder,
    bank: PrototypeBank,
    settings: TrainSettings,
    train: PreparedSet,
    val: PreparedSet,
    name: str,
    path: Path,
    training: Mapping[str, Any],
) -> dict[str, Any]:
    """Export surface ``name``'s model (encoder + its trained prototypes, temperature fitted on
    validation pixels) to ``path``; its entry of the report's ``models``."""
    protos = _surface_prototypes(encoder, bank, val, name)
    info = ModelInfo(
        name=name,
        classes=train.classes[name],
        nm_per_px=next(s.nm_per_px for s in settings.surfaces if s.name == name),
        surface=name,
        provenance={"method": "trained prototypes (temperature calibrated on validation frames)"},
        training=dict(training),
        **_common_info(settings),
    )
    saved = export_model(encoder, info, path, prototypes=protos)
    return {"path": str(path), "id": saved.id, "temperature": protos.temperature}


def _common_info(settings: TrainSettings) -> dict[str, Any]:
    return {
        "embedding_dim": settings.dim,
        "context_px": receptive_field_px(),
        "normalisation": settings.normalisation,
        "levelling": DEFAULT_LEVELLING,
    }


#: First seed of the held-out frames every trained model is evaluated (and compared) on,
#: whatever the training seed, so that runs with different seeds meet the same frames.
HELD_OUT_SEED = 10_000
#: First seed of the validation frames the detection thresholds are calibrated on.
CALIBRATION_SEED = 50_000
#: Folder of the run folder where new models wait for the comparison before they are installed.
CANDIDATES = "candidates"


def train_models(
    settings: TrainSettings,
    *,
    progress: bool = True,
    evaluate_frames: int = 24,
    calibrate_frames: int = 24,
    compare: Mapping[str, Path] | None = None,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    extra_sets: Sequence[SetFactory] = (),
) -> dict[str, Any]:
    """Train the encoder, export one model per surface (plus the bare encoder), compare, install.

    The new models are written to ``run_dir/candidates``. Each surface model's
    per-class detection thresholds are calibrated on ``calibrate_frames`` fresh
    validation frames. Then every new model and the one it would replace (``compare[name]``,
    else ``out_dir/<name>.onnx`` where it exists, else the bundled model of that name) are
    scored on the same ``evaluate_frames`` held-out frames, on the dev regions of the
    hand-labelled real frames where they apply (:mod:`stm_live.train.real_set`), and on any
    further evaluation sets (:data:`stm_live.train.compare.EXTRA_SETS`, ``extra_sets``). A new model is
    copied into ``out_dir`` unless it is worse than the model it would overwrite (or the
    one asked for) by more than ``tolerance`` on some score, or cannot be compared
    (``evaluate_frames`` 0); ``force`` installs it anyway. Worse than the bundled model
    with nothing to overwrite, it is installed and the comparison says so.

    Returns the report (also written to ``run_dir/report.json``); its
    ``comparison`` says, per model, what was compared and decided.
    """
    from .numerics import actual_numerics

    t0 = time.perf_counter()
    run_dir, out_dir = Path(settings.run_dir), Path(settings.out_dir)
    stage = run_dir / CANDIDATES
    if stage.resolve() == out_dir.resolve():
        raise ConfigError(f"out_dir {out_dir}: the run folder's {CANDIDATES}/ holds models before they are compared; "
                          "choose another out_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    if settings.threads:  # before the record: fit sets it too
        torch.set_num_threads(settings.threads)
    numerics = actual_numerics()
    if settings.numerics == "pinned" and not numerics["pinned"]:
        log.warning("numerics not pinned (%s): the weights will differ from those of the same recipe trained on "
                    "other machines; run it with `stm-live train` on an x86-64 CPU with AVX2", numerics)
    train, val = build_sets(settings, progress=progress)
    t_data = time.perf_counter() - t0
    unlabelled = _unlabelled_set(settings) if settings.unlabelled else None
    state = fit(settings, train, unlabelled=unlabelled, progress=progress)
    t_fit = time.perf_counter() - t0 - t_data
    training = {
        "data_hash": train.digest,
        "val_hash": val.digest,
        "data_content_hash": content_digest(train),
        "seed": settings.seed,
        "steps": {"self_supervised": settings.ssl_steps, "supervised": settings.steps},
        "surfaces": list(train.surfaces),
        "frames": {s: len(train.of_surface(s)) for s in train.surfaces},
        "unlabelled_frames": 0 if unlabelled is None else len(unlabelled.images),
        "losses": summarise(state),
        "numerics": numerics,
    }
    if settings.train_normalisation != settings.normalisation:
        training["normalisation"] = settings.train_normalisation
    encoder = state.encoder.eval()
    exported: dict[str, Any] = {}
    pitch = {s.name: s.nm_per_px for s in settings.surfaces}
    exports = tuple(s.name for s in settings.surfaces if s.export and s.name in train.surfaces)
    for name in exports:
        exported[name] = export_surface_model(encoder, state.bank, settings, train, val, name,
                                              stage / f"{name}.onnx", training)
    if settings.export_base_encoder:
        base_pitch = pitch.get("si001-ash3", next(iter(pitch.values())))
        base_info = ModelInfo(name="base-encoder", classes=(), nm_per_px=base_pitch, surface=None,
                              provenance={"method": "encoder only; make a model with `stm-live adapt`"},
                              training=training, **_common_info(settings))
        saved = export_model(encoder, base_info, stage / "base-encoder.onnx")
        exported["base-encoder"] = {"path": str(stage / "base-encoder.onnx"), "id": saved.id}
    if calibrate_frames:
        calibrate_exports(exported, settings, exports, calibrate_frames)
    t_eval = time.perf_counter()
    metrics, comparisons = _compare_exports(exported, settings, exports, evaluate_frames, compare or {}, force,
                                            tolerance, [real_labelled_set, *EXTRA_SETS, *extra_sets])
    report = {
        "stm_live": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "threads": torch.get_num_threads(),
        "settings": portable_settings(settings),
        "training": training,
        "timings_s": {"data": round(t_data, 1), "fit": round(t_fit, 1),
                      "compare": round(time.perf_counter() - t_eval, 1), "total": round(time.perf_counter() - t0, 1)},
        "models": {name: {**entry, "path": relative_to(entry["path"], run_dir),
                          "candidate": relative_to(entry["candidate"], run_dir)}
                   for name, entry in exported.items()},
        "metrics": metrics,
        "comparison": comparisons,
        "history": state.history,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _evaluation_sets(
    name: str, classes: tuple[str, ...], settings: TrainSettings, frames: int, extra: Sequence[SetFactory]
) -> list[EvaluationSet]:
    """Held-out simulated frames of the model's surface (every real trained surface for the base encoder)."""
    if not frames:
        return []
    surfaces = [s for s in settings.surfaces if s.name == name] if classes else [
        s for s in settings.surfaces if s.name != RANDOM_SURFACE and s.name not in settings.exclude_surfaces]
    sets: list[EvaluationSet] = [SimulatedHeldOut(s.name, frames, HELD_OUT_SEED, *held_out_geometry(s))
                                 for s in surfaces]
    for factory in extra:
        made = factory(name, classes)
        if made is not None:
            sets.append(made)
    return sets


def _compare_exports(
    exported: dict[str, Any],
    settings: TrainSettings,
    surfaces: tuple[str, ...],
    frames: int,
    compare: Mapping[str, Path],
    force: bool,
    tolerance: float,
    extra: Sequence[SetFactory],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score each new model and the one it would replace; install the new one where it is not worse.

    Returns the new surface models' held-out metrics and, per model, the comparison
    and decision. Records the metrics in each new model's metadata first.
    """
    run_dir, out_dir = Path(settings.run_dir), Path(settings.out_dir)
    metrics: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    for name, entry in exported.items():
        candidate = Path(entry["path"])
        classes = read_info(load_onnx(candidate)).classes
        sets = _evaluation_sets(name, classes, settings, frames, extra)
        new_scores = {s.name: s.score(candidate) for s in sets}
        if name in surfaces and sets:
            metrics[name] = dict(new_scores[sets[0].name].detail)
            _update_info(entry, lambda info, m=metrics[name]: replace(info, training={**info.training, "metrics": m}))
        target = out_dir / f"{name}.onnx"
        old, role = _reference(name, target, compare)
        # Tables and reasons name files as seen from where the command runs, the report's
        # fields from the run folder: never by absolute paths.
        labels = {str(p): relative_to(p, Path.cwd()) for p in (candidate, target, old) if p is not None}
        if role == "bundled" and old is not None:
            labels[str(old)] = f"the bundled {name}"
        result = compare_models(name, candidate, old, sets, tolerance=tolerance, new_scores=new_scores, labels=labels)
        record = result.to_json()
        record["new"]["path"] = relative_to(candidate, run_dir)
        if record["old"] is not None and old is not None:
            record["old"]["path"] = labels[str(old)] if role == "bundled" else relative_to(old, run_dir)
        if old is not None and not sets and role != "bundled":
            reason = (f"{old} is not replaced without a comparison (held-out frames 0); "
                      "--force replaces it anyway")
        else:
            reason = result.reason()
        # Against the bundled model of the name, with nothing at the target, nothing is overwritten:
        # the table and a warning say how it compares, and the new model is installed.
        install = force or not reason or role == "bundled"
        if install:
            _install(candidate, target)
            entry["path"] = str(target)
        record.update(decision="installed" if install else "refused", reference=role,
                      forced=bool(force and reason and role != "bundled"), reason=reason,
                      target=relative_to(target, run_dir), table=result.table())
        entry["candidate"] = str(candidate)
        comparisons[name] = record
        (log.warning if reason else log.info)("%s: %s", name, record["decision"] + (f" ({reason})" if reason else ""))
    return metrics, comparisons


def _reference(name: str, target: Path, compare: Mapping[str, Path]) -> tuple[Path | None, str]:
    """The model a new one is compared with, and why: ``compare`` (asked for), ``replaces``
    (the file it would overwrite), ``bundled`` (nothing there; the bundled model of that
    name, what the user ran until now) or ``none``."""
    from ..errors import ModelError
    from ..model.runtime import bundled_model_path

    if name in compare:
        return compare[name], "compare"
    if target.is_file():
        return target, "replaces"
    try:
        return bundled_model_path(name), "bundled"
    except ModelError:
        return None, "none"


def _install(candidate: Path, target: Path) -> None:
    """Copy ``candidate`` to ``target`` atomically (a reader never sees half a model)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    shutil.copyfile(candidate, tmp)
    os.replace(tmp, target)


def relative_to(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """``path`` relative to ``folder`` (POSIX separators), or its file name where there is no such path.

    Reports say where their models went this way, without the absolute paths
    of the machine that made them.
    """
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).name


def portable_settings(settings: TrainSettings) -> dict[str, Any]:
    """``settings`` as JSON with their paths relative to the run folder (where the report goes)."""
    out = settings.model_dump(mode="json")
    run_dir = Path(settings.run_dir)
    out["run_dir"] = "."
    out["out_dir"] = relative_to(settings.out_dir, run_dir)
    out["unlabelled"] = [relative_to(p, run_dir) for p in settings.unlabelled]
    return out


def held_out_geometry(surface: SurfaceSettings) -> tuple[float, int]:
    """Frame size (nm) and pixels for held-out evaluation.

    The simulator's default frame (50 nm, 512 px) when the surface was
    trained on such frames, else the middle of its training ranges.
    """
    lo, hi = surface.size_nm
    p_lo, p_hi = surface.input_nm_per_px
    if lo <= 50.0 <= hi and p_lo <= 50.0 / 512 <= p_hi:
        return 50.0, 512
    size = (lo + hi) / 2
    return size, round(size / ((p_lo + p_hi) / 2))


def _update_info(entry: dict[str, Any], change: Any) -> None:
    """Rewrite one exported model's metadata with ``change(info)``; refresh its id."""
    path = Path(entry["path"])
    model = load_onnx(path)
    entry["id"] = save_model(model, change(read_info(model)), path).id


def calibrate_exports(
    exported: dict[str, Any], settings: TrainSettings, surfaces: tuple[str, ...], frames: int
) -> None:
    """Calibrate per-class detection thresholds (and class offsets) on validation frames.

    The frames' seeds are apart from the evaluation's. With ``settings.calibrate_class_offsets``
    the class offsets found are added to the model's prototypes (the head is rebuilt), and the
    thresholds hold for the model with them.
    """
    from ..model.evaluate import calibrate_detection
    from ..model.runtime import SegmentationModel

    geometry = {s.name: held_out_geometry(s) for s in settings.surfaces}
    for name in surfaces:
        path = Path(exported[name]["path"])
        model = SegmentationModel(path, provider="cpu")
        size_nm, pixels = geometry[name]
        detection = calibrate_detection(model, simulate=name, count=frames, seed=CALIBRATION_SEED,
                                        size_nm=size_nm, pixels=pixels,
                                        class_offsets=settings.calibrate_class_offsets)
        exported[name]["detection"] = detection
        offsets = detection["calibration"].get("class_offsets")
        if offsets and any(offsets.values()):
            onnx_model = load_onnx(path)
            info = read_info(onnx_model)
            assert info.prototypes is not None  # a surface model has a head
            prototypes = with_class_offsets(info.prototypes, info.classes, offsets)
            exported[name]["id"] = save_model(attach_head(onnx_model, prototypes),
                                              replace(info, prototypes=prototypes, detection=detection), path).id
        else:
            _update_info(exported[name], lambda info, d=detection: replace(info, detection=d))
        log.info("%s: calibrated thresholds %s%s", name, {k: detection[k] for k in ("min_score", "min_area_nm2")},
                 f", class offsets {offsets}" if offsets else "")


def _unlabelled_set(settings: TrainSettings) -> PreparedSet:
    """Unlabelled real frames prepared for the self-supervised stage (mask = 255: no labels)."""
    from ..io import read_scan
    from ..model.prepare import level_for_model, prepare_image

    images, masks = [], []
    for path in settings.unlabelled:
        scan = read_scan(path, width_nm=settings.unlabelled_width_nm)
        frame = scan.frame("Z") if "Z" in scan.channels else scan.frames[0]
        levelled = level_for_model(frame.data[frame.valid_rows], DEFAULT_LEVELLING)
        image = prepare_image(levelled, nm_per_px=frame.nm_per_px, target_nm_per_px=settings.unlabelled_nm_per_px,
                              normalisation=settings.train_normalisation)
        images.append(image)
        masks.append(np.full(image.shape, 255, np.uint8))
    return PreparedSet(tuple(images), tuple(masks), np.zeros(len(images), np.int64), ("unlabelled",),
                       {"unlabelled": ()}, "unlabelled")
