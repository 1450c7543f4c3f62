"""Tip-change detection line by line on simulated frames: found, delay, false alarms.

Simulated Si(001)+AsH3 frames with the realistic artefacts (noise, scars,
line offsets and jumps, drift, steps, double tip ...) are streamed line by
line through :class:`stm_live.quality.TipChangeDetector`, once with a tip
change in every frame (``tip_change_chance = 1``, severity as given) and once
with none (``tip_change_chance = 0``, same seeds otherwise).

* found: a detection whose first changed line is within ``--tolerance`` lines
  of the true one, reported at most ``--within`` lines after it;
* delay: lines from the true change to the line that completed the evidence;
* false alarms: detections in the clean frames (per 100 frames), and
  detections before the change in the changed ones.

``--baseline`` also runs the detector as it was before the lattice-turn check
(``turn=inf``: a change where ``along`` and ``across`` move apart, as at a
step edge where the dimer rows turn, still alarms) on the very same lines,
for comparison. ``turns`` counts the changes put down to a turning lattice.

Usage::

    python benchmarks/eval_tipchange_sim.py --frames 200 --pixels 256 --baseline --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np

from stm_live.level import LineLeveller
from stm_live.quality import TipChangeDetector
from stm_live.sim import Artefacts, simulate_scan


def _score() -> dict[str, Any]:
    return {"found": 0, "delays": [], "early": 0, "clean_alarms": 0, "clean_frames_alarmed": 0, "missed": [],
            "turns_clean": 0, "turns_changed": 0, "clean_alarm_seeds": []}


def run(frames: int, pixels: int, size_nm: float, severity: float, seed0: int, within: int, tolerance: int,
        levelled: bool, threshold: float | None = None, smooth: int | None = None,
        baseline: bool = False, turn: float | None = None) -> dict[str, object]:
    base = Artefacts.realistic()
    settings: dict[str, dict[str, Any]] = {"detector": {}}
    if threshold is not None:
        settings["detector"]["threshold"] = threshold
    if smooth is not None:
        settings["detector"]["smooth"] = smooth
    if turn is not None:
        settings["detector"]["turn"] = turn
    if baseline:
        settings["baseline"] = {**settings["detector"], "turn": math.inf}
    scores = {name: _score() for name in settings}
    t0 = time.perf_counter()
    lines = 0
    for k in range(frames):
        seed = seed0 + k
        for chance in (1.0, 0.0):
            art = replace(base, tip_change=severity, tip_change_chance=chance)
            scan = simulate_scan("si001-ash3", size_nm=size_nm, pixels=pixels, seed=seed, artefacts=art,
                                 scan_direction="down" if k % 2 == 0 else "up")
            z = scan.frame("Z", "forward").data
            order = range(pixels) if k % 2 == 0 else range(pixels - 1, -1, -1)
            lev = LineLeveller(pixels) if levelled else None
            stream = [z[r] if lev is None else lev.push(z[r]) for r in order]
            lines += len(stream)
            for name, kw in settings.items():
                det = TipChangeDetector(**kw)
                events = [e for e in (det.push(v) for v in stream) if e is not None]
                sc = scores[name]
                sc["turns_changed" if chance == 1.0 else "turns_clean"] += len(det.turns)
                if chance == 1.0:
                    row = scan.events["tip_change"]["row"]
                    true = row if k % 2 == 0 else pixels - 1 - row  # acquisition index
                    hit = [e for e in events if abs(e.line - true) <= tolerance and e.detected_at - true <= within]
                    sc["early"] += sum(1 for e in events if e.line < true - tolerance)
                    if hit:
                        sc["found"] += 1
                        sc["delays"].append(hit[0].detected_at - true)
                    else:
                        sc["missed"].append(seed)
                else:
                    sc["clean_alarms"] += len(events)
                    sc["clean_frames_alarmed"] += bool(events)
                    if events:
                        sc["clean_alarm_seeds"].append(seed)
    elapsed = time.perf_counter() - t0
    out: dict[str, object] = {"frames": frames, "pixels": pixels, "size_nm": size_nm, "severity": severity,
                              "levelled": levelled, "seeds": [seed0, seed0 + frames - 1]}
    for name, kw in settings.items():
        det = TipChangeDetector(**kw)
        sc = scores[name]
        delays = sc["delays"]
        out[name] = {
            "threshold": det.threshold, "smooth": det.smooth, "turn": det.turn if math.isfinite(det.turn) else None,
            "found": sc["found"], "found_fraction": sc["found"] / frames,
            "delay_lines": {"median": float(np.median(delays)) if delays else None,
                            "p95": float(np.percentile(delays, 95)) if delays else None,
                            "max": int(max(delays)) if delays else None},
            "false_alarms_per_100_clean_frames": 100.0 * sc["clean_alarms"] / frames,
            "clean_frames_with_an_alarm": sc["clean_frames_alarmed"],
            "alarms_before_the_change": sc["early"],
            "clean_alarm_seeds": sc["clean_alarm_seeds"][:20],
            "turns_in_clean_frames": sc["turns_clean"], "turns_in_changed_frames": sc["turns_changed"],
            "missed_seeds": sc["missed"][:20],
        }
    out["us_per_line_incl_simulation"] = 1e6 * elapsed / lines
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--pixels", type=int, default=256)
    p.add_argument("--size-nm", type=float, default=50.0)
    p.add_argument("--severity", type=float, default=0.6, help="tip change severity 0..1 (realistic: 0.6)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--within", type=int, default=10)
    p.add_argument("--tolerance", type=int, default=3)
    p.add_argument("--raw", action="store_true", help="raw lines instead of LineLeveller output")
    p.add_argument("--threshold", type=float, help="detector threshold (default: the detector's)")
    p.add_argument("--smooth", type=int, help="lines each statistic is averaged over (default: the detector's)")
    p.add_argument("--turn", type=float, help="lattice-turn tolerance, log units (default: the detector's)")
    p.add_argument("--baseline", action="store_true",
                   help="also run the detector without the lattice-turn check (turn=inf) on the same lines")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    out = run(a.frames, a.pixels, a.size_nm, a.severity, a.seed, a.within, a.tolerance, not a.raw, a.threshold,
              a.smooth, a.baseline, a.turn)
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
