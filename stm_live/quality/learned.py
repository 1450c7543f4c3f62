"""The learned frame-quality combination (written by ``benchmarks/fit_quality_model.py``; do not edit).

Multinomial logistic regression over :data:`stm_live.quality.frame.FEATURE_NAMES`, fitted on the
``dev`` part of ``../shared/data/tip-state`` (real H:Si(100) images with crowd labels, GPL-3.0;
split in ``benchmarks/tip_state_split.json``). Only these coefficients are kept: no image, crop
or array of the data. Thresholds: 10 false alarms per 100 good dev images for each verdict.
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
        "too_small"
    ],
    "classes": [
        "good",
        "bad",
        "tip_change"
    ],
    "mean": [
        1.7673974806809445,
        1.5752032259684179,
        2.3052793650793633,
        -1.6321206349206354,
        0.02094031746031748,
        0.015873015873015872
    ],
    "scale": [
        0.651179388175771,
        0.7749295469067891,
        2.893054774410824,
        1.0794132652185873,
        0.04246907164916754,
        0.12498425296844248
    ],
    "weights": [
        [
            -0.5119899354222882,
            0.010228865542891055,
            0.5017610698793968
        ],
        [
            -0.41998555561222245,
            -0.15671157221962795,
            0.5766971278318506
        ],
        [
            0.5945857875666449,
            -0.6717895791691821,
            0.07720379160253718
        ],
        [
            0.003188179085600753,
            -0.22663358178247048,
            0.22344540269686955
        ],
        [
            -0.3497103565856135,
            0.1413397488413137,
            0.20837060774430072
        ],
        [
            -0.20391334796222677,
            0.14321460254850793,
            0.06069874541371854
        ],
        [
            0.32118582975475757,
            0.20912197673692434,
            -0.5303078064916823
        ]
    ],
    "threshold": {
        "bad": 0.4290890307540328,
        "tip_change": 0.2364238268884831
    }
}
