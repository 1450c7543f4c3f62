"""Levelling: from raw scan lines and frames to images the model can read.

Raw STM data is tilted, offset line by line, scarred and drifting; during a
live scan only the lines acquired so far exist. Everything here is pure
NumPy/SciPy: arrays in, new float32 arrays out, inputs never modified, no
files, no sockets, no clocks.

* :class:`LineLeveller` / :func:`level_stream`: line by line while scanning
  (O(columns) per line, no look at future lines).
* :func:`level_frame`: a complete frame; methods in :data:`FRAME_METHODS`
  (``"step-aware"`` by default), plus :func:`remove_scars`.
* :func:`resample_to_pitch`, :func:`normalise_robust`,
  :func:`combine_directions`: model input preparation.

Conventions: images are ``(rows, cols)`` in display order (row 0 at the top,
:mod:`stm_live.frame`), values in the channel's unit (metres for Z) unless
stated otherwise; NaN / inf mark missing pixels and never produce NaN or inf
output; the levelled background sits at 0.

The daemon's path for a 512 x 512 frame::

    levelled = level_frame(frame.data)            # or the LineLeveller's rows
    model_px = resample_to_pitch(levelled, nm_per_px=frame.nm_per_px,
                                 target_nm_per_px=model_nm_per_px)
    model_in = normalise_robust(model_px)
"""

from __future__ import annotations

from .checks import LevelError
from .prepare import combine_directions, normalise_robust, resample_to_pitch
from .scars import find_scars, remove_scars
from .stream import LineLeveller, level_stream
from .whole_frame import FRAME_METHODS, fit_surface, level_frame

__all__ = [
    "FRAME_METHODS",
    "LevelError",
    "LineLeveller",
    "combine_directions",
    "find_scars",
    "fit_surface",
    "level_frame",
    "level_stream",
    "normalise_robust",
    "remove_scars",
    "resample_to_pitch",
]
