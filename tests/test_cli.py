"""The command line as a function, and the promise that it never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stm_live.cli import main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "config" in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: stm-live" in capsys.readouterr().out


def test_info_json_on_real_stm_file(capsys: pytest.CaptureFixture[str], au_mica_sxm: Path) -> None:
    assert main(["info", str(au_mica_sxm), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["cols"], info["rows"]) == (256, 256)
    assert info["width_nm"] == pytest.approx(4.0) and info["height_nm"] == pytest.approx(4.0)
    assert [c["name"] for c in info["channels"]] == ["Z", "Current"]
    assert info["scan_direction"] == "down"
    assert info["angle_deg"] == pytest.approx(135.1)
    assert info["bias_v"] == pytest.approx(-0.05) and info["setpoint_a"] == pytest.approx(2.5e-11)
    assert info["rows_valid"] == 256
    assert info["acquired"] == "2023-04-29T01:22:24" and info["acquisition_time_s"] == pytest.approx(92.0)


def test_info_human_output_on_afm_file(capsys: pytest.CaptureFixture[str], nc_afm_sxm: Path) -> None:
    assert main(["info", str(nc_afm_sxm)]) == 0
    out = capsys.readouterr().out
    assert "128 x 128" in out and "scan direction: up" in out and "Frequency_Shift [Hz]" in out


def test_info_reports_bad_file_in_one_line_and_goes_on(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, au_mica_sxm: Path
) -> None:
    bad = tmp_path / "bad.sxm"
    bad.write_bytes(au_mica_sxm.read_bytes()[:5000])
    assert main(["info", "--json", str(bad), str(au_mica_sxm)]) == 2
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1  # the good file still reported
    assert captured.err.count("\n") == 1 and "bad.sxm" in captured.err and "Traceback" not in captured.err


def test_info_on_array_needs_size(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((8, 16)))
    assert main(["info", str(path), "--json", "--width-nm", "20"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["height_nm"] == pytest.approx(10.0)


def test_info_never_imports_torch(au_mica_sxm: Path) -> None:
    code = (
        "import sys; from stm_live.cli import main; "
        f"rc = main(['info', {str(au_mica_sxm)!r}]); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'; "
        "import stm_live.io, stm_live.config; assert 'torch' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
