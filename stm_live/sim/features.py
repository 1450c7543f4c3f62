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

from .steps import StepEdge, terrace_at
from .surfaces import FeatureKind, SurfaceModel

__all__ = [
    "Placed",
    "SampleGrid",
    "TerraceLattice",
    "blob_table",
    "place_features",
    "render_features",
    "render_mask",
]

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

    # Greedy, in order: the first candidate far enough from everything placed
    # so far wins. Placed features are hashed into cells as large as the
    # largest labelled reach, so a candidate is compared with its 3 x 3
    # neighbourhood only; the few big clutter blobs are checked one by one.
    labelled_r = [r for r, k in zip(radius, order, strict=True) if kinds[k].class_name is not None]
    max_labelled_r = max(labelled_r, default=1.0)
    cell = 2.0 * max_labelled_r + gap_nm
    cells: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
    big: list[tuple[float, float, float]] = []
    keep = np.zeros(n, dtype=bool)
    chosen = np.zeros(n, dtype=int)
    fx_l, fy_l, ok_l = fx.tolist(), fy.tolist(), ok.tolist()
    for i in range(n):
        r_i = float(radius[i])
        for j in range(attempts):
            if not ok_l[i][j]:
                continue
            x, y = fx_l[i][j], fy_l[i][j]
            gx, gy = math.floor(x / cell), math.floor(y / cell)
            free = True
            for cx_, cy_, cr in big:
                need = r_i + cr + gap_nm
                if (x - cx_) ** 2 + (y - cy_) ** 2 < need * need:
                    free = False
                    break
            if free:
                for ix in (gx - 1, gx, gx + 1):
                    for iy in (gy - 1, gy, gy + 1):
                        for cx_, cy_, cr in cells.get((ix, iy), ()):
                            need = r_i + cr + gap_nm
                            if (x - cx_) ** 2 + (y - cy_) ** 2 < need * need:
                                free = False
                                break
                        if not free:
                            break
                    if not free:
                        break
            if free:
                # Big clutter is checked one by one; everything no larger than a labelled feature is
                # hashed (small unlabelled kinds: faint dots of the realism, numerous).
                if r_i > max_labelled_r:
                    big.append((x, y, r_i))
                else:
                    cells.setdefault((gx, gy), []).append((x, y, r_i))
                keep[i] = True
                chosen[i] = j
                break
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


def blob_table(
    model: SurfaceModel, placed: Placed, *, height_scale: float = 1.0, size_scale: float = 1.0
) -> dict[str, np.ndarray]:
    """Every blob of every placed feature, as columns: centre (nm, sample coordinates), row angle,
    amplitudes, widths (nm), powers."""
    parts: list[dict[str, np.ndarray]] = []
    for k, kind in enumerate(model.kinds):
        sel = np.flatnonzero(placed.kind == k)
        if sel.size == 0 or not kind.blobs:
            continue
        th = placed.theta_rad[sel][:, None]
        mir = placed.mirror[sel][:, None]
        b = np.array([(x.du, x.dv, x.height, x.flatten, x.phase, x.sigma_u, x.sigma_v, x.power_u, x.power_v)
                      for x in kind.blobs], dtype=np.float64)
        du = b[None, :, 0] * mir * size_scale
        dv = np.broadcast_to(b[None, :, 1] * size_scale, du.shape)
        shape = du.shape
        parts.append({
            "x": (placed.x_nm[sel][:, None] - du * np.sin(th) + dv * np.cos(th)).ravel(),
            "y": (placed.y_nm[sel][:, None] + du * np.cos(th) + dv * np.sin(th)).ravel(),
            "theta": np.broadcast_to(th, shape).ravel(),
            "height": np.broadcast_to(b[None, :, 2] * height_scale, shape).ravel(),
            "flatten": np.broadcast_to(b[None, :, 3], shape).ravel(),
            "phase": np.broadcast_to(b[None, :, 4], shape).ravel(),
            "su": np.broadcast_to(b[None, :, 5] * size_scale, shape).ravel(),
            "sv": np.broadcast_to(b[None, :, 6] * size_scale, shape).ravel(),
            "pu": np.broadcast_to(b[None, :, 7], shape).ravel(),
            "pv": np.broadcast_to(b[None, :, 8], shape).ravel(),
        })
    if not parts:
        return {k: np.zeros(0) for k in _BLOB_FIELDS}
    return {k: np.concatenate([p[k] for p in parts]) for k in _BLOB_FIELDS}


def _patches(
    grid: SampleGrid, x: np.ndarray, y: np.ndarray, half: int, *, pad: int = 0
) -> tuple[np.ndarray, ...]:
    """Pixel indices of square patches ``(2 half + 1)^2`` around points, validity, sample offsets.

    Returns ``(flat_index, valid, dx, dy)``: ``(n, (2 half + 1)^2)`` arrays; the
    flat index is into the image padded by ``pad`` pixels on every side, and
    ``dx, dy`` are the sample positions of the patch pixels relative to their
    point (float32 nm). Rows and columns outside the grid are extrapolated
    linearly.
    """
    rows, cols = grid.shape
    col_f, row_f = grid.to_pixels(x, y)
    rc = np.rint(row_f).astype(np.int64)
    cc = np.rint(col_f).astype(np.int64)
    off = np.arange(-half, half + 1)
    pr = rc[:, None] + off[None, :]  # (n, k)
    pc = cc[:, None] + off[None, :]
    vr = (pr >= -pad) & (pr < rows + pad)
    vc = (pc >= -pad) & (pc < cols + pad)
    k = off.size
    # Separable: x = x_cols[c] + x_rows[r], y = y_rows[r] (extended linearly beyond the grid).
    r_idx = np.arange(rows, dtype=np.float64)
    c_idx = np.arange(cols, dtype=np.float64)
    xc = _extend(grid.x_cols, c_idx, pc)
    xr = _extend(grid.x_rows, r_idx, pr)
    yr = _extend(grid.y_rows, r_idx, pr)
    dx_c = (xc - x[:, None]).astype(np.float32)
    dy_r = (yr - y[:, None]).astype(np.float32)
    dx = (xr.astype(np.float32)[:, :, None] + dx_c[:, None, :]).reshape(x.size, k * k)
    dy = np.broadcast_to(dy_r[:, :, None], (x.size, k, k)).reshape(x.size, k * k)
    valid = (vr[:, :, None] & vc[:, None, :]).reshape(x.size, k * k)
    flat = ((pr + pad)[:, :, None] * (cols + 2 * pad) + (pc + pad)[:, None, :]).reshape(x.size, k * k)
    return flat, valid, dx, dy


def _extend(values: np.ndarray, index: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values`` (one per index) at integer positions ``at``, linearly extrapolated beyond the ends."""
    n = values.size
    inside = values[np.clip(at, 0, n - 1)]
    if n < 2:
        return inside
    lo = values[0] + (at - 0) * (values[1] - values[0])
    hi = values[-1] + (at - (n - 1)) * (values[-1] - values[-2])
    return np.where(at < 0, lo, np.where(at > n - 1, hi, inside))


def render_features(
    blobs: dict[str, np.ndarray],
    *,
    grid: SampleGrid,
    tip_sigma_rows: np.ndarray,
    nominal_sigma_nm: float,
    gain_rows: np.ndarray,
) -> dict[str, np.ndarray | None]:
    """Stamp the blobs of :func:`blob_table` onto ``grid``.

    Blob widths are apparent widths with the nominal tip; rows imaged with a
    blunter tip (``tip_sigma_rows``) see them wider and lower (same volume),
    and ``gain_rows`` scales their height.

    Returns
    -------
    dict
        ``"height"`` (nm added), ``"flatten"`` (fraction of lattice removed,
        0..1) and ``"phase"`` (weight of the phase-shifted lattice, 0..1),
        each ``(rows, cols)`` float32, or None where no blob contributes.
    """
    rows, cols = grid.shape
    flat: dict[str, np.ndarray | None] = {"height": None, "flatten": None, "phase": None}
    if blobs["x"].size == 0:
        return flat
    tip_extra = np.asarray(tip_sigma_rows, dtype=np.float64) ** 2 - nominal_sigma_nm**2
    blurred = bool(np.any(tip_extra != 0))
    extra2 = float(max(tip_extra.max(), 0.0))
    reach = np.maximum(blobs["su"] * np.where(blobs["pu"] == 2, 1.4, 3.0) / 3.0,
                       blobs["sv"] * np.where(blobs["pv"] == 2, 1.4, 3.0) / 3.0)
    # 3 sigma from the centre, which may sit half a pixel off the patch centre.
    halfs = np.ceil(3.0 * np.sqrt(reach**2 + extra2) / grid.pixel_nm + 0.5).astype(int)
    col_f, row_f = grid.to_pixels(blobs["x"], blobs["y"])
    seen = (col_f > -halfs - 1) & (col_f < cols + halfs) & (row_f > -halfs - 1) & (row_f < rows + halfs)
    if not seen.any():
        return flat
    # Accumulate on a padded canvas so that patches never need clipping.
    pad = 2 * int(halfs[seen].max()) + 2  # a seen blob centre lies within half + 1 px of the grid
    prow, pcol = rows + 2 * pad, cols + 2 * pad
    gain_p = np.pad(np.asarray(gain_rows, dtype=np.float32), pad, mode="edge")
    extra_p = np.pad(tip_extra.astype(np.float32), pad, mode="edge")
    any_gain = bool(np.any(gain_p != 1))
    pieces: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"height": [], "flatten": [], "phase": []}
    for half in np.unique(halfs[seen]):
        sel = np.flatnonzero((halfs == half) & seen)
        b = {k: v[sel] for k, v in blobs.items()}
        idx, valid, dx, dy = _patches(grid, b["x"], b["y"], int(half), pad=pad)
        c = np.cos(b["theta"]).astype(np.float32)[:, None]
        s = np.sin(b["theta"]).astype(np.float32)[:, None]
        u = c * dy - s * dx
        v = c * dx + s * dy
        su2 = (b["su"] ** 2).astype(np.float32)[:, None]
        sv2 = (b["sv"] ** 2).astype(np.float32)[:, None]
        scale = None
        if blurred or any_gain:
            prow_idx = idx // pcol
        if blurred:
            # A wider tip widens each blob and keeps its volume.
            d2 = extra_p[prow_idx]
            su2_t = np.maximum(su2 + d2, 0.2 * su2)
            sv2_t = np.maximum(sv2 + d2, 0.2 * sv2)
            scale = np.sqrt(su2 * sv2 / (su2_t * sv2_t)) * gain_p[prow_idx]
        else:
            su2_t, sv2_t = su2, sv2
            if any_gain:
                scale = gain_p[prow_idx]
        qu = u * u / su2_t
        qv = v * v / sv2_t
        if np.any(b["pu"] == 2):
            qu = np.where((b["pu"] == 2)[:, None], qu * qu, qu)
        if np.any(b["pv"] == 2):
            qv = np.where((b["pv"] == 2)[:, None], qv * qv, qv)
        g = np.exp(np.float32(-0.5) * (qu + qv))
        if not valid.all():
            g = np.where(valid, g, np.float32(0))
            idx = np.where(valid, idx, 0)
        for target in ("height", "flatten", "phase"):
            amp = b[target]
            nz = np.flatnonzero(amp)
            if nz.size == 0:
                continue
            every = nz.size == amp.size
            val = amp[nz].astype(np.float32)[:, None] * (g if every else g[nz])
            if target == "height" and scale is not None:
                # Flatten / phase windows describe the lattice, which the
                # lattice renderer blurs itself.
                val = val * (scale if every else np.broadcast_to(scale, g.shape)[nz])
            pieces[target].append(((idx if every else idx[nz]).ravel(), val.ravel()))
    # One bincount per map: summing per-group canvases would cost more than the stamping.
    out: dict[str, np.ndarray | None] = {}
    for target, parts in pieces.items():
        if not parts:
            out[target] = None
            continue
        acc = np.bincount(np.concatenate([i for i, _ in parts]), weights=np.concatenate([v for _, v in parts]),
                          minlength=prow * pcol)
        out[target] = np.ascontiguousarray(acc.reshape(prow, pcol)[pad:pad + rows, pad:pad + cols], dtype=np.float32)
    for target in ("flatten", "phase"):
        window = out[target]
        if window is not None:
            np.clip(window, 0.0, 1.0, out=window)
    return out


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
        idx, valid, dx, dy = _patches(grid, placed.x_nm[lab], placed.y_nm[lab], half)
        c, s = np.cos(placed.theta_rad[lab])[:, None], np.sin(placed.theta_rad[lab])[:, None]
        u = (-s * dx + c * dy) / fu[lab][:, None]
        v = (c * dx + s * dy) / fv[lab][:, None]
        inside = valid & (u * u + v * v <= 1.0)
        ids = np.broadcast_to(cls_id[lab][:, None], inside.shape)
        mask[idx[inside]] = ids[inside]
        # The pixel holding the centre always belongs to the feature, however
        # coarse the pixels.
        rc = np.rint(row_f[lab]).astype(int)
        cc = np.rint(col_f[lab]).astype(int)
        ok = (rc >= 0) & (rc < rows) & (cc >= 0) & (cc < cols)
        mask[(rc * cols + cc)[ok]] = cls_id[lab][ok]
    x_img[cls_id == 0] = np.nan
    y_img[cls_id == 0] = np.nan
    return mask.reshape(rows, cols), x_img, y_img
