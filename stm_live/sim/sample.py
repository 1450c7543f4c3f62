"""One large, stable simulated sample that any scan frame can image: the virtual controller's sample.

:func:`~stm_live.sim.simulate_scan` builds a new surface for every frame;
a microscope instead scans windows of one sample, so that moving or zooming
the frame really changes what is seen next, and coming back shows the same
adsorbates again. :class:`VirtualSample` builds the surface once (terraces,
step edges, lattice, features, with the simulator's own builders) over a
square of ``size_nm`` and images any :class:`~stm_live.bridge.geometry.ScanFrame`
inside it: any centre, size, pixel count and angle, with a tip state per
line (a tip change blurs, dims and shifts what follows) and a lateral drift
per line.

Coordinates: the sample spans ``-size/2 .. size/2`` metres in x and y of
the controller (y up), centred on ``(0, 0)``. Same arguments, same sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..bridge.geometry import ScanFrame
from .features import SampleGrid, TerraceLattice, blob_table, place_features
from .lattice import lattice_terms, row_frame_axes
from .scan import MIN_GAP_NM, Instance, _image, _Surface
from .steps import make_steps
from .surfaces import surface_model

__all__ = ["TipState", "VirtualSample"]

_STREAMS = ("layout", "features")


@dataclass(frozen=True)
class TipState:
    """How the tip images: blur width (nm), contrast gain, height offset (nm)."""

    sigma_nm: float
    gain: float = 1.0
    jump_nm: float = 0.0


class VirtualSample:
    """A square sample of ``size_nm`` nm, imaged through any scan frame.

    Parameters
    ----------
    surface : str
        One of :data:`~stm_live.sim.SURFACES`.
    size_nm : float
        Side of the sample (hundreds of nm); frames must lie inside it.
    seed : int
        Everything about the sample derives from it.
    steps : int
        Atomic step edges crossing the sample.
    density_scale : float
        Multiplies every feature density.

    Examples
    --------
    >>> s = VirtualSample(size_nm=60.0, seed=1, steps=1)
    >>> f = ScanFrame((0.0, 0.0), 10e-9, 10e-9)
    >>> s.render(f, 32, 32).shape
    (32, 32)
    """

    def __init__(self, surface: str = "si001-ash3", *, size_nm: float = 300.0, seed: int = 0, steps: int = 3,
                 density_scale: float = 1.0) -> None:
        if not (math.isfinite(size_nm) and size_nm > 0):
            raise ValueError(f"size_nm must be a positive length, got {size_nm!r}")
        self.size_nm = float(size_nm)
        self.seed = int(seed)
        model = surface_model(surface)
        self.model = model
        children = np.random.SeedSequence(int(seed)).spawn(len(_STREAMS))
        streams = {name: np.random.default_rng(c) for name, c in zip(_STREAMS, children, strict=True)}
        size = self.size_nm
        rng = streams["layout"]
        theta0 = math.radians(rng.uniform(0.0, 180.0))
        edges = make_steps(rng, count=int(steps), theta_rad=theta0, rotate_across_steps=model.rotate_across_steps,
                           bounds_nm=(0.0, size, 0.0, size))
        terraces = []
        for t in range(len(edges) + 1):
            theta = theta0 + (math.pi / 2 if (model.rotate_across_steps and t % 2) else 0.0)
            e_u, e_v = row_frame_axes(theta)
            ou, ov = rng.uniform(0, model.cell.size_u), rng.uniform(0, model.cell.size_v)
            terraces.append(TerraceLattice(theta, (float(ou * e_u[0] + ov * e_v[0]),
                                                   float(ou * e_u[1] + ov * e_v[1]))))
        terms = lattice_terms(model.cell, corrugation_nm=model.corrugation_nm, min_tip_sigma_nm=model.tip_sigma_nm)
        rng = streams["features"]
        area = size * size
        counts: dict[str | None, int] = {None: int(rng.poisson(model.clutter_per_nm2 * area))}
        for cls in model.classes:
            counts[cls] = int(rng.poisson(model.density_per_nm2[cls] * density_scale * area))
        placed = place_features(rng, model, counts=counts, region_nm=(0.0, size, 0.0, size),
                                terraces=tuple(terraces), edges=edges, gap_nm=MIN_GAP_NM)
        blobs = blob_table(model, placed)
        self._surface = _Surface(model, terms, tuple(terraces), edges, placed, blobs)
        self._placed = placed

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names of the labelled features."""
        return self.model.classes

    @property
    def nominal_tip(self) -> TipState:
        """The surface's sharp tip."""
        return TipState(self.model.tip_sigma_nm)

    @property
    def half_m(self) -> float:
        """Half the side of the sample, metres: frames must lie within ``-half .. half``."""
        return self.size_nm * 0.5e-9

    def contains(self, frame: ScanFrame, *, margin_m: float = 0.0) -> bool:
        """True when every corner of ``frame`` lies on the sample (``margin_m`` inside its edge)."""
        corners = frame.corners_m()
        return bool(np.all(np.abs(corners) <= self.half_m - margin_m))

    def _to_sample(self, x_m: np.ndarray, y_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Controller coordinates (m, y up) -> the simulator's sample coordinates (nm, y down)."""
        half = self.size_nm / 2
        return x_m * 1e9 + half, half - y_m * 1e9

    def features(self) -> list[dict[str, Any]]:
        """Every labelled feature: ``{"class", "x_m", "y_m", "kind"}`` in controller coordinates."""
        out = []
        half = self.size_nm / 2
        for k, x, y in zip(self._placed.kind, self._placed.x_nm, self._placed.y_nm, strict=True):
            kind = self.model.kinds[int(k)]
            if kind.class_name is None:
                continue
            out.append({"class": kind.class_name, "x_m": (float(x) - half) * 1e-9, "y_m": (half - float(y)) * 1e-9,
                        "kind": kind.name})
        return out

    def instances_in(self, frame: ScanFrame, *, drift_m: tuple[float, float] = (0.0, 0.0)) -> tuple[Instance, ...]:
        """Ground truth of ``frame``: labelled features inside it, in image coordinates (nm).

        ``drift_m`` is the sample's displacement under the scanner (a feature
        at sample position ``p`` appears at ``p + drift``).
        """
        found = []
        w, h = frame.width_m * 1e9, frame.height_m * 1e9
        for f in self.features():
            x, y = frame.controller_to_image(f["x_m"] + drift_m[0], f["y_m"] + drift_m[1])
            if 0 <= x < w and 0 <= y < h:
                found.append(Instance(f["class"], float(x), float(y), f["kind"]))
        return tuple(sorted(found, key=lambda i: (i.y_nm, i.x_nm)))

    def render(self, frame: ScanFrame, rows: int, cols: int, *, tips: list[TipState] | None = None,
               drift_m: np.ndarray | None = None) -> np.ndarray:
        """Apparent height (nm) of the sample through ``frame``, display orientation.

        Parameters
        ----------
        frame : ScanFrame
            Must lie on the sample.
        rows, cols : int
            Lines and pixels per line.
        tips : list of TipState, optional
            The tip of each display row (default: the nominal tip everywhere).
        drift_m : numpy.ndarray, optional
            ``(rows, 2)`` displacement of the sample under the scanner while
            each display row was scanned, metres.

        Returns
        -------
        numpy.ndarray
            ``(rows, cols)`` float32 heights in nm, before any Z-signal artefact.
        """
        tips = [self.nominal_tip] * rows if tips is None else list(tips)
        if len(tips) != rows:
            raise ValueError(f"tips has {len(tips)} entries for {rows} rows")
        x_m, y_m = frame.pixel_centres(rows, cols)
        if drift_m is not None:
            d = np.asarray(drift_m, dtype=np.float64).reshape(rows, 2)
            x_m = x_m - d[:, :1]
            y_m = y_m - d[:, 1:]
        xs, ys = self._to_sample(x_m, y_m)
        pitch = min(frame.width_m / cols, frame.height_m / rows) * 1e9
        sigma = np.array([t.sigma_nm for t in tips])
        gain = np.array([t.gain for t in tips])
        jump = np.array([t.jump_nm for t in tips], dtype=np.float32)
        if abs(((frame.angle_deg + 180.0) % 360.0) - 180.0) < 1e-9:
            # Axis-aligned: the simulator's own separable grid, one tip per row.
            grid = SampleGrid(xs[0].copy(), xs[:, 0] - xs[0, 0], ys[:, 0].copy(), pitch)
            image = _image(self._surface, grid, sigma, gain)[0]
        else:
            # Rotated: image an axis-aligned patch around the frame once per tip state, then
            # sample it at the rotated pixel centres (bilinear).
            margin = 2.0 * pitch
            x0, y0 = float(xs.min()) - margin, float(ys.min()) - margin
            nx = math.ceil((float(xs.max()) + margin - x0) / pitch) + 1
            ny = math.ceil((float(ys.max()) + margin - y0) / pitch) + 1
            grid = SampleGrid(x0 + pitch * np.arange(nx), np.zeros(ny), y0 + pitch * np.arange(ny), pitch)
            image = np.empty((rows, cols), dtype=np.float32)
            coords = np.stack([(ys - y0) / pitch, (xs - x0) / pitch])
            for s_val, g_val in sorted({(float(a), float(b)) for a, b in zip(sigma, gain, strict=True)}):
                patch = _image(self._surface, grid, np.full(ny, s_val), np.full(ny, g_val))[0]
                sel = (sigma == s_val) & (gain == g_val)
                image[sel] = ndimage.map_coordinates(patch, coords[:, sel], order=1, mode="nearest")
        return (image + jump[:, None]).astype(np.float32)
