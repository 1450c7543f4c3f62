"""The learned frame-quality combination (written by ``benchmarks/fit_quality_model.py``; do not edit).

Multinomial logistic regression over :data:`stm_live.quality.frame.FEATURE_NAMES`, fitted on
**simulated frames only**: 300 per verdict from :func:`stm_live.sim.simulate_scan`
(Si(001):H, 6-40 nm, 300 or 512 px, bias -2 or +1.5 V, 0-2 steps, 35 % with the real frames'
realism; rendered as the real images are: blurred 0.5-1.5 px within each band, each line
flattened, scaled to 8-bit grey; seeds
500000 + 100000 k + i). good: a sharp tip (0.08-0.22 nm), the realistic artefacts with noise
0.3-2 x, 0.5-5 scars per 100 lines, a double tip up to 0.25, no tip change; tip_change: the same
broken into bands at 1-3 lines, each under another apex state (moved sideways, blunter, another
contrast, a ghost apex, more noise); bad: a blunt tip (0.35-1.2 nm), a strong double tip (0.6-1),
heavy noise (4-20 x) and
scars, an unstable tip (line jumps 0.1-0.5 nm), the feedback lost for a band of lines, or a
blunt and noisy tip.
Thresholds: 10 false alarms per 100 simulated good frames for each verdict. No number here
was fitted on the real tip-state images (GPL-3.0, evaluation only: ``benchmarks/eval_quality.py``).
"""

from __future__ import annotations

from typing import Any

MODEL: dict[str, Any] = {
    "features": [
        "log1p_tip_change_z",
        "log1p_break_z",
        "lattice",
        "sharpness",
        "too_small",
        "periodicity",
        "log1p_band_break_z"
    ],
    "classes": [
        "good",
        "bad",
        "tip_change"
    ],
    "mean": [
        2.1208089274299198,
        1.7217261275817795,
        2.210604444444445,
        -1.0591655555555564,
        0.0,
        0.28031444444444426,
        1.3022469087294293
    ],
    "scale": [
        0.7108337041973878,
        0.8542642834057593,
        2.8834983706857273,
        0.698733735322486,
        1e-09,
        0.3019856114228633,
        0.6520196466808226
    ],
    "weights": [
        [
            -0.435705737526631,
            -0.07196409636867011,
            0.5076698338952956
        ],
        [
            -0.6435612209074916,
            -0.5303760899719763,
            1.1739373108794675
        ],
        [
            0.5546993913429972,
            -0.7004290595719959,
            0.14572966822898892
        ],
        [
            -0.41138994596524764,
            0.059305821515587456,
            0.3520841244496616
        ],
        [
            0.0,
            0.0,
            0.0
        ],
        [
            0.17617615929789243,
            -0.17762685746768386,
            0.0014506981697890151
        ],
        [
            -0.15368526326476906,
            0.06338830394757528,
            0.09029695931719246
        ],
        [
            -0.05047312724170489,
            0.009653168441947687,
            0.040819958799759304
        ]
    ],
    "threshold": {
        "bad": 0.4889896157866739,
        "tip_change": 0.38339848821220285
    }
}
