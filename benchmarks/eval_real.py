"""Real-image evaluation on the hand labels in eval/real (docs/real_eval.md).

Parts (``--part``, several allowed; default all):

* ``zero-shot``: the bundled si001-ash3 on the Si(001):H test regions;
* ``kshot``: k-shot adaptation (k = 1, 3, 5, ``--draws`` draws) of ``--encoder``
  from dev-region clicks, scored on the test regions, for Si(001):H and TiO2;
  ``--today`` adapts as ``stm-live adapt`` did before this evaluation existed
  (model pitch 0.1 nm/px, 0.4 nm discs, no background squares, no calibration);
* ``baselines``: a tuned height threshold and a Laplacian-of-Gaussian blob
  detector per class, parameters chosen on the dev regions, scored on test;
* ``dense``: TiO2 dense mask: adapt on the dev half (left), Dice on the test
  half (right), against a height threshold tuned on the dev half;
* ``sim``: simulated Si(001): si001-ash3 adapted from 3 clicks per class on one
  frame, against the unadapted model on 7 other frames;
* ``dev``: the tuning protocol: leave-one-dev-region-out k-shot (support from
  the other dev regions, scored on the one left out); never reads test.
* ``measure``: what the real Si(001):H frames show that the simulator may not,
  measured the same way on the dev regions and on simulated 100 nm / 512 px
  frames without and with ``Realism.si001h()`` (trenches, rims beside
  vacancies, feature widths, a fast-axis lag, line artefacts and noise after
  the model's levelling, feature contrast in model units);
* ``sim-realism``: the bundled si001-ash3 (or ``--models``) on simulated frames
  at the real frames' sampling (100 nm, 512 px) with each part of
  ``stm_live.sim.Realism.si001h()`` switched on alone, all of them, and none:
  which of the real frames' differences the model is not robust to;
* ``transfer``: zero-shot Si(001):H figures of the models given with
  ``--models`` (retrained on the simulator with and without its realism
  parts, docs/real_eval.md "Zero-shot transfer"), on the dev regions only
  unless ``--split test`` is given; with each model, the held-out simulator
  F1 of its training report when the model sits in a run folder.

Writes ``--out`` (JSON, default docs/real_eval.json: parts merged into what is
there). Needs ../shared/data beside the checkout; skips with a message otherwise.

Usage: python benchmarks/eval_real.py [--part kshot dense] [--draws 5] [--today]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from stm_live.level import level_frame
from stm_live.model.adapt import AdaptSettings
from stm_live.model.baselines import log_detect, threshold_detect, threshold_mask
from stm_live.model.labels import dense_mask, read_label_set
from stm_live.model.real_eval import (
    LabelledScan,
    dense_adapt,
    dense_dice,
    dice,
    kshot,
    load_scan,
    score_detections,
    score_model,
)
from stm_live.model.runtime import SegmentationModel, bundled_model_path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SI = ["si001h_brockley_23_2_0", "si001h_ph3_paddington_24_2_0"]
TIO2 = ["tio2_110_m70"]
SURFACES = [("si001h", SI), ("tio2", TIO2)]
# AdaptSettings.contrast_fraction for the kshot, dev and sim parts (--contrast-fraction)
CONTRAST = [AdaptSettings().contrast_fraction]
BRIGHT = {"dangling_bond": True, "dimer_vacancy": False, "bright_spot": True}


def scans_of(names: list[str]) -> list[LabelledScan]:
    return [load_scan(read_label_set(REPO / "eval" / "real" / f"{n}.json"), DATA) for n in names]


def today_settings(base: SegmentationModel) -> AdaptSettings:
    return AdaptSettings(nm_per_px=base.info.nm_per_px, radius_nm=0.4, background_margin_nm=1.2, calibrate=False,
                         contrast_fraction=0.0,
                         keep_base_head=False, count_like_a_person=False, prototypes_per_class=1, fine_tune_steps=0)


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in summary.items() if k != "draws"}
    out["pitch_nm"] = sorted({d["adapt"]["nm_per_px"] for d in summary["draws"]})
    return out


def part_zero_shot() -> dict[str, Any]:
    model = SegmentationModel(bundled_model_path("si001-ash3"), provider="cpu")
    scans = scans_of(SI)
    return {"model": model.id, **{split: score_model(model, scans, split).to_dict() for split in ("dev", "test")},
            "per_frame_test": {s.labels.image: score_model(model, [s], "test").to_dict() for s in scans}}


def _dev_points(scan: LabelledScan, cls: str, *, round_only: bool = False) -> list[tuple[float, float]]:
    return [(f.x_nm, f.y_nm) for r in scan.labels.regions_of("dev") for f in scan.labels.features_in(r)
            if f.class_name == cls and not f.ambiguous and not (round_only and f.ends_nm)]


def _terrace_points(scan: LabelledScan, rng: np.random.Generator, n: int = 200) -> list[tuple[float, float]]:
    """Random dev-region points at least 2.5 nm from every labelled feature."""
    out = []
    for r in scan.labels.regions_of("dev"):
        for _ in range(n):
            x, y = rng.uniform(r.x0_nm + 2, r.x1_nm - 2), rng.uniform(r.y0_nm + 2, r.y1_nm - 2)
            if all((x - f.x_nm) ** 2 + (y - f.y_nm) ** 2 > 6.25 for f in scan.labels.features):
                out.append((x, y))
    return out


def _image_stats(data: np.ndarray, nm_per_px: float, vac: list, db: list) -> dict[str, Any]:
    """Rims, widths, lag, contrast and line artefacts of one frame (points in nm)."""
    from stm_live.model.prepare import DEFAULT_LEVELLING, DEFAULT_NORMALISATION, level_for_model, prepare_image
    from stm_live.sim.measure import fast_axis_profiles, fit_profile, rim_sides

    levelled = level_for_model(data, DEFAULT_LEVELLING)
    to_px = lambda pts: np.array([(y / nm_per_px, x / nm_per_px) for x, y in pts]).reshape(-1, 2)  # noqa: E731
    out: dict[str, Any] = {"rims": rim_sides(levelled, to_px(vac), nm_per_px=nm_per_px)}
    for name, pts in (("dangling_bond", db), ("dimer_vacancy", vac)):
        prof = fast_axis_profiles(levelled, to_px(pts))
        if np.isfinite(prof).all():
            plain, lagged = fit_profile(prof, lag=False), fit_profile(prof, lag=True)
            out[f"{name}_sigma_nm"] = round(plain["sigma_px"] * nm_per_px, 3)
            out[f"{name}_lag_nm"] = round(lagged["lag_px"] * nm_per_px, 3)
            out[f"{name}_lag_sse_gain"] = round(1 - lagged["sse"] / plain["sse"], 3)
    model = prepare_image(levelled, nm_per_px=(nm_per_px, nm_per_px), target_nm_per_px=0.1,
                          normalisation=DEFAULT_NORMALISATION)
    for name, pts, bright in (("dangling_bond", db, True), ("dimer_vacancy", vac, False)):
        vals = []
        for x, y in pts:
            r, c = int(y / 0.1), int(x / 0.1)
            if 30 <= r < model.shape[0] - 30 and 30 <= c < model.shape[1] - 30:
                loc = model[r - 3:r + 4, c - 3:c + 4]
                bg = np.median(model[r - 25:r + 26, c - 25:c + 26])
                vals.append((loc.max() if bright else loc.min()) - bg)
        out[f"{name}_contrast"] = round(float(np.median(vals)), 2) if vals else None
    native = prepare_image(levelled, nm_per_px=(nm_per_px, nm_per_px), target_nm_per_px=nm_per_px,
                           normalisation=DEFAULT_NORMALISATION)
    jumps = np.diff(np.median(native, axis=1))
    out["line_jump_robust"] = round(float(1.4826 * np.median(np.abs(jumps - np.median(jumps)))), 4)
    out["pixel_diff_x"] = round(float(1.4826 * np.median(np.abs(np.diff(native, axis=1)))), 3)
    return out


def part_measure(seeds: int = 3) -> dict[str, Any]:
    """The real frames' dev regions against simulated 100 nm / 512 px frames, measured alike."""
    from stm_live.sim import Realism, simulate_scan
    from stm_live.sim.measure import rim_sides

    out: dict[str, Any] = {"real": {}, "simulated": {}}
    rng = np.random.default_rng(0)
    for scan in scans_of(SI):
        vac = _dev_points(scan, "dimer_vacancy")
        ends = [f for r in scan.labels.regions_of("dev") for f in scan.labels.features_in(r)
                if f.class_name == "dimer_vacancy" and not f.ambiguous and f.ends_nm]
        lengths = sorted(round(float(np.hypot(f.ends_nm[0][0] - f.ends_nm[1][0], f.ends_nm[0][1] - f.ends_nm[1][1])), 2)
                         for f in ends if f.ends_nm)
        px = scan.frame.nm_per_px[0]
        row = _image_stats(scan.frame.data, px, _dev_points(scan, "dimer_vacancy", round_only=True),
                           _dev_points(scan, "dangling_bond"))
        levelled = level_frame(scan.frame.data)
        terrace = np.array([(y / px, x / px) for x, y in _terrace_points(scan, rng)])
        row["rims_terrace"] = rim_sides(levelled, terrace, nm_per_px=px)
        row["rims"] = rim_sides(levelled, np.array([(y / px, x / px) for x, y in vac]), nm_per_px=px)
        row["vacancies"] = len(vac)
        row["trenches_marked_by_ends"] = len(ends)
        row["trench_lengths_nm"] = lengths
        out["real"][scan.labels.image] = row
        print("measure", scan.labels.image, json.dumps(row), flush=True)
    for name, realism in (("plain", Realism.none()), ("si001h", Realism.si001h())):
        rows = []
        for seed in range(seeds):
            sim = simulate_scan("si001-ash3", size_nm=100.0, pixels=512, seed=seed, realism=realism)
            rows.append(_image_stats(sim.frame("Z").data, sim.nm_per_px,
                                     [(i.x_nm, i.y_nm) for i in sim.instances if i.class_name == "dimer_vacancy"],
                                     [(i.x_nm, i.y_nm) for i in sim.instances if i.class_name == "dangling_bond"]))
        out["simulated"][name] = rows
        print("measure simulated", name, json.dumps(rows), flush=True)
    return out


REALISM_PARTS = {"trenches": {"trench_fraction"}, "rims": {"rim_chance"}, "size": {"size_spread"},
                 "contamination": {"contamination_per_nm2"}, "reacted": {"reacted_chance"},
                 "faint dots": {"faint_dots_per_nm2"}}


def part_sim_realism(models: list[str], frames: int = 8, seed: int = 70_000) -> dict[str, Any]:
    """Object scores (1 nm matching, as the real labels) and false detections per 100 nm^2 of simulated frames.

    Detections in reacted areas are not scored (the real frame's reacted area
    has no region); a false detection lies more than 1 nm from every labelled
    feature (unlabelled clusters and faint dots count: a model should leave
    them alone). Same seeds for every variant.
    """
    from stm_live.model.evaluate import ClassScore, Truth, object_scores
    from stm_live.sim import Realism, simulate_scan
    from stm_live.sim.realism import REACTED

    full = Realism.si001h().to_dict()
    off = {k: 0.0 for k in full if k != "rim_height"}
    variants = {"none": Realism.none(), "all": Realism.si001h()}
    for part, keys in REALISM_PARTS.items():
        on = {k: (1.0 if part == "reacted" else full[k]) for k in keys}  # reacted: in every frame, to be seen
        variants[part] = Realism.from_dict({**full, **off, **on})
    out: dict[str, Any] = {"frames": frames, "seeds": f"{seed}..{seed + frames - 1}", "size_nm": 100.0,
                           "pixels": 512, "models": {}}
    for path in models or ["si001-ash3"]:
        model = SegmentationModel(bundled_model_path(path) if "/" not in path else path, provider="cpu")
        rows: dict[str, Any] = {}
        for name, realism in variants.items():
            total = {c: ClassScore() for c in model.classes}
            false, area = 0, 0.0
            for i in range(frames):
                scan = simulate_scan("si001-ash3", size_nm=100.0, pixels=512, seed=seed + i, realism=realism)
                truth = [Truth(t.class_name, t.x_nm, t.y_nm) for t in scan.instances]
                px = scan.nm_per_px
                reacted = scan.mask == REACTED
                # Reacted areas are not scored, as the real frame's reacted area has no region.
                dets = [d for d in model.segment(scan.frame("Z")).detections
                        if not reacted[min(int(d.y_nm / px), 511), min(int(d.x_nm / px), 511)]]
                for c, sc in object_scores(dets, truth, model.classes, max_dist_nm=1.0).items():
                    total[c].add(sc)
                for d in dets:
                    if all((t.x_nm - d.x_nm) ** 2 + (t.y_nm - d.y_nm) ** 2 > 1.0 for t in truth):
                        false += 1
                area += 100.0 * 100.0 * float(1.0 - reacted.mean())
            rows[name] = {"classes": {c: {k: v for k, v in sc.to_dict().items() if k != "median_error_nm"}
                                      for c, sc in total.items()},
                          "false_per_100nm2": round(100.0 * false / area, 4)}
            print("sim-realism", path, name, json.dumps({c: v["f1"] for c, v in rows[name]["classes"].items()}),
                  "FD", rows[name]["false_per_100nm2"], flush=True)
        out["models"][path] = rows
    return out


def part_transfer(models: list[str], split: str) -> dict[str, Any]:
    """Zero-shot scores of each model on the Si(001):H regions of ``split`` (dev: the ablations' yardstick)."""
    scans = scans_of(SI)
    out: dict[str, Any] = {"split": split, "models": {}}
    for path in models:
        model = SegmentationModel(bundled_model_path(path) if "/" not in path else path, provider="cpu")
        score = score_model(model, scans, split).to_dict()
        row: dict[str, Any] = {"id": model.id, **score}
        report = Path(path).resolve().parent.parent / "report.json"
        if report.is_file():
            metrics = json.loads(report.read_text()).get("metrics", {}).get("si001-ash3", {})
            row["sim_f1"] = {c: v["f1"] for c, v in metrics.get("objects", {}).items()}
        out["models"][path] = row
        f1 = {c: v["f1"] for c, v in score["classes"].items()}
        print("transfer", split, path, json.dumps(f1), "FD", score["false_per_100nm2"], "sim", row.get("sim_f1"),
              flush=True)
    return out


def part_kshot(encoder: str, draws: int, today: bool, on_false: bool = False, strict: bool = False) -> dict[str, Any]:
    base = SegmentationModel(bundled_model_path(encoder) if "/" not in encoder else encoder, provider="cpu")
    settings = today_settings(base) if today else AdaptSettings(strict_background=strict, contrast_fraction=CONTRAST[0])
    out: dict[str, Any] = {"encoder": base.id, "today": today}
    for label, names in SURFACES:
        t0 = time.perf_counter()
        res = kshot(base, scans_of(names), (1, 3, 5), draws=draws, settings=settings,
                    background_squares=0 if today else None, background_on_false=on_false)
        out[label] = {k: brief(v) if isinstance(v, dict) and "draws" in v else v for k, v in res.items()}
        out[label]["seconds"] = round(time.perf_counter() - t0, 1)
        for k in ("1-shot", "3-shot", "5-shot"):
            print(label, k, json.dumps(out[label][k]["mean"]), "FD", out[label][k]["false_per_100nm2"], flush=True)
    return out


def part_dev(encoder: str, draws: int, today: bool, on_false: bool = False, strict: bool = False) -> dict[str, Any]:
    """Leave-one-dev-region-out, k = 3: the only protocol used to choose settings."""
    base = SegmentationModel(bundled_model_path(encoder) if "/" not in encoder else encoder, provider="cpu")
    settings = today_settings(base) if today else AdaptSettings(strict_background=strict, contrast_fraction=CONTRAST[0])
    out: dict[str, Any] = {}
    for label, names in SURFACES:
        scans = scans_of(names)
        dev_ids = [r.id for s in scans for r in s.labels.regions_of("dev")]
        rows = []
        for held in dev_ids:
            folded = []
            for s in scans:
                regions = tuple(replace(r, split="test" if r.id == held else "dev")
                                for r in s.labels.regions_of("dev"))
                folded.append(LabelledScan(replace(s.labels, regions=regions), s.frame))
            if not any(r.split == "test" for s in folded for r in s.labels.regions):
                continue
            if label == "tio2":  # one dev region: left and right quarters of it instead
                r = scans[0].labels.regions_of("dev")[0]
                mid = (r.x0_nm + r.x1_nm) / 2
                halves = (replace(r, id="T1a", x1_nm=mid, split="dev"), replace(r, id="T1b", x0_nm=mid, split="test"))
                folded = [LabelledScan(replace(scans[0].labels, regions=halves), scans[0].frame)]
            try:
                res = kshot(base, folded, (3,), draws=draws, settings=settings,
                            background_squares=0 if today else None, background_on_false=on_false)
            except Exception as exc:  # too few features in the remaining regions
                print(label, held, "skipped:", exc)
                continue
            rows.append({"held_out": held, **brief(res["3-shot"])})
            print(label, held, json.dumps(res["3-shot"]["mean"]), "FD", res["3-shot"]["false_per_100nm2"], flush=True)
            if label == "tio2":
                break
        out[label] = rows
    return out


def _tune(scans: list[LabelledScan], cls: str, detect: Any, grid: dict[str, list[float]]) -> dict[str, Any]:
    """Grid search of a detector's parameters for one class on the dev regions (best F1)."""
    levelled = {s.labels.path: level_frame(s.frame.data) for s in scans}
    best: tuple[float, dict[str, float]] = (-1.0, {})
    keys = list(grid)
    for values in product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        dets = {s.labels.path: detect(levelled[s.labels.path], s.frame.nm_per_px, cls, bright=BRIGHT[cls], **params)
                for s in scans}
        f1 = score_detections(dets, scans, "dev", [cls]).per_class()[cls]["f1"]
        if f1 > best[0]:
            best = (float(f1), params)
    dets = {s.labels.path: detect(levelled[s.labels.path], s.frame.nm_per_px, cls, bright=BRIGHT[cls], **best[1])
            for s in scans}
    test = score_detections(dets, scans, "test", [cls]).to_dict()
    return {"params": best[1], "dev_f1": best[0], "test": test}


def part_baselines() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, names in (("si001h", SI), ("tio2", TIO2)):
        scans = scans_of(names)
        classes = [c for c in scans[0].labels.classes if c in BRIGHT]
        out[label] = {}
        for cls in classes:
            px = scans[0].frame.nm_per_px[0]
            thr_grid = {"threshold": [1.5, 2, 2.5, 3, 3.5, 4, 5, 6], "sigma_px": [0.5, 1.0, 2.0] if px > 0.05
                        else [2.0, 4.0, 8.0], "min_area_nm2": [0.0, 0.1, 0.2, 0.4] if px > 0.05
                        else [0.0, 0.02, 0.05, 0.1]}
            log_grid = {"threshold": [1, 1.5, 2, 2.5, 3, 4, 5, 6],
                        "sigmas_nm": [(0.2, 0.3, 0.45, 0.65)] if px > 0.05 else [(0.06, 0.1, 0.15, 0.2)],
                        "min_distance_nm": [0.6, 1.0, 1.5] if px > 0.05 else [0.3, 0.45, 0.6]}
            out[label][cls] = {"threshold": _tune(scans, cls, threshold_detect, thr_grid),
                               "log": _tune(scans, cls, log_detect, log_grid)}
            for kind in ("threshold", "log"):
                t = out[label][cls][kind]
                print(label, cls, kind, t["params"], "dev F1", t["dev_f1"], "test", json.dumps(t["test"]), flush=True)
    return out


def part_dense(encoder: str, today: bool) -> dict[str, Any]:
    scan = scans_of(TIO2)[0]
    base = SegmentationModel(bundled_model_path(encoder) if "/" not in encoder else encoder, provider="cpu")
    settings = today_settings(base) if today else AdaptSettings()
    model, report, tmp = dense_adapt(base, scan, settings)
    with tmp:
        out: dict[str, Any] = {"adapt": report, "dice_test": round(dense_dice(model, scan, "test"), 4),
                               "dice_dev": round(dense_dice(model, scan, "dev"), 4)}
    truth = dense_mask(scan.labels)
    levelled = level_frame(scan.frame.data)
    best = (-1.0, 0.0, 0.0)
    for sigma in (0.0, 2.0, 4.0):
        for t in np.arange(0.0, 4.01, 0.1):
            d = dice(threshold_mask(levelled, float(t), sigma_px=sigma), truth, scan.labels, "dev")
            if d > best[0]:
                best = (d, float(t), sigma)
    test = dice(threshold_mask(levelled, best[1], sigma_px=best[2]), truth, scan.labels, "test")
    out["threshold"] = {"threshold": round(best[1], 2), "sigma_px": best[2], "dice_dev": round(best[0], 4),
                        "dice_test": round(test, 4)}
    print("dense", json.dumps(out), flush=True)
    return out


def part_sim(frames: int = 8, seed: int = 60_000, draws: int = 3, today: bool = False,
             start_model_share: float | None = None) -> dict[str, Any]:
    """Simulator: si001-ash3 adapted from 3 clicks per class on one frame, scored on the other frames.

    Each draw clicks 3 random instances per class of frame ``seed`` (and, in the
    second variant, marks 3 feature-free 3 x 3 nm squares as background); the
    unadapted model is scored on the same frames. Precision must not drop by
    more than 2 points for any class. ``start_model_share`` overrides
    :class:`AdaptSettings`' (0.99: the rule before issue 17's fix).
    """
    import tempfile

    from stm_live.model.adapt import LabelledFrame, adapt_model
    from stm_live.model.evaluate import ClassScore, Truth, object_scores
    from stm_live.model.format import save_model
    from stm_live.model.prototypes import Point
    from stm_live.sim import simulate_scan

    base = SegmentationModel(bundled_model_path("si001-ash3"), provider="cpu")
    scans = [simulate_scan("si001-ash3", size_nm=50.0, pixels=512, seed=seed + i) for i in range(frames)]
    held = scans[1:]
    truth = [[Truth(t.class_name, t.x_nm, t.y_nm) for t in s.instances] for s in held]

    def scores(model: SegmentationModel) -> dict[str, dict[str, float]]:
        total = {c: ClassScore() for c in base.classes}
        for s, t in zip(held, truth, strict=True):
            seg = model.segment(s.frame("Z"))
            for name, sc in object_scores(seg.detections, t, base.classes).items():
                total[name].add(sc)
        return {c: {k: v for k, v in sc.to_dict().items() if k != "median_error_nm"} for c, sc in total.items()}

    out: dict[str, Any] = {"model": base.id, "frames": f"{seed}..{seed + frames - 1}, support {seed}",
                           "unadapted": scores(base)}
    support = scans[0]
    rng = np.random.default_rng(0)
    for variant, n_bg in (("3 points per class", 0), ("3 points per class + 3 background squares", 3)):
        rows = []
        for d in range(draws):
            points = []
            for c in base.classes:
                inst = [i for i in support.instances if i.class_name == c]
                for j in rng.choice(len(inst), size=3, replace=False):
                    points.append(Point(inst[int(j)].x_nm, inst[int(j)].y_nm, c))
            boxes = []
            while len(boxes) < n_bg:
                x0, y0 = (float(v) for v in rng.uniform(0, 47, size=2))
                if all(not (x0 - 0.5 <= i.x_nm <= x0 + 3.5 and y0 - 0.5 <= i.y_nm <= y0 + 3.5)
                       for i in support.instances):
                    boxes.append((x0, y0, x0 + 3.0, y0 + 3.0))
            example = LabelledFrame(support.frame("Z"), tuple(points), background_boxes=tuple(boxes))
            settings = today_settings(base) if today else AdaptSettings(contrast_fraction=CONTRAST[0])
            if start_model_share is not None:
                settings = replace(settings, start_model_share=start_model_share)
            proto, info, report = adapt_model(base, [example], list(base.classes), replace(settings, seed=d))
            with tempfile.TemporaryDirectory() as tmp:
                save_model(proto, info, Path(tmp) / "m.onnx")
                rows.append({"scores": scores(SegmentationModel(Path(tmp) / "m.onnx", provider="cpu")),
                             "nm_per_px": report["nm_per_px"],
                             "left_to_the_start_model": report.get("classes_left_to_the_start_model"),
                             "start_model_found_of_clicked": report.get("start_model_found_of_clicked")})
        mean = {c: {k: round(float(np.mean([r["scores"][c][k] for r in rows])), 4)
                    for k in ("precision", "recall", "f1")} for c in base.classes}
        out[variant] = {"mean": mean, "draws": rows}
        print("sim", variant, json.dumps(mean), flush=True)
    print("sim unadapted", json.dumps(out["unadapted"]), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["zero-shot", "kshot", "baselines", "dense"],
                        choices=["zero-shot", "kshot", "baselines", "dense", "dev", "sim", "transfer",
                                 "sim-realism", "measure"])
    parser.add_argument("--models", nargs="+", default=[], help="transfer part: model files (or bundled names)")
    parser.add_argument("--split", choices=["dev", "test"], default="dev", help="transfer part: regions scored")
    parser.add_argument("--encoder", default="base-encoder")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--today", action="store_true", help="adapt as before this evaluation existed")
    parser.add_argument("--background-on-false", action="store_true",
                        help="kshot and dev parts: the background squares on the start model's false detections "
                             "in the dev regions (as a person marks what is plainly wrong), not on random terrace")
    parser.add_argument("--strict-background", action="store_true",
                        help="kshot and dev parts: adapt with AdaptSettings.strict_background")
    parser.add_argument("--contrast-fraction", type=float, default=AdaptSettings().contrast_fraction,
                        help="kshot, dev and sim parts: AdaptSettings.contrast_fraction (0: no contrast gate)")
    parser.add_argument("--out", default=str(REPO / "docs" / "real_eval.json"))
    parser.add_argument("--tag", default="", help="suffix of the result keys (e.g. a variant's name)")
    parser.add_argument("--surface", choices=["si001h", "tio2"], help="k-shot and dev parts: this surface only")
    parser.add_argument("--sim-seed", type=int, default=60_000,
                        help="sim part: support frame seed (scored: the next 7); 60000 is the reported set")
    parser.add_argument("--start-model-share", type=float,
                        help="sim part: AdaptSettings.start_model_share (0.99: the rule before issue 17's fix)")
    args = parser.parse_args()
    CONTRAST[0] = args.contrast_fraction
    if args.surface:
        SURFACES[:] = [s for s in SURFACES if s[0] == args.surface]
    logging.basicConfig(level=logging.WARNING)
    if not DATA.is_dir():
        print(f"skipped: {DATA} is not there (../shared beside the checkout)", file=sys.stderr)
        return 0
    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    suffix = ("-today" if args.today else "") + (f"-{args.tag}" if args.tag else "")
    for part in args.part:
        t0 = time.perf_counter()
        if part == "zero-shot":
            value = part_zero_shot()
        elif part == "kshot":
            value = part_kshot(args.encoder, args.draws, args.today, args.background_on_false,
                               args.strict_background)
        elif part == "dev":
            value = part_dev(args.encoder, args.draws, args.today, args.background_on_false, args.strict_background)
        elif part == "baselines":
            value = part_baselines()
        elif part == "sim":
            value = part_sim(seed=args.sim_seed, draws=args.draws, today=args.today,
                             start_model_share=args.start_model_share)
        elif part == "transfer":
            value = part_transfer(args.models, args.split)
        elif part == "sim-realism":
            value = part_sim_realism(args.models)
        elif part == "measure":
            value = part_measure()
        else:
            value = part_dense(args.encoder, args.today)
        key = part + ("" if part in ("zero-shot", "baselines", "sim-realism", "measure") else suffix)
        if part == "transfer":
            key += f"-{args.split}"
        if part == "sim" and args.sim_seed != 60_000:
            key += f"-{args.sim_seed}"
        results[key] = {"measured": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.perf_counter() - t0, 1),
                        **value}
        out_path.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
