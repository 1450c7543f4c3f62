"""The Nanonis .sxm reader and writer, against real files and by round trip."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stm_live.errors import ScanReadError, StmLiveError
from stm_live.frame import Frame
from stm_live.io import read_scan, read_sxm_header, sxm_bytes, write_sxm


def test_au_mica_header_and_orientation(au_mica_sxm: Path) -> None:
    scan = read_scan(au_mica_sxm)
    z = scan.frame("Z")
    assert (z.rows, z.cols) == (256, 256)
    assert z.width_nm == pytest.approx(4.0)
    assert z.height_nm == pytest.approx(4.0)
    assert scan.channels == ("Z", "Current")
    assert scan.directions("Z") == ("forward", "backward")
    assert z.scan_direction == "down"
    assert z.angle_deg == pytest.approx(135.1)
    assert z.bias_v == pytest.approx(-0.05)
    assert z.setpoint_a == pytest.approx(2.5e-11)
    assert z.time == "2023-04-29T01:22:24"
    assert z.rows_valid == 256 and z.complete
    for frame in scan.frames:
        assert frame.data.dtype == np.float32 and frame.data.dtype.isnative
        assert frame.data.flags.c_contiguous


def _raw_images(path: Path, n_images: int, rows: int, cols: int) -> np.ndarray:
    """Stored images straight from the bytes, independently of our parser."""
    blob = path.read_bytes()
    start = blob.index(b"\x1a\x04") + 2
    return np.frombuffer(blob, ">f4", offset=start).reshape(n_images, rows, cols)


def test_au_mica_pixels_match_file_order(au_mica_sxm: Path) -> None:
    scan = read_scan(au_mica_sxm)
    raw = _raw_images(au_mica_sxm, 4, 256, 256)
    current_fwd, current_bwd = scan.frame("Current"), scan.frame("Current", "backward")
    # Scan down: stored row 0 is the top; backward rows are stored right to left.
    np.testing.assert_array_equal(current_fwd.data, raw[2])
    np.testing.assert_array_equal(current_bwd.data, raw[3][:, ::-1])


def test_nc_afm_scan_up_is_flipped_to_display(nc_afm_sxm: Path) -> None:
    scan = read_scan(nc_afm_sxm)
    assert len(scan.channels) == 9
    assert "Frequency_Shift" in scan.channels
    df = scan.frame("frequency shift")  # loose channel matching
    assert df.channel == "Frequency_Shift" and df.unit == "Hz"
    assert (df.rows, df.cols) == (128, 128)
    assert df.width_nm == pytest.approx(2.0)
    assert df.scan_direction == "up"
    raw = _raw_images(nc_afm_sxm, 18, 128, 128)
    # Scan up: the first stored line is the bottom row of the displayed image.
    np.testing.assert_array_equal(df.data, raw[10][::-1])
    np.testing.assert_array_equal(scan.frame("Frequency_Shift", "backward").data, raw[11][::-1, ::-1])


def test_real_files_agree_with_nanonispy2(au_mica_sxm: Path, nc_afm_sxm: Path) -> None:
    nap = pytest.importorskip("nanonispy2")
    for path in (au_mica_sxm, nc_afm_sxm):
        theirs = nap.read.Scan(str(path))
        scan = read_scan(path)
        for frame in scan.frames:
            expected = theirs.signals[frame.channel][frame.direction]
            if frame.scan_direction == "up":
                expected = expected[::-1]
            if frame.direction == "backward":
                expected = expected[:, ::-1]
            np.testing.assert_array_equal(frame.data, expected.astype(np.float32))


def test_constant_channel_reads_without_warnings(au_mica_sxm: Path, nc_afm_sxm: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in (au_mica_sxm, nc_afm_sxm):
            z = read_scan(path).frame("Z")
            assert np.ptp(z.data) == 0.0  # feedback off: Z is constant in both files
            assert z.complete


def test_unknown_channel_names_the_file_and_the_choices(au_mica_sxm: Path) -> None:
    with pytest.raises(ScanReadError, match=r"Au_mica.*unknown channel 'Phase'.*Z, Current"):
        read_scan(au_mica_sxm).frame("Phase")


@pytest.mark.parametrize("tenth", range(10))
def test_truncated_real_file_raises_scan_read_error(tmp_path: Path, au_mica_sxm: Path, tenth: int) -> None:
    blob = au_mica_sxm.read_bytes()
    cut = tmp_path / f"cut{tenth}.sxm"
    cut.write_bytes(blob[: len(blob) * tenth // 10])
    with pytest.raises(ScanReadError) as info:
        read_scan(cut)
    assert str(cut) in str(info.value)
    if tenth >= 1:  # past the header: the message gives expected vs actual bytes
        assert "truncated" in str(info.value) and "expected" in str(info.value)


def test_truncated_by_one_byte_reports_counts(tmp_path: Path, au_mica_sxm: Path) -> None:
    blob = au_mica_sxm.read_bytes()
    cut = tmp_path / "short.sxm"
    cut.write_bytes(blob[:-1])
    with pytest.raises(ScanReadError, match=r"promises 1048576 data bytes.*found 1048575"):
        read_scan(cut)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b":SCAN_PIXELS:", b":SCAN_PIXELX:", "SCAN_PIXELS: is missing"),
        (b"       256       256", b"       256       abc", "SCAN_PIXELS: is malformed"),
        (b"       256       256", b"         0       256", "impossible dimensions"),
        (b"       256       256", b"    999999       256", "impossible dimensions"),
        (b"       256       256", b"       128       256", "does not match its header"),
        (b"       256       256", b"       512       256", "truncated"),
        (b"4.000000E-9           4.000000E-9", b"4.000000E-9          -4.000000E-9", "SCAN_RANGE: is impossible"),
        (b"FLOAT            MSBFIRST", b"INT32            MSBFIRST", "SCANIT_TYPE"),
        (b":DATA_INFO:", b":DATA_INFX:", "DATA_INFO: is missing"),
        (b"Z\tm\tboth", b"Z\tm\tsideways", "DATA_INFO: row 1 is malformed"),
        (b":SCANIT_END:", b":SCANIT_EN?:", "no :SCANIT_END:"),
        (b"\n\n\n\x1a\x04", b"\n\n\n\x1a\x05", "no \\\\x1a\\\\x04 data marker"),
        (b":NANONIS_VERSION:", b"PK\x03\x04NONIS_VERSION", "not a Nanonis .sxm file"),
        (b":SCAN_DIR:\ndown", b":SCAN_DIR:\nleft", "SCAN_DIR"),
    ],
)
def test_corrupt_header_raises_scan_read_error(
    tmp_path: Path, au_mica_sxm: Path, old: bytes, new: bytes, message: str
) -> None:
    blob = au_mica_sxm.read_bytes()
    assert old in blob
    bad = tmp_path / "corrupt.sxm"
    bad.write_bytes(blob.replace(old, new, 1))
    with pytest.raises(ScanReadError, match=message) as info:
        read_scan(bad)
    assert str(bad) in str(info.value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), cut=st.floats(0.0, 1.0))
def test_random_truncation_and_byte_flips_only_raise_scan_read_error(
    tmp_path: Path, au_mica_sxm: Path, seed: int, cut: float
) -> None:
    blob = bytearray(au_mica_sxm.read_bytes()[:8000])
    rng = np.random.default_rng(seed)
    for pos in rng.integers(0, 7483, size=5):  # flip bytes inside the header
        blob[pos] = int(rng.integers(0, 256))
    bad = tmp_path / "fuzz.sxm"
    bad.write_bytes(bytes(blob[: int(len(blob) * cut)]))
    with pytest.raises(ScanReadError):
        read_scan(bad)


def test_empty_and_missing_and_non_scan_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sxm"
    empty.write_bytes(b"")
    with pytest.raises(ScanReadError, match="empty"):
        read_scan(empty)
    with pytest.raises(ScanReadError, match="cannot read"):
        read_scan(tmp_path / "missing.sxm")
    text = tmp_path / "notes.sxm"
    text.write_text("just some notes\n")
    with pytest.raises(ScanReadError, match="not a Nanonis"):
        read_scan(text)
    folder = tmp_path / "dir.sxm"
    folder.mkdir()
    with pytest.raises(ScanReadError, match="cannot read"):
        read_scan(folder)


def test_scan_read_error_is_also_a_value_error() -> None:
    err = ScanReadError("x.sxm", "broken")
    assert isinstance(err, StmLiveError) and isinstance(err, ValueError)
    assert str(err) == "x.sxm: broken"


# ---------------------------------------------------------------- round trip

@st.composite
def scans(draw: st.DrawFn) -> list[Frame]:
    rows = draw(st.integers(1, 24))
    cols = draw(st.integers(1, 24))
    width_m = draw(st.floats(1e-10, 1e-5))
    height_m = draw(st.floats(1e-10, 1e-5))
    scan_direction = draw(st.sampled_from(["down", "up"]))
    names = draw(st.lists(st.sampled_from(["Z", "Current", "Frequency_Shift", "LIX_1_omega"]),
                          min_size=1, max_size=3, unique=True))
    rows_valid = draw(st.integers(0, rows))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bias_v = float(rng.normal())  # one bias per scan: it is a header field
    frames = []
    for name in names:
        for direction in draw(st.sampled_from([("forward",), ("backward",), ("forward", "backward")])):
            data = rng.normal(0, 1e-9, size=(rows, cols)).astype(np.float32)
            # Unscanned rows are NaN: the last ones in scan order.
            missing = rows - rows_valid
            if missing:
                if scan_direction == "down":
                    data[rows - missing:] = np.nan
                else:
                    data[:missing] = np.nan
            frames.append(Frame(data, width_m, height_m, channel=name, unit="m", direction=direction,
                                scan_direction=scan_direction, bias_v=bias_v,
                                setpoint_a=1e-10, offset_m=(1e-8, -2e-8), angle_deg=12.5,
                                time="2026-11-25T10:20:30"))
    return frames


def _assert_same_frames(ours: tuple[Frame, ...], written: list[Frame]) -> None:
    assert len(ours) == len(written)
    by_key = {(f.channel, f.direction): f for f in ours}
    for f in written:
        back = by_key[(f.channel, f.direction)]
        np.testing.assert_array_equal(back.data, f.data)  # NaN == NaN here, everything else exact
        assert back.data.dtype == np.float32 and back.data.dtype.isnative and back.data.flags.c_contiguous
        for attr in ("width_m", "height_m", "scan_direction", "bias_v", "setpoint_a", "offset_m",
                     "angle_deg", "time", "unit"):
            assert getattr(back, attr) == getattr(f, attr), attr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=scans(), big_endian=st.booleans())
def test_write_read_round_trip(tmp_path: Path, frames: list[Frame], big_endian: bool) -> None:
    path = write_sxm(tmp_path / "rt.sxm", frames, big_endian=big_endian)
    header = read_sxm_header(path)
    assert header.expected_size == path.stat().st_size
    scan = read_scan(path)
    _assert_same_frames(scan.frames, frames)
    nan_rows = np.isnan(frames[0].data).all(axis=1)
    assert scan.frames[0].rows_valid == frames[0].rows - int(nan_rows.sum())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=scans())
def test_round_trip_through_nanonispy2(tmp_path: Path, frames: list[Frame]) -> None:
    nap = pytest.importorskip("nanonispy2")
    # nanonispy2 only reads files in which every channel has both directions.
    full = []
    for f in frames:
        full.append(f)
        other = "backward" if f.direction == "forward" else "forward"
        if not any(g.channel == f.channel and g.direction == other for g in frames):
            full.append(Frame(f.data[::-1].copy(), f.width_m, f.height_m, channel=f.channel, unit=f.unit,
                              direction=other, scan_direction=f.scan_direction))
    path = write_sxm(tmp_path / "rt.sxm", full)
    theirs = nap.read.Scan(str(path))
    for f in full:
        stored = theirs.signals[f.channel][f.direction]
        if f.scan_direction == "up":
            stored = stored[::-1]
        if f.direction == "backward":
            stored = stored[:, ::-1]
        np.testing.assert_array_equal(stored.astype(np.float32), f.data)


def test_writer_refuses_mismatched_frames() -> None:
    a = Frame(np.zeros((4, 4)), 1e-9, 1e-9)
    b = Frame(np.zeros((4, 5)), 1e-9, 1e-9, channel="Current")
    with pytest.raises(ValueError, match="share shape"):
        sxm_bytes([a, b])
    with pytest.raises(ValueError, match="two forward frames"):
        sxm_bytes([a, a])
