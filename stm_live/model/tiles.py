"""Whole frames of any size within a fixed memory budget, and frames the model does not apply to.

The model runs at its own pixel pitch (``ModelInfo.nm_per_px``), so the memory
a frame needs follows its *physical* size, not its pixel count: a 64 x 64 px
survey scan of 1 um would be resampled to 10,000 x 10,000 model pixels. Two
rules keep that bounded:

* :func:`applicability`: a frame whose pixels are much coarser than the model's
  (more than ``max_upsample`` times: features would span a pixel or two) is
  not segmented; the daemon stores a record saying why instead. The same
  function refuses images with nothing to segment (constant values, a
  constant-height Z channel).
* :func:`segment_frame`: a frame whose model grid is larger than
  ``tile_model_px`` squared is segmented in overlapping tiles, each levelled
  and normalised on its own; each detection is kept from the tile whose core
  holds its centre and each class-map pixel from the tile whose core holds
  it. The margin (twice the encoder's receptive field) lets each tile see the
  context of its core. Results match an untiled run except where a tile's own
  levelling and input normalisation move a boundary pixel. Memory then
  depends on the tile, not the frame: levelling a whole 4096 x 4096 frame
  alone takes ten times the frame (600 MB).
"""

from __future__ import annotations

import math
import time
from typing import Final

import numpy as np

from ..frame import Detection, Frame, Segmentation
from .prepare import model_grid_shape
from .runtime import SegmentationModel

__all__ = [
    "DEFAULT_MAX_UPSAMPLE", "DEFAULT_TILE_MODEL_PX", "applicability", "pitch_problem", "segment_frame", "tile_bounds",
]

#: A frame may have pixels at most this many times the model's pitch.
DEFAULT_MAX_UPSAMPLE: Final = 4.0
#: Model pixels per tile side; frames up to about this size (times 1.25) run in one piece.
DEFAULT_TILE_MODEL_PX: Final = 1024


def pitch_problem(model: SegmentationModel, frame: Frame, *, max_upsample: float = DEFAULT_MAX_UPSAMPLE) -> str | None:
    """Why ``frame``'s pixel size rules the model out, or None when it does not.

    Examples
    --------
    A 1 um frame of 64 px (15.6 nm pixels) for a 0.1 nm model::

        >>> pitch_problem(model, survey)  # doctest: +SKIP
        'not segmented: pixel size 15.6 nm, the model needs <= 0.4 nm (0.1 nm model pixels, at most 4x coarser)'
    """
    pitch = model.info.nm_per_px
    coarsest = max(frame.nm_per_px)
    if coarsest > pitch * max_upsample:
        return (
            f"not segmented: pixel size {coarsest:.3g} nm, the model needs <= {pitch * max_upsample:.3g} nm "
            f"({pitch:g} nm model pixels, at most {max_upsample:g}x coarser)"
        )
    finest = min(frame.nm_per_px)
    if finest < pitch / 64:
        return f"not segmented: pixel size {finest:.3g} nm is over 64x finer than the model's {pitch:g} nm"
    return None


def applicability(model: SegmentationModel, frame: Frame, *, max_upsample: float = DEFAULT_MAX_UPSAMPLE) -> str | None:
    """Why ``model`` cannot segment ``frame`` (its pixel size, or nothing to segment), or None when it can."""
    problem = pitch_problem(model, frame, max_upsample=max_upsample)
    if problem is not None:
        return problem
    rows = frame.data[frame.valid_rows]
    finite = rows[np.isfinite(rows)]
    if finite.size == 0:
        return "not segmented: no finite values in the acquired rows"
    if float(finite.max()) == float(finite.min()):
        return f"not segmented: the image is constant ({float(finite[0]):g} {frame.unit} everywhere)"
    return None


def tile_bounds(size: int, core: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: ``(start, stop, core_start, core_stop)``, cores covering ``0..size`` once.

    Examples
    --------
    >>> tile_bounds(10, 4, 1)
    [(0, 5, 0, 4), (3, 9, 4, 8), (7, 10, 8, 10)]
    """
    out = []
    for c0 in range(0, size, core):
        c1 = min(size, c0 + core)
        out.append((max(0, c0 - margin), min(size, c1 + margin), c0, c1))
    return out


def segment_frame(
    model: SegmentationModel,
    frame: Frame,
    *,
    min_score: float | None = None,
    min_area_nm2: float | None = None,
    tile_model_px: int = DEFAULT_TILE_MODEL_PX,
) -> Segmentation:
    """Segment ``frame`` whole, or in tiles when its model grid exceeds ``tile_model_px`` squared.

    Parameters
    ----------
    model : SegmentationModel
        A model with a head.
    frame : Frame
        Complete or partial (only ``frame.valid_rows`` are used).
    min_score, min_area_nm2 : float, optional
        As :meth:`SegmentationModel.segment`.
    tile_model_px : int
        Largest tile side in model pixels; bounds the memory one inference needs.

    Returns
    -------
    Segmentation
        As :meth:`SegmentationModel.segment`; ``timings_ms["tiles"]`` is the
        number of tiles (1 when the frame ran in one piece).
    """
    rows = frame.valid_rows
    n_rows = rows.stop - rows.start
    pitch = model.info.nm_per_px
    grid = model_grid_shape((max(1, n_rows), frame.cols), nm_per_px=frame.nm_per_px, target_nm_per_px=pitch)
    if grid[0] * grid[1] <= int(1.25 * tile_model_px) ** 2 or n_rows == 0:
        seg = model.segment(frame, min_score=min_score, min_area_nm2=min_area_nm2)
        return Segmentation(seg.classes, seg.class_map, seg.detections, seg.model_id, seg.model_name,
                            {**seg.timings_ms, "tiles": 1.0}, seg.rows_done)
    t0 = time.perf_counter()
    acquired = frame.data[rows]
    # Tile sides and margins in input pixels along each axis.
    px_x, px_y = frame.nm_per_px
    margin_model = 2 * int(model.info.context_px)
    core_r = max(1, math.floor(tile_model_px * pitch / px_y))
    core_c = max(1, math.floor(tile_model_px * pitch / px_x))
    margin_r = math.ceil(margin_model * pitch / px_y)
    margin_c = math.ceil(margin_model * pitch / px_x)
    class_map = np.zeros(frame.data.shape, np.uint8)
    detections: list[Detection] = []
    timings: dict[str, float] = {}
    n_tiles = 0
    for r0, r1, cr0, cr1 in tile_bounds(n_rows, core_r, margin_r):
        for c0, c1, cc0, cc1 in tile_bounds(frame.cols, core_c, margin_c):
            n_tiles += 1
            tile = Frame(acquired[r0:r1, c0:c1], width_m=frame.width_m * (c1 - c0) / frame.cols,
                         height_m=frame.height_m * (r1 - r0) / frame.rows, channel=frame.channel, unit=frame.unit,
                         direction=frame.direction)
            seg = model.segment(tile, min_score=min_score, min_area_nm2=min_area_nm2)
            for key, value in seg.timings_ms.items():
                timings[key] = timings.get(key, 0.0) + value
            class_map[rows.start + cr0:rows.start + cr1, cc0:cc1] = seg.class_map[cr0 - r0:cr1 - r0, cc0 - c0:cc1 - c0]
            for d in seg.detections:
                col = d.x_nm / px_x + c0
                row = d.y_nm / px_y + r0
                if cr0 <= row < cr1 and cc0 <= col < cc1:
                    detections.append(Detection(d.class_name, col * px_x, (row + rows.start) * px_y, d.area_nm2,
                                                d.score))
    detections.sort(key=lambda d: (d.y_nm, d.x_nm))
    numbered = tuple(Detection(d.class_name, d.x_nm, d.y_nm, d.area_nm2, d.score, i) for i, d in enumerate(detections))
    timings["tiles"] = float(n_tiles)
    timings["total"] = (time.perf_counter() - t0) * 1e3
    return Segmentation(model.info.classes, class_map, numbered, model.info.id, model.info.name, timings,
                        frame.rows_valid)
