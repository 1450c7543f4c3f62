"""Raw images as NumPy ``.npy`` / ``.npz`` files.

A bare array carries no physical size, so the caller supplies it
(``--width-nm`` / ``--height-nm``); an ``.npz`` may carry its own as 0-d
entries ``width_m``, ``height_m`` (and ``unit``), which is what stm-live
writes. Arrays are loaded with ``allow_pickle=False``: a file can never make
us run code.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ScanReadError
from ..frame import Frame
from ..limits import length_problem, size_problem

__all__ = ["read_array"]

_SIZE_KEYS = ("width_m", "height_m", "unit")


def _image(path: Path, name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind not in "fiu":
        raise ScanReadError(path, f"array {name!r} has dtype {arr.dtype}; expected a real numeric image")
    if arr.ndim != 2:
        raise ScanReadError(path, f"array {name!r} has shape {arr.shape}; expected a 2-D image (rows, cols)")
    if 0 in arr.shape:
        raise ScanReadError(path, f"array {name!r} is empty: shape {arr.shape}")
    return arr


def _size_m(
    path: Path,
    shape: tuple[int, int],
    width_nm: float | None,
    height_nm: float | None,
    stored: dict[str, float],
) -> tuple[float, float]:
    rows, cols = shape
    given = {"width": width_nm, "height": height_nm}
    sizes: dict[str, float] = {}
    for label, pixels in (("width", cols), ("height", rows)):
        nm = given[label]
        value = nm * 1e-9 if nm is not None else stored.get(f"{label}_m")
        if value is None:
            continue
        # Each value on its own: the square-pixel rule below must not carry an absurd one over.
        problem = length_problem(label, value, pixels)
        if problem is not None:
            where = f"the given {label} {nm!r} nm" if nm is not None else f"the stored {label}_m {value!r}"
            raise ScanReadError(path, f"impossible physical size: {where}: {problem}")
        sizes[label] = float(value)
    if not sizes:
        raise ScanReadError(
            path, "physical size unknown: a bare array stores none; give the width in nm (--width-nm)"
        )
    # Square pixels unless told otherwise.
    width_m = sizes["width"] if "width" in sizes else sizes["height"] * cols / rows
    height_m = sizes["height"] if "height" in sizes else width_m * rows / cols
    problem = size_problem(width_m, height_m, rows=rows, cols=cols)
    if problem is not None:
        raise ScanReadError(path, f"impossible physical size {width_m:g} x {height_m:g} m for {cols} x {rows} px: "
                                  f"{problem}")
    return width_m, height_m


def read_array(
    path: str | os.PathLike[str],
    *,
    width_nm: float | None = None,
    height_nm: float | None = None,
    unit: str | None = None,
    data: bytes | None = None,
) -> tuple[Frame, ...]:
    """Read an ``.npy`` image, or every 2-D image of an ``.npz``, as frames.

    Parameters
    ----------
    path : str or path-like
        ``.npy`` holding one 2-D array, or ``.npz`` whose 2-D arrays are
        channels (named by their keys).
    width_nm, height_nm : float, optional
        Physical size in nm. One is enough (square pixels are assumed for the
        other). Required for ``.npy``; for ``.npz`` they override stored
        ``width_m`` / ``height_m``.
    unit : str, optional
        Unit of the values; default the ``.npz``'s ``unit`` entry, else ``"a.u."``.
    data : bytes, optional
        The file's bytes, already read; ``path`` then only names it.

    Returns
    -------
    tuple of Frame
        Data as given (row 0 at the top), native float32, forward direction.
        Rows that are entirely NaN at the end count as not yet scanned.

    Raises
    ------
    ScanReadError
        Unreadable, pickled, non-numeric, non-2-D or empty arrays, or no size.
    """
    p = Path(path)
    arrays: dict[str, np.ndarray] = {}
    stored: dict[str, float] = {}
    stored_unit: str | None = None
    try:
        loaded = np.load(io.BytesIO(data) if data is not None else p, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                for key in loaded.files:
                    value = loaded[key]
                    if key in _SIZE_KEYS and value.ndim == 0:
                        if key == "unit":
                            stored_unit = str(value)
                        else:
                            stored[key] = float(value)
                    else:
                        arrays[key] = value
        else:
            arrays[p.stem] = loaded
    except FileNotFoundError as exc:
        raise ScanReadError(p, "file not found") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # numpy raises ValueError for pickled/object arrays and bad headers,
        # EOFError/OSError for truncated data.
        raise ScanReadError(p, f"not a readable NumPy array file: {exc}") from exc
    images = {k: v for k, v in arrays.items() if v.ndim == 2}
    if not images:
        shapes = {k: v.shape for k, v in arrays.items()}
        raise ScanReadError(p, f"no 2-D image in the file (arrays and shapes: {shapes or 'none'})")
    frames = []
    for name, arr in images.items():
        arr = _image(p, name, arr)
        width_m, height_m = _size_m(p, arr.shape, width_nm, height_nm, stored)
        image = np.ascontiguousarray(arr, dtype=np.float32)
        finite_rows = np.flatnonzero(np.isfinite(image).any(axis=1))
        frames.append(
            Frame(
                data=image,
                width_m=width_m,
                height_m=height_m,
                channel=name if p.suffix == ".npz" else "Z",
                unit=unit or stored_unit or "a.u.",
                rows_valid=int(finite_rows[-1]) + 1 if finite_rows.size else 0,
                source=str(p),
            )
        )
    return tuple(frames)
