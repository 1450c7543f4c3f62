"""What real Si(001):H frames show and the plain simulator does not, one switch at a time.

Measured on the shared real frames (``docs/real_eval.md``, "Zero-shot
transfer"; the dev regions of the labelled set only), these are the
differences that a model trained on the simulator meets on real images:

* ``trench_fraction``: real dimer vacancies are often trenches of several
  missing dimers along a row (1.5-3.5 nm), not only the 1-, 2- and 1+2-dimer
  pits of the surface model: that share of the vacancies is drawn as a
  trench of 4-9 missing dimers, some with one dimer left inside (ragged).
* ``rim_chance``, ``rim_height``: vacancies with a bright rim: a compact
  bright spot just beyond the pit's edge along the fast-scan axis, on one
  side per frame, ``rim_height`` times the vacancy's depth (not a feature:
  it belongs to the background, so that a model learns not to call it a
  dangling bond).
* ``size_spread``: real features are bigger and their contrast differs from
  frame to frame (dangling bonds about 1.5x as wide as the simulator's at
  the same sampling): each frame's features are scaled by a size factor
  uniform in ``[0.9, 1 + size_spread]`` and a height factor log-uniform in
  ``[1 / (1 + size_spread), 1 + size_spread]``.
* ``contamination_per_nm2``: irregular bright clusters and chains of blobs
  (unlabelled), where the surface model's clutter is round.
* ``faint_dots_per_nm2``: shallow dark dots on the rows, a fifth to a half
  as deep as a vacancy (unlabelled): the real terraces have them (the label
  protocol's "faint dark dots", not counted as vacancies), the surface
  model's terraces have nothing between a perfect row and a vacancy.
* ``reacted_chance``: with this chance a frame holds an area of reacted
  surface (as the PH3-dosed frame's upper part): dense, disordered bright and
  dark blobs, no lattice. It is neither background nor a feature class: its
  pixels get the mask value :data:`REACTED` (255, "no label" to the trainer),
  and features centred in it are not placed.

Every draw comes from the scan's own ``realism`` random stream, so a frame
without realism is bit for bit what it was before this module existed.

>>> Realism.none().active, Realism.si001h().active
(False, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from .surfaces import Blob, FeatureKind, SurfaceModel

__all__ = ["REACTED", "ReactedArea", "Realism", "reacted_area", "reacted_blobs", "realistic_model", "rim_blobs"]

#: Mask value of reacted areas: neither background (0) nor a feature class; the trainer ignores it.
REACTED = 255
#: Trench lengths, in missing dimers.
TRENCH_DIMERS = (4, 5, 6, 7, 8, 9)
#: Irregular contamination shapes drawn per frame (each placed any number of times, rotated with its terrace).
CONTAMINATION_SHAPES = 8


@dataclass(frozen=True)
class Realism:
    """Switchable realism of real Si(001):H frames; 0 switches a part off (see the module description).

    Parameters
    ----------
    trench_fraction : float
        Share 0..1 of dimer vacancies drawn as trenches of 4-9 missing dimers.
    rim_chance : float
        Chance 0..1 that a dimer vacancy has a bright rim blob.
    rim_height : float
        Height of a rim relative to the vacancy's depth.
    size_spread : float
        Spread of the per-frame feature size and height factors (0: both 1).
    contamination_per_nm2 : float
        Irregular unlabelled bright clusters and chains per nm^2.
    faint_dots_per_nm2 : float
        Shallow unlabelled dark dots per nm^2.
    reacted_chance : float
        Chance 0..1 that a frame holds a reacted area (10-40 % of it).
    """

    trench_fraction: float = 0.0
    rim_chance: float = 0.0
    rim_height: float = 0.5
    size_spread: float = 0.0
    contamination_per_nm2: float = 0.0
    reacted_chance: float = 0.0
    faint_dots_per_nm2: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Realism.{f.name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, f.name, float(value))
        for name in ("trench_fraction", "rim_chance", "reacted_chance"):
            if getattr(self, name) > 1:
                raise ValueError(f"Realism.{name} is a fraction and must be within 0..1, got {getattr(self, name)!r}")

    @classmethod
    def none(cls) -> Realism:
        """No realism: the plain simulator."""
        return cls()

    @classmethod
    def si001h(cls) -> Realism:
        """The levels measured on the real Si(001):H frames' dev regions (``docs/real_eval.md``).

        Trenches: 15 of 49 labelled dev vacancies are marked by two ends (1.4-2.8 nm apart; 11 of
        16 on the PH3 frame); rims: 58 % of the clean frame's dev vacancies have a spot brighter than
        3 robust standard deviations of the terrace within 1.3 nm on their right (16 % on the left,
        none at random terrace points), the median such spot 3.2 sd against a depth of 4 sd; the
        PH3 frame's on the left (25 %); size: dangling bonds' fitted Gaussian width 0.35 nm against the
        simulator's 0.23 nm at the same sampling; contamination: about 8 irregular clusters per
        10^4 nm^2 on the clean frame; reacted: one of the two frames has a reacted area; faint dots:
        the bundled model's false vacancies on the dev regions are 0.35-0.6 as deep as the true ones
        (model units -0.7 to -2.2 against -3.2 to -4.0), on unlabelled dark dips found at 1.2
        (clean frame) and 3.2 (PH3 frame) per 100 nm^2.
        """
        return cls(trench_fraction=0.4, rim_chance=0.6, rim_height=0.8, size_spread=0.5,
                   contamination_per_nm2=8e-4, reacted_chance=0.3, faint_dots_per_nm2=0.02)

    @property
    def active(self) -> bool:
        """Whether any part is switched on."""
        return any(getattr(self, f.name) > 0 for f in fields(self) if f.name != "rim_height")

    def to_dict(self) -> dict[str, float]:
        """The settings as a plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Realism:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown realism setting(s) {', '.join(unknown)}; expected some of "
                             f"{', '.join(sorted(known))}")
        return cls(**dict(values))


def _vacancy_template(model: SurfaceModel) -> tuple[FeatureKind, Blob] | None:
    """The single-dimer vacancy kind and its blob: the shape a trench is made of."""
    for kind in model.kinds:
        if kind.class_name == "dimer_vacancy" and len(kind.blobs) == 1:
            return kind, kind.blobs[0]
    return None


def _trench_kinds(model: SurfaceModel, template: tuple[FeatureKind, Blob], weight: float) -> list[FeatureKind]:
    kind, blob = template
    a = model.site_period_nm
    out = []
    variants = [(n, ragged) for n in TRENCH_DIMERS for ragged in (False, True)]
    for n, ragged in variants:
        dvs = [(i - 0.5 * (n - 1)) * a for i in range(n)]
        if ragged:
            del dvs[n // 2]  # one dimer left inside: a trench in two pieces a person counts as one
        blobs = tuple(replace(blob, dv=dv) for dv in dvs)
        half = 0.5 * (n - 1) * a
        out.append(FeatureKind("dimer_vacancy", f"{n}-dimer trench" + (" (ragged)" if ragged else ""),
                               weight / len(variants), kind.site_u, 0.0 if n % 2 else 0.5 * a, False, blobs,
                               kind.footprint_u, half + kind.footprint_v))
    return out


def _contamination_kinds(rng: np.random.Generator, weight: float) -> list[FeatureKind]:
    """Irregular clusters: 3-8 blobs along a random walk (chains) or bunched (clumps)."""
    out = []
    for j in range(CONTAMINATION_SHAPES):
        n = int(rng.integers(3, 9))
        chain = bool(rng.random() < 0.5)
        pos = np.zeros(2)
        blobs = []
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(n):
            s = float(rng.uniform(0.2, 0.45))
            blobs.append(Blob(float(pos[0]), float(pos[1]), float(rng.uniform(0.08, 0.3)), s,
                              s * float(rng.uniform(0.7, 1.3))))
            heading += rng.normal(0, 0.4 if chain else 1.5)
            pos = pos + float(rng.uniform(0.8, 1.3) if chain else rng.uniform(0.3, 0.7)) * np.array(
                [math.cos(heading), math.sin(heading)])
        centre = np.mean([(b.du, b.dv) for b in blobs], axis=0)
        blobs = [replace(b, du=b.du - float(centre[0]), dv=b.dv - float(centre[1])) for b in blobs]
        reach_u = max(abs(b.du) + 1.5 * b.sigma_u for b in blobs)
        reach_v = max(abs(b.dv) + 1.5 * b.sigma_v for b in blobs)
        out.append(FeatureKind(None, f"irregular cluster {j + 1}", weight / CONTAMINATION_SHAPES, 0.0, 0.0, False,
                               tuple(blobs), reach_u, reach_v))
    return out


def _faint_dot_kinds(template: tuple[FeatureKind, Blob]) -> list[FeatureKind]:
    """Shallow dark dots on the rows: a fifth to a half of a single-dimer vacancy's depth, a little wider."""
    kind, blob = template
    out = []
    for j, (depth, width) in enumerate(((0.2, 1.0), (0.3, 1.15), (0.4, 1.0), (0.5, 1.25))):
        out.append(FeatureKind(None, f"faint dark dot {j + 1}", 1.0, kind.site_u, 0.0, False,
                               (replace(blob, height=blob.height * depth, sigma_u=blob.sigma_u * width,
                                        sigma_v=blob.sigma_v * width * 1.3, flatten=0.3),),
                               kind.footprint_u, kind.footprint_v))
    return out


def realistic_model(
    model: SurfaceModel, realism: Realism, rng: np.random.Generator, clutter_per_nm2: float
) -> tuple[SurfaceModel, float, dict[str, float]]:
    """``model`` with trench and irregular-cluster kinds added and every kind scaled; the clutter to place.

    Returns the model, the clutter density (the model's clutter plus the
    contamination) and the frame's drawn factors (``{"size", "height"}``).
    Models without a single-dimer vacancy kind get no trenches. The kinds'
    blobs and footprints are scaled here, so that placement keeps the scaled
    footprints apart.
    """
    kinds = list(model.kinds)
    template = _vacancy_template(model)
    if realism.trench_fraction > 0 and template is not None:
        f = realism.trench_fraction
        total = sum(k.weight for k in kinds if k.class_name == "dimer_vacancy")
        kinds = [replace(k, weight=k.weight * (1.0 - f)) if k.class_name == "dimer_vacancy" else k for k in kinds]
        kinds += _trench_kinds(model, template, f * total)
    # Drawn whether used or not, so that one part's switch never changes what another draws.
    shapes_rng = np.random.default_rng(rng.integers(2**63))
    # Unlabelled additions share the clutter count, each group with its share of it.
    groups: list[tuple[float, list[FeatureKind]]] = []
    if realism.contamination_per_nm2 > 0:
        groups.append((realism.contamination_per_nm2, _contamination_kinds(shapes_rng, 1.0)))
    if realism.faint_dots_per_nm2 > 0 and template is not None:
        groups.append((realism.faint_dots_per_nm2, _faint_dot_kinds(template)))
    clutter = clutter_per_nm2 + sum(d for d, _ in groups)
    if groups:
        round_weight = sum(k.weight for k in kinds if k.class_name is None)
        kinds = [replace(k, weight=k.weight * clutter_per_nm2 / clutter / round_weight) if k.class_name is None
                 else k for k in kinds]
        for density, extra in groups:
            total = sum(k.weight for k in extra)
            kinds += [replace(k, weight=k.weight * density / clutter / total) for k in extra]
    size, height = feature_scales(realism, rng)
    if (size, height) != (1.0, 1.0):
        kinds = [_scaled(k, size, height) for k in kinds]
    return replace(model, kinds=tuple(kinds)), clutter, {"size": size, "height": height}


def _scaled(kind: FeatureKind, size: float, height: float) -> FeatureKind:
    blobs = tuple(replace(b, du=b.du * size, dv=b.dv * size, sigma_u=b.sigma_u * size, sigma_v=b.sigma_v * size,
                          height=b.height * height) for b in kind.blobs)
    return replace(kind, blobs=blobs, footprint_u=kind.footprint_u * size, footprint_v=kind.footprint_v * size)


def feature_scales(realism: Realism, rng: np.random.Generator) -> tuple[float, float]:
    """This frame's feature (size, height) factors."""
    u_size, u_height = rng.random(2)
    s = realism.size_spread
    if s <= 0:
        return 1.0, 1.0
    size = 0.9 + (0.1 + s) * float(u_size)
    height = float(np.exp((2 * float(u_height) - 1) * math.log1p(s)))
    return size, height


def rim_blobs(
    model: SurfaceModel, kind: np.ndarray, x_nm: np.ndarray, y_nm: np.ndarray, theta: np.ndarray,
    realism: Realism, rng: np.random.Generator, *, size_scale: float, height_scale: float,
) -> dict[str, np.ndarray]:
    """Bright rims beside some dimer vacancies, as :func:`~stm_live.sim.features.blob_table` columns.

    On the real frames the rim is a compact bright spot just beyond the pit's
    edge along the fast-scan axis, on one side per frame (the clean frame's
    right, the PH3 frame's left): a scan effect, so it is placed along the
    image's x axis, not the row, on the side drawn for the frame.
    """
    n = kind.size
    side = 1.0 if rng.random() < 0.5 else -1.0
    u_have, u_y, u_h, u_s = rng.random((4, n))
    cols: dict[str, list[float]] = {k: [] for k in ("x", "y", "theta", "height", "su", "sv")}
    if realism.rim_chance > 0:
        for i in range(n):
            k = model.kinds[int(kind[i])]
            if k.class_name != "dimer_vacancy" or u_have[i] >= realism.rim_chance:
                continue
            th = float(theta[i])
            depth = -min(b.height for b in k.blobs)
            # Just beyond the footprint's reach along x (x = -u sin + v cos in the row frame), at a
            # random height within its reach along y.
            fu, fv = k.footprint_u * size_scale, k.footprint_v * size_scale
            reach_x = math.hypot(fu * math.sin(th), fv * math.cos(th))
            reach_y = math.hypot(fu * math.cos(th), fv * math.sin(th))
            s = (0.15 + 0.1 * float(u_s[i])) * size_scale
            cols["x"].append(float(x_nm[i]) + side * (reach_x + 0.5 * s))
            cols["y"].append(float(y_nm[i]) + (float(u_y[i]) - 0.5) * reach_y)
            cols["theta"].append(th)
            cols["height"].append(realism.rim_height * depth * (0.6 + 0.8 * float(u_h[i])) * height_scale)
            cols["su"].append(s)
            cols["sv"].append(s)
    return _columns(cols)


def _columns(cols: Mapping[str, list[float]]) -> dict[str, np.ndarray]:
    n = len(cols["x"])
    out = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
    for name, default in (("flatten", 0.0), ("phase", 0.0), ("pu", 1.0), ("pv", 1.0)):
        out.setdefault(name, np.full(n, default))
    return out


@dataclass(frozen=True)
class ReactedArea:
    """A reacted patch of a frame: a smooth random field on the simulated region, above a threshold."""

    field: np.ndarray  # coarse grid over the region
    region_nm: tuple[float, float, float, float]  # x0, x1, y0, y1
    threshold: float

    def field_coordinates(self, x_nm: np.ndarray, y_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row, col)`` of sample points on the coarse field's grid."""
        x0, x1, y0, y1 = self.region_nm
        gy, gx = self.field.shape
        cx = (np.asarray(x_nm, dtype=np.float64).ravel() - x0) / (x1 - x0) * (gx - 1)
        cy = (np.asarray(y_nm, dtype=np.float64).ravel() - y0) / (y1 - y0) * (gy - 1)
        return cy, cx

    def inside(self, x_nm: np.ndarray, y_nm: np.ndarray) -> np.ndarray:
        """Whether sample points ``(x, y)`` (nm) lie in the reacted area."""
        from scipy import ndimage

        values = ndimage.map_coordinates(self.field, list(self.field_coordinates(x_nm, y_nm)), order=3,
                                         mode="nearest")
        return (values > self.threshold).reshape(np.shape(x_nm))


def reacted_area(
    realism: Realism, rng: np.random.Generator, region_nm: tuple[float, float, float, float], frame_nm: float
) -> ReactedArea | None:
    """Draw this frame's reacted area (or None): 10-40 % of the frame, one or a few smooth patches."""
    u_have, u_cover = rng.random(2)
    cells = 6
    coarse = rng.standard_normal((cells, cells))
    if realism.reacted_chance <= 0 or u_have >= realism.reacted_chance:
        return None
    from scipy import ndimage

    area = ReactedArea(ndimage.zoom(coarse, 4, order=3), region_nm, 0.0)
    # The threshold that covers the drawn fraction of the frame itself.
    probe = np.linspace(0.0, frame_nm, 64)
    px, py = np.meshgrid(probe, probe)
    cover = 0.1 + 0.3 * float(u_cover)
    values = ndimage.map_coordinates(area.field, list(area.field_coordinates(px.ravel(), py.ravel())), order=3,
                                     mode="nearest")
    return replace(area, threshold=float(np.quantile(values, 1.0 - cover)))


def reacted_blobs(
    area: ReactedArea, rng: np.random.Generator, *, theta: float, density_per_nm2: float = 0.6,
) -> dict[str, np.ndarray]:
    """The reacted area's texture: dense bright and dark blobs, and the lattice flattened under them."""
    x0, x1, y0, y1 = area.region_nm
    total = (x1 - x0) * (y1 - y0)
    n = int(rng.poisson(density_per_nm2 * total))
    x = rng.uniform(x0, x1, n)
    y = rng.uniform(y0, y1, n)
    dark = rng.random(n) < 0.3
    height = np.where(dark, -rng.uniform(0.04, 0.12, n), rng.uniform(0.05, 0.25, n))
    su = rng.uniform(0.25, 0.55, n)
    sv = su * rng.uniform(0.7, 1.3, n)
    keep = area.inside(x, y)
    step = 0.7
    gx, gy = np.meshgrid(np.arange(x0, x1, step), np.arange(y0, y1, step))
    gx, gy = gx.ravel(), gy.ravel()
    flat = area.inside(gx, gy)
    gx, gy = gx[flat], gy[flat]
    m, k = int(keep.sum()), gx.size
    return {
        "x": np.concatenate([x[keep], gx]),
        "y": np.concatenate([y[keep], gy]),
        "theta": np.full(m + k, theta),
        "height": np.concatenate([height[keep], np.zeros(k)]),
        "flatten": np.concatenate([np.zeros(m), np.full(k, 0.45)]),
        "phase": np.zeros(m + k),
        "su": np.concatenate([su[keep], np.full(k, 0.45)]),
        "sv": np.concatenate([sv[keep], np.full(k, 0.45)]),
        "pu": np.ones(m + k),
        "pv": np.ones(m + k),
    }
