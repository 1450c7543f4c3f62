"""The types that flow through stm-live: frames in, segmentations and detections out.

Data flows one way, ``source -> Frame -> levelled Frame -> Segmentation ->
Detection list -> sinks``; every stage takes and returns these types.

Conventions, fixed here once for the whole package:

* ``Frame.data`` is a 2-D, native-endian, C-contiguous ``float32`` array in SI
  units of ``Frame.unit`` (metres for ``Z``, amperes for ``Current``).
* Orientation is the *display convention* (what Gwyddion shows): row 0 is the
  top of the image, column 0 its left edge, whatever the scan direction was.
  Backward (retrace) images are mirrored back so that they overlay the forward
  image pixel for pixel.
* Physical coordinates of detections are in nanometres, ``x_nm`` from the
  left edge and ``y_nm`` from the top edge of the image, measured to pixel
  centres (pixel ``(r, c)`` has its centre at ``((c + 0.5) * nm_per_px_x,
  (r + 0.5) * nm_per_px_y)``).
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

__all__ = [
    "Detection",
    "Direction",
    "Frame",
    "ScanDirection",
    "Segmentation",
    "as_native_float32",
]

Direction = Literal["forward", "backward"]
ScanDirection = Literal["down", "up"]



def as_native_float32(data: Any) -> np.ndarray:
    """Return ``data`` as a native-endian, C-contiguous float32 array.

    onnxruntime reads big-endian buffers as if they were native and pyzmq
    sends the memory of a transposed view as it lies, and neither complains,
    so every array is converted here, at the door.

    Parameters
    ----------
    data : array_like
        Any real numeric array.

    Returns
    -------
    numpy.ndarray
        A new array unless ``data`` already was native C-contiguous float32.

    Examples
    --------
    >>> a = as_native_float32(np.arange(4, dtype=">f8").reshape(2, 2).T)
    >>> a.dtype.isnative, a.flags.c_contiguous, a.tolist()
    (True, True, [[0.0, 2.0], [1.0, 3.0]])
    """
    arr = np.asarray(data)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"expected a real numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Frame:
    """One image of one channel and one direction, in display orientation.

    Parameters
    ----------
    data : numpy.ndarray
        ``(rows, cols)`` image; converted to native C-contiguous float32 and
        made read-only. Unscanned rows of a partial scan are NaN.
    width_m, height_m : float
        Physical size of the whole frame (all ``rows`` x ``cols`` pixels), m.
    channel : str
        Channel name as the controller calls it (``"Z"``, ``"Current"``).
    unit : str
        Unit of ``data`` (``"m"``, ``"A"``, ``"Hz"``; ``"a.u."`` if unknown).
    direction : {"forward", "backward"}
        Trace or retrace. Backward data is already mirrored to display order.
    scan_direction : {"down", "up"}
        Slow-scan direction: ``"down"`` acquires row 0 first, ``"up"`` the
        last row first. ``data`` is in display order either way.
    rows_valid : int, optional
        Number of rows acquired so far (in scan order); defaults to all rows.
    bias_v, setpoint_a, angle_deg : float, optional
        Sample bias (V), current setpoint (A) and scan-frame rotation (deg).
    offset_m : tuple of float, optional
        Scan-frame centre ``(x, y)`` in metres.
    time : str, optional
        Acquisition time, ISO 8601 (``"2023-04-29T01:22:24"``).
    source : str, optional
        Where the frame came from: a file path or ``"zmq"``.
    header : Mapping[str, str]
        The raw controller header (key -> text), empty if there was none.
    """

    data: np.ndarray
    width_m: float
    height_m: float
    channel: str = "Z"
    unit: str = "m"
    direction: Direction = "forward"
    scan_direction: ScanDirection = "down"
    rows_valid: int | None = None
    bias_v: float | None = None
    setpoint_a: float | None = None
    offset_m: tuple[float, float] | None = None
    angle_deg: float | None = None
    time: str | None = None
    source: str | None = None
    header: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        data = as_native_float32(self.data)
        if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 1:
            raise ValueError(f"Frame data must be a non-empty 2-D array, got shape {data.shape}")
        # A read-only view: the frame cannot change the pixels it was given,
        # and the caller's own array keeps its flags (no copy is made).
        data = data.view()
        data.flags.writeable = False
        object.__setattr__(self, "data", data)
        for name in ("width_m", "height_m"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Frame.{name} must be a positive finite length in metres, got {value!r}")
            object.__setattr__(self, name, value)
        if self.direction not in ("forward", "backward"):
            raise ValueError(f"Frame.direction must be 'forward' or 'backward', got {self.direction!r}")
        if self.scan_direction not in ("down", "up"):
            raise ValueError(f"Frame.scan_direction must be 'down' or 'up', got {self.scan_direction!r}")
        rows = data.shape[0]
        rows_valid = rows if self.rows_valid is None else int(self.rows_valid)
        if not 0 <= rows_valid <= rows:
            raise ValueError(f"Frame.rows_valid must be within 0..{rows}, got {self.rows_valid!r}")
        object.__setattr__(self, "rows_valid", rows_valid)
        object.__setattr__(self, "header", types.MappingProxyType(dict(self.header)))

    @property
    def rows(self) -> int:
        """Number of rows (lines) of the full frame."""
        return int(self.data.shape[0])

    @property
    def cols(self) -> int:
        """Number of columns (pixels per line)."""
        return int(self.data.shape[1])

    @property
    def width_nm(self) -> float:
        """Physical width in nanometres."""
        return self.width_m * 1e9

    @property
    def height_nm(self) -> float:
        """Physical height in nanometres."""
        return self.height_m * 1e9

    @property
    def nm_per_px(self) -> tuple[float, float]:
        """Pixel pitch ``(x, y)`` in nanometres per pixel."""
        return self.width_nm / self.cols, self.height_nm / self.rows

    @property
    def complete(self) -> bool:
        """True when every row has been acquired."""
        return self.rows_valid == self.rows

    @property
    def valid_rows(self) -> slice:
        """Slice of ``data`` rows that were acquired, in display order.

        A downward scan fills the image from the top, an upward scan from
        the bottom.
        """
        assert self.rows_valid is not None
        if self.scan_direction == "down":
            return slice(0, self.rows_valid)
        return slice(self.rows - self.rows_valid, self.rows)

    def with_data(self, data: np.ndarray, **changes: Any) -> Frame:
        """A copy of this frame with new ``data`` (same shape) and optional field changes."""
        return replace(self, data=data, **changes)


@dataclass(frozen=True)
class Detection:
    """One feature found in a frame.

    ``x_nm`` / ``y_nm`` are the feature's centre from the image's left / top
    edge in nanometres (display convention), ``area_nm2`` its area and
    ``score`` the model's mean class probability over the feature (0..1).
    ``id`` numbers detections within one result, from 0.
    """

    class_name: str
    x_nm: float
    y_nm: float
    area_nm2: float
    score: float
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The wire / JSON form: ``{"id", "class", "x_nm", "y_nm", "area_nm2", "score"}`` (4 decimals).

        Built by :func:`stm_live.publish.documents.detection_json`, the one composer.
        """
        from .publish.documents import detection_json  # the composer imports this module

        return detection_json(self)


@dataclass(frozen=True, eq=False)
class Segmentation:
    """The model's answer for one frame.

    ``class_map`` is ``uint8`` at the input frame's pixel grid: 0 is
    background, ``k`` is ``classes[k - 1]``. ``rows_done`` counts the rows the
    map covers (all of them for a finished frame).
    """

    classes: tuple[str, ...]
    class_map: np.ndarray
    detections: tuple[Detection, ...]
    model_id: str
    model_name: str
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    rows_done: int | None = None

    def __post_init__(self) -> None:
        if self.class_map.dtype != np.uint8 or self.class_map.ndim != 2:
            raise ValueError(
                f"Segmentation.class_map must be a 2-D uint8 array, got {self.class_map.dtype} {self.class_map.shape}"
            )
        if self.rows_done is None:
            object.__setattr__(self, "rows_done", int(self.class_map.shape[0]))
        object.__setattr__(self, "timings_ms", types.MappingProxyType(dict(self.timings_ms)))
