"""The page without a browser: the feed, the server with real WebSocket clients, tokens, teach-in, view, label.

Real parts throughout: the page server on a random port of 127.0.0.1, aiohttp
WebSocket clients (``viewer_kit.WsClient``), a daemon in-process with the tiny
real ONNX model, real ZeroMQ sockets. The browser tests are in
``test_viewer_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from daemon_kit import BRIGHT, Subscriber, base_settings, bridge, bumps_frame, frame_done, wait_until
from viewer_kit import WsClient
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.cli import main
from stm_live.config import load_config
from stm_live.errors import ConfigError
from stm_live.frame import Detection, Frame, Segmentation
from stm_live.model.runtime import SegmentationModel
from stm_live.publish import documents as docs
from stm_live.sim.stream import LineStreamer
from stm_live.viewer import LabelPage, RemotePage, ViewerFeed, ViewerServer
from stm_live.viewer.pages import daemon_with_page
from stm_live.viewer.state import Outgoing, parse_binary
from stm_live.viewer.teach import read_version
from stm_live.wire import SegMessage

# --------------------------------------------------------------------------
# The feed: only what is new goes out
# --------------------------------------------------------------------------


def _frame(rows: int = 8, cols: int = 6) -> Frame:
    return Frame(np.zeros((rows, cols), np.float32), cols * 1e-10, rows * 1e-10)


def _seg(frame: Frame, detections: list[Detection], rows_done: int, label: int = 1) -> Segmentation:
    cmap = np.zeros(frame.data.shape, np.uint8)
    cmap[:rows_done] = label
    return Segmentation(("bright", "dark"), cmap, tuple(detections), "m1", "tiny", rows_done=rows_done)


def _collect(feed: ViewerFeed) -> list[list[Outgoing]]:
    sent: list[list[Outgoing]] = []
    feed.deliver = lambda msgs, client: sent.append(list(msgs))
    return sent


def _decoded(batch: list[Outgoing]) -> list[Any]:
    return [parse_binary(m) if isinstance(m, bytes) else json.loads(m) for m in batch]


def test_the_feed_sends_rows_as_binary_and_only_the_detections_that_changed() -> None:
    feed = ViewerFeed()
    sent = _collect(feed)
    frame = _frame()
    for row in range(3):
        feed.handle(docs.LEVEL_LINE, docs.level_line("s1", frame, row, np.full(6, row, np.float32),
                                                     rows_done=row + 1).header, np.full(6, row, np.float32))
    first, second = _decoded(sent[0]), _decoded(sent[1])
    assert first[0]["type"] == "scan" and first[0]["rows"] == 8 and first[0]["width_nm"] == pytest.approx(0.6)
    assert len(second) == 1, "a second line of the same scan is its row and nothing else"
    header, payload = second[0]
    assert header["k"] == "rows" and header["row0"] == 1 and np.frombuffer(payload, "<f4").tolist() == [1.0] * 6

    a, b = Detection("bright", 0.1, 0.1, 0.02, 0.9, id=1), Detection("dark", 0.3, 0.2, 0.02, 0.8, id=2)
    p1 = docs.partial("s1", frame, _seg(frame, [a, b], 3), label_maps=True, map_rows=(0, 3))
    feed.handle(p1.topic, p1.header, p1.payload)
    labels, det = _decoded(sent[-1])
    assert labels[0]["k"] == "labels" and (labels[0]["row0"], labels[0]["n"]) == (0, 3)
    assert len(det["add"]) == 2 and det["del"] == [] and det["counts"] == {"bright": 1, "dark": 1}

    moved = Detection("dark", 0.35, 0.2, 0.02, 0.8, id=2)
    p2 = docs.partial("s1", frame, _seg(frame, [a, moved], 3), label_maps=True, map_rows=(2, 3))
    feed.handle(p2.topic, p2.header, p2.payload)
    labels, det = _decoded(sent[-1])
    assert (labels[0]["row0"], labels[0]["n"]) == (2, 1), "only the class-map rows the partial carries"
    assert [d["x_nm"] for d in det["add"]] == [0.35], "the unchanged detection is not sent again"
    assert det["del"] == ["dark@0.30,0.20"]

    snapshot = _decoded(feed.snapshot())
    assert [m["type"] if isinstance(m, dict) else m[0]["k"] for m in snapshot] == [
        "hello", "scan", "rows", "labels", "det"]
    rows_header, rows_payload = snapshot[2]
    assert (rows_header["row0"], rows_header["n"]) == (0, 3) and len(rows_payload) == 3 * 6 * 4
    assert snapshot[4]["full"] and snapshot[4]["total"] == 2


def test_a_finished_frame_goes_to_the_strip_with_its_image_and_class_map() -> None:
    offered: list[Any] = []
    feed = ViewerFeed(on_finished=offered.append)
    sent = _collect(feed)
    frame = _frame()
    for row in range(8):
        doc = docs.level_line("s1", frame, row, np.full(6, row, np.float32), rows_done=row + 1)
        feed.handle(doc.topic, doc.header, doc.payload)
    full = Frame(np.zeros((8, 6), np.float32), 6e-10, 8e-10, rows_valid=8)
    fdoc = docs.frame_result("s1", full, _seg(full, [Detection("bright", 0.1, 0.1, 0.02, 0.9)], 8, label=2),
                             source="zmq", complete=True, sha256="ab", label_maps=True)
    feed.handle(fdoc.topic, fdoc.header, fdoc.payload, fdoc.local)
    msg = _decoded(sent[-1])[-1]
    assert msg["type"] == "frame" and msg["key"] == "s1" and msg["counts"] == {"bright": 1, "dark": 0}
    kept = feed.shelf.get("s1")
    assert kept is not None and kept.image is not None and kept.labels is not None
    assert kept.image[:, 0].tolist() == list(range(8)) and int(kept.labels.max()) == 2
    assert offered == [kept]
    feed.handle(fdoc.topic, fdoc.header, fdoc.payload, fdoc.local)  # the same scan id again: a new strip entry
    assert feed.shelf.keys() == ["s1", "s1~2"]


# --------------------------------------------------------------------------
# The server: several browsers, a stuck one, tokens
# --------------------------------------------------------------------------


def _image_of(client: WsClient, rows: int, cols: int) -> np.ndarray | None:
    """The image a page has drawn from every rows message it got (None while a row is missing)."""
    image = np.full((rows, cols), np.nan, np.float32)
    for h, payload in client.binaries("rows"):
        image[h["row0"]:h["row0"] + h["n"]] = np.frombuffer(payload, "<f4").reshape(h["n"], h["cols"])
    return None if np.isnan(image).any() else image


class _FeedThread:
    """The feed's one thread, as the daemon's sink thread is: documents when asked, snapshots meanwhile."""

    def __init__(self, feed: ViewerFeed) -> None:
        self.feed = feed
        self.rows: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                job = self.rows.get(timeout=0.02)
            except queue.Empty:
                self.feed.serve()
                continue
            if job is None:
                return
            n, cols = job
            frame = Frame(np.zeros((n, cols), np.float32), cols * 1e-10, n * 1e-10)
            for row in range(n):
                doc = docs.level_line("big", frame, row, np.full(cols, row, np.float32), rows_done=row + 1)
                self.feed.handle(doc.topic, doc.header, doc.payload)
                time.sleep(0.001)  # a fast microscope: 1000 lines/s of 16 kB
            self.done.set()

    def stop(self) -> None:
        self.rows.put(None)
        self.thread.join(10)


def test_several_browsers_get_every_row_and_a_stuck_one_slows_nobody_then_catches_up() -> None:
    feed = ViewerFeed()
    server = ViewerServer(feed, port=0, client_buffer_kb=256).start()
    feeder = _FeedThread(feed)
    clients = [WsClient(server.url), WsClient(server.url)]
    stuck = WsClient(server.url, read=False)
    try:
        for c in (*clients, stuck):
            assert c.opened.wait(10) and c.error is None
        for c in clients:
            c.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "hello", what="the first snapshot")
        wait_until(lambda: len(server.clients) == 3, what="three browsers connected")
        rows, cols = 1500, 4096  # 24 MB: more than the socket buffers of a browser that does not read
        feeder.rows.put((rows, cols))
        assert feeder.done.wait(60), "the feed never waits for a browser"
        for c in clients:  # whatever a reading browser missed in a burst, a snapshot gave it: the whole image
            wait_until(lambda c=c: _image_of(c, rows, cols) is not None, timeout=60, what="every row on a page")
            assert _image_of(c, rows, cols)[:, 0].tolist() == list(range(rows))  # type: ignore[index]
        stats = server.stats()
        assert stats["dropped"] > 0 and stats["resyncs"] >= 1, stats  # the stuck browser's, counted
        assert stats["resyncs"] < 20, "a stuck browser costs a snapshot when it reads again, not one per update"
    finally:
        for c in (*clients, stuck):
            c.close()
    # The stuck browser comes back (a reload, or its tab wakes up): a snapshot brings it up to date.
    back = WsClient(server.url)
    try:
        header, payload = back.wait_for(lambda m: isinstance(m, tuple) and m[0]["k"] == "rows", what="the snapshot")
        assert (header["row0"], header["n"]) == (0, rows)
        assert np.frombuffer(payload, "<f4").reshape(rows, cols)[:, 0].tolist() == list(range(rows))
    finally:
        back.close()
        feeder.stop()
        server.close()


def test_a_network_address_needs_a_token_and_every_request_must_carry_it() -> None:
    with pytest.raises(ConfigError, match=r"viewer.host 0.0.0.0: .*viewer.token"):
        ViewerServer(ViewerFeed(), host="0.0.0.0", port=0)
    token = "s3cret-key-of-the-lab"
    feed = ViewerFeed()
    server = ViewerServer(feed, port=0, token=token).start()

    async def probe() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            out = {}
            for name, url in (("page", server.url), ("stats", f"{server.url}api/stats"),
                              ("stats_key", f"{server.url}api/stats?token={token}"),
                              ("stats_wrong", f"{server.url}api/stats?token=nope"),
                              ("auth", f"{server.url}api/auth")):
                async with session.get(url) as r:
                    out[name] = (r.status, await r.text())
            try:
                async with session.ws_connect(f"{server.url}ws"):
                    out["ws"] = 101
            except aiohttp.WSServerHandshakeError as exc:
                out["ws"] = exc.status
            return out

    try:
        got = asyncio.run(probe())
        assert got["page"][0] == 200 and "needs its key" in got["page"][1]
        assert got["stats"][0] == 401 and got["stats_wrong"][0] == 401 and got["stats_key"][0] == 200
        assert json.loads(got["auth"][1]) == {"token_required": True, "ok": False}
        assert got["ws"] == 401
        c = WsClient(server.url, token=token)
        wait_until(lambda: server.clients, what="the browser with the key")
        feed.serve()  # this test is the feed's thread
        c.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "hello", what="hello with the key")
        c.close()
    finally:
        server.close()


def test_a_port_in_use_is_one_clear_error() -> None:
    first = ViewerServer(ViewerFeed(), port=0).start()
    try:
        with pytest.raises(ConfigError, match=rf"viewer.port 127.0.0.1:{first.port}: cannot bind"):
            ViewerServer(ViewerFeed(), port=first.port).start()
    finally:
        first.close()


# --------------------------------------------------------------------------
# A daemon with its page; teach-in through the page's API; view --connect
# --------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.post(url, json=body or {}) as r:
            return r.status, await r.json()

    return asyncio.run(go())


def _get(url: str) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.read())

    return asyncio.run(go())


def test_the_daemon_page_shows_what_the_daemon_publishes_and_teach_in_swaps_versions_of_the_model(
    tmp_path: Path, tiny_model: Path, make_socket: SocketFactory
) -> None:
    config = load_config(None, use_default_file=False, environ={}, overrides=base_settings(tmp_path, tiny_model))
    daemon, page = daemon_with_page(config)
    assert page is not None
    page.start()
    daemon.start()
    browser = WsClient(page.url)
    streamer: LineStreamer | None = None
    try:
        sub = Subscriber(make_socket, daemon.publish_endpoint)
        sub.wait_heartbeat()
        hello = browser.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "hello", what="hello")
        sources = hello.get("sources") or browser.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "sources",
                                                           what="the daemon's sources")
        assert sources["ingest"] == daemon.ingest_endpoint and sources["publish"] == daemon.publish_endpoint
        frame = bumps_frame()
        streamer = bridge(make_socket, daemon.ingest_endpoint)  # open until the end: linger 0 drops what is unsent
        streamer.stream([("scan-1", frame)], line_time_s=0.0)
        final = sub.wait_for(frame_done("scan-1"), what="seg.frame")
        browser.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "frame", what="the frame on the page")
        rows = {h["row0"] for h, _ in browser.binaries("rows")}
        assert rows == set(range(frame.rows)), "every levelled line reached the page"
        partials = [m for m in sub.messages if isinstance(m, SegMessage) and not m.final]
        last = partials[-1]
        det = [m for m in browser.texts("det") if m["rows_done"] == last.rows_done][-1]
        published = {c: sum(d.class_name == c for d in last.detections) for c in last.classes}
        assert det["counts"] == published, "the page counts what the last seg.partial published"

        status, record = _get(f"{page.url}api/frames/scan-1")
        assert status == 200 and record["teachable"]
        assert [(d["class"], d["x_nm"], d["y_nm"]) for d in record["detections"]] == [
            (d.class_name, round(d.x_nm, 4), round(d.y_nm, 4)) for d in final.detections]

        # Stored results are listed and reopen with their class map and overlay.
        stored = wait_until(lambda: _get(f"{page.url}api/results")[1]["results"], what="the stored result")
        name = stored[0]["name"]
        assert stored[0]["scan"] == "scan-1" and stored[0]["detections"] == len(final.detections)
        status, rec = _get(f"{page.url}api/results/{name}")
        assert status == 200 and rec["has_labels"] and rec["has_overlay"] and rec["scan_id"] == "scan-1"
        status, body = _get(f"{page.url}api/results/{name}/labels")
        header, payload = parse_binary(body)
        assert status == 200 and (header["n"], header["cols"]) == (frame.rows, frame.cols)
        assert np.array_equal(np.frombuffer(payload, np.uint8).reshape(frame.rows, frame.cols),
                              np.load(page.server.results_dir / "frames" / f"{name}.npy"))  # type: ignore[operator]
        status, png = _get(f"{page.url}api/results/{name}/overlay.png")
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert _get(f"{page.url}api/results/..%2Fstate")[0] in (400, 404)

        base_id = daemon.model.id if daemon.model else None
        # Teach: the bright bumps are a new class "peak"; the corner is background.
        points = [{"x_nm": (c + 0.5) * 0.1, "y_nm": (r + 0.5) * 0.1, "class": "peak"} for r, c in BRIGHT]
        status, version = _post(f"{page.url}api/teach", {"key": "scan-1", "points": points, "regions": [
            {"x0_nm": 0.0, "y0_nm": 7.0, "x1_nm": 3.0, "y1_nm": 12.8, "class": "background"}]})
        assert status == 200, version
        assert version["version"] == 1 and version["model_before"]["id"] == base_id
        new_id = version["model_after"]["id"]
        assert daemon.model is not None and daemon.model.id == new_id and "peak" in daemon.model.classes
        listing = browser.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "versions" and m["current"] == 1,
                                   what="the versions list")
        assert listing["versions"][0]["model_after"]["id"] == new_id

        # The next frame runs on the new model.
        streamer.stream([("scan-2", frame)], line_time_s=0.0)
        second = sub.wait_for(frame_done("scan-2"), what="the next frame")
        assert second.model_id == new_id
        peaks = [(d.y_nm / 0.1, d.x_nm / 0.1) for d in second.detections if d.class_name == "peak"]
        assert len(peaks) >= 2 and all(min((r - br) ** 2 + (c - bc) ** 2 for br, bc in BRIGHT) < 3**2
                                       for r, c in peaks), peaks  # at the bumps (a toy model: 2 or 3 of them)

        # The version file replays offline into the same model id.
        vfile = page.teach.folder / "versions" / "v0001.json" if page.teach else None
        assert vfile is not None and read_version(vfile).model_after["id"] == new_id
        assert main(["adapt", "--replay", str(vfile), "--out", str(tmp_path / "replayed.onnx")]) == 0
        assert SegmentationModel(tmp_path / "replayed.onnx").id == new_id

        status, undone = _post(f"{page.url}api/undo")
        assert status == 200 and undone["model"]["id"] == base_id and daemon.model.id == base_id
        assert read_version(vfile).undone
        status, again = _post(f"{page.url}api/undo")
        assert status == 400 and "nothing to undo" in again["error"]
    finally:
        if streamer is not None:
            streamer.close()
        browser.close()
        daemon.stop()
        daemon.close()
        page.close()


def test_view_connect_draws_a_daemon_from_its_published_messages(
    tmp_path: Path, tiny_model: Path, make_socket: SocketFactory, make_daemon: Any
) -> None:
    daemon = make_daemon()
    config = load_config(None, use_default_file=False, environ={}, overrides={"viewer.port": 0})
    page = RemotePage(config, daemon.publish_endpoint).start()
    browser = WsClient(page.url)
    streamer: LineStreamer | None = None
    try:
        hello = browser.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "hello", what="hello")
        assert hello["mode"] == "remote" and not hello["teach"]
        wait_until(lambda: (daemon.heartbeat(), page.received)[1] > 0, what="the page's subscription")
        frame = bumps_frame()
        streamer = bridge(make_socket, daemon.ingest_endpoint)
        streamer.stream([("far-1", frame)], line_time_s=0.0)
        msg = browser.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "frame", what="the frame")
        assert msg["scan"] == "far-1"
        assert {h["row0"] for h, _ in browser.binaries("rows")} == set(range(frame.rows))
        assert browser.texts("det") and browser.texts("status")
        status, body = _post(f"{page.url}api/teach", {"key": "far-1", "points": []})
        assert status == 409 and "teach-in needs the daemon itself" in body["error"]
    finally:
        if streamer is not None:
            streamer.close()
        browser.close()
        page.close()


def test_label_opens_a_file_and_each_version_segments_it_again(tmp_path: Path, tiny_model: Path) -> None:
    frame = bumps_frame()
    npy = tmp_path / "bumps.npy"
    np.save(npy, frame.data, allow_pickle=False)
    from stm_live.io import read_frame

    image = read_frame(npy, width_nm=12.8)
    config = load_config(None, use_default_file=False, environ={}, overrides={"viewer.port": 0})
    page = LabelPage(config, image, npy, SegmentationModel(tiny_model), tmp_path / "teach").start()
    browser = WsClient(page.url)
    try:
        hello = browser.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "hello" and m["frames"],
                                 what="the file in the strip")
        first = hello["frames"][0]
        assert hello["mode"] == "label" and first["key"] == "bumps" and first["source"] == str(npy)
        points = [{"x_nm": (c + 0.5) * 0.1, "y_nm": (r + 0.5) * 0.1, "class": "peak"} for r, c in BRIGHT]
        status, version = _post(f"{page.url}api/teach", {"key": "bumps", "points": points})
        assert status == 200, version
        again = browser.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "frame" and m["key"] != "bumps",
                                 what="the file segmented by the new model")
        assert again["model"]["id"] == version["model_after"]["id"] and again["counts"]["peak"] >= 2
        v = read_version(tmp_path / "teach" / "versions" / "v0001.json")
        assert v.support[0].path == npy and v.support[0].width_nm == pytest.approx(12.8)
        out = tmp_path / "replayed.onnx"
        assert main(["adapt", "--replay", str(v.path), "--out", str(out)]) == 0
        assert SegmentationModel(out).id == version["model_after"]["id"]
        np.save(npy, frame.data * 2, allow_pickle=False)  # the support frame changed: replay refuses it
        assert main(["adapt", "--replay", str(v.path), "--out", str(out)]) == 2
    finally:
        browser.close()
        page.close()


def test_command_line_mistakes_end_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 plain_logging: None) -> None:
    assert main(["view", "--connect", "localhost:5556"]) == 2
    assert "expected a ZeroMQ endpoint" in capsys.readouterr().err
    assert main(["label", str(tmp_path / "missing.sxm"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.sxm" in err
    assert main(["adapt", "--replay", str(tmp_path / "v.json"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "version file not found" in capsys.readouterr().err
    (tmp_path / "v.json").write_text(json.dumps({"format": "something else"}))
    assert main(["adapt", "--replay", str(tmp_path / "v.json"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not a teach-in version file" in capsys.readouterr().err
    assert main(["adapt", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--replay VERSION_FILE" in capsys.readouterr().err


def test_versions_accumulate_the_support_set_and_undo_walks_back_to_the_base(tmp_path: Path, tiny_model: Path) -> None:
    from stm_live.model.prototypes import Point
    from stm_live.viewer.teach import Region, TeachIn

    base = SegmentationModel(tiny_model)
    swaps: list[tuple[str, dict[str, Any]]] = []
    teach = TeachIn(folder=tmp_path / "teach", base=base, use_model=lambda m, **ctx: swaps.append((m.id, ctx)),
                    load_model=SegmentationModel)
    frame = bumps_frame()
    teach.offer_frame("f1", width_nm=12.8, height_nm=12.8, image=frame.data.astype(np.float32))
    pts = [Point((c + 0.5) * 0.1, (r + 0.5) * 0.1, "peak") for r, c in BRIGHT]
    v1 = teach.teach("f1", pts[:2])
    v2 = teach.teach("f1", pts[2:], [Region(0.0, 8.0, 3.0, 12.0)])
    assert (v1.parent, v2.parent) == (0, 1) and v2.model_before["id"] == v1.model_after["id"]
    assert [len(s.points) for s in v2.support] == [3] and len(v2.support[0].regions) == 1
    assert v2.support[0].path.parent == tmp_path / "teach" / "frames", "a streamed frame's image is kept as a file"
    assert teach.undo()["id"] == v1.model_after["id"]
    assert teach.undo()["id"] == base.id
    assert [s[0] for s in swaps] == [v1.model_after["id"], v2.model_after["id"], v1.model_after["id"], base.id]
    assert [s[1]["teach_in"]["action"] for s in swaps] == ["teach", "teach", "undo", "undo"]
    assert teach.latest["current"] == 0 and [v["undone"] for v in teach.latest["versions"]] == [True, True]
    with pytest.raises(ValueError, match="nothing to undo"):
        teach.undo()
    with pytest.raises(ValueError, match="not available for teach-in"):
        teach.teach("nope", pts)


def test_teach_settings_record_the_contrast_gate_and_old_version_files_replay_without_it() -> None:
    from stm_live.viewer.teach import TeachSettings

    now = TeachSettings()
    assert now.contrast_fraction == 0.5 and TeachSettings.from_json(now.to_json()) == now
    written_before_the_gate = {k: v for k, v in now.to_json().items() if k != "contrast_fraction"}
    assert TeachSettings.from_json(written_before_the_gate).contrast_fraction == 0.0


def test_the_automation_api_says_when_there_is_no_bridge_and_refuses_bad_commands(tmp_path: Path) -> None:
    """Without a bridge endpoint: 404; a bridge that does not answer: 503 naming it, within seconds."""
    alone = ViewerServer(ViewerFeed(), port=0).start()
    nobody = f"ipc://{tmp_path}/nobody"
    with_bridge = ViewerServer(ViewerFeed(), port=0, automation=nobody).start()

    async def probe() -> dict[str, tuple[int, dict[str, Any]]]:
        out = {}
        async with aiohttp.ClientSession() as session:
            for name, method, url, body in (
                ("none", "GET", f"{alone.url}api/automation", None),
                ("silent", "GET", f"{with_bridge.url}api/automation", None),
                ("bad", "POST", f"{with_bridge.url}api/automation", {"command": "explode"}),
                ("pause", "POST", f"{with_bridge.url}api/automation", {"command": "pause"}),
            ):
                async with session.request(method, url, json=body) as r:
                    out[name] = (r.status, await r.json())
        return out

    try:
        t0 = time.monotonic()
        got = asyncio.run(probe())
        assert time.monotonic() - t0 < 15.0
        assert got["none"][0] == 404 and "bridge.control_endpoint" in got["none"][1]["error"]
        assert got["silent"][0] == 503 and "no bridge answered" in got["silent"][1]["error"]
        assert got["silent"][1]["endpoint"] == nobody
        assert got["bad"][0] == 400 and "pause" in got["bad"][1]["error"]
        assert got["pause"][0] == 503
    finally:
        alone.close()
        with_bridge.close()


def test_classes_kept_from_the_base_head_keep_their_calibrated_class_offsets(tmp_path: Path) -> None:
    from dataclasses import replace

    import numpy as np

    from stm_live.model.format import attach_head, load_onnx, read_info, save_model, with_class_offsets
    from stm_live.model.runtime import SegmentationModel
    from stm_live.viewer.teach import _with_base_classes

    bundled = Path(__file__).resolve().parents[1] / "models" / "si001-ash3.onnx"
    onnx_model = load_onnx(bundled)
    info = read_info(onnx_model)
    assert info.prototypes is not None
    # known offsets in place of the bundled model's own calibrated ones
    calibrated = with_class_offsets(replace(info.prototypes, offsets=None), info.classes,
                                    {"dangling_bond": 0.5, "dimer_vacancy": -1.0})
    base_path = tmp_path / "base.onnx"
    save_model(attach_head(onnx_model, calibrated), replace(info, prototypes=calibrated), base_path)
    base = SegmentationModel(base_path, provider="cpu")
    # a taught head that knows AsH3 only (background and AsH3 prototypes, no offsets)
    own = [k for k, label in enumerate(info.prototypes.labels) if label in (0, 1)]
    taught = replace(info.prototypes, vectors=info.prototypes.vectors[own],
                     labels=tuple(info.prototypes.labels[k] for k in own), offsets=None)
    taught_info = replace(info, classes=("AsH3",), prototypes=taught)
    _, merged = _with_base_classes(attach_head(onnx_model, taught), taught_info, base, renamed=set())
    assert merged.classes == ("AsH3", "dangling_bond", "dimer_vacancy")
    assert merged.prototypes is not None and merged.prototypes.offsets is not None
    by_class = {merged.classes[label - 1]: float(o) for label, o in
                zip(merged.prototypes.labels, merged.prototypes.offsets, strict=True) if label}
    assert by_class == {"AsH3": 0.0, "dangling_bond": 0.5, "dimer_vacancy": -1.0}
    assert np.all(merged.prototypes.offsets[np.asarray(merged.prototypes.labels) == 0] == 0.0)
