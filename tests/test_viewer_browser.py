"""The page in a real browser: Debian's headless Chromium driven by Playwright, against real daemons.

* while a simulated scan streams into a daemon running the bundled
  ``si001-ash3`` model, the image grows, markers are where the published
  detections are (pixel colours in a screenshot) and the page's counts are the
  last ``seg.partial``'s;
* teach-in: Ge(001) frames streamed into the ``si001-ash3`` daemon (which has no
  class for Ge ad-dimers); clicks on the ad-dimers of one finished frame make
  the next frame find them; undo restores the model id; the version file
  replays offline into the same id;
* the daemon (``stm-live run``, a process) restarts under the page, which
  recovers without a reload.

Skipped with the reason when Chromium or Playwright is missing (``.ci/run``
installs both). Few and short: CPU is scarce.
"""

from __future__ import annotations

import io
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from daemon_kit import Subscriber, base_settings, bridge, bumps_frame, frame_done, wait_until
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.cli import main
from stm_live.config import load_config
from stm_live.model.evaluate import match_class
from stm_live.model.runtime import SegmentationModel, bundled_model_path
from stm_live.sim import simulate_scan
from stm_live.sim.stream import frame_messages
from stm_live.viewer.pages import daemon_with_page
from stm_live.wire import SegMessage, encode_end, encode_line

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
#: The page's class colours (stm_live/publish/store.py CLASS_COLOURS, viewer.js).
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240),
           (245, 130, 48), (240, 50, 230)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"the page raised: {errors}"


def _model() -> Path:
    try:
        return bundled_model_path("si001-ash3")
    except Exception as exc:
        pytest.skip(f"the bundled model is missing: {exc}")


def _rect(pg: Any) -> tuple[float, float, float, float]:
    r = pg.eval_on_selector("#markCanvas", "e => { const r = e.getBoundingClientRect(); "
                                           "return [r.left, r.top, r.width, r.height]; }")
    return float(r[0]), float(r[1]), float(r[2]), float(r[3])


def _painted(pg: Any) -> None:
    """Two animation frames later whatever arrived is on the screen."""
    pg.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _set(pg: Any, control: str, value: float) -> None:
    pg.evaluate(f"() => {{ const e = document.getElementById('{control}'); e.value = {value}; "
                "e.dispatchEvent(new Event('input')); }")


def _screenshot(pg: Any) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(pg.screenshot())).convert("RGB")).astype(int)


def _quiet(sub: Subscriber, seconds: float) -> None:
    """Read until the publisher has sent no result (heartbeats aside) for ``seconds``."""
    from stm_live.wire import StatusMessage, decode

    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if sub.socket.poll(int(remaining * 1000) + 1):
            msg = decode(sub.socket.recv_multipart())
            sub.messages.append(msg)
            if not isinstance(msg, StatusMessage):
                deadline = time.monotonic() + seconds


def test_the_scan_grows_with_markers_where_the_detections_are_and_the_published_counts(
    tmp_path: Path, page: Any, make_socket: SocketFactory
) -> None:
    config = load_config(None, use_default_file=False, environ={}, overrides=base_settings(tmp_path, _model()))
    daemon, viewer = daemon_with_page(config)
    assert viewer is not None
    viewer.start()
    daemon.start()
    pub = make_socket(zmq.PUB)
    pub.connect(daemon.ingest_endpoint)
    try:
        sub = Subscriber(make_socket, daemon.publish_endpoint)
        sub.wait_heartbeat()
        page.goto(viewer.url)
        page.wait_for_function("window.stmLive.snapshots >= 1")
        _set(page, "markSize", 6)
        _set(page, "markOpacity", 1)
        scan = simulate_scan("si001-ash3", size_nm=20, pixels=200, seed=3)
        messages = list(frame_messages(scan.frame("Z"), "live-1"))
        lines = [m for m in messages if hasattr(m, "row")]
        wait_until(lambda: (pub.send_multipart(encode_line(lines[0])), sub.socket.poll(100))[1],
                   what="the daemon's subscription to the bridge")  # slow joiner: resend line 0 until it lands
        for msg in lines[1:120]:
            pub.send_multipart(encode_line(msg))
            time.sleep(0.01)
        sub.wait_for(lambda m: isinstance(m, SegMessage) and m.rows_done == 120, what="the partial of line 120")
        _quiet(sub, 1.0)
        last = [m for m in sub.messages if isinstance(m, SegMessage) and m.scan_id == "live-1"][-1]
        page.wait_for_function(f"window.stmLive.lastDet && window.stmLive.lastDet.rows_done === {last.rows_done}")
        _painted(page)

        # The image grew to the scan front, and not beyond.
        assert page.evaluate("window.stmLive.rowsDrawn") >= 100
        shot = _screenshot(page)
        left, top, width, height = _rect(page)
        px = width / 200

        def band(row: int) -> np.ndarray:
            y = int(top + (row + 0.5) * px)
            return shot[y, int(left) + 2:int(left + width) - 2]

        assert band(60).max() > 60, "scanned rows are drawn"
        assert band(180).max() < 10, "rows not scanned yet stay black"

        # The counts are the last seg.partial's; markers where its detections are, in their class colour.
        counts = page.eval_on_selector_all("td.count", "els => Object.fromEntries(els.map(e => [e.dataset.cls, "
                                                       "+e.textContent]))")
        published = {c: sum(d.class_name == c for d in last.detections) for c in last.classes}
        assert counts == published and sum(published.values()) > 0
        checked = 0
        for d in last.detections:
            near = [e for e in last.detections if e is not d and (e.x_nm - d.x_nm) ** 2 + (e.y_nm - d.y_nm) ** 2
                    < (2 * 6 / px * 0.1) ** 2]
            if near:  # another marker on top: its colour decides
                continue
            x = int(left + d.x_nm / 20 * width)
            y = int(top + d.y_nm / 20 * height)
            colour = np.asarray(COLOURS[last.classes.index(d.class_name) % 8])
            assert np.abs(shot[y, x] - colour).max() <= 40, (d, shot[y, x].tolist(), colour.tolist())
            checked += 1
        assert checked >= max(1, len(last.detections) // 2)

        # Hover names a detection; the CSV export has every detection of the view.
        d = last.detections[0]
        page.mouse.move(left + d.x_nm / 20 * width, top + d.y_nm / 20 * height)
        page.wait_for_selector("#tooltip:not([hidden])")
        tip = page.eval_on_selector("#tooltip", "e => e.textContent")
        assert tip.startswith(d.class_name) and "nm²" in tip
        csv = page.evaluate("window.stmLive.csv()").splitlines()
        assert csv[0] == "id,class,x_nm,y_nm,area_nm2,score" and len(csv) == len(last.detections) + 1

        for msg in lines[120:]:
            pub.send_multipart(encode_line(msg))
        pub.send_multipart(encode_end(messages[-1]))  # type: ignore[arg-type]
        final = sub.wait_for(frame_done("live-1"), what="seg.frame")
        page.wait_for_selector('.thumb[data-key="live-1"]')
        assert page.eval_on_selector("#scanTitle", "e => e.textContent") == "scan live-1 (finished)"
        assert final.rows_done == 200
    finally:
        daemon.stop()
        daemon.close()
        viewer.close()


def test_teach_in_on_the_page_finds_a_new_class_in_the_next_frame_undo_and_offline_replay(
    tmp_path: Path, page: Any, make_socket: SocketFactory
) -> None:
    config = load_config(None, use_default_file=False, environ={}, overrides=base_settings(tmp_path, _model()))
    daemon, viewer = daemon_with_page(config)
    assert viewer is not None and daemon is not None
    viewer.start()
    daemon.start()
    streamer = bridge(make_socket, daemon.ingest_endpoint)
    try:
        sub = Subscriber(make_socket, daemon.publish_endpoint)
        sub.wait_heartbeat()
        page.goto(viewer.url)
        page.wait_for_function("window.stmLive.snapshots >= 1")
        base_id = daemon.model.id if daemon.model else ""
        assert "ad_dimer" not in (daemon.model.classes if daemon.model else ())
        first = simulate_scan("ge001", size_nm=20, pixels=200, seed=3)
        streamer.stream([("ge-1", first.frame("Z"))], line_time_s=0.002)
        sub.wait_for(frame_done("ge-1"), what="the first Ge frame")

        # Open the finished frame from the strip, name the ad-dimers, teach.
        page.click('.thumb[data-key="ge-1"]')
        page.wait_for_function("document.getElementById('scanTitle').textContent === 'frame ge-1'")
        page.check("input[name=tool][value=point]")
        page.fill("#className", "ad_dimer")
        left, top, width, height = _rect(page)
        ad_dimers = [i for i in first.instances if i.class_name == "ad_dimer"]
        for i in ad_dimers:
            page.mouse.click(left + i.x_nm / 20 * width, top + i.y_nm / 20 * height)
        pending = page.eval_on_selector("#pending", "e => e.textContent")
        assert pending == f"{len(ad_dimers)} point(s), 0 region(s) to teach"
        page.click("#teachBtn")
        page.wait_for_function("window.stmLive.versions && window.stmLive.versions.current === 1", timeout=120_000)
        new_id = page.evaluate("window.stmLive.versions.versions[0].model_after.id")
        assert daemon.model is not None and daemon.model.id == new_id != base_id
        page.wait_for_function(f"document.getElementById('decisions').textContent.includes('{base_id} → ')")
        assert f"[{new_id}]" in page.eval_on_selector("#decisions", "e => e.textContent")

        # The next frame finds them.
        second = simulate_scan("ge001", size_nm=20, pixels=200, seed=4)
        streamer.stream([("ge-2", second.frame("Z"))], line_time_s=0.002)
        result = sub.wait_for(frame_done("ge-2"), what="the next Ge frame")
        assert result.model_id == new_id
        true = [(i.x_nm, i.y_nm) for i in second.instances if i.class_name == "ad_dimer"]
        found = [(d.x_nm, d.y_nm) for d in result.detections if d.class_name == "ad_dimer"]
        score = match_class(found, true, max_dist_nm=0.5)
        assert true and score.tp == len(true) and score.fp <= 1, score
        page.wait_for_selector('.thumb[data-key="ge-2"]')

        # Undo restores the model id; the version replays offline into the same id.
        page.click("#undoBtn")
        page.wait_for_function("window.stmLive.versions.current === 0")
        wait_until(lambda: daemon.model is not None and daemon.model.id == base_id, what="the base model back")
        assert viewer.teach is not None
        version = viewer.teach.folder / "versions" / "v0001.json"
        assert main(["adapt", "--replay", str(version), "--out", str(tmp_path / "replayed.onnx")]) == 0
        assert SegmentationModel(tmp_path / "replayed.onnx").id == new_id
    finally:
        streamer.close()
        daemon.stop()
        daemon.close()
        viewer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_daemon_restarts_under_the_page_and_the_page_recovers_without_a_reload(
    tmp_path: Path, tiny_model: Path, page: Any, make_socket: SocketFactory, spawn: Any
) -> None:
    ingest, publish, web = _free_port(), _free_port(), _free_port()
    settings = base_settings(tmp_path, tiny_model, **{
        "ingest.endpoint": f"tcp://127.0.0.1:{ingest}", "publish.endpoint": f"tcp://127.0.0.1:{publish}",
        "viewer.port": web})
    first = spawn(settings, "first")
    page.goto(f"http://127.0.0.1:{web}/")
    page.wait_for_function("window.stmLive.snapshots >= 1")
    load_id = page.evaluate("window.stmLive.loadId")
    streamer = bridge(make_socket, first.ingest)
    try:
        streamer.stream([("before", bumps_frame())], line_time_s=0.0)
        page.wait_for_selector('.thumb[data-key="before"]', timeout=60_000)
    finally:
        streamer.close()
    assert first.terminate() == 0
    page.wait_for_function("document.getElementById('conn').textContent === 'reconnecting…'")

    second = spawn(settings, "second")
    page.wait_for_function("window.stmLive.connects >= 2", timeout=60_000)
    streamer = bridge(make_socket, second.ingest)
    try:
        streamer.stream([("after", bumps_frame())], line_time_s=0.005)
        page.wait_for_function("window.stmLive.lastDet && window.stmLive.lastDet.scan === 'after'", timeout=60_000)
        page.wait_for_selector('.thumb[data-key="after"]', timeout=60_000)
    finally:
        streamer.close()
    assert page.evaluate("window.stmLive.loadId") == load_id, "the page was not reloaded"
    assert page.eval_on_selector("#conn", "e => e.textContent") == "live"
