"""Physical sizes at the file door: absurd widths, heights and pitches are refused with the reason (issue 18, fault 3).

A width of 5e-324 m passed the old ``0 < width < 1 cm`` check and raised
OverflowError deep in the resampling; these limits (``stm_live.limits``) are
the ones the wire will use too.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from stm_live.errors import ScanReadError
from stm_live.frame import Frame
from stm_live.io import read_scan, sxm_bytes
from stm_live.limits import MAX_LENGTH_M, MAX_PITCH_M, MIN_LENGTH_M, MIN_PITCH_M, length_problem, size_problem


def _sxm_with_range(tmp_path: Path, width: str, height: str, *, pixels: int = 16) -> Path:
    blob = sxm_bytes([Frame(np.zeros((pixels, pixels), np.float32), width_m=5e-9, height_m=5e-9)])
    start = blob.index(b":SCAN_RANGE:\n") + len(b":SCAN_RANGE:\n")
    end = blob.index(b"\n", start)
    path = tmp_path / "scan.sxm"
    path.write_bytes(blob[:start] + f"{width} {height}".encode() + blob[end:])
    return path


@pytest.mark.parametrize(
    ("width", "height", "pixels", "reason"),
    [
        ("5E-324", "5E-9", 16, "width 5e-324 m is outside 1e-11..0.01 m"),
        ("1E+30", "5E-9", 16, "width 1e+30 m is outside 1e-11..0.01 m"),
        ("5E-9", "1E-12", 16, "height 1e-12 m is outside 1e-11..0.01 m"),
        ("1E-11", "1E-11", 512, "pixel pitch 1.95312e-14 m (width 1e-11 m / 512 px) is outside 1e-13..0.0001 m"),
        ("5E-3", "5E-3", 4, "pixel pitch 0.00125 m (width 0.005 m / 4 px) is outside 1e-13..0.0001 m"),
        ("-4E-9", "4E-9", 16, "width -4e-09 m is outside"),
        ("NaN", "4E-9", 16, "expected 2 finite numbers"),
        ("inf", "4E-9", 16, "expected 2 finite numbers"),
    ],
)
def test_sxm_with_an_absurd_scan_range_is_refused_with_the_reason(
    tmp_path: Path, width: str, height: str, pixels: int, reason: str,
) -> None:
    path = _sxm_with_range(tmp_path, width, height, pixels=pixels)
    with pytest.raises(ScanReadError, match=re.escape(reason)) as info:
        read_scan(path)
    assert str(info.value).startswith(f"{path}: header field :SCAN_RANGE: is")


def test_sxm_survey_frames_and_small_scans_are_accepted(tmp_path: Path) -> None:
    # A 1 um, 64 px survey (16 nm pixels) is legitimate: whether the model can use it is not the door's call.
    frame = read_scan(_sxm_with_range(tmp_path, "1E-6", "1E-6", pixels=64)).frame()
    assert frame.width_nm == pytest.approx(1000.0)
    frame = read_scan(_sxm_with_range(tmp_path, "1E-9", "1E-9", pixels=16)).frame()
    assert frame.width_nm == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("width_nm", "reason"),
    [
        (5e-324, "the given width 5e-324 nm: width 0.0 m is outside 1e-11..0.01 m"),
        (5e-315, "the given width 5e-315 nm: width 5e-324 m is outside"),
        (1e30, "the given width 1e+30 nm: width 1e+21 m is outside"),
        (float("nan"), "the given width nan nm: width nan m is outside"),
        (float("inf"), "the given width inf nm: width inf m is outside"),
        (1e-2, "the given width 0.01 nm: pixel pitch 1.95313e-14 m (width 1e-11 m / 512 px)"),  # 0.01 nm, 512 px
    ],
)
def test_npy_with_an_absurd_given_width_is_refused(tmp_path: Path, width_nm: float, reason: str) -> None:
    path = tmp_path / "img.npy"
    np.save(path, np.zeros((512, 512), np.float32))
    with pytest.raises(ScanReadError, match=re.escape(f"{path}: impossible physical size: {reason}")):
        read_scan(path, width_nm=width_nm)


@pytest.mark.parametrize(("key", "value"), [("width_m", 5e-324), ("height_m", 1e30), ("width_m", float("nan"))])
def test_npz_with_an_absurd_stored_size_is_refused(tmp_path: Path, key: str, value: float) -> None:
    path = tmp_path / "scan.npz"
    sizes = {"width_m": 5e-9, "height_m": 5e-9, key: value}
    np.savez(path, Z=np.zeros((8, 8), np.float32), **{k: np.float64(v) for k, v in sizes.items()})
    with pytest.raises(ScanReadError, match=re.escape(f"impossible physical size: the stored {key} {value!r}")):
        read_scan(path)


def test_a_square_pixel_height_derived_from_a_sane_width_is_checked_too(tmp_path: Path) -> None:
    # 1 row x 4096 columns, 5 nm wide: the derived height (1.2 pm) is below the smallest length.
    path = tmp_path / "line.npy"
    np.save(path, np.zeros((1, 4096), np.float32))
    with pytest.raises(ScanReadError, match=r"impossible physical size 5e-09 x 1\.2207e-12 m for 4096 x 1 px: "
                                            r"height 1\.2207\d*e-12 m is outside"):
        read_scan(path, width_nm=5)


def test_the_limits_are_ordered_and_every_real_scan_fits() -> None:
    assert 0 < MIN_PITCH_M < MIN_LENGTH_M < MAX_PITCH_M < MAX_LENGTH_M
    assert size_problem(4e-9, 4e-9, rows=256, cols=256) is None  # the real Au(111) file: 15.6 pm pixels
    assert size_problem(1e-6, 1e-6, rows=64, cols=64) is None
    assert length_problem("width", "5 nm", 8) == "width '5 nm' is not a number of metres"  # type: ignore[arg-type]
    assert length_problem("width", np.float32(5e-9), 8) is None  # type: ignore[arg-type]
    assert size_problem(MAX_PITCH_M * 2, 1e-9, rows=1, cols=1) is not None
