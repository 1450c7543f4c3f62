"""``stm-live level``: files in, levelled .npy / .png out, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stm_live.cli import main
from stm_live.io import read_scan
from stm_live.level import level_frame, level_stream


def _raw(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:56]
    z = 1e-10 * (0.05 * x + 0.02 * y + rng.normal(0, 1, (40, 1)) + rng.normal(0, 0.01, (40, 56)))
    path = tmp_path / "raw.npy"
    np.save(path, z)
    return path


def _data(path: Path) -> np.ndarray:
    """What the CLI levels: the file as stm-live reads it (float32)."""
    return read_scan(path, width_nm=20.0).frame().data


def test_frame_mode_writes_npy_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _raw(tmp_path)
    out_npy, out_png = tmp_path / "lev.npy", tmp_path / "lev.png"
    assert main(["level", str(src), "--width-nm", "20", "--out", str(out_npy), "--out", str(out_png)]) == 0
    levelled = np.load(out_npy)
    assert levelled.dtype == np.float32 and levelled.shape == (40, 56)
    assert np.array_equal(levelled, level_frame(_data(src)))
    with Image.open(out_png) as png:
        assert png.size == (56, 40) and png.mode == "RGB"
    assert capsys.readouterr().out.splitlines() == [f"wrote {out_npy}", f"wrote {out_png}"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_stream_mode_feeds_rows_in_scan_order(tmp_path: Path, nc_afm_sxm: Path) -> None:
    out = tmp_path / "stream.npy"
    args = ["level", str(nc_afm_sxm), "--channel", "frequency shift", "--mode", "stream", "--out", str(out)]
    assert main(args) == 0
    frame = read_scan(nc_afm_sxm).frame("Frequency_Shift", "forward")
    assert frame.scan_direction == "up"
    assert np.array_equal(np.load(out), level_stream(frame.data, scan_direction="up"))


def test_method_from_config_file_and_flag(tmp_path: Path) -> None:
    src = _raw(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("level:\n  frame_method: plane\n")
    out = tmp_path / "a.npy"
    assert main(["level", str(src), "--width-nm", "20", "--config", str(cfg), "--out", str(out)]) == 0
    assert np.array_equal(np.load(out), level_frame(_data(src), method="plane"))
    args = ["level", str(src), "--width-nm", "20", "--config", str(cfg), "--method", "poly", "--out", str(out)]
    assert main(args) == 0
    assert np.array_equal(np.load(out), level_frame(_data(src), method="poly"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "x.tif"], "x.tif: unsupported output type '.tif'; expected .npy or .png"),
        (["--out", "no/such/dir/x.npy"], "folder 'no/such/dir' does not exist"),
        (["--out", "x.npy", "--channel", "Current"], "unknown channel 'Current'"),
    ],
)
def test_user_mistakes_end_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, extra: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    src = _raw(tmp_path)
    assert main(["level", str(src), "--width-nm", "20", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_array_without_size_says_which_flag_to_give(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _raw(tmp_path)
    assert main(["level", str(src), "--out", str(tmp_path / "x.npy")]) == 2
    assert "give the width in nm (--width-nm)" in capsys.readouterr().err
