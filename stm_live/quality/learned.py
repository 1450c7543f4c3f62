"""The learned frame-quality combination (written by ``benchmarks/fit_quality_model.py``; do not edit).

Multinomial logistic regression over :data:`stm_live.quality.frame.FEATURE_NAMES`, fitted on
**simulated frames only**: 300 per verdict from :func:`stm_live.sim.simulate_scan`
(Si(001):H, 6-40 nm, 300 or 512 px, bias -2 or +1.5 V, 0-2 steps; rendered as the real images
are: blurred 0.5-1.5 px, each line flattened, scaled to 8-bit grey; seeds
500000 + 100000 k + i). good: a sharp tip (0.08-0.22 nm), the realistic artefacts with noise
0.3-2 x, 0.5-5 scars per 100 lines, a double tip up to 0.25, no tip change; tip_change: the same
with a tip change at a random line (severity 0.3-1), some with a second tip or the apex jumping
sideways; bad: a blunt tip (0.35-1.2 nm), a strong double tip (0.6-1), heavy noise (4-20 x) and
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
        "broken_lines",
        "too_small",
        "periodicity"
    ],
    "classes": [
        "good",
        "bad",
        "tip_change"
    ],
    "mean": [
        2.2438133142012497,
        1.405146289179352,
        2.1255244444444443,
        -1.093106666666667,
        0.020257888888888877,
        0.0,
        0.24825444444444428
    ],
    "scale": [
        0.741956902007062,
        0.5406387433176747,
        2.8726076855616194,
        0.7142914648219391,
        0.05347669471884159,
        1e-09,
        0.29324723596323055
    ],
    "weights": [
        [
            -0.6013602420151029,
            -0.3113401494519992,
            0.9127003914671035
        ],
        [
            -0.08163604898267446,
            -0.07655650088655161,
            0.15819254986922685
        ],
        [
            0.5746971971065739,
            -0.5571206370720032,
            -0.01757656003457255
        ],
        [
            -0.15507651112449508,
            0.24969638777195063,
            -0.0946198766474554
        ],
        [
            -0.4689980440513959,
            0.4995583319250217,
            -0.030560287873624924
        ],
        [
            0.0,
            0.0,
            0.0
        ],
        [
            0.09428240152258961,
            -0.2645019124918449,
            0.17021951096925672
        ],
        [
            -0.11208663590686571,
            0.04279570061974721,
            0.06929093528711892
        ]
    ],
    "threshold": {
        "bad": 0.410531882834857,
        "tip_change": 0.431446432642078
    }
}
