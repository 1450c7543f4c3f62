"""Sinks: the PUB socket with slow subscribers, the result store (atomic, idempotent, kill -9), the event log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import zmq
from PIL import Image
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.frame import Detection
from stm_live.publish import EventLog, Publisher, ResultStore, array_sha256, overlay_rgb, stored_record
from stm_live.wire import Message, SegMessage, StatusMessage, decode, decode_status, encode, load_schema

CLASSES = ("AsH3", "DB", "DV")


def seg_message(n: int = 0, rows: int = 16, cols: int = 16) -> SegMessage:
    return SegMessage(
        scan_id=f"scan-{n}", rows_done=rows, rows=rows, cols=cols, width_m=8e-9, height_m=8e-9, model_id="m1",
        model_name="tiny", classes=CLASSES, detections=(Detection("DB", 1.0, 2.0, 0.3, 0.8, id=0),),
        latency_ms=1.5, class_map=np.full((rows, cols), n % 4, np.uint8),
    )


def status_message(t: float = 1.0) -> StatusMessage:
    counters = dict.fromkeys(("frames", "lines", "errors", "dropped"), 0)
    return StatusMessage(state="running", uptime_s=t, counters=counters, queues={}, version="0.1.0", t=t)


def publish(publisher: Publisher, msg: Message) -> bool:
    return publisher.send(encode(msg))


def subscribed(publisher: Publisher, n: int = 1, timeout_s: float = 5.0) -> None:
    """Wait until ``n`` subscriptions reached the XPUB socket (no sleep: it reports them as they arrive)."""
    deadline = time.monotonic() + timeout_s
    while publisher.poll_subscriptions(0.1) < n:
        assert time.monotonic() < deadline, "the subscriptions never arrived"


@pytest.fixture
def publisher(make_socket: SocketFactory) -> Iterator[Publisher]:
    pub = Publisher.bind(make_socket.context, "tcp://127.0.0.1:*", send_hwm=4)  # type: ignore[attr-defined]
    yield pub
    pub.close()


# --------------------------------------------------------------------------
# PUB
# --------------------------------------------------------------------------


def test_a_subscriber_receives_what_is_published(publisher: Publisher, make_socket: SocketFactory) -> None:
    sub = make_socket(zmq.SUB, subscribe=b"")
    sub.connect(publisher.endpoint)
    subscribed(publisher)
    assert publish(publisher, seg_message(1)) and publish(publisher, status_message())
    got = decode(sub.recv_multipart())
    assert isinstance(got, SegMessage) and got.scan_id == "scan-1" and got.class_map is not None
    assert decode_status(sub.recv_multipart()) == status_message()
    assert (publisher.sent, publisher.dropped) == (2, 0)


def test_topic_subscriptions_filter(publisher: Publisher, make_socket: SocketFactory) -> None:
    sub = make_socket(zmq.SUB, subscribe=b"status")
    sub.connect(publisher.endpoint)
    subscribed(publisher)
    publish(publisher, seg_message())
    publish(publisher, status_message(2.0))
    assert decode_status(sub.recv_multipart()).t == 2.0  # the seg message was not for it


def test_a_subscriber_that_never_reads_does_not_block_the_publisher(
    publisher: Publisher, make_socket: SocketFactory
) -> None:
    healthy = make_socket(zmq.SUB, subscribe=b"", rcvtimeo_ms=100)
    healthy.connect(publisher.endpoint)
    # Another prefix than the healthy one's: an XPUB reports each distinct subscription once.
    stuck = make_socket(zmq.SUB, subscribe=b"seg.", rcvhwm=4, rcvbuf=4096)
    stuck.connect(publisher.endpoint)
    subscribed(publisher, 2)
    n = 400
    results = [publish(publisher, seg_message(i, rows=256, cols=256)) for i in range(n)]  # 64 kB each
    assert publisher.sent + publisher.dropped == n
    assert publisher.dropped > 0 and not all(results)  # counted, not waited for
    # Once the stuck subscriber is gone, the healthy one gets messages again.
    stuck.close(linger=0)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        publish(publisher, status_message(99.0))
        try:
            msg = healthy.recv_multipart()
        except zmq.Again:
            continue
        if msg[0] == b"status":
            break
    else:
        pytest.fail("the healthy subscriber never received a message after the stuck one left")


# --------------------------------------------------------------------------
# Result store
# --------------------------------------------------------------------------


def base_record(source: str = "/data/scan_001.sxm") -> dict[str, Any]:
    """What ``stm-live segment --json`` prints for one input."""
    return {
        "source": source,
        "image": {"rows": 16, "cols": 16, "width_nm": 8.0, "height_nm": 8.0, "channel": "Z"},
        "model": {"id": "m1", "name": "tiny"},
        "classes": list(CLASSES),
        "detections": [{"id": 0, "class": "DB", "x_nm": 1.0, "y_nm": 2.0, "area_nm2": 0.3, "score": 0.8}],
        "timings_ms": {"level": 1.0, "segment": 3.5, "total": 4.5},
    }


def record(n: int = 0, source: str = "/data/scan_001.sxm") -> dict[str, Any]:
    return stored_record(base_record(source), scan_id="scan_001", complete=True,
                         sha256=array_sha256(np.array([n], np.int64)))


def test_store_writes_record_class_map_and_overlay_then_marks_processed(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    rec = record()
    cmap = np.zeros((16, 16), np.uint8)
    cmap[4:8, 4:8] = 2
    image = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    assert not store.is_processed(rec["sha256"])
    out = store.store(rec, cmap, image=image)
    assert out.record.name == f"scan_001-{rec['sha256'][:16]}.json"
    saved = json.loads(out.record.read_text())
    jsonschema.validate(saved, load_schema("result"))
    assert saved == rec
    np.testing.assert_array_equal(np.load(out.class_map, allow_pickle=False), cmap)
    assert out.overlay is not None
    with Image.open(out.overlay) as png:
        assert png.size == (16, 16) and png.mode == "RGB"
    assert store.is_processed(rec["sha256"])
    assert ResultStore(tmp_path / "results").is_processed(rec["sha256"])  # after a restart too
    assert not list((tmp_path / "results" / "frames").glob(".*"))  # no temporary files left


def test_the_same_input_gets_the_same_files(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, overlay_png=False)
    first = store.store(record(), np.zeros((16, 16), np.uint8), image=np.zeros((16, 16)))
    again = store.store(record(), np.ones((16, 16), np.uint8))
    assert first == again and first.overlay is None
    assert len(list(store.frames_dir.iterdir())) == 2
    zmq_rec = stored_record(base_record("zmq"), scan_id="live/scan 7", complete=False, sha256="f" * 64)
    assert store.store(zmq_rec, np.zeros((2, 2), np.uint8)).record.name == "live_scan_7-ffffffffffffffff.json"


def test_a_torn_processed_line_is_skipped_and_stale_temporaries_removed(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.store(record(1), np.zeros((4, 4), np.uint8))
    with open(store.processed_path, "ab") as fh:
        fh.write(b'{"sha256": "abc", "sou')  # kill -9 in the middle of an append
    (store.frames_dir / ".x.json.123.tmp").write_text("{")
    reopened = ResultStore(tmp_path)
    assert reopened.is_processed(record(1)["sha256"]) and len(reopened) == 1
    assert not (store.frames_dir / ".x.json.123.tmp").exists()
    reopened.store(record(2), np.zeros((4, 4), np.uint8))
    assert len(ResultStore(tmp_path)) == 2  # the next append did not glue onto the torn line


def test_store_refuses_a_class_map_that_is_not_uint8(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D uint8"):
        ResultStore(tmp_path).store(record(), np.zeros((4, 4), np.int64))


KILLED_WRITER = """
import sys
import numpy as np
from stm_live.publish import ResultStore, array_sha256, stored_record
base = {"source": "zmq", "image": {"rows": 64, "cols": 64, "width_nm": 8.0, "height_nm": 8.0, "channel": "Z"},
        "model": {"id": "m", "name": "m"}, "classes": ["A"], "detections": [], "timings_ms": {}}
store = ResultStore(sys.argv[1])
image = np.random.default_rng(0).normal(size=(64, 64))
for i in range(100000):
    rec = stored_record(base, scan_id=f"s{i}", complete=True, sha256=array_sha256(np.array([i])))
    store.store(rec, np.full((64, 64), i % 3, np.uint8), image=image)
"""


def test_kill_9_while_storing_leaves_only_complete_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(results)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and proc.poll() is None:
            processed = results / "processed.jsonl"
            if processed.exists() and processed.read_bytes().count(b"\n") >= 15:
                break
            threading.Event().wait(0.01)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    store = ResultStore(results)
    assert len(store) >= 15
    schema = load_schema("result")
    for line in store.processed_path.read_text().splitlines():
        if not line.endswith("}"):
            continue  # the torn last line, if the kill hit an append
        entry = json.loads(line)
        saved = json.loads((store.frames_dir / entry["result"]).read_text())
        jsonschema.validate(saved, schema)
        assert saved["sha256"] == entry["sha256"]
        stem = entry["result"].removesuffix(".json")
        assert np.load(store.frames_dir / f"{stem}.npy", allow_pickle=False).shape == (64, 64)
        with Image.open(store.frames_dir / f"{stem}.png") as png:
            png.load()
    # At most the one result in flight is on disk without being in the processed set; it is redone later.
    assert len(list(store.frames_dir.glob("*.json"))) - len(store) in (0, 1)
    assert not list(store.frames_dir.glob(".*"))


def test_quarantine_moves_the_file_and_writes_the_reason(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "scan.sxm").write_text(folder)
    first = store.quarantine(tmp_path / "a" / "scan.sxm", "not a Nanonis .sxm file")
    second = store.quarantine(tmp_path / "b" / "scan.sxm", "file is truncated")
    assert first is not None and second is not None
    assert (first.name, second.name) == ("scan.sxm", "scan-1.sxm")
    assert first.read_text() == "a" and second.read_text() == "b"
    note = (store.quarantine_dir / "scan-1.sxm.reason.txt").read_text()
    assert "reason: file is truncated" in note and str(tmp_path / "b" / "scan.sxm") in note
    assert store.quarantine(tmp_path / "a" / "scan.sxm", "again") is None  # already gone: nothing to move


# --------------------------------------------------------------------------
# Event log and pure builders
# --------------------------------------------------------------------------


def test_event_log_writes_one_json_object_per_line(tmp_path: Path) -> None:
    with EventLog(tmp_path / "logs" / "events.jsonl", clock=lambda: 0.25) as events:
        written = events.write("frame", scan_id="s1", detections=np.int64(3), latency_ms=float("nan"),
                               path=tmp_path / "x.sxm", rows=(1, 2))
    assert written == {"time": "1970-01-01T00:00:00.250Z", "kind": "frame", "scan_id": "s1", "detections": 3,
                       "latency_ms": None, "path": str(tmp_path / "x.sxm"), "rows": [1, 2]}
    assert json.loads((tmp_path / "logs" / "events.jsonl").read_text()) == written
    with pytest.raises(ValueError, match="closed"):
        events.write("late")


def test_event_log_is_safe_from_several_threads(tmp_path: Path) -> None:
    events = EventLog(tmp_path / "events.jsonl")

    def burst(k: int) -> None:
        for i in range(200):
            events.write("line", thread=k, i=i, text="x" * 100)

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 800 and all(json.loads(line)["kind"] == "line" for line in lines)


def test_overlay_paints_classes_over_the_grey_image() -> None:
    image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    image[0, 0] = np.nan
    cmap = np.zeros((4, 4), np.uint8)
    cmap[3, 3] = 1
    rgb = overlay_rgb(image, cmap)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]  # NaN: not scanned
    r, g, b = rgb[3, 3].tolist()
    assert r > g and r > b  # class 1 is red
    assert rgb[2, 2, 0] == rgb[2, 2, 1] == rgb[2, 2, 2]  # background stays grey
    assert image[0, 0] != image[0, 0]  # the input is not changed
    with pytest.raises(ValueError, match="class map of its shape"):
        overlay_rgb(image, cmap[:2])


def test_array_hash_ignores_byte_order_but_not_values() -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    assert array_sha256(a) == array_sha256(a.astype(">f4"))
    assert array_sha256(a) != array_sha256(a + 1)


def test_stored_record_adds_provenance_without_changing_the_record() -> None:
    base = base_record()
    rec = stored_record(base, scan_id="scan_001", complete=False, sha256="0" * 64)
    assert "scan_id" not in base and rec["complete"] is False and rec["image"] == base["image"]
    jsonschema.validate(rec, load_schema("result"))

