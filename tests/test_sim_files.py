"""Simulated scans on disk: .sxm + sidecars, `stm-live simulate`, and the paced folder writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stm_live.cli import main
from stm_live.errors import ScanReadError
from stm_live.io import read_scan
from stm_live.sim import Artefacts, simulate_scan
from stm_live.sim.paced import PacedFile, write_paced
from stm_live.sim.truth import read_truth, scan_file_bytes, write_simulated


def _small(seed: int = 3, **kw: object):
    return simulate_scan("si001-ash3", size_nm=12.0, pixels=64, seed=seed, **kw)  # type: ignore[arg-type]


def test_written_scan_reads_back_bit_for_bit_with_its_truth(tmp_path: Path) -> None:
    scan = _small()
    sxm, truth_json, mask_npy = write_simulated(scan, tmp_path / "out", "frame_0001")
    assert (sxm.name, truth_json.name, mask_npy.name) == ("frame_0001.sxm", "frame_0001.truth.json",
                                                         "frame_0001.mask.npy")
    back = read_scan(sxm)
    assert back.channels == ("Z", "Current")
    for f in scan.frames:
        g = back.frame(f.channel, f.direction)
        assert np.array_equal(g.data, f.data)
        assert (g.width_m, g.bias_v, g.setpoint_a) == pytest.approx((f.width_m, f.bias_v, f.setpoint_a))
    truth = read_truth(sxm)
    assert truth.instances == scan.instances and [i.kind for i in truth.instances] == [i.kind for i in scan.instances]
    assert np.array_equal(truth.mask, scan.mask) and truth.mask.dtype == np.uint8
    assert truth.classes == scan.classes and truth.artefacts == scan.artefacts == Artefacts.realistic()
    assert (truth.surface, truth.seed, truth.size_nm, truth.pixels, truth.bias_v) == ("si001-ash3", 3, 12.0, 64, -2.0)
    assert truth.scan_path == sxm
    doc = json.loads(truth_json.read_text())
    assert {"class", "x_nm", "y_nm"} <= set(doc["instances"][0])
    assert doc["params"]["steps"] == scan.params["steps"] and "row_angle_deg" in doc["params"]
    # The truth reproduces the scan.
    again = simulate_scan(truth.surface, size_nm=truth.size_nm, pixels=truth.pixels, seed=truth.seed,
                          artefacts=truth.artefacts, bias_v=truth.bias_v)
    assert np.array_equal(again.frame("Z").data, scan.frame("Z").data)
    assert read_truth(truth_json).instances == read_truth(mask_npy).instances == scan.instances


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    for d in ("a", "b"):
        write_simulated(_small(seed=9), tmp_path / d, "s")
    for name in ("s.sxm", "s.truth.json", "s.mask.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    write_simulated(_small(seed=10), tmp_path / "c", "s")
    assert (tmp_path / "c" / "s.sxm").read_bytes() != (tmp_path / "a" / "s.sxm").read_bytes()


def test_read_truth_says_which_file_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ScanReadError, match=r"nothing\.truth\.json: ground-truth sidecar not found"):
        read_truth(tmp_path / "nothing.sxm")
    write_simulated(_small(), tmp_path, "x")
    (tmp_path / "y.truth.json").write_text('{"format": "something else"}')
    with pytest.raises(ScanReadError, match="not a stm-live ground-truth file"):
        read_truth(tmp_path / "y.sxm")
    np.save(tmp_path / "x.mask.npy", np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(ScanReadError, match=r"x\.mask\.npy: mask is uint8 \(3, 3\)"):
        read_truth(tmp_path / "x.sxm")
    with pytest.raises(ValueError, match="plain file name"):
        write_simulated(_small(), tmp_path, "sub/dir")


def test_cli_writes_count_files_reproducibly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "--surface", "tio2-110", "--count", "2", "--size-nm", "8", "--pixels", "48", "--seed", "4"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main(["-q", *args, "--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [f"tio2-110_000{k}{ext}" for k in (0, 1) for ext in (".mask.npy", ".sxm", ".truth.json")]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    second = read_truth(tmp_path / "a" / "tio2-110_0001.sxm")
    assert second.seed == 5 and second.classes == ("O_vacancy", "hydroxyl") and second.bias_v == 1.2
    # The file is what the Python API gives for that seed.
    scan = simulate_scan("tio2-110", size_nm=8.0, pixels=48, seed=5)
    assert (tmp_path / "a" / "tio2-110_0001.sxm").read_bytes() == scan_file_bytes(scan)


def test_cli_options_reach_the_simulation(tmp_path: Path) -> None:
    assert main(["-q", "simulate", "--surface", "ge001", "--size-nm", "10", "--pixels", "40", "--seed", "1",
                 "--artefacts", "none", "--bias-v", "1.0", "--steps", "1", "--row-angle-deg", "30",
                 "--scan-direction", "up", "--prefix", "ge_", "--out", str(tmp_path)]) == 0
    truth = read_truth(tmp_path / "ge_0000.sxm")
    assert truth.artefacts == Artefacts.none() and truth.bias_v == 1.0
    assert (truth.params["steps"], truth.params["row_angle_deg"], truth.params["scan_direction"]) == (1, 30.0, "up")
    assert read_scan(tmp_path / "ge_0000.sxm").frame("Z").scan_direction == "up"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "0"], "--count must be at least 1"),
        (["--pixels", "3"], "--pixels must be within 8..8192"),
        ([], "--out DIR is required"),
    ],
)
def test_cli_mistakes_end_in_one_line(args: list[str], message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = [] if not args else ["--out", str(tmp_path)]
    assert main(["simulate", *args, *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


class _FakeTime:
    """A clock that advances only when slept on; records what the folder looked like at each pause."""

    def __init__(self, watch: Path) -> None:
        self.now = 100.0
        self.watch = watch
        self.seen: list[tuple[float, dict[str, int]]] = []
        self.truth_missing: list[str] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.seen.append((self.now, {p.name: p.stat().st_size for p in self.watch.glob("*.sxm")}))
        self.truth_missing += [p.name for p in self.watch.glob("*.sxm")
                               if not (self.watch / "truth" / f"{p.stem}.truth.json").is_file()]
        self.now += seconds


def test_paced_files_appear_one_per_frame_time_and_grow_in_chunks(tmp_path: Path) -> None:
    scans = [(f"f{k}", _small(seed=k)) for k in range(3)]
    out = tmp_path / "watched"
    fake = _FakeTime(out)
    done: list[PacedFile] = []
    result = write_paced(iter(scans), out, frame_time_s=5.0, chunk_bytes=4096, chunk_interval_s=0.05,
                         sleep=fake.sleep, clock=fake.clock, on_file=done.append)
    assert result == done and [d.path.name for d in done] == ["f0.sxm", "f1.sxm", "f2.sxm"]
    expected = scan_file_bytes(scans[0][1])
    assert (out / "f0.sxm").read_bytes() == expected
    n_chunks = -(-len(expected) // 4096)
    # File k appears (k + 1) frame times after the start (the next frame is acquired while the
    # previous file is written) and takes (chunks - 1) pauses to complete.
    for k, d in enumerate(done):
        assert d.appeared_s == pytest.approx(100.0 + 5.0 * (k + 1))
        assert d.completed_s - d.appeared_s == pytest.approx(0.05 * (n_chunks - 1))
        assert d.size == len(scan_file_bytes(scans[k][1]))
    # Between chunks the file exists under its final name, grown by one chunk each time.
    # (the last pause before f1 sees it complete).
    sizes = [seen["f0.sxm"] for _, seen in fake.seen if "f0.sxm" in seen and len(seen) == 1]
    assert sizes == [4096 * (i + 1) for i in range(n_chunks - 1)] + [len(expected)]
    # Only scan files in the watched folder; the truth is beside it, and was there before the scan.
    assert sorted(p.name for p in out.iterdir()) == ["f0.sxm", "f1.sxm", "f2.sxm", "truth"]
    assert fake.truth_missing == []
    assert read_truth(out / "f2.sxm", truth_dir=out / "truth").instances == scans[2][1].instances


def test_paced_cli_writes_the_same_files_as_the_plain_mode(tmp_path: Path) -> None:
    common = ["simulate", "--count", "2", "--size-nm", "10", "--pixels", "32", "--seed", "7"]
    assert main(["-q", *common, "--out", str(tmp_path / "plain")]) == 0
    assert main(["-q", *common, "--out", str(tmp_path / "paced"), "--paced", "--frame-time", "0",
                 "--chunk-interval", "0", "--chunk-bytes", "1000"]) == 0
    for k in (0, 1):
        name = f"si001-ash3_000{k}"
        assert (tmp_path / "paced" / f"{name}.sxm").read_bytes() == (tmp_path / "plain" / f"{name}.sxm").read_bytes()
        assert (tmp_path / "paced" / "truth" / f"{name}.truth.json").read_bytes() == (
            tmp_path / "plain" / f"{name}.truth.json").read_bytes()
