"""The screenshots of docs/viewer.md: the page during a simulated scan, and during teach-in.

Runs a daemon in this process with its page (bundled ``si001-ash3`` model),
streams simulated scans into it and photographs the page in Debian's headless
Chromium (Playwright)::

    python docs/viewer_shots.py            # writes docs/viewer_scan.png and docs/viewer_teach.png

Every image is simulated (our own simulator), so the figures may be shipped.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import zmq

from stm_live.config import load_config
from stm_live.model.runtime import bundled_model_path
from stm_live.sim import simulate_scan
from stm_live.sim.stream import LineStreamer, frame_messages
from stm_live.viewer.pages import daemon_with_page
from stm_live.wire import encode_line

DOCS = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


def main() -> int:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp())
    config = load_config(None, use_default_file=False, environ={}, overrides={
        "model.path": str(bundled_model_path("si001-ash3")), "model.provider": "cpu",
        "results.dir": str(tmp / "results"), "ingest.endpoint": "tcp://127.0.0.1:*",
        "publish.endpoint": "tcp://127.0.0.1:*", "viewer.port": 0, "publish.heartbeat_s": 0.5})
    daemon, page = daemon_with_page(config)
    assert page is not None
    page.start()
    daemon.start()
    context = zmq.Context()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            pg = browser.new_page(viewport={"width": 1360, "height": 900})
            pg.goto(page.url)
            pg.wait_for_function("window.stmLive.snapshots >= 1")
            assert daemon.ingest_endpoint is not None
            with LineStreamer(daemon.ingest_endpoint, context=context) as streamer:
                # A finished Si(001) frame for the strip, then one caught in the middle of its scan.
                si = simulate_scan("si001-ash3", size_nm=30, pixels=300, seed=11).frame("Z")
                streamer.stream([("si-0011", si)], line_time_s=0.005)
                pg.wait_for_selector('.thumb[data-key="si-0011"]', timeout=60_000)
                scan = simulate_scan("si001-ash3", size_nm=30, pixels=300, seed=12).frame("Z")
                lines = [m for m in frame_messages(scan, "si-0012") if hasattr(m, "row")]
                for msg in lines[:190]:
                    streamer.send(encode_line(msg))
                    time.sleep(0.01)
                pg.wait_for_function("window.stmLive.lastDet && window.stmLive.lastDet.rows_done >= 185",
                                     timeout=60_000)
                time.sleep(1.0)
                pg.evaluate("window.scrollTo(0, 0)")
                pg.screenshot(path=str(DOCS / "viewer_scan.png"))
                for msg in lines[190:]:
                    streamer.send(encode_line(msg))
                pg.wait_for_selector('.thumb[data-key="si-0012"]', timeout=60_000)

                # Teach-in: a Ge(001) frame, whose ad-dimers the Si(001) model has no class for.
                ge = simulate_scan("ge001", size_nm=20, pixels=200, seed=3)
                streamer.stream([("ge-0003", ge.frame("Z"))], line_time_s=0.002)
                pg.wait_for_selector('.thumb[data-key="ge-0003"]', timeout=60_000)
                pg.click('.thumb[data-key="ge-0003"]')
                pg.wait_for_function("document.getElementById('scanTitle').textContent === 'frame ge-0003'")
                pg.check("input[name=tool][value=point]")
                pg.fill("#className", "ad_dimer")
                r = pg.eval_on_selector("#markCanvas", "e => { const r = e.getBoundingClientRect(); "
                                                       "return [r.left, r.top, r.width, r.height]; }")
                dimers = [i for i in ge.instances if i.class_name == "ad_dimer"]
                for i in dimers[:3]:
                    pg.mouse.click(r[0] + i.x_nm / 20 * r[2], r[1] + i.y_nm / 20 * r[3])
                pg.click("#teachBtn")
                pg.wait_for_function("window.stmLive.versions && window.stmLive.versions.current === 1",
                                     timeout=120_000)
                for i in dimers[3:]:  # two more, waiting to be taught, with a background region
                    pg.mouse.click(r[0] + i.x_nm / 20 * r[2], r[1] + i.y_nm / 20 * r[3])
                pg.check("input[name=tool][value=background]")
                pg.mouse.move(r[0] + 0.05 * r[2], r[1] + 0.80 * r[3])
                pg.mouse.down()
                pg.mouse.move(r[0] + 0.30 * r[2], r[1] + 0.95 * r[3], steps=5)
                pg.mouse.up()
                time.sleep(0.5)
                pg.evaluate("window.scrollTo(0, 0)")
                pg.screenshot(path=str(DOCS / "viewer_teach.png"))
            browser.close()
    finally:
        daemon.stop()
        daemon.close()
        page.close()
        context.term()
    print(f"wrote {DOCS / 'viewer_scan.png'} and {DOCS / 'viewer_teach.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
