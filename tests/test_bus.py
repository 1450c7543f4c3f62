"""The document bus and its sinks: no sink holds up another, queues bounded by bytes, failures counted."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from stm_live.frame import Detection, Frame, Segmentation
from stm_live.publish import documents as docs
from stm_live.publish.bus import DocumentBus
from stm_live.publish.documents import Document
from stm_live.publish.events import EventLog
from stm_live.publish.sinks import Counters, StoreSink
from stm_live.publish.store import ResultStore
from stm_live.wire import decode, encode_document, load_schema


def big(n: int, nbytes: int = 1 << 20) -> Document:
    return Document(docs.EVENT, {"kind": "x", "n": n}, local={"blob": np.zeros(nbytes, np.uint8)})


def test_a_slow_sink_never_holds_up_emit_or_the_other_sinks() -> None:
    release = threading.Event()
    fast: list[int] = []

    def slow(doc: Document) -> None:
        release.wait(10)

    bus = DocumentBus()
    bus.subscribe("slow", slow, max_bytes=4 << 20)
    bus.subscribe("fast", lambda d: fast.append(d.header["n"]))
    bus.start()
    t0 = time.monotonic()
    for n in range(50):
        bus.emit(big(n))
    emit_s = time.monotonic() - t0
    assert bus.flush(0.0) is False  # the slow sink is still busy
    deadline = time.monotonic() + 10
    while len(fast) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fast == list(range(50))  # every document, in order, while the slow sink was stuck
    stats = bus.stats()
    # The slow sink's queue is bounded by bytes: 1 MB documents, 4 MB budget.
    assert stats["slow"].dropped >= 40 and stats["slow"].queued_bytes <= 5 << 20
    assert stats["slow"].dropped_by_topic == {"event": stats["slow"].dropped}
    release.set()
    bus.close()
    assert emit_s < 5.0  # emit never waited for the stuck sink (not a timing target: a hang would be minutes)


def test_a_failing_sink_is_logged_counted_and_gets_the_next_document(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    def flaky(doc: Document) -> None:
        if doc.header["n"] % 2:
            raise RuntimeError(f"boom {doc.header['n']}")
        seen.append(doc.header["n"])

    bus = DocumentBus()
    bus.subscribe("flaky", flaky)
    bus.start()
    with caplog.at_level(logging.ERROR, "stm_live.publish.bus"):
        for n in range(6):
            bus.emit(docs.event("x", n=n))
        bus.close()
    assert seen == [0, 2, 4]
    assert bus.stats()["flaky"].failed == 3 and bus.stats()["flaky"].delivered == 3
    assert "sink flaky failed on a event document" in caplog.text and "boom 1" in caplog.text


def test_what_a_sink_emits_reaches_the_others_before_close_returns() -> None:
    got: list[str] = []
    bus = DocumentBus()

    def relay(doc: Document) -> None:
        if doc.header["kind"] == "first":
            time.sleep(0.05)
            bus.emit(docs.event("second"))

    bus.subscribe("relay", relay)
    bus.subscribe("log", lambda d: got.append(d.header["kind"]))
    bus.start()
    bus.emit(docs.event("first"))
    bus.close()
    assert got == ["first", "second"]


def test_topics_filter_and_inline_sinks_run_in_emit() -> None:
    counters = Counters()
    only_status: list[str] = []
    bus = DocumentBus()
    bus.subscribe("counters", counters, inline=True)
    bus.subscribe("status", lambda d: only_status.append(d.topic), topics=[docs.STATUS])
    bus.start()
    bus.emit(docs.bad_input("zmq", "bad", kind="message"))
    assert counters.snapshot()["bad_messages"] == 1 and counters.snapshot()["errors"] == 1  # already counted
    bus.emit(docs.status(state="running", uptime_s=1, counters={}, queues={}, version="x", t=1.0, model_id=None,
                         model_name=None))
    bus.close()
    assert only_status == ["status"]


# --------------------------------------------------------------------------
# The composer: every published document passes the wire's checks and the schemas
# --------------------------------------------------------------------------


def frame_and_seg() -> tuple[Frame, Segmentation]:
    frame = Frame(np.zeros((8, 10), np.float32), 5e-9, 4e-9, offset_m=(1e-7, 2e-7), angle_deg=135.0, bias_v=-2.0,
                  setpoint_a=2e-11, scan_direction="up", rows_valid=6)
    cmap = np.zeros((8, 10), np.uint8)
    cmap[3:5, 2:4] = 1
    seg = Segmentation(("AsH3",), cmap, (Detection("AsH3", 1.5, 2.0, 0.1, 0.9),), "m1", "tiny", {"total": 1.0}, 6)
    return frame, seg


def published_documents() -> list[Document]:
    frame, seg = frame_and_seg()
    return [
        docs.partial("s", frame, seg, label_maps=True),
        docs.partial("s", frame, seg, label_maps=False),
        docs.frame_result("s", frame, seg, source="zmq", complete=False, sha256="a" * 64, label_maps=True),
        docs.not_segmented("s", frame, model_id="m1", model_name="tiny", reason="not segmented: too coarse",
                           source="/x.sxm", complete=True, sha256="b" * 64),
        docs.level_line("s", frame, 7, np.arange(10, dtype=">f8"), rows_done=1),
        docs.status(state="running", uptime_s=1.0, counters={"frames": 1, "lines": 2, "errors": 0, "dropped": 0},
                    queues={"lines": 0}, version="0.1.0", t=1.7e9, model_id="m1", model_name="tiny"),
    ]


@pytest.mark.parametrize("doc", published_documents(), ids=lambda d: d.topic)
def test_every_published_document_encodes_decodes_and_validates(doc: Document) -> None:
    parts = [bytes(p) for p in encode_document(doc)]
    msg = decode(parts)
    jsonschema.validate(json.loads(parts[1]), load_schema(doc.topic))
    assert parts[0].decode() == doc.topic and msg is not None


def test_partial_and_frame_say_where_on_the_sample() -> None:
    frame, seg = frame_and_seg()
    msg = decode([bytes(p) for p in encode_document(docs.partial("s", frame, seg, label_maps=True))])
    assert msg.position == {  # type: ignore[union-attr]
        "centre_m": [1e-7, 2e-7], "size_m": [5e-9, 4e-9], "angle_deg": 135.0, "scan_direction": "up",
        "direction": "forward", "bias_v": -2.0, "setpoint_a": 2e-11,
    }
    # An upward scan's rows done are the bottom ones.
    assert msg.map_row0 == 2 and msg.class_map.shape == (6, 10)  # type: ignore[union-attr]


def test_stored_records_validate_against_the_result_schema() -> None:
    schema = load_schema("result")
    for doc in published_documents()[2:4]:
        jsonschema.validate(doc.local["record"], schema)
    assert published_documents()[3].local["record"]["not_segmented"] == "not segmented: too coarse"


# --------------------------------------------------------------------------
# Event log rotation, the store's retry
# --------------------------------------------------------------------------


def test_the_event_log_rotates_by_size_and_keeps_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog(path, max_bytes=4096, backups=2) as events:
        for n in range(200):
            events.write("bad_message", reason="x" * 50, n=n)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(f.stat().st_size <= 4096 for f in files)
    lines = [json.loads(line) for f in (files[2], files[1], files[0]) for line in f.read_text().splitlines()]
    numbers = [e["n"] for e in lines]
    assert numbers == list(range(numbers[0], 200))  # the newest, in order, none torn


def test_the_store_keeps_a_result_it_cannot_write_and_stores_it_when_it_can(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results", overlay_png=False)
    frame, seg = frame_and_seg()
    emitted: list[Document] = []
    stored: list[bool] = []
    sink = StoreSink(store, emit=emitted.append)
    # The folder for results becomes a file: every write fails (as root, permissions would not stop us).
    store.frames_dir.rmdir()
    store.frames_dir.write_text("not a folder")
    doc = docs.frame_result("s", frame, seg, source="zmq", complete=False, sha256="c" * 64, label_maps=False,
                            on_stored=lambda: stored.append(True))
    sink(doc)
    assert sink.pending == 1 and not stored and [e.header["kind"] for e in emitted] == ["error"]
    for n in range(30):
        sink.poll(time.monotonic() + 100 * (n + 1))  # retries fail quietly (once per outage, then every 100th)
    assert sink.pending == 1 and len(emitted) == 1
    store.frames_dir.unlink()
    store.frames_dir.mkdir()
    sink.poll(time.monotonic() + 100_000)
    assert sink.pending == 0 and stored == [True] and store.is_processed("c" * 64)
    assert emitted[-1].header["kind"] == "frame"


def test_a_partial_with_no_changed_rows_goes_out_without_a_class_map() -> None:
    frame, seg = frame_and_seg()
    doc = docs.partial("s", frame, seg, label_maps=True, map_rows=(4, 4))
    msg = decode([bytes(p) for p in encode_document(doc)])
    assert doc.payload is None and msg.class_map is None and msg.rows_done == 6  # type: ignore[union-attr]
