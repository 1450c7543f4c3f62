"""Point defects and adsorbates: where they sit, how they render, what the mask says.

Features sit on lattice sites of their terrace (a dimer atom, a row centre, a
bridging-oxygen site), never closer to a step edge than their own size, and
never so close to another feature that their ground-truth masks could touch:
centres are at least ``R_i + R_j + gap`` apart, with ``R`` the larger
semi-axis of the footprint ellipse and ``gap`` two pixels (at least 0.25 nm).

Rendering stamps each feature's blobs into small pixel patches around it,
evaluated at the true sample position of every pixel (so drift and creep
distort features exactly as they distort the lattice) and widened by the tip
of each row (so a tip change blurs features too). All lengths nm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .lattice import row_frame_axes
from .steps import StepEdge, terrace_at
from .surfaces import FeatureKind, SurfaceModel

__all__ = ["Placed", "SampleGrid", "TerraceLattice", "place_features", "render_features", "render_mask"]

@dataclass(frozen=True)
class SampleGrid:
    """Where each pixel samples the surface: ``(x_cols[c] + x_rows[r], y_rows[r])``, nm.

    ``y_rows`` must increase with the row index (display order, top to bottom)
    and ``x_cols`` with the column index.
    """

    x_cols: np.ndarray
    x_rows: np.ndarray
    y_rows: np.ndarray
    pixel_nm: float

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.y_rows.size), int(self.x_cols.size)

    def shifted(self, dx: float, dy: float) -> SampleGrid:
        """The grid of a tip apex displaced by ``(dx, dy)`` nm."""
        return SampleGrid(self.x_cols, self.x_rows + dx, self.y_rows + dy, self.pixel_nm)

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional ``(col, row)`` of sample points; linear extrapolation outside the grid."""
        rows, cols = self.shape
        r_idx = np.arange(rows, dtype=np.float64)
        row = np.interp(y, self.y_rows, r_idx)
        row = _extrapolate(y, self.y_rows, row)
        xr = np.interp(row, r_idx, self.x_rows)
        xs = x - xr
        col = np.interp(xs, self.x_cols, np.arange(cols, dtype=np.float64))
        col = _extrapolate(xs, self.x_cols, col)
        return col, row


def _extrapolate(value: np.ndarray, grid: np.ndarray, index: np.ndarray) -> np.ndarray:
    lo_slope = (grid[1] - grid[0]) if grid.size > 1 else 1.0
    hi_slope = (grid[-1] - grid[-2]) if grid.size > 1 else 1.0
    index = np.where(value < grid[0], (value - grid[0]) / lo_slope, index)
    return np.where(value > grid[-1], grid.size - 1 + (value - grid[-1]) / hi_slope, index)


@dataclass(frozen=True)
class TerraceLattice:
    """Row angle (rad) and a cell origin (x, y in nm, sample coordinates) of one terrace."""

    theta_rad: float
    origin_nm: tuple[float, float]


@dataclass(frozen=True)
class Placed:
    """Placed features, one entry per feature (arrays of equal length)."""

    kind: np.ndarray  # int index into SurfaceModel.kinds
    x_nm: np.ndarray  # sample position of the centre
    y_nm: np.ndarray
    theta_rad: np.ndarray  # row angle of its terrace
    mirror: np.ndarray  # +1 or -1: which side of the row
    terrace: np.ndarray

    def __len__(self) -> int:
        return int(self.kind.size)


def _footprint_radius(kind: FeatureKind) -> float:
    return max(kind.footprint_u, kind.footprint_v)


def place_features(
    rng: np.random.Generator,
    model: SurfaceModel,
    *,
    counts: dict[str | None, int],
    region_nm: tuple[float, float, float, float],
    terraces: tuple[TerraceLattice, ...],
    edges: tuple[StepEdge, ...],
    gap_nm: float,
    attempts: int = 24,
) -> Placed:
    """Place ``counts[class]`` features of each class (``None``: clutter) in ``region_nm = (x0, x1, y0, y1)``.

    Positions are drawn in sample coordinates, independent of the pixels and
    of any lateral artefact, and snapped to the lattice site of the
    feature's kind on its terrace. Features whose every attempt collides are
    dropped, so dense requests saturate rather than overlap. Clutter is placed
    first (it is big), then the labelled classes in random order.
    """
    kinds = model.kinds
    wanted: list[int] = []
    for cls in [None, *model.classes]:
        n = counts.get(cls, 0)
        if n <= 0:
            continue
        idx = [i for i, k in enumerate(kinds) if k.class_name == cls]
        w = np.array([kinds[i].weight for i in idx], dtype=float)
        wanted.extend(int(i) for i in rng.choice(idx, size=n, p=w / w.sum()))
    n_clutter = sum(1 for i in wanted if kinds[i].class_name is None)
    labelled = np.array(wanted[n_clutter:], dtype=int)
    order = np.concatenate([np.array(wanted[:n_clutter], dtype=int), rng.permutation(labelled)]).astype(int)
    n = order.size
    radius = np.array([_footprint_radius(kinds[k]) for k in order])
    site_u = np.array([kinds[k].site_u for k in order])
    site_v = np.array([kinds[k].site_v for k in order])
    mirrors = np.where(
        np.array([kinds[k].mirror for k in order], dtype=bool), np.where(rng.random(n) < 0.5, -1.0, 1.0), 1.0
    )
    x0, x1, y0, y1 = region_nm
    cx = rng.uniform(x0, x1, (n, attempts))
    cy = rng.uniform(y0, y1, (n, attempts))
    label, _ = terrace_at(edges, cx, cy)
    label = np.minimum(label, len(terraces) - 1)
    thetas = np.array([t.theta_rad for t in terraces])[label]
    ox = np.array([t.origin_nm[0] for t in terraces])[label]
    oy = np.array([t.origin_nm[1] for t in terraces])[label]
    eu_x, eu_y = -np.sin(thetas), np.cos(thetas)
    ev_x, ev_y = np.cos(thetas), np.sin(thetas)
    u = (cx - ox) * eu_x + (cy - oy) * eu_y
    v = (cx - ox) * ev_x + (cy - oy) * ev_y
    su = (site_u * mirrors)[:, None]
    sv = site_v[:, None]
    u = np.round((u - su) / model.row_period_nm) * model.row_period_nm + su
    v = np.round((v - sv) / model.site_period_nm) * model.site_period_nm + sv
    fx = ox + u * eu_x + v * ev_x
    fy = oy + u * eu_y + v * ev_y
    new_label, edge_dist = terrace_at(edges, fx, fy)
    ok = (new_label == label) & (edge_dist > radius[:, None] + 0.4)

    acc_x = np.empty(n)
    acc_y = np.empty(n)
    acc_r = np.empty(n)
    keep = np.zeros(n, dtype=bool)
    chosen = np.zeros(n, dtype=int)
    m = 0
    for i in range(n):
        cand = np.flatnonzero(ok[i])
        if cand.size == 0:
            continue
        if m:
            dx = fx[i, cand][:, None] - acc_x[None, :m]
            dy = fy[i, cand][:, None] - acc_y[None, :m]
            need = radius[i] + acc_r[None, :m] + gap_nm
            free = np.all(dx * dx + dy * dy >= need * need, axis=1)
            cand = cand[free]
            if cand.size == 0:
                continue
        j = int(cand[0])
        acc_x[m], acc_y[m], acc_r[m] = fx[i, j], fy[i, j], radius[i]
        m += 1
        keep[i] = True
        chosen[i] = j
    sel = np.flatnonzero(keep)
    js = chosen[sel]
    return Placed(
        kind=order[sel],
        x_nm=fx[sel, js],
        y_nm=fy[sel, js],
        theta_rad=thetas[sel, js],
        mirror=mirrors[sel],
        terrace=label[sel, js],
    )


_BLOB_FIELDS = ("x", "y", "theta", "height", "flatten", "phase", "su", "sv", "pu", "pv")


def _blob_table(
    model: SurfaceModel, placed: Placed, *, height_scale: float, size_scale: float
) -> dict[str, np.ndarray]:
    rows: list[tuple[float, ...]] = []
    for i in range(len(placed)):
        kind = model.kinds[int(placed.kind[i])]
        th = float(placed.theta_rad[i])
        (eux, euy), (evx, evy) = row_frame_axes(th)
        mir = float(placed.mirror[i])
        for b in kind.blobs:
            du = b.du * mir * size_scale
            dv = b.dv * size_scale
            rows.append((
                placed.x_nm[i] + du * eux + dv * evx,
                placed.y_nm[i] + du * euy + dv * evy,
                th, b.height * height_scale, b.flatten, b.phase,
                b.sigma_u * size_scale, b.sigma_v * size_scale, b.power_u, b.power_v,
            ))
    if not rows:
        return {k: np.zeros(0) for k in _BLOB_FIELDS}
    table = np.array(rows, dtype=np.float64)
    return {k: table[:, j] for j, k in enumerate(_BLOB_FIELDS)}


def _patches(grid: SampleGrid, x: np.ndarray, y: np.ndarray, half: int) -> tuple[np.ndarray, ...]:
    """Pixel indices of square patches ``(2 half + 1)^2`` around points, validity, sample offsets.

    Returns ``(rows, cols, valid, dx, dy)``: ``(n, (2 half + 1)^2)`` arrays, the
    sample position of each patch pixel relative to its point in float32 nm.
    """
    rows, cols = grid.shape
    col_f, row_f = grid.to_pixels(x, y)
    rc = np.rint(row_f).astype(np.int64)
    cc = np.rint(col_f).astype(np.int64)
    off = np.arange(-half, half + 1)
    pr = rc[:, None] + off[None, :]  # (n, k)
    pc = cc[:, None] + off[None, :]
    vr = (pr >= 0) & (pr < rows)
    vc = (pc >= 0) & (pc < cols)
    pr = np.clip(pr, 0, rows - 1)
    pc = np.clip(pc, 0, cols - 1)
    k = off.size
    # Separable: x = x_cols[c] + x_rows[r], y = y_rows[r].
    dx_c = (grid.x_cols[pc] - x[:, None]).astype(np.float32)
    dx_r = grid.x_rows[pr].astype(np.float32)
    dy_r = (grid.y_rows[pr] - y[:, None]).astype(np.float32)
    dx = (dx_r[:, :, None] + dx_c[:, None, :]).reshape(x.size, k * k)
    dy = np.broadcast_to(dy_r[:, :, None], (x.size, k, k)).reshape(x.size, k * k)
    valid = (vr[:, :, None] & vc[:, None, :]).reshape(x.size, k * k)
    prr = np.broadcast_to(pr[:, :, None], (x.size, k, k)).reshape(x.size, k * k)
    pcc = np.broadcast_to(pc[:, None, :], (x.size, k, k)).reshape(x.size, k * k)
    return prr, pcc, valid, dx, dy


def render_features(
    model: SurfaceModel,
    placed: Placed,
    *,
    grid: SampleGrid,
    tip_sigma_rows: np.ndarray,
    gain_rows: np.ndarray,
    height_scale: float = 1.0,
    size_scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Stamp every feature's blobs onto ``grid``.

    Returns
    -------
    dict
        ``"height"`` (nm added), ``"flatten"`` (fraction of lattice removed,
        0..1) and ``"phase"`` (weight of the phase-shifted lattice, 0..1),
        each ``(rows, cols)`` float32; a map no feature touches is ``None``.
    """
    rows, cols = grid.shape
    blobs = _blob_table(model, placed, height_scale=height_scale, size_scale=size_scale)
    flat: dict[str, np.ndarray | None] = {"height": None, "flatten": None, "phase": None}
    if blobs["x"].size == 0:
        return flat  # type: ignore[return-value]
    sigma0 = model.tip_sigma_nm
    tip_extra = np.asarray(tip_sigma_rows, dtype=np.float64) ** 2 - sigma0**2
    blurred = bool(np.any(tip_extra != 0))
    extra2 = float(max(tip_extra.max(), 0.0))
    reach = np.maximum(blobs["su"] * np.where(blobs["pu"] == 2, 1.4, 3.0) / 3.0,
                       blobs["sv"] * np.where(blobs["pv"] == 2, 1.4, 3.0) / 3.0)
    halfs = np.ceil(3.0 * np.sqrt(reach**2 + extra2) / grid.pixel_nm).astype(int) + 1
    gain = np.asarray(gain_rows, dtype=np.float32)
    tip_extra32 = tip_extra.astype(np.float32)
    col_f, row_f = grid.to_pixels(blobs["x"], blobs["y"])
    seen = (col_f > -halfs - 1) & (col_f < cols + halfs) & (row_f > -halfs - 1) & (row_f < rows + halfs)
    for half in np.unique(halfs[seen]):
        sel = np.flatnonzero((halfs == half) & seen)
        b = {k: v[sel] for k, v in blobs.items()}
        pr, pc, valid, dx, dy = _patches(grid, b["x"], b["y"], int(half))
        c = np.cos(b["theta"]).astype(np.float32)[:, None]
        s = np.sin(b["theta"]).astype(np.float32)[:, None]
        u = c * dy - s * dx
        v = c * dx + s * dy
        su2 = (b["su"] ** 2).astype(np.float32)[:, None]
        sv2 = (b["sv"] ** 2).astype(np.float32)[:, None]
        if blurred:
            # A wider tip widens each blob and keeps its volume.
            d2 = tip_extra32[pr]
            su2_t = np.maximum(su2 + d2, 0.2 * su2)
            sv2_t = np.maximum(sv2 + d2, 0.2 * sv2)
            scale = np.sqrt(su2 * sv2 / (su2_t * sv2_t)) * gain[pr]
        else:
            su2_t, sv2_t = su2, sv2
            scale = gain[pr] if np.any(gain != 1) else None
        qu = u * u / su2_t
        qv = v * v / sv2_t
        if np.any(b["pu"] == 2):
            qu = np.where((b["pu"] == 2)[:, None], qu * qu, qu)
        if np.any(b["pv"] == 2):
            qv = np.where((b["pv"] == 2)[:, None], qv * qv, qv)
        g = np.exp(np.float32(-0.5) * (qu + qv))
        idx = (pr * cols + pc)[valid]
        for target in ("height", "flatten", "phase"):
            amp = b[target]
            if not np.any(amp != 0):
                continue
            val = amp.astype(np.float32)[:, None] * g
            if target == "height" and scale is not None:
                # Flatten / phase windows describe the lattice, which the
                # lattice renderer blurs itself.
                val = val * scale
            acc = np.bincount(idx, weights=val[valid], minlength=rows * cols)
            flat[target] = acc if flat[target] is None else flat[target] + acc
    out: dict[str, np.ndarray | None] = {}
    for target, acc in flat.items():
        out[target] = None if acc is None else acc.reshape(rows, cols).astype(np.float32)
    for target in ("flatten", "phase"):
        if out[target] is not None:
            np.clip(out[target], 0.0, 1.0, out=out[target])
    return out  # type: ignore[return-value]


def render_mask(
    model: SurfaceModel, placed: Placed, *, grid: SampleGrid, size_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth mask and each labelled feature's apparent centre in the image.

    Returns
    -------
    mask : numpy.ndarray
        ``(rows, cols)`` uint8, 0 background, ``k`` = ``model.classes[k - 1]``;
        one filled footprint ellipse per labelled feature (clutter is background).
    x_nm, y_nm : numpy.ndarray
        Centre of each placed feature in image coordinates (from the left /
        top edge to pixel centres), nm; NaN for clutter and for features
        centred outside the image (they may show partly at the border, but
        are not labelled).
    """
    rows, cols = grid.shape
    mask = np.zeros(rows * cols, dtype=np.uint8)
    n = len(placed)
    col_f, row_f = grid.to_pixels(placed.x_nm, placed.y_nm)
    x_img = (col_f + 0.5) * grid.pixel_nm
    y_img = (row_f + 0.5) * grid.pixel_nm
    cls_id = np.zeros(n, dtype=np.uint8)
    fu = np.zeros(n)
    fv = np.zeros(n)
    for i in range(n):
        kind = model.kinds[int(placed.kind[i])]
        if kind.class_name is not None:
            cls_id[i] = model.classes.index(kind.class_name) + 1
        fu[i], fv[i] = kind.footprint_u * size_scale, kind.footprint_v * size_scale
    inside = (col_f >= -0.5) & (col_f < cols - 0.5) & (row_f >= -0.5) & (row_f < rows - 0.5)
    cls_id[~inside] = 0
    lab = np.flatnonzero(cls_id)
    if lab.size:
        half = math.ceil(max(fu[lab].max(), fv[lab].max()) / grid.pixel_nm) + 2
        pr, pc, valid, dx, dy = _patches(grid, placed.x_nm[lab], placed.y_nm[lab], half)
        c, s = np.cos(placed.theta_rad[lab])[:, None], np.sin(placed.theta_rad[lab])[:, None]
        u = (-s * dx + c * dy) / fu[lab][:, None]
        v = (c * dx + s * dy) / fv[lab][:, None]
        inside = valid & (u * u + v * v <= 1.0)
        ids = np.broadcast_to(cls_id[lab][:, None], inside.shape)
        mask[(pr * cols + pc)[inside]] = ids[inside]
        # The pixel holding the centre always belongs to the feature, however
        # coarse the pixels.
        rc = np.rint(row_f[lab]).astype(int)
        cc = np.rint(col_f[lab]).astype(int)
        ok = (rc >= 0) & (rc < rows) & (cc >= 0) & (cc < cols)
        mask[(rc * cols + cc)[ok]] = cls_id[lab][ok]
    x_img[cls_id == 0] = np.nan
    y_img[cls_id == 0] = np.nan
    return mask.reshape(rows, cols), x_img, y_img
