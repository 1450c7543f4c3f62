"""Atomic steps: where the terraces are, and how high.

A vicinal surface is a staircase: nearly parallel step edges, each a line
that meanders. On Si(001) and Ge(001) the edges alternate between smooth
S_A edges (dimer rows of the upper terrace parallel to the edge) and rough,
kinked S_B edges (rows perpendicular to it), because the rows turn by 90
degrees on every terrace; on TiO2(110) they run along the rows and are smooth.

Terrace 0 is the highest; every edge crossed along the downhill normal goes
one step down. All lengths nm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["StepEdge", "make_steps", "terrace_at", "terrace_fields"]


@dataclass(frozen=True)
class StepEdge:
    """One step edge: the points ``r`` with ``n.r = offset + meander(t.r)``.

    ``normal`` points downhill, ``tangent`` along the edge; the meander is
    tabulated at ``grid_s`` (nm along the edge) and interpolated.
    """

    normal: tuple[float, float]
    tangent: tuple[float, float]
    offset_nm: float
    grid_s: np.ndarray
    meander_nm: np.ndarray
    rough: bool

    def points(self) -> np.ndarray:
        """The edge as a polyline, ``(n, 2)`` image coordinates (x, y), nm."""
        along = self.offset_nm + self.meander_nm
        return np.stack([self.grid_s * self.tangent[0] + along * self.normal[0],
                         self.grid_s * self.tangent[1] + along * self.normal[1]], axis=1)

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance from the edge along its normal, nm; positive on the lower (downhill) side."""
        s = self.tangent[0] * x + self.tangent[1] * y
        along_n = self.normal[0] * x + self.normal[1] * y
        return along_n - self.offset_nm - np.interp(s, self.grid_s, self.meander_nm)


def _meander(rng: np.random.Generator, s: np.ndarray, *, rms_nm: float, corr_nm: float) -> np.ndarray:
    ds = float(s[1] - s[0])
    white = rng.standard_normal(s.size + 1)
    if corr_nm > 0:
        half = math.ceil(3 * corr_nm / ds)
        k = np.exp(-0.5 * (np.arange(-half, half + 1) * ds / corr_nm) ** 2)
        smooth = np.convolve(np.pad(white, half, mode="wrap"), k / k.sum(), mode="valid")[: s.size + 1]
    else:
        smooth = white
    smooth = smooth[: s.size]
    std = float(smooth.std())
    return smooth * (rms_nm / std) if std > 0 else smooth


def make_steps(
    rng: np.random.Generator,
    *,
    count: int,
    theta_rad: float,
    rotate_across_steps: bool,
    bounds_nm: tuple[float, float, float, float],
) -> tuple[StepEdge, ...]:
    """Draw ``count`` step edges crossing the region ``bounds_nm = (x0, x1, y0, y1)``.

    Edges run along the rows of terrace 0 (``theta_rad``) within a few degrees
    and are spread across the region. With ``rotate_across_steps`` the first
    edge is a smooth S_A edge and the next a rough S_B edge, alternating.
    """
    if count <= 0:
        return ()
    x0, x1, y0, y1 = bounds_nm
    base = theta_rad + rng.uniform(-math.radians(6), math.radians(6))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]])
    diag = math.hypot(x1 - x0, y1 - y0)
    grid_s = np.linspace(-diag, diag, max(16, int(2 * diag / 0.1)))
    fractions = (np.arange(count) + 0.5 + rng.uniform(-0.2, 0.2, count)) / count
    edges = []
    for i in range(count):
        angle = base + rng.uniform(-math.radians(2), math.radians(2))
        tangent = (math.cos(angle), math.sin(angle))
        normal = (-sign * math.sin(angle), sign * math.cos(angle))
        proj = corners @ np.array(normal)
        lo, hi = float(proj.min()), float(proj.max())
        offset = lo + (0.15 + 0.7 * fractions[i]) * (hi - lo)
        rough = rotate_across_steps and i % 2 == 1
        meander = (
            _meander(rng, grid_s, rms_nm=0.9, corr_nm=1.2) if rough else _meander(rng, grid_s, rms_nm=0.3, corr_nm=6.0)
        )
        edges.append(StepEdge(normal, tangent, offset, grid_s, meander, rough))
    return tuple(edges)


def terrace_at(edges: tuple[StepEdge, ...], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Terrace index and true (Euclidean) distance to the nearest edge (nm) at points ``(x, y)``.

    The distance is measured to the edge polylines (points every ~0.1 nm), so
    it is never larger than the along-normal distance that
    :func:`terrace_fields` uses for its near-edge mask.
    """
    from scipy.spatial import cKDTree

    label = np.zeros(np.shape(x), dtype=np.int32)
    nearest = np.full(np.shape(x), np.inf)
    if not edges:
        return label, nearest
    for edge in edges:
        label += edge.signed_distance(x, y) > 0
    points = np.concatenate([edge.points() for edge in edges])
    dist, _ = cKDTree(points).query(np.stack([np.ravel(x), np.ravel(y)], axis=1))
    step = max(float(e.grid_s[1] - e.grid_s[0]) for e in edges)
    return label, np.maximum(dist.reshape(np.shape(x)) - 0.5 * step, 0.0)


def terrace_fields(
    edges: tuple[StepEdge, ...],
    *,
    x_cols: np.ndarray,
    x_rows: np.ndarray,
    y_rows: np.ndarray,
    width_nm: float,
    near_nm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Terrace label, smooth step profile and near-edge mask on the sampling grid.

    Parameters
    ----------
    edges : tuple of StepEdge
    x_cols, x_rows, y_rows : numpy.ndarray
        Sample position of pixel ``(r, c)`` is ``(x_cols[c] + x_rows[r], y_rows[r])``, nm.
    width_nm : float
        Apparent width of a step edge (the tip's blur), nm.
    near_nm : float
        Pixels closer than this to an edge are flagged in the third output.

    Returns
    -------
    label : numpy.ndarray
        ``(rows, cols)`` int32 terrace index (0 = highest).
    steps_down : numpy.ndarray
        ``(rows, cols)`` float32, number of steps down, smoothed over ``width_nm`` at each edge.
    near : numpy.ndarray
        ``(rows, cols)`` bool, within ``near_nm`` of an edge.
    """
    shape = (y_rows.size, x_cols.size)
    label = np.zeros(shape, dtype=np.int32)
    steps_down = np.zeros(shape, dtype=np.float32)
    near = np.zeros(shape, dtype=bool)
    for edge in edges:
        nx, ny = edge.normal
        tx, ty = edge.tangent
        s = (tx * x_cols)[None, :] + (tx * x_rows + ty * y_rows)[:, None]
        d = (nx * x_cols)[None, :] + (nx * x_rows + ny * y_rows - edge.offset_nm)[:, None]
        d -= np.interp(s, edge.grid_s, edge.meander_nm)
        d = d.astype(np.float32)
        label += d > 0
        steps_down += 0.5 * (1.0 + np.tanh(d * np.float32(1.0 / width_nm)))
        near |= np.abs(d) < near_nm
    return label, steps_down, near
