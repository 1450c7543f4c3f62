"""Scan-frame geometry: image positions <-> controller coordinates, and back.

A scan frame is what ``Scan.FrameSet`` sets: a centre ``(x, y)`` in the
controller's coordinates (metres, x to the right, y up), a width and height
(metres) and an angle (degrees, positive = clockwise, as the Nanonis manual
defines it). Positions in an image follow stm-live's display convention
(:mod:`stm_live.frame`): ``x_nm`` from the left edge, ``y_nm`` from the top
edge, row 0 at the top whichever way the tip scanned.

The scan direction (up or down) decides which display row a line of the
controller's buffer is (:func:`display_row`); it does not move positions in
the displayed image, which is why the position functions do not take it.

Everything here is pure arithmetic on floats and arrays.

>>> f = ScanFrame((10e-9, -5e-9), 50e-9, 50e-9, angle_deg=135.0)
>>> x, y = f.image_to_controller(12.5, 40.0)
>>> [round(v, 6) for v in f.controller_to_image(x, y)]
[12.5, 40.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

__all__ = ["ScanFrame", "display_row"]


def display_row(acquired_row: int, rows: int, scan_direction: Literal["up", "down"]) -> int:
    """The display row (0 = top) of the ``acquired_row``-th line of the controller's buffer.

    The controller stores lines in acquisition order, as an ``.sxm`` file
    does: the first line scanned first; an upward scan starts at the bottom.

    Examples
    --------
    >>> display_row(0, 512, "up"), display_row(0, 512, "down")
    (511, 0)
    """
    if not 0 <= acquired_row < rows:
        raise ValueError(f"row {acquired_row} outside 0..{rows - 1}")
    return rows - 1 - acquired_row if scan_direction == "up" else acquired_row


@dataclass(frozen=True)
class ScanFrame:
    """A scan frame: centre (m, controller coordinates), size (m), angle (deg, clockwise).

    Parameters
    ----------
    centre_m : tuple of float
        ``(x, y)`` of the frame centre, metres; y points up.
    width_m, height_m : float
        Size along the frame's own x (fast scan) and y axes, metres.
    angle_deg : float
        Rotation of the frame, degrees, positive clockwise.
    """

    centre_m: tuple[float, float]
    width_m: float
    height_m: float
    angle_deg: float = 0.0

    def __post_init__(self) -> None:
        x, y = self.centre_m
        for name, value in (("centre x", x), ("centre y", y), ("angle", self.angle_deg)):
            if not math.isfinite(value):
                raise ValueError(f"scan frame {name} must be finite, got {value!r}")
        for name, value in (("width", self.width_m), ("height", self.height_m)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"scan frame {name} must be a positive length in m, got {value!r}")
        object.__setattr__(self, "centre_m", (float(x), float(y)))

    @property
    def _axes(self) -> tuple[float, float, float, float]:
        """Unit vectors of the frame's x (right) and y (up) axes in controller coordinates."""
        t = math.radians(self.angle_deg)
        c, s = math.cos(t), math.sin(t)
        # Clockwise by t: the frame's x axis (1, 0) turns to (cos t, -sin t).
        return c, -s, s, c

    def image_to_controller(self, x_nm: float | np.ndarray, y_nm: float | np.ndarray
                            ) -> tuple[float | np.ndarray, float | np.ndarray]:
        """Controller coordinates (m) of an image position (nm from the left / top edge).

        Parameters
        ----------
        x_nm, y_nm : float or numpy.ndarray
            Position in the displayed image, nm; ``(0, 0)`` the top-left corner.

        Returns
        -------
        x_m, y_m : float or numpy.ndarray
        """
        u = np.asarray(x_nm, dtype=np.float64) * 1e-9 - self.width_m / 2  # right of the centre
        v = self.height_m / 2 - np.asarray(y_nm, dtype=np.float64) * 1e-9  # above the centre
        ux, uy, vx, vy = self._axes
        x = self.centre_m[0] + u * ux + v * vx
        y = self.centre_m[1] + u * uy + v * vy
        return (float(x), float(y)) if np.ndim(x) == 0 else (x, y)

    def controller_to_image(self, x_m: float | np.ndarray, y_m: float | np.ndarray
                            ) -> tuple[float | np.ndarray, float | np.ndarray]:
        """Image position (nm from the left / top edge) of controller coordinates (m); inverse of
        :meth:`image_to_controller` (positions outside the frame come out outside ``0..width``)."""
        dx = np.asarray(x_m, dtype=np.float64) - self.centre_m[0]
        dy = np.asarray(y_m, dtype=np.float64) - self.centre_m[1]
        ux, uy, vx, vy = self._axes
        u = dx * ux + dy * uy
        v = dx * vx + dy * vy
        x = (u + self.width_m / 2) * 1e9
        y = (self.height_m / 2 - v) * 1e9
        return (float(x), float(y)) if np.ndim(x) == 0 else (x, y)

    def pixel_centres(self, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """Controller coordinates (m) of every pixel centre of a ``rows x cols`` image, display order.

        Returns
        -------
        x_m, y_m : numpy.ndarray
            ``(rows, cols)`` float64.
        """
        x_nm = (np.arange(cols) + 0.5) * (self.width_m * 1e9 / cols)
        y_nm = (np.arange(rows) + 0.5) * (self.height_m * 1e9 / rows)
        xs, ys = self.image_to_controller(x_nm[None, :], y_nm[:, None])
        return np.broadcast_to(xs, (rows, cols)), np.broadcast_to(ys, (rows, cols))

    def centred_on(self, x_nm: float, y_nm: float, *, width_m: float | None = None,
                   height_m: float | None = None) -> ScanFrame:
        """The frame of the same angle centred on an image position, optionally resized (a zoom).

        Examples
        --------
        >>> f = ScanFrame((0.0, 0.0), 100e-9, 100e-9)
        >>> z = f.centred_on(75.0, 25.0, width_m=20e-9)
        >>> [round(v * 1e9, 6) for v in z.centre_m], round(z.width_m * 1e9, 6), round(z.height_m * 1e9, 6)
        ([25.0, 25.0], 20.0, 20.0)
        """
        cx, cy = self.image_to_controller(x_nm, y_nm)
        w = self.width_m if width_m is None else float(width_m)
        h = (self.height_m * w / self.width_m) if height_m is None else float(height_m)
        return replace(self, centre_m=(float(cx), float(cy)), width_m=w, height_m=h)

    def shifted(self, dx_m: float, dy_m: float) -> ScanFrame:
        """The same frame moved by ``(dx, dy)`` metres in controller coordinates."""
        return replace(self, centre_m=(self.centre_m[0] + dx_m, self.centre_m[1] + dy_m))

    def corners_m(self) -> np.ndarray:
        """``(4, 2)`` controller coordinates of the corners (top-left, top-right, bottom-right, bottom-left)."""
        w, h = self.width_m * 1e9, self.height_m * 1e9
        xs, ys = self.image_to_controller(np.array([0.0, w, w, 0.0]), np.array([0.0, 0.0, h, h]))
        return np.stack([xs, ys], axis=1)

    def to_dict(self) -> dict[str, float]:
        """``{"x_m", "y_m", "width_m", "height_m", "angle_deg"}``: the arguments of ``Scan.FrameSet``."""
        return {"x_m": self.centre_m[0], "y_m": self.centre_m[1], "width_m": self.width_m,
                "height_m": self.height_m, "angle_deg": self.angle_deg}

    def close_to(self, other: ScanFrame, *, tol_m: float = 1e-11, tol_deg: float = 1e-3) -> bool:
        """True when the two frames agree within ``tol_m`` and ``tol_deg`` (float32 round trips)."""
        return (abs(self.centre_m[0] - other.centre_m[0]) <= tol_m + 1e-6 * abs(self.centre_m[0])
                and abs(self.centre_m[1] - other.centre_m[1]) <= tol_m + 1e-6 * abs(self.centre_m[1])
                and abs(self.width_m - other.width_m) <= tol_m + 1e-6 * self.width_m
                and abs(self.height_m - other.height_m) <= tol_m + 1e-6 * self.height_m
                and abs((self.angle_deg - other.angle_deg + 180.0) % 360.0 - 180.0) <= tol_deg)
