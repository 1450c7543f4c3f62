"""Periodic surface lattices rendered analytically, as a short Fourier series.

A reconstructed surface is a rectangular unit cell, repeated, whose apparent
height is a sum of elliptical Gaussians (atoms, dimer bonds, rows). The
Fourier coefficients of such a cell are known in closed form, so the lattice is

    h(r) = sum_G c_G exp(i G . r)

with a few dozen reciprocal vectors ``G``. Three things follow that make the
simulator both fast and honest:

* The tip's finite resolution is a Gaussian blur, i.e. a factor
  ``exp(-|G|^2 sigma_tip^2 / 2)`` per term; a tip change part-way through a
  frame is a different factor for the rows after it.
* A pixel is a sample at a point along the slow axis but an average along the
  fast axis (the tip moves while the controller integrates), a factor
  ``sinc`` per term; what is left aliases exactly as a real scan would.
* ``exp(i G . r)`` is separable in the scan's row and column, so the whole
  image is one real matrix product ``(rows x 2n) @ (2n x cols)``; any lateral
  distortion that depends only on the row (drift, creep) or only on the column
  (hysteresis) costs nothing extra.

Coordinates: ``u`` runs across the rows, ``v`` along them, both in nm. The
row direction makes the angle ``theta`` with the image x axis (x right, y
down, so a positive angle turns clockwise on screen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Atom", "Cell", "LatticeTerms", "lattice_terms", "render_lattice", "row_frame_axes"]


@dataclass(frozen=True)
class Atom:
    """One Gaussian of apparent height in the unit cell.

    Parameters
    ----------
    u, v : float
        Centre across / along the rows, nm, in cell coordinates.
    height : float
        Peak apparent height, nm (negative for a depression).
    sigma_u, sigma_v : float
        Gaussian widths across / along the rows, nm.
    """

    u: float
    v: float
    height: float
    sigma_u: float
    sigma_v: float


@dataclass(frozen=True)
class Cell:
    """A rectangular surface unit cell, ``size_u`` nm across the rows and ``size_v`` along them."""

    size_u: float
    size_v: float
    atoms: tuple[Atom, ...]


@dataclass(frozen=True)
class LatticeTerms:
    """The non-zero Fourier terms of a cell, one half-plane of ``G`` (the function is real).

    ``g_u``, ``g_v`` are in rad/nm in the row frame; ``coef`` is complex, nm,
    already doubled so that ``h = Re(sum coef * exp(i G.r))``.
    """

    g_u: np.ndarray
    g_v: np.ndarray
    coef: np.ndarray


def row_frame_axes(theta_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors ``(e_u, e_v)`` in image coordinates (x right, y down) for rows at ``theta_rad``."""
    c, s = math.cos(theta_rad), math.sin(theta_rad)
    return np.array([-s, c]), np.array([c, s])


def lattice_terms(
    cell: Cell,
    *,
    corrugation_nm: float,
    min_tip_sigma_nm: float = 0.0,
    max_order: int = 8,
    rel_cutoff: float = 2e-3,
) -> LatticeTerms:
    """Fourier terms of ``cell``, scaled so that its strongest term has amplitude ``corrugation_nm``.

    Parameters
    ----------
    cell : Cell
        The unit cell.
    corrugation_nm : float
        Amplitude (half peak-to-peak of that sinusoid) of the strongest term,
        before any tip blur, nm.
    max_order : int
        Largest harmonic index kept along each axis.
    min_tip_sigma_nm : float
        The sharpest tip the terms will be rendered with, nm: terms that even
        this tip blurs below ``rel_cutoff`` are dropped.
    rel_cutoff : float
        Terms weaker than this fraction of the strongest are dropped.

    Returns
    -------
    LatticeTerms

    Examples
    --------
    >>> cell = Cell(1.0, 1.0, (Atom(0.0, 0.0, 1.0, 0.3, 5.0),))
    >>> t = lattice_terms(cell, corrugation_nm=0.05)
    >>> round(float(np.abs(t.coef).max()), 6)
    0.05
    """
    m = np.arange(0, max_order + 1)
    n = np.arange(-max_order, max_order + 1)
    mm, nn = np.meshgrid(m, n, indexing="ij")
    # One half-plane: m > 0, or m == 0 and n > 0.
    keep = (mm > 0) | ((mm == 0) & (nn > 0))
    g_u = 2 * np.pi * mm[keep] / cell.size_u
    g_v = 2 * np.pi * nn[keep] / cell.size_v
    coef = np.zeros(g_u.shape, dtype=np.complex128)
    for atom in cell.atoms:
        weight = atom.height * 2 * np.pi * atom.sigma_u * atom.sigma_v / (cell.size_u * cell.size_v)
        coef += (
            weight
            * np.exp(-0.5 * ((g_u * atom.sigma_u) ** 2 + (g_v * atom.sigma_v) ** 2))
            * np.exp(-1j * (g_u * atom.u + g_v * atom.v))
        )
    coef *= 2.0  # c_G + c_-G = 2 Re(c_G e^{iGr})
    strongest = np.abs(coef).max()
    if strongest == 0:
        raise ValueError("the unit cell has no corrugation (all atoms cancel)")
    seen = np.abs(coef) * np.exp(-0.5 * (g_u**2 + g_v**2) * min_tip_sigma_nm**2)
    keep = seen >= rel_cutoff * seen.max()
    coef = coef[keep] * (corrugation_nm / strongest)
    return LatticeTerms(g_u[keep], g_v[keep], coef)


def render_lattice(
    terms: LatticeTerms,
    *,
    theta_rad: float,
    origin_nm: tuple[float, float],
    x_cols: np.ndarray,
    x_rows: np.ndarray,
    y_rows: np.ndarray,
    tip_sigma_rows: np.ndarray,
    gain_rows: np.ndarray,
    pixel_nm: float,
) -> np.ndarray:
    """Evaluate the lattice at sample positions ``(x_cols[c] + x_rows[r], y_rows[r])``.

    Parameters
    ----------
    terms : LatticeTerms
        From :func:`lattice_terms`.
    theta_rad : float
        Angle of the row direction from the image x axis, rad.
    origin_nm : tuple of float
        Image position ``(x, y)`` of a cell origin (a row centre on a dimer), nm.
    x_cols : numpy.ndarray
        ``(cols,)`` sample x of each column, nm.
    x_rows, y_rows : numpy.ndarray
        ``(rows,)`` extra x and the y of each row, nm (drift and creep live here).
    tip_sigma_rows, gain_rows : numpy.ndarray
        ``(rows,)`` tip blur width (nm) and contrast gain of each row.
    pixel_nm : float
        Fast-axis pixel length over which the signal is averaged, nm.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` float32 apparent height, nm, zero mean over a cell.
    """
    e_u, e_v = row_frame_axes(theta_rad)
    gx = terms.g_u * e_u[0] + terms.g_v * e_v[0]
    gy = terms.g_u * e_u[1] + terms.g_v * e_v[1]
    g2 = terms.g_u**2 + terms.g_v**2
    coef = terms.coef * np.exp(-1j * (gx * origin_nm[0] + gy * origin_nm[1]))
    coef = coef * np.sinc(gx * pixel_nm / (2 * np.pi))
    row_phase = np.outer(x_rows, gx) + np.outer(y_rows, gy)
    blur = np.exp(-0.5 * np.outer(np.asarray(tip_sigma_rows) ** 2, g2)) * np.asarray(gain_rows)[:, None]
    a = blur * coef[None, :] * np.exp(1j * row_phase)
    col_phase = np.outer(x_cols, gx)
    left = np.concatenate([a.real, -a.imag], axis=1).astype(np.float32)
    right = np.ascontiguousarray(np.concatenate([np.cos(col_phase), np.sin(col_phase)], axis=1).T, dtype=np.float32)
    return _small_matmul(left, right)


def _small_matmul(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ right`` in row blocks small enough that BLAS stays on one thread.

    A multithreaded BLAS wakes its threads for a product this size and then
    lets them spin, which on a busy two-core machine costs ten times the
    arithmetic; blocks below OpenBLAS's threading threshold (m n k < 2^18)
    avoid that and give the same numbers.
    """
    out = np.empty((left.shape[0], right.shape[1]), dtype=np.float32)
    step = max(1, (1 << 18) // max(1, right.shape[0] * right.shape[1]) - 1)
    for r0 in range(0, left.shape[0], step):
        np.matmul(left[r0:r0 + step], right, out=out[r0:r0 + step])
    return out
