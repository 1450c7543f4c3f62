"""The .npy / .npz reader: sizes from the caller, no pickles, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stm_live.errors import ScanReadError
from stm_live.io import read_scan


def test_npy_with_width_gives_square_pixels(tmp_path: Path) -> None:
    path = tmp_path / "img.npy"
    np.save(path, np.arange(12, dtype=">f8").reshape(3, 4))
    frame = read_scan(path, width_nm=8.0).frame()
    assert frame.data.dtype == np.float32 and frame.data.dtype.isnative and frame.data.flags.c_contiguous
    assert frame.width_nm == pytest.approx(8.0) and frame.height_nm == pytest.approx(6.0)
    assert frame.data[0, 1] == 1.0  # row 0 stays row 0: arrays are given in display order
    assert frame.unit == "a.u."


def test_npy_without_size_asks_for_it(tmp_path: Path) -> None:
    path = tmp_path / "img.npy"
    np.save(path, np.zeros((4, 4)))
    with pytest.raises(ScanReadError, match=r"img\.npy: physical size unknown.*--width-nm"):
        read_scan(path)


def test_npz_carries_its_own_size_and_channels(tmp_path: Path) -> None:
    path = tmp_path / "scan.npz"
    np.savez(path, Z=np.ones((2, 5), np.float32), Current=np.zeros((2, 5)), width_m=np.float64(5e-9),
             height_m=np.float64(2e-9), unit=np.str_("m"))
    scan = read_scan(path)
    assert scan.channels == ("Z", "Current")
    z = scan.frame("Z")
    assert z.width_nm == pytest.approx(5.0) and z.height_nm == pytest.approx(2.0) and z.unit == "m"


def test_trailing_nan_rows_are_not_yet_scanned(tmp_path: Path) -> None:
    data = np.ones((6, 3))
    data[4:] = np.nan
    path = tmp_path / "partial.npy"
    np.save(path, data)
    frame = read_scan(path, width_nm=1).frame()
    assert frame.rows_valid == 4 and not frame.complete


def test_pickled_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ScanReadError, match=r"evil\.npy: not a readable NumPy array file"):
        read_scan(path, width_nm=1)


@pytest.mark.parametrize(
    ("array", "pattern"),
    [
        (np.zeros((2, 3, 4)), r"no 2-D image"),
        (np.zeros((0, 4)), r"empty"),
        (np.array([["a", "b"]]), r"dtype <U1"),
        (np.zeros((2, 2), complex), r"dtype complex128"),
    ],
)
def test_wrong_shapes_and_dtypes(tmp_path: Path, array: np.ndarray, pattern: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ScanReadError, match=pattern):
        read_scan(path, width_nm=1)


def test_truncated_npy_and_garbage(tmp_path: Path) -> None:
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((64, 64)))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ScanReadError, match=r"cut\.npy"):
        read_scan(cut, width_nm=1)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ScanReadError, match=r"junk\.npz"):
        read_scan(junk, width_nm=1)


def test_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(ScanReadError, match=r"unsupported file type '\.tif'"):
        read_scan(tmp_path / "x.tif")


def test_real_si_array_reads(real_npy: Path) -> None:
    frame = read_scan(real_npy / "si001h_brockley_23_2_0.npy", width_nm=100).frame()
    assert (frame.rows, frame.cols) == (512, 512)
    assert frame.complete and np.isfinite(frame.data).all()
