"""``stm-live batch``: real Dask scheduler and workers as processes, a real daemon run, real files.

The cluster tests start ``dask scheduler`` and two ``dask worker`` processes
on 127.0.0.1 and run ``python -m stm_live batch`` against them over simulated
``.sxm`` files (the bundled si001-ash3 model) and bad files of several kinds.
The single-process path is the model run in this process through the
daemon's own record builders; the daemon itself is also run, watching a
folder of the same files. In-process tests (``--workers 0``, a tiny model)
cover resuming, other models, bad files found before and the tables.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml
from tiny_models import bumps_image, write_tiny_model

from stm_live.batch import BatchSettings, find_inputs, run_batch
from stm_live.batch.store import model_folder_name
from stm_live.cli import main
from stm_live.errors import StmLiveError
from stm_live.frame import Frame
from stm_live.ingest.watch import file_sha256
from stm_live.io import read_frame, write_sxm
from stm_live.model.runtime import SegmentationModel
from stm_live.publish.documents import position, result_record, stored_record

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "si001-ash3.onnx"
T = TypeVar("T")

#: Fields that may differ between two runs on the same file and model (issue 21).
VOLATILE = ("timings_ms", "source")


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``condition`` until truthy; the deadline is only an upper bound (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("STM_LIVE_", "DASK_"))}


def stm_live(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stm_live", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), check=False)


def stable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def stored(folder: Path) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """sha256 -> (record, class map) of every result stored in a results folder."""
    out = {}
    for path in sorted((folder / "frames").glob("*.json")):
        record = json.loads(path.read_text())
        out[record["sha256"]] = (record, np.load(path.with_suffix(".npy"), allow_pickle=False))
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------
# Inputs: simulated scans in two folders, and bad files of every kind
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from stm_live.sim import simulate_scan
    from stm_live.sim.truth import scan_file_bytes

    if not MODEL.is_file():
        pytest.skip(f"the bundled model {MODEL} is not there")
    root = tmp_path_factory.mktemp("archive")
    (root / "2021").mkdir()
    (root / "2022" / "march").mkdir(parents=True)
    good = []
    for seed, folder in ((20_001, "2021"), (20_002, "2021"), (20_003, "2022/march")):
        scan = simulate_scan("si001-ash3", size_nm=25.0, pixels=256, seed=seed)
        path = root / folder / f"scan{seed}.sxm"
        path.write_bytes(scan_file_bytes(scan))
        good.append(path)
    whole = good[0].read_bytes()
    bad = {
        root / "2021" / "truncated.sxm": whole[: len(whole) // 2],
        root / "2021" / "not-a-scan.sxm": b"this is a text file, not a Nanonis scan\n" * 10,
        root / "2021" / "empty.sxm": b"",
        root / "2022" / "garbage.npz": b"PK\x03\x04" + bytes(200),
    }
    for path, data in bad.items():
        path.write_bytes(data)
    objects = root / "2022" / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    bad[objects] = objects.read_bytes()
    (root / "2022" / "notes.txt").write_text("not a scan: no pattern matches it\n")
    return SimpleNamespace(root=root, good=good, bad=sorted(bad))


@pytest.fixture(scope="module")
def expected(archive: SimpleNamespace) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """The single-process path: the model in this process, the daemon's record builders."""
    model = SegmentationModel(MODEL, provider="cpu")
    out = {}
    for path in archive.good:
        frame = read_frame(path)
        seg = model.segment(frame)
        sha = file_sha256(path)
        record = stored_record(result_record(str(path), frame, seg), scan_id=path.stem, complete=frame.complete,
                               sha256=sha, where=position(frame))
        out[sha] = (json.loads(json.dumps(record)), seg.class_map)
    return out


# --------------------------------------------------------------------------
# A real Dask cluster: one scheduler and two workers, each its own process
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    pytest.importorskip("distributed", reason="Dask distributed is not installed (the batch extra)")
    where = tmp_path_factory.mktemp("dask")
    scheduler_file = where / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def spawn(name: str, *args: str) -> None:
        log = open(where / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                                      env=_env(), cwd=where))

    spawn("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
          "--scheduler-file", str(scheduler_file))
    for n in (1, 2):
        spawn(f"worker{n}", "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
              "--host", "127.0.0.1", "--no-dashboard", "--name", f"worker{n}", "--local-directory",
              str(where / f"w{n}"))
    try:
        yield SimpleNamespace(scheduler_file=scheduler_file, procs=procs, logs=where)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def cluster_run(archive: SimpleNamespace, cluster: SimpleNamespace,
                tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("batch-out")
    run = stm_live("batch", str(archive.root), "--out", str(out), "--model", str(MODEL),
                   "--scheduler", str(cluster.scheduler_file), "--workers", "2", "--timeout", "120",
                   "--no-progress")
    assert run.returncode == 0, run.stdout + run.stderr
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return SimpleNamespace(out=out, folder=folders[0], run=run)


@pytest.mark.slow
def test_batch_on_a_dask_cluster_processes_or_reports_every_file_like_the_single_process_path(
    archive: SimpleNamespace, cluster_run: SimpleNamespace,
    expected: dict[str, tuple[dict[str, Any], np.ndarray]],
) -> None:
    folder, stdout = cluster_run.folder, cluster_run.run.stdout
    assert "(2 worker(s))" in stdout
    assert folder.name == model_folder_name(SegmentationModel(MODEL, provider="cpu").info)
    results = stored(folder)
    # Every good file processed, with the single-process path's record and class map.
    assert set(results) == set(expected)
    for sha, (record, class_map) in results.items():
        want_record, want_map = expected[sha]
        assert stable(record) == stable(want_record)
        assert record["detections"], "the bundled model finds features on every simulated scan"
        np.testing.assert_array_equal(class_map, want_map)
    # Every bad file reported: in the ledger (when it could be hashed) and on the console, with a reason.
    ledger = [json.loads(line) for line in (folder / "bad.jsonl").read_text().splitlines()]
    assert sorted(Path(e["path"]) for e in ledger) == archive.bad
    for path in archive.bad:
        assert f"  {path}: " in stdout
    reasons = {Path(e["path"]).name: e["reason"] for e in ledger}
    assert "truncated" in reasons["truncated.sxm"] or "incomplete" in reasons["truncated.sxm"]
    assert "never unpickles" in reasons["objects.npy"]
    assert "empty" in reasons["empty.sxm"]
    # The summary: per folder and class, on the console and in summary.csv.
    with open(folder / "summary.csv", encoding="utf-8-sig", newline="") as fh:
        rows = {r["folder"]: r for r in csv.DictReader(fh)}
    assert rows["total"]["files"] == str(len(archive.good) + len(archive.bad))
    assert rows["total"]["done"] == str(len(archive.good)) and rows["total"]["bad"] == str(len(archive.bad))
    assert rows[str(archive.root / "2021")]["done"] == "2"
    assert rows[str(archive.root / "2022" / "march")]["done"] == "1"
    for name in ("AsH3", "dangling_bond", "dimer_vacancy"):
        want = sum(1 for r, _ in expected.values() for d in r["detections"] if d["class"] == name)
        assert rows["total"][name] == str(want)
    assert "notes.txt" not in stdout
    # detections.csv: one row per detection of every record.
    with open(folder / "detections.csv", encoding="utf-8-sig", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == sum(len(r["detections"]) for r, _ in expected.values())
    first = next(r for r, _ in expected.values())
    row = next(t for t in table if t["sha256"] == first["sha256"] and t["detection"] == "0")
    assert float(row["x_nm"]) == first["detections"][0]["x_nm"] and row["class"] == first["detections"][0]["class"]


@pytest.mark.slow
def test_a_rerun_on_the_cluster_does_nothing(
    archive: SimpleNamespace, cluster: SimpleNamespace, cluster_run: SimpleNamespace
) -> None:
    before = snapshot(cluster_run.folder)
    again = stm_live("batch", str(archive.root), "--out", str(cluster_run.out), "--model", str(MODEL),
                     "--scheduler", str(cluster.scheduler_file), "--workers", "2", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "0 segmented" in again.stdout and f"{len(archive.good)} skipped" in again.stdout
    assert f"{len(archive.bad)} bad ({len(archive.bad)} found bad before" in again.stdout
    after = snapshot(cluster_run.folder)
    # Only the two tables are rewritten (same content); no result, ledger or processed line is added.
    for name in ("detections.csv", "summary.csv"):
        assert after.pop(name)[0] == before.pop(name)[0]
    assert after == before


@pytest.mark.slow
def test_the_gwy_files_of_a_batch_open_in_gwyddion_with_one_masked_channel_per_class(
    cluster_run: SimpleNamespace, tmp_path: Path
) -> None:
    from test_gwy import gwyddion_reads

    for sha, (record, class_map) in stored(cluster_run.folder).items():
        gwy = cluster_run.folder / "frames" / f"{Path(record['source']).stem}-{sha[:16]}.gwy"
        channels = gwyddion_reads(gwy, tmp_path)
        assert [c.title for c in channels] == [
            "Z levelled (all classes)", "Z levelled: AsH3", "Z levelled: dangling_bond", "Z levelled: dimer_vacancy"]
        np.testing.assert_array_equal(channels[0].mask, class_map > 0)
        for k, channel in enumerate(channels[1:], start=1):
            np.testing.assert_array_equal(channel.mask, class_map == k)
            assert channel.data.shape == class_map.shape
        break  # one file is enough for Gwyddion's start-up time


@pytest.mark.slow
def test_a_local_cluster_gives_the_same_results_as_the_remote_one(
    archive: SimpleNamespace, cluster_run: SimpleNamespace, tmp_path: Path
) -> None:
    pytest.importorskip("distributed", reason="Dask distributed is not installed (the batch extra)")
    run = stm_live("batch", str(archive.good[0]), str(archive.good[2]), "--out", str(tmp_path), "--model", str(MODEL),
                   "--workers", "1", "--no-progress", "--no-gwy", "--no-png")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "a local Dask cluster of 1 worker(s)" in run.stdout
    local = stored(tmp_path / cluster_run.folder.name)
    remote = stored(cluster_run.folder)
    assert len(local) == 2
    for sha, (record, class_map) in local.items():
        assert stable(record) == stable(remote[sha][0])
        np.testing.assert_array_equal(class_map, remote[sha][1])
    assert not list((tmp_path / cluster_run.folder.name / "frames").glob("*.gwy"))


# --------------------------------------------------------------------------
# The daemon's own records for the same files
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_records_equal_a_real_daemon_run_on_the_same_files(
    archive: SimpleNamespace, cluster_run: SimpleNamespace, tmp_path: Path
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    results = tmp_path / "results"
    config = tmp_path / "daemon.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(MODEL), "provider": "cpu"},
        "results": {"dir": str(results)},
        "ingest": {"endpoint": "tcp://127.0.0.1:*"},
        "publish": {"endpoint": "tcp://127.0.0.1:*", "heartbeat_s": 0.2},
        "watch": {"folders": [str(watch)], "retry_initial_s": 0.05, "retry_max_s": 0.2},
    }))
    for path in archive.good:
        shutil.copy(path, watch / path.name)
    with open(tmp_path / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "stm_live", "run", "--config", str(config)],
                                  stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path)
        try:
            def all_done() -> bool:
                if daemon.poll() is not None:
                    pytest.fail(f"the daemon exited:\n{(tmp_path / 'daemon.log').read_text()}")
                path = results / "processed.jsonl"
                return path.exists() and len(path.read_text().splitlines()) == len(archive.good)

            wait_until(all_done, 120, "the daemon to process the files")
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
    from_daemon = stored(results)
    from_batch = stored(cluster_run.folder)
    assert set(from_daemon) == set(from_batch)
    for sha, (record, class_map) in from_daemon.items():
        assert stable(record) == stable(from_batch[sha][0])
        assert record["model"] == from_batch[sha][0]["model"] and record["detections"]
        np.testing.assert_array_equal(class_map, from_batch[sha][1])


# --------------------------------------------------------------------------
# In this process (--workers 0), with a tiny model: resuming, models, tables
# --------------------------------------------------------------------------


def bumps(n: int) -> np.ndarray:
    """A 96 x 128 image with bright bumps and dark pits placed by ``n`` (different content per n)."""
    return bumps_image((96, 128), [(20 + 3 * n, 30), (60, 90)], [(40, 100 - 3 * n)])


@pytest.fixture
def tiny(tmp_path: Path) -> SimpleNamespace:
    model = tmp_path / "tiny.onnx"
    write_tiny_model(model, nm_per_px=0.2)
    data = tmp_path / "data"
    data.mkdir()
    files = []
    for n in range(3):
        frame = Frame(bumps(n), width_m=25.6e-9, height_m=19.2e-9)
        files.append(write_sxm(data / f"f{n}.sxm", [frame]))
    return SimpleNamespace(model=model, data=data, files=files, out=tmp_path / "out")


def test_find_inputs_walks_folders_keeps_named_files_and_skips_the_output_folder(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for name in ("a/1.sxm", "a/b/2.SXM", "a/b/3.npz", "a/x.txt", "a/.4.sxm", "a/.hidden/5.sxm", "a/out/m/6.npy"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    named = tmp_path / "a" / "x.txt"
    found = find_inputs([named, tmp_path / "a", tmp_path / "a" / "1.sxm"], exclude=tmp_path / "a" / "out")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/x.txt", "a/1.sxm", "a/b/2.SXM", "a/b/3.npz"]
    assert find_inputs([tmp_path / "a"], patterns=["*.npz"]) == [tmp_path / "a" / "b" / "3.npz"]


def test_a_rerun_skips_done_content_and_a_new_file_alone_is_segmented(tiny: SimpleNamespace) -> None:
    first = run_batch([tiny.data], tiny.out, model_path=tiny.model, workers=0, progress=False)
    assert (first.count("done"), first.count("skipped"), first.count("bad")) == (3, 0, 0)
    folder = first.folder
    before = snapshot(folder)
    again = run_batch([tiny.data], tiny.out, model_path=tiny.model, workers=0, progress=False)
    assert (again.count("done"), again.count("skipped")) == (0, 3)
    assert [r.frames for r in again.rows] == [r.frames for r in first.rows]
    assert {k: v for k, v in snapshot(folder).items() if not k.endswith(".csv")} == {
        k: v for k, v in before.items() if not k.endswith(".csv")}
    # The same content under another name is done already; new content is not.
    shutil.copy(tiny.files[0], tiny.data / "copy-of-f0.sxm")
    write_sxm(tiny.data / "new.sxm", [Frame(bumps(9), width_m=25.6e-9, height_m=19.2e-9)])
    third = run_batch([tiny.data], tiny.out, model_path=tiny.model, workers=0, progress=False)
    assert [(Path(line.path).name, line.status) for line in third.lines if line.status == "done"] == [
        ("new.sxm", "done")]
    assert third.count("skipped") == 4


def test_another_model_gets_its_own_folder_and_segments_everything_again(tiny: SimpleNamespace,
                                                                        tmp_path: Path) -> None:
    run_batch([tiny.data], tiny.out, model_path=tiny.model, workers=0, progress=False)
    other = tmp_path / "other.onnx"
    write_tiny_model(other, nm_per_px=0.2, input_scale="std")
    report = run_batch([tiny.data], tiny.out, model_path=other, workers=0, progress=False)
    assert report.count("done") == 3
    assert len([p for p in tiny.out.iterdir() if p.is_dir()]) == 2
    # Other detection thresholds are another model (its id covers them): a folder of its own.
    recalibrated = tmp_path / "recalibrated.onnx"
    write_tiny_model(recalibrated, nm_per_px=0.2, detection={"min_score": {"bright": 0.9}})
    assert run_batch([tiny.data], tiny.out, model_path=recalibrated, workers=0, progress=False).count("done") == 3
    assert len([p for p in tiny.out.iterdir() if p.is_dir()]) == 3
    # The same model with other settings: refused, not mixed in.
    with pytest.raises(StmLiveError, match=r"\(min_score None -> 0.5\)"):
        run_batch([tiny.data], tiny.out, model_path=tiny.model, workers=0, progress=False,
                  settings=BatchSettings(min_score=0.5))


def test_bad_files_are_reported_once_then_skipped_unless_retried(tiny: SimpleNamespace) -> None:
    bad = tiny.data / "cut.sxm"
    bad.write_bytes(tiny.files[0].read_bytes()[:2000])
    first = run_batch([tiny.data], tiny.out, model_path=tiny.model, workers=0, progress=False)
    assert first.bad == [(str(bad), first.bad[0][1])] and "incomplete" in first.bad[0][1]
    assert first.bad_before == 0 and first.count("done") == 3
    again = run_batch([tiny.data], tiny.out, model_path=tiny.model, workers=0, progress=False)
    assert again.bad_before == 1 and again.count("bad") == 1 and again.count("done") == 0
    ledger = (first.folder / "bad.jsonl").read_text().splitlines()
    assert len(ledger) == 1
    retried = run_batch([tiny.data], tiny.out, model_path=tiny.model, workers=0, progress=False, retry_bad=True)
    assert retried.bad_before == 0 and retried.count("bad") == 1
    assert not (first.folder / "quarantine").exists()  # a batch moves no input


def test_batch_settings_reach_the_model_and_arrays_need_their_size(tiny: SimpleNamespace) -> None:
    np.save(tiny.data / "a.npy", bumps(5))
    report = run_batch([tiny.data / "a.npy"], tiny.out, model_path=tiny.model, workers=0, progress=False)
    assert report.count("bad") == 1 and "--width-nm" in report.bad[0][1]
    report = run_batch([tiny.data / "a.npy"], tiny.out, model_path=tiny.model, workers=0, progress=False,
                       settings=BatchSettings(width_nm=25.6), retry_bad=True)
    assert report.count("done") == 1
    record = report.lines[0].record
    assert record is not None and record["image"]["width_nm"] == 25.6 and record["image"]["height_nm"] == 19.2
    strict = run_batch([tiny.data / "a.npy"], tiny.out / "strict", model_path=tiny.model, workers=0,
                       progress=False, settings=BatchSettings(width_nm=25.6, min_score=0.99))
    kept = strict.lines[0].record
    assert kept is not None and all(d["score"] >= 0.99 for d in kept["detections"])
    assert len(kept["detections"]) < len(record["detections"])


def test_the_command_prints_the_summary_and_reports_mistakes_in_one_line(
    tiny: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["batch", str(tiny.data), "--out", str(tiny.out), "--model", str(tiny.model), "--workers", "0",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "3 file(s) on this process: 3 segmented, 0 skipped (done before), 0 bad" in out
    assert out.count(str(tiny.data)) >= 1 and "bright" in out and "dark" in out
    assert main(["batch", str(tiny.data / "nope"), "--out", str(tiny.out), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "nope: no such file or folder" in err
    assert main(["batch", str(tiny.data), "--out", str(tiny.out), "--workers", "0", "--scheduler", "x"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    encoder = tiny.out.parent / "enc.onnx"
    write_tiny_model(encoder, head=False)
    assert main(["batch", str(tiny.data), "--out", str(tiny.out), "--model", str(encoder), "--workers", "0"]) == 2
    assert "bare encoder" in capsys.readouterr().err


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_clear_line(tiny: SimpleNamespace) -> None:
    pytest.importorskip("distributed", reason="Dask distributed is not installed (the batch extra)")
    run = stm_live("batch", str(tiny.data), "--out", str(tiny.out), "--model", str(tiny.model),
                   "--scheduler", "tcp://127.0.0.1:9", "--timeout", "2", "--no-progress", timeout=120)
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("stm-live batch: error: cannot start or reach the Dask scheduler (tcp://127.0.0.1:9)")
    assert "Traceback" not in run.stderr


def test_the_model_plugin_builds_one_session_with_the_workers_share_of_the_cores(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="Dask distributed is not installed (the batch extra)")
    import pickle

    from stm_live.batch.dask_cluster import ModelPlugin

    model = tmp_path / "tiny.onnx"
    write_tiny_model(model, nm_per_px=0.2)
    plugin = ModelPlugin(model.read_bytes(), "stm-live-test", provider="cpu", threads=None)
    # What a worker receives: the plugin as Dask ships it, without a session (sessions do not pickle).
    shipped = pickle.loads(pickle.dumps(plugin))
    worker = SimpleNamespace(state=SimpleNamespace(nthreads=3), local_directory=str(tmp_path), address="w")
    shipped.setup(worker)
    assert shipped.model is not None
    assert shipped.model.session.get_session_options().intra_op_num_threads == 3
    fixed = pickle.loads(pickle.dumps(ModelPlugin(model.read_bytes(), "stm-live-t2", provider="cpu", threads=1)))
    fixed.setup(worker)
    assert fixed.model is not None and fixed.model.session.get_session_options().intra_op_num_threads == 1
