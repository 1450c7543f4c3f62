"""The daemon end to end: real processes, real sockets (tcp://127.0.0.1, random ports), tiny real models.

Most tests run the daemon in-process (its threads, its sockets) with the tiny
model of ``tiny_models.py``; the end-to-end, ``kill -9`` and SIGTERM tests run
``python -m stm_live run`` as a subprocess. One test uses the real bundled
model with the simulator, and skips when ``models/si001-ash3.onnx`` is
missing (``TEST_STM_LIVE_MODEL`` may point at a candidate model meanwhile).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import zmq
from daemon_kit import (
    REPO,
    DaemonProcess,
    Subscriber,
    base_settings,
    bridge,
    bumps_frame,
    events,
    frame_done,
    processed,
    summary,
    wait_until,
)
from tiny_models import bumps_image, write_tiny_model
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.cli import main
from stm_live.daemon import Daemon, read_state
from stm_live.frame import Frame
from stm_live.ingest.journal import ScanJournal
from stm_live.io import sxm_bytes, write_sxm
from stm_live.model.evaluate import match_class
from stm_live.model.runtime import SegmentationModel
from stm_live.sim.stream import scan_info
from stm_live.wire import (
    EndMessage,
    LineMessage,
    ScanInfo,
    SegMessage,
    encode_end,
    encode_line,
    load_schema,
)

pytestmark = pytest.mark.usefixtures("plain_logging")


# --------------------------------------------------------------------------
# End to end: streamed scan and the same scan as a file
# --------------------------------------------------------------------------


def test_a_streamed_scan_gives_partials_then_the_frame_and_the_same_file_the_same_detections(
    tmp_path: Path, tiny_model: Path, spawn: Callable[..., DaemonProcess], make_socket: SocketFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    daemon = spawn(base_settings(tmp_path, tiny_model, **{"watch.folders": [str(watch)]}))
    results = daemon.results
    sub = Subscriber(make_socket, daemon.publish)
    beat = sub.wait_heartbeat()
    assert beat.state == "running" and beat.model_name == "tiny-bright-dark"
    assert {"frames", "lines", "errors", "dropped"} <= set(beat.counters)

    frame = bumps_frame()
    with bridge(make_socket, daemon.ingest) as streamer:
        streamer.stream([("bumps-1", frame)], line_time_s=0.003)
        final = sub.wait_for(frame_done("bumps-1"), what="seg.frame of the streamed scan")

    partials = sub.seg("bumps-1", final=False)
    assert len(partials) >= 20, "partial results during the scan"
    rows_done = [p.rows_done for p in partials]
    assert rows_done == sorted(rows_done) and rows_done[-1] < frame.rows + 1
    # Each partial carries the class-map rows that changed, up to the scan front; the first one (a
    # keyframe) every row done. Pasted together they cover every row acquired.
    covered = np.zeros(frame.rows, bool)
    assert partials[0].class_map is not None and partials[0].class_map.shape == (partials[0].rows_done, frame.cols)
    for p in partials:
        assert p.latency_ms > 0 and p.classes == ("bright", "dark")
        if p.class_map is None:  # no row changed since the last partial: detections only
            continue
        assert p.class_map.shape[1] == frame.cols
        start, stop = p.map_row0, p.map_row0 + p.class_map.shape[0]
        assert 0 <= start < stop == p.rows_done
        covered[start:stop] = True
    assert covered[:rows_done[-1]].all()
    assert any(p.detections for p in partials if p.rows_done <= 64), "the top bump shows before the scan is half done"
    assert final.complete and final.source == "zmq" and final.rows_done == frame.rows
    assert final.class_map is not None and final.class_map.shape == (frame.rows, frame.cols)
    expected = SegmentationModel(tiny_model, provider="cpu").segment(frame, min_score=0.5)
    assert summary(final.detections) == summary(expected.detections)
    assert sorted(d.class_name for d in final.detections) == ["bright"] * 3 + ["dark"] * 2

    # The same scan saved as .sxm into the watched folder: the same detections.
    write_sxm(watch / "bumps-1.sxm", [frame])
    from_file = sub.wait_for(frame_done("bumps-1", "bumps-1.sxm"), what="seg.frame of the .sxm file")
    assert summary(from_file.detections) == summary(final.detections)
    assert from_file.complete and from_file.source == str(watch / "bumps-1.sxm")

    for topic in ("seg.partial", "seg.frame", "status"):  # what the daemon sent matches the published schemas
        headers = [h for t, h in sub.headers if t == topic]
        assert headers, topic
        for header in headers[:50]:
            jsonschema.validate(header, load_schema(topic))

    wait_until(lambda: len(processed(results)) == 2, what="both results stored")
    schema = load_schema("result")
    records = [json.loads(p.read_text()) for p in sorted((results / "frames").glob("*.json"))]
    for record in records:
        jsonschema.validate(record, schema)
    assert {r["source"] for r in records} == {"zmq", str(watch / "bumps-1.sxm")}
    assert len(list((results / "frames").glob("*.png"))) == 2

    # stm-live status: from the state file and from the heartbeat.
    capsys.readouterr()
    assert main(["status", "--results", str(results)]) == 0
    assert "stm-live daemon: running" in capsys.readouterr().out
    assert main(["status", "--endpoint", daemon.publish, "--timeout", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counters"]["frames"] >= 2

    assert daemon.terminate() == 0, daemon.log()
    assert read_state(results)["state"] == "stopped"
    assert main(["status", "--results", str(results)]) == 1
    assert "stm-live daemon: stopped" in capsys.readouterr().out


def _real_model() -> Path:
    bundled = REPO / "models" / "si001-ash3.onnx"
    if bundled.is_file():
        return bundled
    candidate = os.environ.get("TEST_STM_LIVE_MODEL")
    if candidate and Path(candidate).is_file():
        return Path(candidate)
    pytest.skip("the bundled model models/si001-ash3.onnx is not there yet (or set TEST_STM_LIVE_MODEL)")


@pytest.mark.slow
def test_the_real_model_finds_the_simulated_features_streamed_and_from_the_file(
    tmp_path: Path, spawn: Callable[..., DaemonProcess], make_socket: SocketFactory
) -> None:
    from stm_live.sim import simulate_scan
    from stm_live.sim.truth import scan_file_bytes

    model_path = _real_model()
    watch = tmp_path / "watch"
    watch.mkdir()
    settings = base_settings(tmp_path, model_path, **{"watch.folders": [str(watch)]})
    del settings["model.provider"]
    daemon = spawn(settings)
    sub = Subscriber(make_socket, daemon.publish)
    sub.wait_heartbeat()
    scan = simulate_scan("si001-ash3", seed=10_007)  # not a training seed
    frame = scan.frame("Z", "forward")
    with bridge(make_socket, daemon.ingest) as streamer:
        streamer.stream([("sim-10007", frame)], line_time_s=0.004)
        final = sub.wait_for(frame_done("sim-10007"), what="seg.frame of the streamed scan")
    partials = sub.seg("sim-10007", final=False)
    # A daemon that falls behind segments several new lines at once, so how many partials
    # a 512-line scan gives depends on the machine's load (docs/daemon.md, cadence).
    assert len(partials) >= 10 and any(p.detections for p in partials if p.rows_done < 256)

    model = SegmentationModel(model_path)
    reported = model.info.training.get("metrics", {}).get("objects", {})
    for name in model.classes:
        true = [(t.x_nm, t.y_nm) for t in scan.instances if t.class_name == name]
        found = [(d.x_nm, d.y_nm) for d in final.detections if d.class_name == name]
        score = match_class(found, true, max_dist_nm=0.5)
        floor = min(0.8, float(reported.get(name, {}).get("f1", 0.9)) - 0.1)
        assert score.f1 >= floor, f"{name}: F1 {score.f1:.3f} below {floor:.3f} ({score.to_dict()})"

    tmp = watch / ".sim-10007.part"
    tmp.write_bytes(scan_file_bytes(scan))
    tmp.rename(watch / "sim-10007.sxm")
    from_file = sub.wait_for(frame_done("sim-10007", "sim-10007.sxm"), what="seg.frame of the .sxm file")
    assert summary(from_file.detections) == summary(final.detections)
    assert daemon.terminate() == 0, daemon.log()


# --------------------------------------------------------------------------
# Bad input: messages
# --------------------------------------------------------------------------


def _line_parts(info: ScanInfo, row: int, values: np.ndarray) -> list[bytes]:
    return encode_line(LineMessage(info, row, values))


def _with_header(parts: list[bytes], **changes: Any) -> list[bytes]:
    header = json.loads(parts[1])
    for key, value in changes.items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


def test_every_kind_of_malformed_message_is_counted_logged_and_the_daemon_carries_on(
    make_daemon: Callable[..., Daemon], make_socket: SocketFactory
) -> None:
    daemon = make_daemon()
    assert daemon.publish_endpoint and daemon.ingest_endpoint
    sub = Subscriber(make_socket, daemon.publish_endpoint)
    sub.wait_heartbeat()
    frame = bumps_frame(32, 32)
    info = scan_info(frame, "good")
    good = [_line_parts(info, row, frame.data[row]) for row in range(frame.rows)]
    ok = good[1]
    nan_line = np.full(32, np.nan, np.float32)
    inf_line = frame.data[1].copy()
    inf_line[3] = np.inf
    other_size = scan_info(bumps_frame(32, 16), "good")
    bad: list[tuple[list[bytes], str]] = [
        ([ok[0], ok[1]], "expected 3 message parts"),
        ([ok[0], b"{not json", ok[2]], "not valid JSON"),
        (_with_header(ok, cols=None), "missing required field 'cols'"),
        ([ok[0], ok[1], ok[2][:-4]], "bytes, expected 128"),
        (_with_header(ok, dtype="float32"), "field 'dtype' = 'float32'"),
        ([ok[0], ok[1], nan_line.tobytes()], "every value is NaN"),
        ([ok[0], ok[1], inf_line.tobytes()], "value inf at column 3"),
        ([b"stm.lines", ok[1], ok[2]], "unknown topic 'stm.lines'"),
        (_with_header(ok, v=2), "field 'v' = 2"),
        (_with_header(ok, chanel="Z"), "unknown field 'chanel'"),
        (_with_header(ok, width_m=50.0), "nanometres sent as metres"),
        ([b"seg.partial", b"{}"], "published by the daemon"),
        (_line_parts(other_size, 2, np.zeros(16, np.float32)), "does not match the open scan"),
    ]
    with bridge(make_socket, daemon.ingest_endpoint) as streamer:
        streamer.send(good[0])  # opens the scan that the last bad message contradicts
        for parts, _ in bad:
            streamer.send(parts)
        for parts in good[1:]:
            streamer.send(parts)
        streamer.send(encode_end(EndMessage("good", complete=True)))
        final = sub.wait_for(frame_done("good"), what="the good scan's result after the bad messages")
    assert final.complete and len(final.detections) >= 1
    counters = daemon.counts()
    assert counters["bad_messages"] == len(bad) and counters["errors"] == len(bad)
    assert counters["lines"] == frame.rows + 1  # the good ones and the decodable line of the wrong size
    logged = events(daemon.results_dir, "bad_message")
    assert len(logged) == len(bad)
    for event, (_, reason) in zip(logged, bad, strict=True):
        assert reason in event["reason"], event


# --------------------------------------------------------------------------
# Bad input: files
# --------------------------------------------------------------------------


def test_bad_files_are_quarantined_with_their_reason_and_good_ones_still_processed(
    tmp_path: Path, make_daemon: Callable[..., Daemon]
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    blob = sxm_bytes([bumps_frame(64, 64)])
    (watch / "zero.sxm").write_bytes(b"")
    (watch / "truncated.sxm").write_bytes(blob[: len(blob) // 2])
    (watch / "corrupt.sxm").write_bytes(b"\x00\x01 this is not a Nanonis file " * 100)
    (watch / "toobig.sxm").write_bytes(blob + b"\x00" * 64)
    np.save(watch / "notanimage.npy", np.arange(10.0))
    np.save(watch / "pickled.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (watch / "good.sxm").write_bytes(blob)
    daemon = make_daemon(**{"watch.folders": [str(watch)], "watch.settle_timeout_s": 0.5, "input.width_nm": 6.4})
    results = daemon.results_dir
    wait_until(lambda: daemon.counts()["quarantined"] == 6, what="six files in quarantine")
    wait_until(lambda: len(processed(results)) == 1, what="the good file's result")
    quarantine = results / "quarantine"
    reasons = {p.name.removesuffix(".reason.txt"): p.read_text() for p in quarantine.glob("*.reason.txt")}
    assert set(reasons) == {"zero.sxm", "truncated.sxm", "corrupt.sxm", "toobig.sxm", "notanimage.npy",
                            "pickled.npy"}
    assert "the file is empty" in reasons["zero.sxm"]
    assert "still incomplete" in reasons["truncated.sxm"]
    assert "larger than its header describes" in reasons["toobig.sxm"]
    assert "never unpickles" in reasons["pickled.npy"]
    assert "notanimage.npy" in reasons["notanimage.npy"] and "reason: " in reasons["notanimage.npy"]
    for name in reasons:
        assert (quarantine / name).exists() and not (watch / name).exists()
    assert (watch / "good.sxm").exists() and processed(results)[0]["source"] == str(watch / "good.sxm")
    counters = daemon.counts()
    assert counters["errors"] == 6 and counters["files"] == 1
    # Each event is logged just after its file is quarantined: the last may lag a moment.
    wait_until(lambda: len(events(results, "bad_file")) == 6, what="six bad_file events")


def test_a_file_written_slowly_in_chunks_is_processed_once_when_complete(
    tmp_path: Path, make_daemon: Callable[..., Daemon], make_socket: SocketFactory
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    daemon = make_daemon(**{"watch.folders": [str(watch)]})
    assert daemon.publish_endpoint
    sub = Subscriber(make_socket, daemon.publish_endpoint)
    sub.wait_heartbeat()
    frame = bumps_frame()
    blob = sxm_bytes([frame])
    path = watch / "slow.sxm"
    with open(path, "wb") as fh:
        for start in range(0, len(blob), len(blob) // 8 + 1):
            fh.write(blob[start:start + len(blob) // 8 + 1])
            fh.flush()
            time.sleep(0.05)  # the controller writing: part of the scenario, not a readiness wait
    final = sub.wait_for(frame_done("slow", "slow.sxm"), what="the slowly written file's result")
    assert final.complete and sorted(d.class_name for d in final.detections) == ["bright"] * 3 + ["dark"] * 2
    wait_until(lambda: len(processed(daemon.results_dir)) == 1, what="the stored result")
    assert daemon.counts()["quarantined"] == 0
    assert len(sub.seg("slow", final=True)) == 1


# --------------------------------------------------------------------------
# Live path: order, direction, cadence, slow subscribers
# --------------------------------------------------------------------------


def test_out_of_order_duplicate_and_missing_lines_and_an_upward_scan(
    tiny_model: Path, make_daemon: Callable[..., Daemon], make_socket: SocketFactory
) -> None:
    daemon = make_daemon()
    assert daemon.publish_endpoint and daemon.ingest_endpoint
    sub = Subscriber(make_socket, daemon.publish_endpoint)
    sub.wait_heartbeat()
    frame = bumps_frame()
    info = scan_info(frame, "shuffled")
    rows = [r for r in range(frame.rows) if r != 7]
    order = np.random.default_rng(1).permutation(rows).tolist()
    order.insert(40, 5)  # a duplicate
    up = bumps_frame(scan_direction="up")
    with bridge(make_socket, daemon.ingest_endpoint) as streamer:
        for row in order:
            streamer.send(_line_parts(info, row, frame.data[row]))
        streamer.send(encode_end(EndMessage("shuffled", complete=True)))
        streamer.stream([("upward", up)], line_time_s=0.002)
        shuffled = sub.wait_for(frame_done("shuffled"), what="the shuffled scan")
        upward = sub.wait_for(frame_done("upward"), what="the upward scan")
    missing = frame.data.copy()
    missing[7] = np.nan
    model = SegmentationModel(tiny_model, provider="cpu")
    expected = model.segment(frame.with_data(missing), min_score=0.5)
    assert not shuffled.complete and shuffled.rows_done == frame.rows  # row 7 never came
    assert summary(shuffled.detections) == summary(expected.detections)
    partials = sub.seg("upward", final=False)
    # An upward scan fills the image from the bottom: the changed rows start at the front (the top row done).
    assert partials and partials[0].map_row0 == partials[0].rows - partials[0].rows_done
    assert partials[0].class_map is not None and len(partials[0].class_map) == partials[0].rows_done
    for p in partials:
        assert p.class_map is not None and (p.map_row0 == p.rows - p.rows_done or len(p.class_map) == 0)
    assert upward.complete and summary(upward.detections) == summary(model.segment(up, min_score=0.5).detections)


def test_cadence_and_coalescing_keep_partials_few_and_fresh(
    make_daemon: Callable[..., Daemon], make_socket: SocketFactory
) -> None:
    daemon = make_daemon(**{"live.cadence_lines": 16})
    assert daemon.publish_endpoint and daemon.ingest_endpoint
    sub = Subscriber(make_socket, daemon.publish_endpoint)
    sub.wait_heartbeat()
    with bridge(make_socket, daemon.ingest_endpoint) as streamer:
        streamer.stream([("every16", bumps_frame())], line_time_s=0.001)
        streamer.stream([("burst", bumps_frame())], line_time_s=0.0)  # faster than segmentation
        sub.wait_for(frame_done("every16"))
        sub.wait_for(frame_done("burst"))
    every16 = [p.rows_done for p in sub.seg("every16", final=False)]
    # At least 16 new lines between partials (more when segmentation falls behind and
    # updates are coalesced, as happens on a loaded machine), so at most 128 / 16 of them.
    gaps = [b - a for a, b in zip([0, *every16], every16, strict=False)]
    assert 1 <= len(every16) <= 128 // 16 and min(gaps) >= 16, every16
    burst = [p.rows_done for p in sub.seg("burst", final=False)]
    assert len(burst) < 128 // 16 + 1 and burst == sorted(set(burst))
    assert daemon.counts()["lines"] == 256


def test_a_subscriber_that_never_reads_does_not_stop_ingest_or_storage(
    make_daemon: Callable[..., Daemon], make_socket: SocketFactory
) -> None:
    daemon = make_daemon(**{"publish.send_hwm": 2})
    assert daemon.publish_endpoint and daemon.ingest_endpoint
    stuck = make_socket(zmq.SUB, subscribe=b"", rcvhwm=1, rcvbuf=4096)
    stuck.connect(daemon.publish_endpoint)
    assert daemon.publisher is not None
    wait_until(lambda: daemon.publisher.poll_subscriptions(0.05) > 0, what="the subscription to reach the daemon")
    frame = bumps_frame(256, 512)
    # How many results fit in the kernel's socket buffers depends on the machine and its
    # load; keep scanning (up to 8 frames) until the stuck subscriber makes the daemon drop.
    with bridge(make_socket, daemon.ingest_endpoint) as streamer:
        for n in range(1, 9):
            # A different scan each time (same content would be deduplicated, not stored).
            scan = frame.with_data(frame.data + np.float32(n * 1e-12))
            streamer.stream([(f"big{n}", scan)], line_time_s=0.0005)
            wait_until(lambda n=n: len(processed(daemon.results_dir)) == n, what=f"result {n} stored")
            if daemon.counts()["dropped"] > 0:
                break
    counters = daemon.counts()
    # Ingest and storage went on regardless: every line counted, every frame stored.
    assert counters["lines"] == 256 * n and counters["frames"] == n
    assert counters["dropped"] > 0, counters


# --------------------------------------------------------------------------
# Durability: the journal, kill -9, SIGTERM
# --------------------------------------------------------------------------


def test_a_journal_left_by_a_crash_is_processed_unless_its_result_was_stored(
    tmp_path: Path, make_daemon: Callable[..., Daemon]
) -> None:
    frame = bumps_frame(32, 32)
    info = scan_info(frame, "crashed")
    writer = ScanJournal(tmp_path / "results" / "journal").open(info)
    for row in range(frame.rows):
        writer.line(row, frame.data[row], None)
    writer.finish(complete=True, reason="all rows")
    daemon = make_daemon()
    wait_until(lambda: len(processed(daemon.results_dir)) == 1, what="the journalled scan stored")
    wait_until(lambda: not list((daemon.results_dir / "journal").glob("*.journal")), what="the journal deleted")
    record = json.loads((daemon.results_dir / "frames" / processed(daemon.results_dir)[0]["result"]).read_text())
    assert record["scan_id"] == "crashed" and record["complete"] is True
    daemon.stop()
    daemon.close()

    # Killed after storing but before deleting the journal: the next start only deletes it.
    writer = ScanJournal(tmp_path / "results" / "journal").open(info)
    for row in range(frame.rows):
        writer.line(row, frame.data[row], None)
    writer.finish(complete=True, reason="all rows")
    again = make_daemon()
    wait_until(lambda: not list((again.results_dir / "journal").glob("*.journal")), what="the journal deleted")
    again.stop()
    again.close()
    assert len(processed(again.results_dir)) == 1


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, tiny_model: Path, spawn: Callable[..., DaemonProcess], make_socket: SocketFactory
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    settings = base_settings(tmp_path, tiny_model, **{"watch.folders": [str(watch)]})
    first = spawn(settings, "first")
    results = first.results
    sub = Subscriber(make_socket, first.publish)
    sub.wait_heartbeat()
    a, b, c = bumps_frame(), bumps_frame(96, 128), bumps_frame(64, 128)
    b_info = scan_info(b, "B")
    with bridge(make_socket, first.ingest) as streamer:
        streamer.stream([("A", a)], line_time_s=0.001)
        sub.wait_for(frame_done("A"), what="scan A")
        for row in range(48):  # half of scan B ...
            streamer.send(_line_parts(b_info, row, b.data[row]))
        # ... received and journalled (a partial result of it has gone out) when the daemon is killed
        sub.wait_for(lambda m: isinstance(m, SegMessage) and m.scan_id == "B" and m.rows_done >= 48,
                     what="B's partial at row 48")
        for k in range(3):
            write_sxm(watch / f"file{k}.sxm", [bumps_image_frame(k)])
        first.kill()

        second = spawn(settings, "second")
        sub2 = Subscriber(make_socket, second.publish)
        sub2.wait_heartbeat()
        streamer.reconnect(second.ingest)
        for row in range(48, b.rows):  # the rest of B goes to the restarted daemon
            streamer.send(_line_parts(b_info, row, b.data[row]))
        streamer.send(encode_end(EndMessage("B", complete=True)))
        streamer.stream([("C", c)], line_time_s=0.001)
        b_final = sub2.wait_for(frame_done("B"), what="scan B after the restart")
        sub2.wait_for(frame_done("C"), what="scan C")
        wait_until(lambda: len(processed(results)) == 6, what="A, B, C and three files stored")
    assert b_final.complete and b_final.rows_done == b.rows, "B's lines from before the kill were not lost"
    entries = processed(results)
    assert len({e["sha256"] for e in entries}) == 6, entries
    sources = sorted(e["source"] for e in entries)
    assert sources == sorted(["zmq"] * 3 + [str(watch / f"file{k}.sxm") for k in range(3)])
    wait_until(lambda: not list((results / "journal").glob("*.journal")), what="every journal deleted once stored")
    assert second.terminate() == 0, second.log()
    assert len(processed(results)) == 6


def bumps_image_frame(k: int) -> Frame:
    data = bumps_image((48, 48), [(10 + k, 10)], [(30, 30 + k)]) * 1e-10
    return Frame(data, 4.8e-9, 4.8e-9)


@pytest.mark.slow
def test_sigterm_finishes_the_frame_in_flight_and_exits_0(
    tmp_path: Path, tiny_model: Path, spawn: Callable[..., DaemonProcess], make_socket: SocketFactory
) -> None:
    daemon = spawn(base_settings(tmp_path, tiny_model))
    results = daemon.results
    sub = Subscriber(make_socket, daemon.publish)
    sub.wait_heartbeat()
    with bridge(make_socket, daemon.ingest) as streamer:
        streamer.stream([("inflight", bumps_frame(1024, 1024))], line_time_s=0.0)
        wait_until(lambda: events(results, "scan_finished"), what="the scan to finish arriving")
        in_flight = not events(results, "frame")  # its whole frame is being segmented right now
        rc = daemon.terminate()
    assert rc == 0, daemon.log()
    assert in_flight
    final = sub.wait_for(frame_done("inflight"), timeout=5.0, what="the frame in flight published")
    assert final.complete and len(final.detections) == 5
    assert [e["scan_id"] for e in events(results, "frame")] == ["inflight"]
    assert len(processed(results)) == 1 and events(results, "stop")
    assert read_state(results)["state"] == "stopped"
    assert "stopping: finishing the frame in flight" in daemon.log()


def test_a_graceful_stop_keeps_open_scans_which_continue_after_the_next_start(
    make_daemon: Callable[..., Daemon], make_socket: SocketFactory
) -> None:
    daemon = make_daemon()
    assert daemon.publish_endpoint and daemon.ingest_endpoint
    sub = Subscriber(make_socket, daemon.publish_endpoint)
    sub.wait_heartbeat()
    frame = bumps_frame(64, 64)
    info = scan_info(frame, "open")
    with bridge(make_socket, daemon.ingest_endpoint) as streamer:
        for row in range(40):
            streamer.send(_line_parts(info, row, frame.data[row]))
        sub.wait_for(lambda m: isinstance(m, SegMessage) and m.scan_id == "open" and m.rows_done == 40)
    daemon.stop()
    daemon.close()
    assert not processed(daemon.results_dir)
    assert len(list((daemon.results_dir / "journal").glob("open-*.journal"))) == 1

    again = make_daemon()
    assert again.ingest_endpoint
    with bridge(make_socket, again.ingest_endpoint) as streamer:
        for row in range(40, 64):
            streamer.send(_line_parts(info, row, frame.data[row]))
        wait_until(lambda: len(processed(again.results_dir)) == 1, what="the continued scan stored")
    record = json.loads((again.results_dir / "frames" / processed(again.results_dir)[0]["result"]).read_text())
    assert record["scan_id"] == "open" and record["complete"] is True


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def test_run_reports_set_up_mistakes_in_one_line(
    tmp_path: Path, tiny_model: Path, make_socket: SocketFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = make_socket(zmq.SUB)
    taken.bind("tcp://127.0.0.1:*")
    endpoint = taken.getsockopt_string(zmq.LAST_ENDPOINT)
    common = ["--results", str(tmp_path / "r"), "--publish", "tcp://127.0.0.1:*"]
    assert main(["run", "--model", str(tiny_model), "--ingest", endpoint, *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"stm-live run: error: ingest.endpoint {endpoint}: cannot bind")
    assert main(["run", "--model", str(tmp_path / "missing.onnx"), *common]) == 2
    assert "missing.onnx" in capsys.readouterr().err
    assert main(["run", "--model", str(tiny_model), "--watch", str(tmp_path / "nowhere"), *common]) == 2
    assert "is not an existing folder" in capsys.readouterr().err
    assert main(["status", "--results", str(tmp_path / "never")]) == 2
    assert "no state file" in capsys.readouterr().err


def test_simulate_streams_to_the_daemon(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    assert daemon.ingest_endpoint
    args = ["simulate", "--zmq", daemon.ingest_endpoint, "--line-time", "0", "--pixels", "48", "--size-nm", "6",
            "--count", "2", "--artefacts", "none", "--wait-s", "10"]
    assert main(args) == 0
    wait_until(lambda: len(processed(daemon.results_dir)) == 2, what="two simulated scans stored")
    # The event is logged just after the result is stored: give the second one its moment.
    wanted = {"si001-ash3_0000", "si001-ash3_0001"}
    wait_until(lambda: {e["scan_id"] for e in events(daemon.results_dir, "frame")} == wanted,
               what="both frame events logged")


def test_demo_runs_the_main_job_and_says_where_the_results_are(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "demo"
    args = ["demo", "--model", str(tiny_model), "--pixels", "64", "--size-nm", "8", "--line-time", "0.002",
            "--frames", "2", "--every", "16", "--results", str(results)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "demo-0000 finished (complete, 64 lines)" in out and "demo-0001 finished" in out
    # Summaries come at the first partial at or past every 16th line; at 2 ms per line the
    # daemon may coalesce lines, so that partial can be line 17 or 18 rather than 16.
    seen = [int(n) for n in re.findall(r"demo-0000  line\s+(\d+)/64", out)]
    assert seen and 16 <= seen[0] < 32 and seen == sorted(seen), out
    assert f"results in {results}" in out and "overlay of demo-0001" in out
    assert len(list((results / "frames").glob("demo-*.png"))) == 2


def test_the_model_is_swapped_without_a_restart_and_the_scan_in_progress_uses_it(
    tmp_path: Path, make_daemon: Callable[..., Daemon], make_socket: SocketFactory
) -> None:
    daemon = make_daemon()
    assert daemon.publish_endpoint and daemon.ingest_endpoint and daemon.model is not None
    old_id = daemon.model.id
    other = tmp_path / "other.onnx"
    write_tiny_model(other, nm_per_px=0.2, input_scale="std")  # another normalisation: another model id
    new_model = SegmentationModel(other, provider="cpu")
    assert new_model.id != old_id
    sub = Subscriber(make_socket, daemon.publish_endpoint)
    sub.wait_heartbeat()
    frame = bumps_frame()
    info = scan_info(frame, "swap")
    with bridge(make_socket, daemon.ingest_endpoint) as streamer:
        for row in range(64):
            streamer.send(_line_parts(info, row, frame.data[row]))
        sub.wait_for(lambda m: isinstance(m, SegMessage) and m.scan_id == "swap" and m.rows_done == 64,
                     what="the partial of the first half")
        daemon.use_model(new_model, reason="test")
        swapped = sub.wait_for(lambda m: isinstance(m, SegMessage) and m.scan_id == "swap" and m.model_id != old_id,
                               what="a partial from the new model before any new line")
        assert swapped.rows_done == 64 and swapped.model_id == new_model.id
        for row in range(64, frame.rows):
            streamer.send(_line_parts(info, row, frame.data[row]))
        final = sub.wait_for(frame_done("swap"), what="the final result")
    assert final.model_id == new_model.id
    wait_until(lambda: events(daemon.results_dir, "model"), what="the swap in the event log")
    event = events(daemon.results_dir, "model")[0]
    assert event["old"]["id"] == old_id and event["new"]["id"] == new_model.id and event["reason"] == "test"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to read thread priorities")
def test_the_whole_frame_path_runs_at_a_lower_priority_than_the_live_path(
    tmp_path: Path, tiny_model: Path, spawn: Callable[..., DaemonProcess]
) -> None:
    daemon = spawn(base_settings(tmp_path, tiny_model, **{"live.whole_frame_nice": 7}))

    def nice_values() -> dict[int, int]:
        values = {}
        for task in Path(f"/proc/{daemon.proc.pid}/task").iterdir():
            fields = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()
            values[int(task.name)] = int(fields[16])  # field 19 of stat: nice
        return values

    base = os.getpriority(os.PRIO_PROCESS, 0)  # the daemon starts at this nice value (0 unless run under nice)
    lowered = min(19, base + 7)

    def seen() -> dict[int, int] | None:
        values = nice_values()
        return values if lowered in values.values() else None

    values = wait_until(seen, what=f"a thread at nice {lowered}")
    assert values[daemon.proc.pid] == base  # the main thread, and with it the live path, at the daemon's priority
    assert set(values.values()) <= {base, lowered}
    assert daemon.terminate() == 0
