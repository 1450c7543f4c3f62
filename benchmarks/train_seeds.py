"""The spread of a training recipe over seeds and CPU numerics, on the same held-out frames.

``run`` trains the recipe once per (seed, numerics) with ``stm-live train`` (each in its
own run folder under ``--out``, models installed into a folder of the run's own, so that
nothing in models/ is touched), skipping runs whose report exists; ``--jobs`` at a time,
each with its log in the run folder. Every run scores its model on the same held-out
simulated frames (``stm-live train``'s own comparison: seeds 10000 onwards, whatever the
training seed; ``--evaluate-frames``, 24 by default).

``summarise`` reads the runs' reports and prints, per exported model and class, the
held-out F1 of every run, its mean and range (max - min) over seeds, separately per
numerics setting and over all runs, and which runs gave bit-identical weights (same
model id). ``--baseline M`` adds a model file scored on the same frames (the bundled
model, say). Writes ``--json``.

``snapshots`` (runs trained with ``snapshot_every``, as ``benchmarks/recipes/seed-study.train.yaml``
does): per run, the model made from the mean of the snapshots' weights (``average``), from the
mean of the last three (``average-last3``), from the snapshot with the lowest validation
loss (``best-val``) and from the snapshot whose worst class has the best validation F1 once
calibrated (``best-val-f1``; ``best-val-f1-offsets``, ``average-offsets``, ``average-last3-offsets``: the
same, calibrated with class offsets), each exported,
calibrated and scored like the run's own model (thresholds only, as when the runs were made), and the
run's own model with thresholds calibrated on 48 frames instead of 24 (``calibrated-48``), on
the same held-out frames; written to ``<run>/variants.json``, which ``summarise`` reads.

``recalibrate`` (no torch, no snapshots): every run's own model (and ``--baseline``), its
class offsets removed, calibrated again on the same validation frames: thresholds only
(``thresholds-N``) and thresholds with class offsets (``offsets-N``), N = ``--frames``; scored
on the run's held-out frames, added to ``<run>/variants.json``, a table printed, ``--json`` written.

Usage:
    python benchmarks/train_seeds.py run --seeds 0 1 2 3 4 [--numerics pinned native] [--jobs 2]
        [--config recipe.train.yaml] [--out runs/seeds] [--threads 2] [-- extra stm-live train flags]
    python benchmarks/train_seeds.py snapshots [--out runs/seeds]
    python benchmarks/train_seeds.py recalibrate [--out runs/seeds] [--frames 24 48] [--baseline M] [--json F]
    python benchmarks/train_seeds.py summarise [--out runs/seeds] [--baseline models/si001-ash3.onnx]
        [--json docs/training_seeds.json]

A default run takes about 20 min on a free 2-core machine; run it under ``nice``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: What ``snapshots`` makes of a run's snapshots (see the module description).
VARIANTS = ("average", "average-last3", "best-val", "calibrated-48", "best-val-f1", "best-val-f1-offsets",
            "average-offsets", "average-last3-offsets")


def _run_dir(out: Path, seed: int, numerics: str) -> Path:
    return out / f"seed{seed}-{numerics}"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    jobs: list[tuple[int, str, Path]] = []
    for seed in args.seeds:
        for numerics in args.numerics:
            d = _run_dir(out, seed, numerics)
            if (d / "report.json").is_file():
                print(f"{d}: done", flush=True)
                continue
            jobs.append((seed, numerics, d))
    running: list[tuple[subprocess.Popen[bytes], Path, float]] = []
    failed = 0
    while jobs or running:
        while jobs and len(running) < args.jobs:
            seed, numerics, d = jobs.pop(0)
            d.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "stm_live", "train", "--seed", str(seed), "--numerics", numerics,
                   "--run-dir", str(d), "--out-dir", str(d / "installed"), "--no-progress",
                   "--evaluate-frames", str(args.evaluate_frames), *args.extra]
            if args.config:
                cmd += ["--config", args.config]
            if args.threads is not None:
                cmd += ["--threads", str(args.threads)]
            log = (d / "log.txt").open("ab")
            print(f"{d}: {' '.join(cmd[2:])}", flush=True)
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), d, time.time()))
        time.sleep(5)
        for proc, d, t0 in list(running):
            if proc.poll() is not None:
                running.remove((proc, d, t0))
                status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
                failed += proc.returncode != 0
                print(f"{d}: {status} after {(time.time() - t0) / 60:.1f} min", flush=True)
    return 1 if failed else 0


def snapshots(args: argparse.Namespace) -> int:
    from stm_live.train.numerics import can_pin, is_pinned, pinned_environment

    if can_pin() and not is_pinned():  # batch-norm statistics and exports under the training's numerics
        return subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=pinned_environment(),
                              check=False).returncode
    import torch

    from stm_live.train.compare import SimulatedHeldOut
    from stm_live.train.data import build_sets
    from stm_live.train.settings import TrainSettings
    from stm_live.train.snapshots import average_snapshots, load_snapshots, validation_loss

    wanted = args.variants
    for report_path in sorted(Path(args.out).glob("*/report.json")):
        run_dir = report_path.parent
        if not (run_dir / "snapshots").is_dir():
            continue
        result: dict[str, Any] = {"variants": {}}
        if (run_dir / "variants.json").is_file():
            result = json.loads((run_dir / "variants.json").read_text())
        todo = [v for v in wanted if v not in result["variants"]]
        if not todo:
            continue
        report = json.loads(report_path.read_text())
        settings = TrainSettings.model_validate({**report["settings"], "run_dir": str(run_dir),
                                                 "out_dir": str(run_dir / "variants"), "unlabelled": []})
        torch.set_num_threads(settings.threads or torch.get_num_threads())
        train, val = build_sets(settings, progress=False)
        snaps = load_snapshots(settings, train)
        result["snapshots"] = [s.step for s in snaps]
        for name in report["metrics"]:
            m = report["metrics"][name]
            held_out = SimulatedHeldOut(name, m["frames"], m["seed"], m["size_nm"], m["pixels"])

            export = functools.partial(_export_variant, run_dir, settings, train, val, report["training"], name)

            for variant in todo:
                step = None
                if variant.startswith("average"):  # weights averaged over all or the last three snapshots
                    chosen = snaps[-3:] if "last3" in variant else snaps
                    entry = export(variant, *average_snapshots(chosen, settings, train), 24,
                                   variant.endswith("-offsets"))
                elif variant == "best-val":
                    losses = {s.step: validation_loss(s.encoder, s.bank, val, train, name) for s in snaps}
                    result.setdefault("validation_loss", {})[name] = losses
                    best = min(snaps, key=lambda s: losses[s.step])
                    step, entry = best.step, export(variant, best.encoder, best.bank, 24)
                elif variant in ("best-val-f1", "best-val-f1-offsets"):
                    # every snapshot calibrated on the validation frames; the best worst class wins
                    offsets = variant.endswith("-offsets")
                    entries = {s.step: export(f"snapshot-{s.step}{'-offsets' if offsets else ''}", s.encoder, s.bank,
                                              24, offsets) for s in snaps}
                    val_f1 = {k: e["detection"]["calibration"]["validation_f1"] for k, e in entries.items()}
                    result.setdefault("validation_f1" + ("_offsets" if offsets else ""), {})[name] = val_f1
                    step = max(val_f1, key=lambda k: (min(v for v in val_f1[k].values() if v is not None), k))
                    entry = entries[step]
                else:  # calibrated-48: the run's own model, thresholds calibrated on twice the frames
                    entry = export(variant, snaps[-1].encoder, snaps[-1].bank, 48)
                scores = held_out.score(Path(entry["path"]))
                result["variants"].setdefault(variant, {})[name] = {
                    "id": entry["id"], "step": step, "f1": {k.removesuffix(" F1"): v for k, v in scores.values.items()}}
                print(f"{run_dir.name} {name} {variant}: {result['variants'][variant][name]}", flush=True)
                (run_dir / "variants.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _export_variant(
    run_dir: Path, settings: Any, train: Any, val: Any, training: Any, name: str, variant: str, encoder: Any,
    bank: Any, frames: int, class_offsets: bool = False,
) -> dict[str, Any]:
    """Export, then calibrate on ``frames`` validation frames (with class offsets or not), one variant."""
    settings = settings.model_copy(update={"calibrate_class_offsets": class_offsets})
    from stm_live.train.pipeline import calibrate_exports, export_surface_model

    path = run_dir / "variants" / variant / f"{name}.onnx"
    exported = {name: export_surface_model(encoder, bank, settings, train, val, name, path, training)}
    calibrate_exports(exported, settings, (name,), frames)
    return dict(exported[name])


def recalibrate(args: argparse.Namespace) -> int:
    import shutil
    from dataclasses import replace

    from stm_live.model.format import attach_head, load_onnx, read_info, save_model
    from stm_live.train.compare import SimulatedHeldOut
    from stm_live.train.pipeline import calibrate_exports
    from stm_live.train.settings import TrainSettings

    out = Path(args.out)
    targets: list[tuple[str, Path, dict[str, Any], Path | None]] = []  # (label, model, held-out metrics, run dir)
    reports = sorted(out.glob("*/report.json"))
    for report_path in reports:
        report = json.loads(report_path.read_text())
        for name, m in report["models"].items():
            if name in report.get("metrics", {}):
                model = report_path.parent / m.get("candidate", m["path"])
                targets.append((report_path.parent.name, model, report["metrics"][name], report_path.parent))
    if args.baseline:
        info = read_info(load_onnx(args.baseline), source=args.baseline)
        metrics = next((json.loads(r.read_text())["metrics"][info.name] for r in reports
                        if info.name in json.loads(r.read_text()).get("metrics", {})), None)
        if metrics is None:
            raise SystemExit(f"{args.baseline}: no run exported a model named {info.name!r}")
        targets.append((f"baseline {Path(args.baseline).name}", Path(args.baseline), metrics, None))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label, model_path, metrics, run_dir in targets:
        onnx_model = load_onnx(model_path)
        info = read_info(onnx_model, source=str(model_path))
        assert info.prototypes is not None
        bare = replace(info.prototypes, offsets=None)
        held_out = SimulatedHeldOut(info.name, metrics["frames"], metrics["seed"], metrics["size_nm"],
                                    metrics["pixels"])
        folder = (run_dir or out / "baseline") / "variants"
        saved: dict[str, Any] = {"variants": {}}
        if run_dir is not None and (run_dir / "variants.json").is_file():
            saved = json.loads((run_dir / "variants.json").read_text())
        for frames in args.frames:
            for offsets in (False, True):
                variant = f"{'offsets' if offsets else 'thresholds'}-{frames}"
                path = folder / variant / f"{info.name}.onnx"
                done = saved["variants"].get(variant, {}).get(info.name)
                if done is None or not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    save_model(attach_head(onnx_model, bare), replace(info, prototypes=bare), path)
                    settings = TrainSettings(calibrate_class_offsets=offsets)
                    exported = {info.name: {"path": str(path), "id": ""}}
                    calibrate_exports(exported, settings, (info.name,), frames)
                    scores = held_out.score(path)
                    done = {"id": exported[info.name]["id"], "step": None,
                            "f1": {k.removesuffix(" F1"): v for k, v in scores.values.items()},
                            "class_offsets": exported[info.name]["detection"]["calibration"].get("class_offsets")}
                    saved["variants"].setdefault(variant, {})[info.name] = done
                    if run_dir is not None:
                        (run_dir / "variants.json").write_text(json.dumps(saved, indent=2) + "\n")
                    else:
                        shutil.rmtree(path.parent)
                table.setdefault(variant, {})[label] = done["f1"]
                print(f"{label} {variant}: {done['f1']} offsets {done.get('class_offsets')}", flush=True)
    print("\n| calibration | class | runs | min | max | range (points) |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for variant, rows in table.items():
        for c in sorted({c for f1 in rows.values() for c in f1}):
            values = [f1[c] for f1 in rows.values() if f1.get(c) is not None]
            print(f"| {variant} | {c} | {len(values)} | {min(values):.3f} | {max(values):.3f} | "
                  f"{100 * (max(values) - min(values)):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 0


def _baseline(path: str, reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Score ``path`` on the held-out frames the runs used."""
    from stm_live.model.format import load_onnx, read_info
    from stm_live.train.compare import SimulatedHeldOut

    info = read_info(load_onnx(path), source=path)
    for report in reports:
        metrics = report["metrics"].get(info.name)
        if metrics:
            held_out = SimulatedHeldOut(info.name, metrics["frames"], metrics["seed"], metrics["size_nm"],
                                        metrics["pixels"])
            scores = held_out.score(Path(path))
            return {"name": info.name, "id": info.id, "path": path, "held_out": held_out.name,
                    "f1": {k.removesuffix(" F1"): v for k, v in scores.values.items()}}
    raise SystemExit(f"{path}: no run exported a model named {info.name!r}")


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values),
            "range": round(max(values) - min(values), 4), "runs": len(values)}


def summarise(args: argparse.Namespace) -> int:
    out = Path(args.out)
    runs = []
    for report_path in sorted(out.glob("*/report.json")):
        report = json.loads(report_path.read_text())
        numerics = report["training"].get("numerics", {})
        runs.append({
            "run": report_path.parent.name,
            "seed": report["training"]["seed"],
            "numerics": report["settings"].get("numerics", "native"),
            "pinned": numerics.get("pinned"),
            "torch_cpu_capability": numerics.get("torch_cpu_capability"),
            "threads": report.get("threads"),
            "minutes": round(report["timings_s"]["total"] / 60, 1),
            "data_content_hash": report["training"].get("data_content_hash"),
            "models": {name: {"id": m["id"], "f1": {c: s["f1"] for c, s in report["metrics"].get(name, {})
                                                    .get("objects", {}).items()}}
                       for name, m in report["models"].items()},
            "held_out": {name: {k: v for k, v in m.items() if k in ("frames", "seed", "size_nm", "pixels")}
                         for name, m in report["metrics"].items()},
            "_report": report,
        })
        variants_path = report_path.parent / "variants.json"
        if variants_path.is_file():
            for variant, models in json.loads(variants_path.read_text())["variants"].items():
                runs.append({**{k: v for k, v in runs[-1].items() if k not in ("models", "run")},
                             "run": f"{report_path.parent.name} {variant}", "variant": variant,
                             "models": {n: {"id": m["id"], "f1": m["f1"]} for n, m in models.items()}})
    if not runs:
        raise SystemExit(f"{out}: no reports (run `train_seeds.py run` first)")
    baseline = _baseline(args.baseline, [r["_report"] for r in runs]) if args.baseline else None
    for r in runs:
        del r["_report"]
    result: dict[str, Any] = {"machine": f"{platform.machine()} {platform.processor()}".strip(),
                              "cpus": os.cpu_count(), "runs": runs, "baseline": baseline, "spread": {}}
    names = sorted({n for r in runs for n in r["models"]})
    for name in names:
        classes = sorted({c for r in runs for c in r["models"].get(name, {}).get("f1", {})})
        members = [r for r in runs if name in r["models"]]
        groups: dict[str, list[dict[str, Any]]] = {"all": [r for r in members if "variant" not in r]}
        for numerics in sorted({r["numerics"] for r in runs}):
            groups[numerics] = [r for r in groups["all"] if r["numerics"] == numerics]
        for variant in sorted({r["variant"] for r in members if "variant" in r}):
            groups[f"variant {variant}"] = [r for r in members if r.get("variant") == variant]
        result["spread"][name] = {
            group: {c: _stats([r["models"][name]["f1"][c] for r in members]) for c in classes}
            for group, members in groups.items() if members
        }
        print(f"\n{name}: held-out F1 per run ({runs[0]['held_out'].get(name)})\n")
        print("| run | seed | numerics | threads | id | " + " | ".join(classes) + " |")
        print("| --- | ---: | --- | ---: | --- | " + " | ".join("---:" for _ in classes) + " |")
        for r in members:
            m = r["models"][name]
            print(f"| {r['run']} | {r['seed']} | {r['numerics']} ({r['torch_cpu_capability']}) | {r['threads']} | "
                  f"{m['id']} | " + " | ".join(f"{m['f1'][c]:.3f}" for c in classes) + " |")
        if baseline and baseline["name"] == name:
            print(f"| baseline {Path(baseline['path']).name} | | | | {baseline['id']} | "
                  + " | ".join(f"{baseline['f1'].get(c, float('nan')):.3f}" for c in classes) + " |")
        print("\n| runs | class | mean | min | max | range (points) |\n| --- | --- | ---: | ---: | ---: | ---: |")
        for group, stats in result["spread"][name].items():
            for c in classes:
                s = stats[c]
                print(f"| {group} ({s['runs']}) | {c} | {s['mean']:.3f} | {s['min']:.3f} | {s['max']:.3f} | "
                      f"{100 * s['range']:.1f} |")
        ids: dict[str, list[str]] = {}
        for r in groups["all"]:
            ids.setdefault(r["models"][name]["id"], []).append(r["run"])
        for model_id, same in ids.items():
            if len(same) > 1:
                print(f"\nbit-identical weights and thresholds ({model_id}): {', '.join(same)}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    r.add_argument("--numerics", nargs="+", default=["pinned"], choices=["pinned", "native"])
    r.add_argument("--config", help="training recipe (default: the default recipe)")
    r.add_argument("--out", default=str(REPO / "runs" / "seeds"))
    r.add_argument("--jobs", type=int, default=1, help="trainings at a time")
    r.add_argument("--threads", type=int, help="torch threads per training (default: the recipe's, 2)")
    r.add_argument("--evaluate-frames", type=int, default=24)
    r.add_argument("extra", nargs="*", help="further stm-live train flags (after --)")
    s = sub.add_parser("summarise")
    s.add_argument("--out", default=str(REPO / "runs" / "seeds"))
    s.add_argument("--baseline", help="a model file scored on the same held-out frames")
    s.add_argument("--json", help="write the runs and spread here")
    v = sub.add_parser("snapshots")
    v.add_argument("--out", default=str(REPO / "runs" / "seeds"))
    v.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    c = sub.add_parser("recalibrate")
    c.add_argument("--out", default=str(REPO / "runs" / "seeds"))
    c.add_argument("--frames", type=int, nargs="+", default=[24, 48], help="validation frames to calibrate on")
    c.add_argument("--baseline", help="a model file recalibrated and scored the same way")
    c.add_argument("--json", help="write the table here")
    args = parser.parse_args(argv)
    return {"run": run, "snapshots": snapshots, "summarise": summarise, "recalibrate": recalibrate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
