"""The simulated microscope: one call, one scan with its ground truth.

:func:`simulate_scan` builds a surface (terraces, lattice, features), images
it with a tip on a sampling grid that the lateral artefacts distort, adds what
the Z signal adds, and returns a :class:`SimulatedScan`: forward and backward
``Z`` and ``Current`` frames plus the ground truth (clean topography, class
mask, instance list, terrace labels, step-edge mask), all pixel-aligned with
the forward Z image. Nothing touches a file.

Same arguments, same seed: same arrays, bit for bit.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..frame import Frame
from .artefacts import (
    TWO_KAPPA_PER_NM,
    Artefacts,
    TipHistory,
    combine_apices,
    lateral_geometry,
    signal_artefacts,
    tip_history,
)
from .features import Placed, SampleGrid, TerraceLattice, blob_table, place_features, render_features, render_mask
from .lattice import LatticeTerms, lattice_terms, render_lattice, row_frame_axes
from .realism import REACTED, Realism, reacted_area, reacted_blobs, realistic_model, rim_blobs
from .steps import StepEdge, make_steps, terrace_fields
from .surfaces import SURFACES, SurfaceModel, surface_model

__all__ = ["Instance", "SimulatedScan", "simulate_scan"]

#: The random streams, one per independent part; new parts go at the end so
#: that old seeds keep producing the same scans.
_STREAMS = (
    "layout", "features", "creep", "drift", "tip_change", "double_tip",
    "tilt", "line_offset", "line_slope", "flicker", "white_noise", "scars", "current", "scale_error", "realism",
)
#: Distance from a step edge within which a pixel counts as "at the step", nm.
STEP_MASK_NM = 0.3
#: How far the feedback lags behind the tip along a line, nm: the Current
#: channel shows the slope of the surface times this.
FEEDBACK_LAG_NM = 0.05

#: Surface simulated around the frame (so that drift and creep have
#: somewhere to look): this fraction of the frame size plus this many nm.
SURFACE_MARGIN_FRACTION = 0.05
SURFACE_MARGIN_NM = 3.0
#: Smallest free space between the mask footprints of two features, nm (at
#: least 2.5 pixels on coarser grids).
MIN_GAP_NM = 0.35

_REALISTIC = Artefacts.realistic()
_NO_REALISM = Realism.none()


@dataclass(frozen=True)
class Instance:
    """One ground-truth feature: its class and centre.

    ``x_nm`` from the image's left edge, ``y_nm`` from its top edge, in the
    display orientation, measured like :class:`~stm_live.frame.Detection`
    (pixel ``(r, c)`` has its centre at ``((c + 0.5) * nm_per_px, (r + 0.5) * nm_per_px)``).
    ``kind`` names the appearance (``"single DB"``, ``"AsH2+H"``); it is
    informative only and does not take part in comparisons.
    """

    class_name: str
    x_nm: float
    y_nm: float
    kind: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """``{"class", "x_nm", "y_nm", "kind"}``, as in the ``.truth.json`` sidecar."""
        return {"class": self.class_name, "x_nm": self.x_nm, "y_nm": self.y_nm, "kind": self.kind}


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class SimulatedScan:
    """A simulated scan: what the microscope recorded and what was really there.

    Attributes
    ----------
    surface : str
        One of :data:`~stm_live.sim.SURFACES`.
    classes : tuple of str
        Class names; mask value ``k`` is ``classes[k - 1]``.
    frames : tuple of Frame
        ``Z`` (m) and ``Current`` (A), forward and backward, display orientation.
    clean : numpy.ndarray
        ``(rows, cols)`` float32 topography (m) as a perfect single tip and a
        perfect Z signal would record it on the forward sampling grid: no tilt,
        noise, offsets, scars, tip change or ghost; lateral distortion
        (creep, drift) included so that it overlays the forward image.
    mask : numpy.ndarray
        ``(rows, cols)`` uint8 class mask: one compact footprint per feature.
    instances : tuple of Instance
        Every labelled feature, sorted by ``(y_nm, x_nm)``.
    terraces : numpy.ndarray
        ``(rows, cols)`` int16 terrace index, 0 the highest; the clean
        topography is flat "up to a constant per terrace" plus the lattice.
    step_mask : numpy.ndarray
        ``(rows, cols)`` bool, pixels within ~0.3 nm of a step edge (not part of ``mask``).
    seed : int
    size_nm : float
        Width and height of the square frame, nm.
    bias_v, setpoint_a : float
    artefacts : Artefacts
    events : Mapping
        What the artefacts did (tip-change row, scars, ghost offset, drift
        direction ...), JSON-able.
    params : Mapping
        Every parameter that made this scan, with defaults resolved
        (row angle, number of steps, densities ...), JSON-able.
    """

    surface: str
    classes: tuple[str, ...]
    frames: tuple[Frame, ...]
    clean: np.ndarray
    mask: np.ndarray
    instances: tuple[Instance, ...]
    terraces: np.ndarray
    step_mask: np.ndarray
    seed: int
    size_nm: float
    bias_v: float
    setpoint_a: float
    artefacts: Artefacts
    events: Mapping[str, Any] = field(default_factory=dict, repr=False)
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("clean", "mask", "terraces", "step_mask"):
            object.__setattr__(self, name, _readonly(getattr(self, name)))
        object.__setattr__(self, "events", types.MappingProxyType(dict(self.events)))
        object.__setattr__(self, "params", types.MappingProxyType(dict(self.params)))

    @property
    def pixels(self) -> int:
        """Pixels per side."""
        return int(self.mask.shape[1])

    @property
    def nm_per_px(self) -> float:
        """Pixel pitch, nm (square pixels)."""
        return self.size_nm / self.pixels

    def frame(self, channel: str = "Z", direction: str = "forward") -> Frame:
        """The frame of ``channel`` (``"Z"`` or ``"Current"``) and ``direction``."""
        for f in self.frames:
            if f.channel.lower() == channel.lower() and f.direction == direction:
                return f
        have = ", ".join(f"{f.channel}/{f.direction}" for f in self.frames)
        raise KeyError(f"no {channel!r} {direction!r} frame in this simulated scan; it has {have}")


@dataclass(frozen=True)
class _Surface:
    """A built surface, ready to be imaged on any sampling grid."""

    model: SurfaceModel
    terms: LatticeTerms
    terraces: tuple[TerraceLattice, ...]
    edges: tuple[StepEdge, ...]
    placed: Placed
    blobs: dict[str, np.ndarray]


def _image(surface: _Surface, grid: SampleGrid, tip_sigma: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, ...]:
    """Apparent height (nm) of ``surface`` on ``grid``; also the terrace label and near-step mask."""
    model = surface.model
    label, steps_down, near = terrace_fields(
        surface.edges, x_cols=grid.x_cols, x_rows=grid.x_rows, y_rows=grid.y_rows,
        width_nm=max(model.tip_sigma_nm, 0.5 * grid.pixel_nm), near_nm=STEP_MASK_NM,
    )
    feats = render_features(
        surface.blobs, grid=grid, tip_sigma_rows=tip_sigma, nominal_sigma_nm=model.tip_sigma_nm, gain_rows=gain,
    )
    common: dict[str, Any] = {"x_cols": grid.x_cols, "x_rows": grid.x_rows, "y_rows": grid.y_rows,
              "tip_sigma_rows": tip_sigma, "gain_rows": gain, "pixel_nm": grid.pixel_nm}
    lattice: np.ndarray | None = None
    present = np.unique(label) if surface.edges else np.array([0])
    phase = feats["phase"]
    for t in present:
        ter = surface.terraces[int(t)]
        lat = render_lattice(surface.terms, theta_rad=ter.theta_rad, origin_nm=ter.origin_nm, **common)
        if phase is not None and model.phase_shift_v_nm is not None and np.any(phase[label == t] > 0):
            _, e_v = row_frame_axes(ter.theta_rad)
            shifted_origin = (ter.origin_nm[0] + model.phase_shift_v_nm * e_v[0],
                              ter.origin_nm[1] + model.phase_shift_v_nm * e_v[1])
            lat_shift = render_lattice(surface.terms, theta_rad=ter.theta_rad, origin_nm=shifted_origin, **common)
            lat = lat + (lat_shift - lat) * phase
        lattice = lat if lattice is None else np.where(label == t, lat, lattice)
    assert lattice is not None
    if feats["flatten"] is not None:
        lattice = lattice * (1.0 - feats["flatten"])
    if feats["height"] is not None:
        lattice = lattice + feats["height"]
    if surface.edges:
        lattice = lattice - np.float32(model.step_height_nm) * steps_down
    return lattice.astype(np.float32, copy=False), label, near


def _rows(grid: SampleGrid, rows: slice) -> SampleGrid:
    return SampleGrid(grid.x_cols, grid.x_rows[rows], grid.y_rows[rows], grid.pixel_nm)


def _tipped(surface: _Surface, grid: SampleGrid, tip: TipHistory, clean: np.ndarray | None) -> np.ndarray:
    """What the (possibly changed, possibly double) tip records on ``grid``, nm, before the Z signal.

    ``clean`` (the nominal tip's image on this grid), when given, is reused
    for the rows the nominal tip scanned.
    """
    changed = (tip.sigma_rows != surface.model.tip_sigma_nm) | (tip.gain_rows != 1.0)
    if clean is None:
        main = _image(surface, grid, tip.sigma_rows, tip.gain_rows)[0]
    elif not changed.any():
        main = clean
    else:
        # The tip change splits the frame: re-image only the rows after it.
        idx = np.flatnonzero(changed)
        part = slice(int(idx[0]), int(idx[-1]) + 1)
        main = clean.copy()
        main[part] = _image(surface, _rows(grid, part), tip.sigma_rows[part], tip.gain_rows[part])[0]
    if tip.ghost_offset_nm is not None:
        ghost = _image(surface, grid.shifted(*tip.ghost_offset_nm), tip.sigma_rows, tip.gain_rows)[0]
        main = combine_apices(main, ghost, tip.ghost_weight)
    if np.any(tip.jump_rows):
        main = main + tip.jump_rows.astype(np.float32)[:, None]
    return main


def _current(height_nm: np.ndarray, *, pixel_nm: float, forward: bool, setpoint_a: float,
             noise: float, rng: np.random.Generator) -> np.ndarray:
    """Tunnelling current (A): the constant-current feedback's error, ~ slope along the scan."""
    slope = np.gradient(height_nm, pixel_nm, axis=1)
    if not forward:
        slope = -slope
    current = setpoint_a * np.exp(np.clip(TWO_KAPPA_PER_NM * FEEDBACK_LAG_NM * slope, -10, 10))
    if noise > 0:
        current = current * (1.0 + noise * rng.standard_normal(height_nm.shape, dtype=np.float32))
    return current.astype(np.float32)


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"simulate_scan: {name}={value!r} is invalid; expected {expected}")


def simulate_scan(
    surface: str | SurfaceModel = "si001-ash3",
    *,
    size_nm: float = 50.0,
    pixels: int = 512,
    seed: int = 0,
    artefacts: Artefacts = _REALISTIC,
    bias_v: float | None = None,
    setpoint_a: float | None = None,
    density_per_nm2: Mapping[str, float] | None = None,
    density_scale: float = 1.0,
    clutter_per_nm2: float | None = None,
    feature_height_scale: float = 1.0,
    feature_size_scale: float = 1.0,
    row_angle_deg: float | None = None,
    steps: int | None = None,
    tip_sigma_nm: float | None = None,
    scan_direction: str = "down",
    line_time_s: float = 0.1,
    realism: Realism = _NO_REALISM,
) -> SimulatedScan:
    """Simulate one constant-current STM scan of ``surface`` with its ground truth.

    Parameters
    ----------
    surface : str or SurfaceModel
        ``"si001-ash3"``, ``"ge001"`` or ``"tio2-110"`` (see :mod:`stm_live.sim.surfaces`),
        or a surface model of one's own (``bias_v`` must then be None: the
        model fixes it), such as :func:`~stm_live.sim.surfaces.random_surface_model`.
    size_nm : float
        Width = height of the square frame, nm. The physics is in nm; the
        pixel count only sets the sampling.
    pixels : int
        Pixels per side.
    seed : int
        Everything random derives from it; same seed, same arrays.
    artefacts : Artefacts
        Instrument artefacts; default :meth:`Artefacts.realistic`.
    bias_v : float, optional
        Sample bias, V; the sign selects filled (<0) or empty (>0) state
        contrast. Default: the surface's usual imaging bias.
    setpoint_a : float, optional
        Current setpoint, A (the Current channel's mean). Default: the surface's.
    density_per_nm2 : Mapping[str, float], optional
        Features per nm^2 by class name; classes not given keep the default.
    density_scale : float
        Multiplies every class density (not the clutter).
    clutter_per_nm2 : float, optional
        Density of large unlabelled clusters, per nm^2 (default: the surface's).
    feature_height_scale, feature_size_scale : float
        Multiply every feature's apparent height / lateral size (and mask footprint).
    row_angle_deg : float, optional
        Angle of the rows of the first terrace from the image x axis,
        degrees, clockwise on screen. Default: random.
    steps : int, optional
        Number of atomic step edges crossing the frame. Default: random
        (0 to 2, depending on the surface).
    tip_sigma_nm : float, optional
        Resolution of the (nominal) tip as a Gaussian blur width, nm.
    scan_direction : {"down", "up"}
        Slow-scan direction; the frames are in display orientation either way.
    line_time_s : float
        Time per line and direction, s (only written to file headers).
    realism : Realism
        What real Si(001):H frames show beyond the surface model (trenches,
        rims, feature sizes, irregular contamination, reacted areas, whose
        pixels get mask value 255); default none, which leaves every scan
        as it was. See :mod:`stm_live.sim.realism`.

    Returns
    -------
    SimulatedScan

    Examples
    --------
    >>> scan = simulate_scan("si001-ash3", size_nm=10.0, pixels=64, seed=1)
    >>> scan.frame("Z").data.shape, scan.mask.dtype.name, scan.classes
    ((64, 64), 'uint8', ('AsH3', 'dangling_bond', 'dimer_vacancy'))
    """
    custom = isinstance(surface, SurfaceModel)
    _check("surface", surface, custom or surface in SURFACES, f"one of {', '.join(SURFACES)}, or a SurfaceModel")
    _check("bias_v", bias_v, not custom or bias_v is None, "None with a SurfaceModel (the model fixes the bias)")
    _check("size_nm", size_nm, isinstance(size_nm, int | float) and math.isfinite(size_nm) and size_nm > 0,
           "a positive length in nm")
    _check("pixels", pixels, isinstance(pixels, int | np.integer) and 8 <= pixels <= 8192, "an integer 8..8192")
    _check("seed", seed, isinstance(seed, int | np.integer) and seed >= 0, "an integer >= 0")
    _check("artefacts", artefacts, isinstance(artefacts, Artefacts), "an Artefacts instance")
    _check("realism", realism, isinstance(realism, Realism), "a Realism instance")
    _check("scan_direction", scan_direction, scan_direction in ("down", "up"), "'down' or 'up'")
    for name, value in (("density_scale", density_scale), ("feature_height_scale", feature_height_scale),
                        ("feature_size_scale", feature_size_scale), ("line_time_s", line_time_s)):
        _check(name, value, isinstance(value, int | float) and math.isfinite(value) and value >= 0, "a number >= 0")
    _check("steps", steps, steps is None or (isinstance(steps, int | np.integer) and 0 <= steps <= 20),
           "None or an integer 0..20")
    _check("tip_sigma_nm", tip_sigma_nm, tip_sigma_nm is None or (math.isfinite(tip_sigma_nm) and tip_sigma_nm > 0),
           "None or a positive width in nm")
    model = surface if isinstance(surface, SurfaceModel) else surface_model(surface, bias_v=bias_v)
    surface = model.name
    if tip_sigma_nm is not None:
        model = _replace_tip(model, float(tip_sigma_nm))
    densities = dict(model.density_per_nm2)
    for name, value in (density_per_nm2 or {}).items():
        _check("density_per_nm2", name, name in model.classes, f"class names of {surface}: {', '.join(model.classes)}")
        _check(f"density_per_nm2[{name!r}]", value, math.isfinite(value) and value >= 0, "a density >= 0 per nm^2")
        densities[name] = float(value)
    clutter = model.clutter_per_nm2 if clutter_per_nm2 is None else float(clutter_per_nm2)
    _check("clutter_per_nm2", clutter_per_nm2, math.isfinite(clutter) and clutter >= 0, "a density >= 0 per nm^2")
    setpoint = model.setpoint_a if setpoint_a is None else float(setpoint_a)
    _check("setpoint_a", setpoint_a, math.isfinite(setpoint) and setpoint > 0, "a positive current in A")

    size = float(size_nm)
    n = int(pixels)
    px = size / n
    children = np.random.SeedSequence(int(seed)).spawn(len(_STREAMS))
    streams = {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children, strict=True)}
    geometry = lateral_geometry(artefacts, streams, rows=n, cols=n, size_nm=(size, size), scan_direction=scan_direction)
    grid_f = SampleGrid(geometry.x_cols_forward, geometry.x_rows, geometry.y_rows, px)
    grid_b = SampleGrid(geometry.x_cols_backward, geometry.x_rows, geometry.y_rows, px)

    # The surface, built over the frame plus a margin in sample coordinates,
    # so that lateral artefacts move the tip over it without changing it.
    margin = SURFACE_MARGIN_FRACTION * size + SURFACE_MARGIN_NM
    region = (-margin, size + margin, -margin, size + margin)
    xs = np.concatenate([geometry.x_cols_forward, geometry.x_cols_backward])
    reach = max(-float(xs.min() + geometry.x_rows.min()), float(xs.max() + geometry.x_rows.max()) - size,
                -float(geometry.y_rows.min()), float(geometry.y_rows.max()) - size)
    if reach > margin:
        raise ValueError(
            f"simulate_scan: creep, drift and hysteresis move the tip {reach:.3g} nm beyond the {size:g} nm frame, "
            f"more than the {margin:.3g} nm of surface simulated around it; use weaker lateral artefacts"
        )
    rng = streams["layout"]
    angle_deg = rng.uniform(0.0, 180.0) if row_angle_deg is None else float(row_angle_deg)
    theta0 = math.radians(angle_deg)
    weights = np.array(model.step_count_weights)
    n_steps = int(rng.choice(weights.size, p=weights / weights.sum())) if steps is None else int(steps)
    edges = make_steps(rng, count=n_steps, theta_rad=theta0, rotate_across_steps=model.rotate_across_steps,
                       bounds_nm=(0.0, size, 0.0, size))
    terraces = []
    for t in range(n_steps + 1):
        theta = theta0 + (math.pi / 2 if (model.rotate_across_steps and t % 2) else 0.0)
        e_u, e_v = row_frame_axes(theta)
        ou, ov = rng.uniform(0, model.cell.size_u), rng.uniform(0, model.cell.size_v)
        terraces.append(TerraceLattice(theta, (float(ou * e_u[0] + ov * e_v[0]), float(ou * e_u[1] + ov * e_v[1]))))
    terms = lattice_terms(model.cell, corrugation_nm=model.corrugation_nm, min_tip_sigma_nm=model.tip_sigma_nm)

    # The features.
    real_rng = streams["realism"]
    real_events: dict[str, Any] = {}
    if realism.active:
        model, clutter, real_events = realistic_model(model, realism, real_rng, clutter)
    rng = streams["features"]
    area = (size + 2 * margin) ** 2
    counts: dict[str | None, int] = {None: int(rng.poisson(clutter * area))}
    for cls in model.classes:
        counts[cls] = int(rng.poisson(densities[cls] * density_scale * area))
    # Masks of neighbours must never touch, even on coarse pixels.
    gap = max(MIN_GAP_NM, 2.5 * px)
    placed = place_features(rng, model, counts=counts, region_nm=region, terraces=tuple(terraces), edges=edges,
                            gap_nm=gap)
    reacted = None
    extra: list[dict[str, np.ndarray]] = []
    if realism.active:
        reacted = reacted_area(realism, real_rng, region, size)
        if reacted is not None:
            outside = ~reacted.inside(placed.x_nm, placed.y_nm)
            placed = Placed(*(getattr(placed, f.name)[outside] for f in fields(Placed)))
            real_events["reacted"] = True
        extra.append(rim_blobs(model, placed.kind, placed.x_nm, placed.y_nm, placed.theta_rad, realism, real_rng,
                               size_scale=float(feature_size_scale), height_scale=float(feature_height_scale)))
        if reacted is not None:
            extra.append(reacted_blobs(reacted, real_rng, theta=theta0))
    blobs = blob_table(model, placed, height_scale=float(feature_height_scale), size_scale=float(feature_size_scale))
    if extra:
        blobs = {k: np.concatenate([blobs[k], *(e[k] for e in extra)]) for k in blobs}
    built = _Surface(model, terms, tuple(terraces), edges, placed, blobs)

    # Imaging.
    nominal_sigma = np.full(n, model.tip_sigma_nm)
    ones = np.ones(n)
    clean, label, near = _image(built, grid_f, nominal_sigma, ones)
    tip = tip_history(artefacts, streams, rows=n, sigma_nm=model.tip_sigma_nm, scan_direction=scan_direction)
    seen_f = _tipped(built, grid_f, tip, clean)
    same_grid = artefacts.hysteresis_nm == 0
    seen_b = seen_f if same_grid else _tipped(built, grid_b, tip, None)
    add_f, add_b, signal_events = signal_artefacts(
        artefacts, streams, rows=n, cols=n, x_rows=geometry.x_rows, y_rows=geometry.y_rows,
        x_cols=(geometry.x_cols_forward, geometry.x_cols_backward), size_nm=(size, size),
        scan_direction=scan_direction,
    )
    mask, x_img, y_img = render_mask(model, placed, grid=grid_f, size_scale=float(feature_size_scale))
    if reacted is not None:
        xs_f = geometry.x_cols_forward[None, :] + geometry.x_rows[:, None]
        ys_f = np.broadcast_to(geometry.y_rows[:, None], xs_f.shape)
        mask[reacted.inside(xs_f, ys_f)] = REACTED
    instances = sorted(
        (Instance(model.kinds[int(k)].class_name or "", float(x), float(y), model.kinds[int(k)].name)
         for k, x, y in zip(placed.kind, x_img, y_img, strict=True) if not math.isnan(x)),
        key=lambda i: (i.y_nm, i.x_nm),
    )

    rng = streams["current"]
    meta: dict[str, Any] = {"width_m": size * 1e-9, "height_m": size * 1e-9, "scan_direction": scan_direction,
            "bias_v": model.bias_v, "setpoint_a": setpoint, "offset_m": (0.0, 0.0), "angle_deg": 0.0,
            "source": f"simulated {surface} seed {int(seed)}"}
    frames = (
        Frame((seen_f + add_f) * np.float32(1e-9), channel="Z", unit="m", direction="forward", **meta),
        Frame((seen_b + add_b) * np.float32(1e-9), channel="Z", unit="m", direction="backward", **meta),
        Frame(_current(seen_f, pixel_nm=px, forward=True, setpoint_a=setpoint, noise=artefacts.current_noise, rng=rng),
              channel="Current", unit="A", direction="forward", **meta),
        Frame(_current(seen_b, pixel_nm=px, forward=False, setpoint_a=setpoint, noise=artefacts.current_noise,
                       rng=rng), channel="Current", unit="A", direction="backward", **meta),
    )
    events = {**geometry.events, **tip.events, **signal_events}
    if realism.active:
        events["realism"] = real_events
    params = {
        "surface": surface, "size_nm": size, "pixels": n, "seed": int(seed), "bias_v": model.bias_v,
        "setpoint_a": setpoint, "artefacts": artefacts.to_dict(), "density_per_nm2": densities,
        "density_scale": float(density_scale), "clutter_per_nm2": clutter,
        "feature_height_scale": float(feature_height_scale), "feature_size_scale": float(feature_size_scale),
        "row_angle_deg": angle_deg, "steps": n_steps, "tip_sigma_nm": model.tip_sigma_nm,
        "scan_direction": scan_direction, "line_time_s": float(line_time_s),
    }
    if realism.active:  # absent otherwise, so that scans without realism keep their sidecars' bytes
        params["realism"] = realism.to_dict()
    return SimulatedScan(
        surface=surface,
        classes=model.classes,
        frames=frames,
        clean=(clean * np.float32(1e-9)).astype(np.float32),
        mask=mask,
        instances=tuple(instances),
        terraces=label.astype(np.int16),
        step_mask=near,
        seed=int(seed),
        size_nm=size,
        bias_v=model.bias_v,
        setpoint_a=setpoint,
        artefacts=artefacts,
        events=events,
        params=params,
    )


def _replace_tip(model: SurfaceModel, sigma: float) -> SurfaceModel:
    return replace(model, tip_sigma_nm=sigma)
