"""Accuracy of the bundled models and the few-shot episode protocol, on simulated surfaces.

Two measurements, both on fresh held-out simulator frames (seeds never used
in training) at the simulator's realistic artefact levels:

1. ``accuracy``: each bundled ``models/<surface>.onnx`` segments N frames;
   object precision/recall/F1 per class (a detection matches a true feature
   of its class within 0.5 nm, one to one) and pixel IoU.
2. ``episodes``: the paper's protocol. N-way K-shot (K = 1 and 3), 15
   queries per class, 100 episodes, nearest prototype on instance embeddings,
   on three sets of 6 held-out frames (``--seeds``) and on the 18 pooled: the
   pooled figures are the headline, since one draw of 6 frames can be an easy
   or a hard one. *Leave-one-surface-out*: the encoder used for surface S was
   trained without S (``runs/loso-<S>/models/base-encoder.onnx``, made by
   ``--train-loso`` with the bundled base encoder's recipe,
   ``models/base-encoder.train.yaml``); the in-domain figure with the bundled
   base encoder, which saw S, is given for reference. Each row is also given
   with *per-frame feature centring*: every frame's instance embeddings less
   the mean embedding of all its feature pixels (no labels used), what a
   model made with ``stm-live adapt --centre-features`` does in its head.
   That is transductive (it uses the frame's other features); the plain
   rows are the paper's protocol.

These are our simulated surfaces, not the paper's real data sets; the numbers
are not directly comparable with the paper's.

3. ``pooled``: the same episodes for one surface and any encoders (to
   compare training recipes); ``--input-scale`` also runs an encoder with
   another input normalisation than its own (a diagnostic), and
   ``--centre-features`` adds the frame-centred figures.

Usage:
    python benchmarks/eval_model.py accuracy [--frames 10] [--model si001-ash3=cand.onnx --out cand.json]
    python benchmarks/eval_model.py episodes [--train-loso] [--seeds 30000 31000 32000] [--frames 6]
    python benchmarks/eval_model.py pooled --encoder E.onnx [--encoder ...] [--surface si001-ash3]
        [--seeds 30000 31000 32000] [--frames 6] [--input-scale mad std] [--centre-features]
Writes docs/accuracy.json / docs/episodes.json and prints markdown tables
(``pooled`` prints only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from stm_live.model.evaluate import evaluate_model
from stm_live.model.runtime import SegmentationModel
from stm_live.train.settings import TrainSettings

REPO = Path(__file__).resolve().parents[1]
SURFACES = ("si001-ash3", "ge001", "tio2-110")
#: The recipe of the bundled base encoder; the leave-one-surface-out encoders use it too.
BASE_RECIPE = REPO / "models" / "base-encoder.train.yaml"


def _geometry(*, own_runs: bool = True) -> dict[str, tuple[float, int, float]]:
    """Held-out frame size, pixels and model pitch per surface, from the settings that trained it.

    A surface whose bundled model comes from its own run has its settings in
    ``models/<surface>.train.yaml`` (used when ``own_runs``); the others, and
    the shared encoders of the episode protocol, follow the defaults.
    """
    from stm_live.train.pipeline import held_out_geometry
    from stm_live.train.settings import load_train_settings

    out = {}
    for s in TrainSettings().surfaces:
        if s.name not in SURFACES:  # the random training surface
            continue
        own = REPO / "models" / f"{s.name}.train.yaml"
        surface = load_train_settings(own).surfaces[0] if own_runs and own.is_file() else s
        size, pixels = held_out_geometry(surface)
        out[s.name] = (size, pixels, surface.nm_per_px)
    return out


def accuracy(frames: int, seed: int, surfaces: tuple[str, ...] = SURFACES,
             models: dict[str, Path] | None = None) -> dict:
    geometry = _geometry()
    results = {}
    for name in surfaces:
        model = SegmentationModel((models or {}).get(name, REPO / "models" / f"{name}.onnx"), provider="cpu")
        size, pixels, _ = geometry[name]
        t0 = time.perf_counter()
        report = evaluate_model(model, simulate=name, count=frames, seed=seed, size_nm=size, pixels=pixels, episodes=0)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        report["frame"] = {"size_nm": size, "pixels": pixels}
        results[name] = report
    print(f"| surface | class | TP | FP | FN | precision | recall | F1 | pixel IoU |  ({frames} frames each)")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, report in results.items():
        for cls, s in report["objects"].items():
            iou = report["pixel_iou"][cls]
            print(f"| {name} | {cls} | {s['tp']} | {s['fp']} | {s['fn']} | {s['precision']:.3f} | "
                  f"{s['recall']:.3f} | {s['f1']:.3f} | {iou:.3f} |")
    return results


def _train_loso(surface: str, steps: int | None, runs: Path) -> Path:
    """The base encoder's recipe (``models/base-encoder.train.yaml``) with ``surface`` left out."""
    out = runs / f"loso-{surface}"
    encoder = out / "models" / "base-encoder.onnx"
    if encoder.is_file():
        return encoder
    cmd = [sys.executable, "-m", "stm_live", "train", "--config", str(BASE_RECIPE), "--run-dir", str(out),
           "--out-dir", str(out / "models"), "--exclude-surface", surface, "--evaluate-frames", "0",
           "--calibrate-frames", "0", "--no-progress"]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return encoder


def _episode_sets(model: SegmentationModel, surface: str, seeds: list[int], frames: int,
                  centres: tuple[bool, ...] = (False,)) -> dict[bool, dict[str, dict]]:
    """1- and 3-shot episodes on each seed's set of held-out frames and on all sets pooled.

    The episodes of a set are drawn with its seed, as ``evaluate_model`` does;
    the pool's with the first seed. One result per entry of ``centres``
    (per-frame feature centring of the instance embeddings or not,
    ``instance_embeddings(..., centre=...)``), from one embedding per frame.
    """
    import numpy as np

    from stm_live.model.evaluate import _simulated_items, instance_embeddings, run_episodes
    from stm_live.model.prepare import to_model_grid

    size, pixels, pitch = _geometry(own_runs=False)[surface]  # the shared encoders' frames and pitch
    per_set: dict[bool, list] = {centre: [] for centre in centres}
    for seed in seeds:
        vectors: dict[bool, list] = {centre: [] for centre in centres}
        classes = []
        for _, scan, mask, _, _ in _simulated_items(surface, frames, seed, size, pixels):
            frame = scan.frame("Z", "forward")
            embedding, prepared = model.embed(frame, nm_per_px=pitch)
            small = to_model_grid(mask, prepared.shape, nm_per_px=frame.nm_per_px, target_nm_per_px=pitch)
            for centre in centres:
                v, c = instance_embeddings(embedding, small, centre=centre)
                vectors[centre].append(v)
            classes.append(c)
        for centre in centres:
            per_set[centre].append((np.concatenate(vectors[centre]), np.concatenate(classes)))
    names = [str(s) for s in seeds] + ["pooled"]
    out = {}
    for centre, sets in per_set.items():
        pooled = (np.concatenate([v for v, _ in sets]), np.concatenate([c for _, c in sets]))
        out[centre] = {
            name: {f"{k}-shot": run_episodes(v, c, shots=k, episodes=100, queries=15, seed=ep_seed).to_dict()
                   for k in (1, 3)}
            for name, ep_seed, (v, c) in zip(names, [*seeds, seeds[0]], [*sets, pooled], strict=True)}
    return out


def _cell(r: dict) -> str:
    if "accuracy_mean" not in r:
        return str(r.get("error", "-"))
    return f"{100 * r['accuracy_mean']:.1f} +- {100 * r['accuracy_std']:.1f} %"


def episodes(seeds: list[int], frames: int, train_loso: bool, loso_steps: int | None, runs: Path) -> dict:
    """Every surface, in-domain and leave-one-out, plain and with per-frame feature centring."""
    results: dict[str, dict] = {}
    for name in SURFACES:
        row: dict[str, dict] = {}
        encoders = {"in-domain": REPO / "models" / "base-encoder.onnx"}
        loso = runs / f"loso-{name}" / "models" / "base-encoder.onnx"
        if train_loso:
            loso = _train_loso(name, loso_steps, runs)
        if loso.is_file():
            encoders["leave-one-surface-out"] = loso
        for label, path in encoders.items():
            model = SegmentationModel(path, provider="cpu")
            for centre, sets in _episode_sets(model, name, seeds, frames, (False, True)).items():
                key = f"{label}, frame-centred" if centre else label
                row[key] = {"encoder": str(path), "id": model.id, "frame_centred": centre, **sets}
            print(f"{name} {label}: done", flush=True)
        results[name] = row
    print(f"| surface | encoder | ways | 1-shot ({len(seeds) * frames} frames) | 3-shot | "
          + " | ".join(f"frames {s}: 1 / 3-shot" for s in seeds) + " |")
    print("| --- | --- | ---: | ---: | ---: |" + " --- |" * len(seeds))
    for name, row in results.items():
        for label, r in row.items():
            one, three = r["pooled"]["1-shot"], r["pooled"]["3-shot"]
            sets = [f"{100 * r[str(s)]['1-shot'].get('accuracy_mean', float('nan')):.1f} / "
                    f"{100 * r[str(s)]['3-shot'].get('accuracy_mean', float('nan')):.1f} %" for s in seeds]
            print(f"| {name} | {label} | {one.get('ways', '-')} | {_cell(one)} | {_cell(three)} | "
                  + " | ".join(sets) + " |")
    return results


def pooled(surface: str, encoders: list[Path], seeds: list[int], frames: int, scales: list[str] | None = None,
           centre: bool = False) -> dict:
    """Episodes per set of frames and over all sets pooled, for each encoder.

    ``scales`` overrides the input normalisation's spread (``mad``, ``iqr``,
    ``std``) that the encoder's metadata names, one row per scale: a
    diagnostic of an encoder under a normalisation it was not trained with.
    ``centre`` adds a row with per-frame feature centring after each.
    """
    out: dict[str, dict] = {}
    print("| encoder | input scale | centring | " + " | ".join(f"frames {s}" for s in seeds)
          + f" | {len(seeds) * frames} frames pooled |")
    print("| --- | --- | --- |" + " --- |" * (len(seeds) + 1))
    for path in encoders:
        model = SegmentationModel(path, provider="cpu")
        own = model.info.normalisation
        own_scale = own.get("scale", "mad")
        trained = model.info.training.get("normalisation", own).get("scale", "mad")
        for scale in scales or [own_scale]:
            model.info = replace(model.info, normalisation={**own, "scale": scale})
            rows = _episode_sets(model, surface, seeds, frames, (False, True) if centre else (False,))
            for centred, row in rows.items():
                out[f"{path} {scale}{' frame-centred' if centred else ''}"] = {
                    "id": model.id, "input_scale": scale, "frame_centred": centred, **row}
                cells = [f"{100 * r['1-shot']['accuracy_mean']:.1f} / {100 * r['3-shot']['accuracy_mean']:.1f} %"
                         for r in row.values()]
                notes = [n for n, on in (("its own", scale == own_scale), ("trained on", scale == trained)) if on]
                note = f" ({', '.join(notes)})" if notes else ""
                print(f"| {path} [{model.id}] | {scale}{note} | {'frame' if centred else 'none'} | "
                      + " | ".join(cells) + " |", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--frames", type=int, default=10)
    a.add_argument("--seed", type=int, default=20_000)
    a.add_argument("--model", action="append", default=[], metavar="SURFACE=PATH",
                   help="another model for a surface (a candidate); with it, only the surfaces named are "
                        "measured and --out is needed")
    a.add_argument("--out", type=Path, help="write here instead of docs/accuracy.json")
    e = sub.add_parser("episodes")
    e.add_argument("--frames", type=int, default=6, help="held-out frames per set (per seed)")
    e.add_argument("--seeds", type=int, nargs="+", default=[30_000, 31_000, 32_000],
                   help="one set of frames per seed; the headline figures pool all sets")
    e.add_argument("--train-loso", action="store_true", help="train missing leave-one-surface-out encoders")
    e.add_argument("--loso-steps", type=int, default=None,
                   help="supervised steps of those runs (default: the base encoder recipe's)")
    e.add_argument("--runs", type=Path, default=REPO / "runs")
    p = sub.add_parser("pooled")
    p.add_argument("--encoder", type=Path, action="append", required=True)
    p.add_argument("--surface", default="si001-ash3", choices=SURFACES)
    p.add_argument("--seeds", type=int, nargs="+", default=[30_000, 31_000, 32_000])
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--input-scale", nargs="+", choices=["mad", "iqr", "std"],
                   help="normalise the input with these spreads instead of the encoder's own (diagnostic)")
    p.add_argument("--centre-features", action="store_true",
                   help="also run each encoder with per-frame feature centring of the instance embeddings")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    if args.what == "accuracy":
        models = {k: Path(v) for k, v in (m.split("=", 1) for m in args.model)}
        if models and args.out is None:
            parser.error("--model needs --out (docs/accuracy.json holds the bundled models' figures)")
        out = accuracy(args.frames, args.seed, tuple(models) or SURFACES, models)
        (args.out or REPO / "docs" / "accuracy.json").write_text(json.dumps(out, indent=2))
    elif args.what == "pooled":
        pooled(args.surface, args.encoder, args.seeds, args.frames, args.input_scale, args.centre_features)
    else:
        out = episodes(args.seeds, args.frames, args.train_loso, args.loso_steps, args.runs)
        (REPO / "docs" / "episodes.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
