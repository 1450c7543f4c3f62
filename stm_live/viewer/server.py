"""The page server: aiohttp on a thread with its own event loop, WebSocket pushes to every browser.

Why aiohttp: one well-kept library is the HTTP server, the WebSocket server
*and* the WebSocket client (the benchmark's and the tests' plain clients), with
per-connection flow control and ping/pong to notice vanished browsers; it runs
in any thread on its own loop, so the daemon stays a plain threaded program.

Flow: the :class:`~stm_live.viewer.state.ViewerFeed` composes messages on its
own thread and hands them over with ``loop.call_soon_threadsafe``, which never
waits. On the loop each browser has its own buffer bounded by bytes
(``viewer.client_buffer_kb``): a browser that does not keep up (slow network,
a background tab, gone without closing) has its buffer dropped and counted and
gets a fresh snapshot once it reads again, so it catches up without slowing
anyone else, and a page that reconnects after a restart catches up the same way.

Bound to 127.0.0.1 by default; any other address needs ``viewer.token``,
which the page asks for and sends with every request (the same rule as the
sockets: open it to the network only on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np
from aiohttp import WSMsgType, web

from ..errors import AdaptError, ConfigError, StmLiveError
from ..model.prototypes import Point
from .state import Outgoing, ViewerFeed, binary_message
from .teach import Region, TeachIn

__all__ = ["ViewerServer", "is_loopback", "static_dir"]

log = logging.getLogger("stm_live.viewer")

#: Seconds between WebSocket pings; a browser that answers none within it is closed.
HEARTBEAT_S: Final = 10.0
_MAX_CLICKS: Final = 10_000
#: How long the page waits for the bridge: for its state, and for a pause or resume.
_AUTOMATION_STATUS_S: Final = 1.0
_AUTOMATION_COMMAND_S: Final = 3.0


def _fail(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    """An HTTP error whose body is ``{"error": message}`` (what the page shows)."""
    return kind(text=json.dumps({"error": message}), content_type="application/json")


def static_dir() -> Path:
    """The folder of the page's files (HTML, JS, CSS; nothing is fetched from elsewhere)."""
    return Path(str(resources.files("stm_live.viewer") / "static"))


def is_loopback(host: str) -> bool:
    """True for addresses only this computer can reach (127.0.0.1, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Client:
    id: int
    ws: web.WebSocketResponse
    budget: int
    buffer: deque[Outgoing] = field(default_factory=deque)
    catch_up: deque[Outgoing] = field(default_factory=deque)  # a snapshot, sent before the buffer
    nbytes: int = 0
    dropped: int = 0
    resyncs: int = 0
    sent: int = 0
    behind: bool = True
    asked: bool = True
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, msg: Outgoing) -> None:
        self.buffer.append(msg)
        self.nbytes += len(msg)


class ViewerServer:
    """The page and its WebSocket, served from a thread with its own event loop.

    Parameters
    ----------
    feed : ViewerFeed
        What the page shows (its ``deliver`` is set here).
    host, port : str, int
        Address to bind; port 0 picks a free one (:attr:`url` says which).
    token : str, optional
        Required for every request but the page itself when set (and for
        any ``host`` that is not a loopback address).
    teach : TeachIn, optional
        Teach-in (needs a model to swap: ``stm-live run``, ``demo``, ``label``).
    results_dir : Path, optional
        The daemon's results folder, for reopening stored results.
    client_buffer_kb : int
        What each browser's buffer may hold before it is dropped and resynced.
    mode : str
        ``"daemon"``, ``"remote"`` or ``"label"`` (the page adapts its panels).
    automation : str, optional
        A controller bridge's operator endpoint (``bridge.control_endpoint``): the page
        shows its automation state and pauses or resumes it (``/api/automation``).
    """

    def __init__(
        self,
        feed: ViewerFeed,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        teach: TeachIn | None = None,
        results_dir: Path | None = None,
        client_buffer_kb: int = 4096,
        mode: str = "daemon",
        source: str = "",
        automation: str | None = None,
    ) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(
                f"viewer.host {host}: the page would be reachable from the network without a key; set "
                "viewer.token (or STM_LIVE_VIEWER_TOKEN) to a secret of 16+ characters, or bind 127.0.0.1"
            )
        self.feed = feed
        self.host = host
        self.port = port
        self.token = token
        self.teach = teach
        self.results_dir = results_dir
        self.client_budget = client_buffer_kb << 10
        self.mode = mode
        self.automation = automation
        self.clients: dict[int, _Client] = {}
        self.dropped = 0
        self.resyncs = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        feed.hello = {"type": "hello", "mode": mode, "teach": teach is not None, "source": source,
                      "stored": results_dir is not None, "automation": automation is not None}
        feed.deliver = self._deliver

    # -- life cycle -------------------------------------------------------------

    @property
    def url(self) -> str:
        """The page's address (``http://127.0.0.1:8765/``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 30.0) -> ViewerServer:
        """Bind and serve on a thread of its own; returns once the port is bound.

        Raises
        ------
        ConfigError
            The address cannot be bound (port in use, no such address).
        """
        self._thread = threading.Thread(target=self._run, name="stm-live-viewer", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigError(f"viewer: the page server did not start within {timeout:g} s")
        if self._error is not None:
            self._thread.join(5.0)
            err = self._error
            if isinstance(err, OSError):
                raise ConfigError(f"viewer.port {self.host}:{self.port}: cannot bind: {err.strerror or err}") from None
            raise err
        log.debug("page on %s", self.url)  # the commands print the address; a start-up error stays one line
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = self._app()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._ready.set()
        await self._stopping.wait()
        for client in list(self.clients.values()):
            with contextlib.suppress(Exception):
                await client.ws.close(code=1001, message=b"server stopping")
        await self._runner.cleanup()

    def close(self) -> None:
        """Close every connection and stop the server (idempotent)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(10.0)
        self.feed.deliver = lambda msgs, client: None

    # -- from the feed's thread ----------------------------------------------------

    def _deliver(self, messages: list[Outgoing], client: int | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._fanout, messages, client)

    def _fanout(self, messages: list[Outgoing], target: int | None) -> None:
        if target is not None:  # a snapshot: replaces whatever the client missed
            c = self.clients.get(target)
            if c is None:
                return
            c.buffer.clear()
            c.nbytes = 0
            c.catch_up = deque(messages)  # outside the budget: it replaces what the browser missed
            c.behind = c.asked = False
            c.wake.set()
            return
        for c in self.clients.values():
            if c.behind:  # waiting for its snapshot, which will hold these updates too
                continue
            for msg in messages:
                c.put(msg)
            if c.nbytes > c.budget:
                n = len(c.buffer)
                c.buffer.clear()
                c.nbytes = 0
                c.dropped += n
                self.dropped += n
                c.behind = True  # its writer asks for a snapshot once the browser has read what was sent
                c.resyncs += 1
                self.resyncs += 1
                if c.resyncs == 1 or c.resyncs % 100 == 0:
                    log.warning("browser %d is not keeping up: %d update(s) dropped so far; it gets a fresh "
                                "snapshot when it reads again (%d time(s))", c.id, c.dropped, c.resyncs)
            c.wake.set()

    # -- HTTP -----------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=4 << 20)
        static = static_dir()
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", static, append_version=False)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/auth", self._auth_info)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_get("/api/frames/{key}", self._frame)
        app.router.add_get("/api/frames/{key}/{what:image|labels}", self._frame_data)
        app.router.add_get("/api/results", self._results)
        app.router.add_get("/api/results/{name}", self._result)
        app.router.add_get("/api/results/{name}/{what:labels|overlay.png}", self._result_data)
        app.router.add_get("/api/versions", self._versions)
        app.router.add_get("/api/versions/{file}", self._version_file)
        app.router.add_post("/api/teach", self._teach)
        app.router.add_post("/api/undo", self._undo)
        app.router.add_get("/api/automation", self._automation)
        app.router.add_post("/api/automation", self._automation)
        return app

    def _authorised(self, request: web.Request) -> bool:
        if not self.token:
            return True
        given = request.query.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        return hmac.compare_digest(given.encode(), self.token.encode())

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        open_paths = request.path == "/" or request.path.startswith("/static/") or request.path == "/api/auth"
        if not open_paths and not self._authorised(request):
            return web.json_response({"error": "this page needs its key (viewer.token)"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    async def _auth_info(self, request: web.Request) -> web.Response:
        return web.json_response({"token_required": bool(self.token), "ok": self._authorised(request)})

    def stats(self) -> dict[str, Any]:
        """Browsers connected, updates dropped and resyncs, in all and per browser."""
        return {"clients": len(self.clients), "dropped": self.dropped, "resyncs": self.resyncs,
                "per_client": [{"id": c.id, "dropped": c.dropped, "resyncs": c.resyncs, "sent": c.sent,
                                "queued": len(c.buffer), "behind": c.behind} for c in self.clients.values()]}

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        # No per-message deflate: float32 rows hardly compress, and zlib per browser would cost the daemon CPU.
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=1 << 20, compress=False)
        await ws.prepare(request)
        client = _Client(next(self._ids), ws, self.client_budget)  # behind, snapshot asked for
        self.clients[client.id] = client
        self.feed.request_snapshot(client.id)
        if self.teach is not None:
            client.buffer.append(json.dumps({"type": "versions", **self.teach.latest}))
            client.wake.set()
        writer = asyncio.ensure_future(self._writer(client))
        try:
            async for msg in ws:  # the page sends nothing we need; reading notices a close
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self.clients.pop(client.id, None)
        return ws

    async def _writer(self, c: _Client) -> None:
        try:
            while not c.ws.closed:
                if c.behind and not c.asked and not c.catch_up:
                    # Everything sent so far has been taken by the browser (the sends returned): now a
                    # snapshot is worth making. A stuck browser therefore costs one snapshot, not one per update.
                    c.asked = True
                    self.feed.request_snapshot(c.id)
                await c.wake.wait()
                c.wake.clear()
                while c.catch_up or c.buffer:
                    if c.catch_up:
                        msg = c.catch_up.popleft()
                    else:
                        msg = c.buffer.popleft()
                        c.nbytes -= len(msg)
                    if isinstance(msg, bytes):
                        await c.ws.send_bytes(msg)
                    else:
                        await c.ws.send_str(msg)
                    c.sent += 1
        except (ConnectionResetError, RuntimeError):  # gone; the reader ends too
            return

    # -- frames of this session --------------------------------------------------

    async def _frame(self, request: web.Request) -> web.Response:
        frame = self.feed.shelf.get(request.match_info["key"])
        if frame is None:
            raise _fail(web.HTTPNotFound, f"no frame {request.match_info['key']!r} in this session's strip")
        teachable = self.teach is not None and self.teach.has_frame(frame.key)
        return web.json_response({**frame.summary(), "detections": frame.detections, "teachable": teachable})

    async def _frame_data(self, request: web.Request) -> web.Response:
        frame = self.feed.shelf.get(request.match_info["key"])
        what = request.match_info["what"]
        array = None if frame is None else (frame.image if what == "image" else frame.labels)
        if frame is None or array is None:
            raise _fail(web.HTTPNotFound, f"frame {request.match_info['key']!r} has no {what}")
        kind = "rows" if what == "image" else "labels"
        body = binary_message(kind, {"scan": frame.key, "row0": 0, "n": frame.rows, "cols": frame.cols},
                              array.astype("<f4") if kind == "rows" else array)
        return web.Response(body=body, content_type="application/octet-stream")

    # -- stored results ---------------------------------------------------------------

    def _stored(self, name: str) -> Path:
        if self.results_dir is None:
            raise _fail(web.HTTPNotFound, "no results folder")
        if "/" in name or "\\" in name or name.startswith("."):
            raise _fail(web.HTTPBadRequest, f"bad result name {name!r}")
        path = self.results_dir / "frames" / f"{name}.json"
        if not path.is_file():
            raise _fail(web.HTTPNotFound, f"no stored result {name!r}")
        return path

    async def _results(self, request: web.Request) -> web.Response:
        if self.results_dir is None:
            return web.json_response({"results": []})
        folder = self.results_dir / "frames"
        limit = 200

        def listing() -> list[dict[str, Any]]:
            files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]
            out = []
            for p in files:
                try:
                    rec = json.loads(p.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                out.append({"name": p.stem, "scan": rec.get("scan_id"), "source": rec.get("source"),
                            "detections": len(rec.get("detections", ())), "model": rec.get("model"),
                            "not_segmented": rec.get("not_segmented")})
            return out

        return web.json_response({"results": await asyncio.get_running_loop().run_in_executor(None, listing)})

    async def _result(self, request: web.Request) -> web.Response:
        path = self._stored(request.match_info["name"])
        record = json.loads(path.read_text(encoding="utf-8"))
        source = record.get("source")
        teachable = False
        if self.teach is not None and source and source != "zmq" and Path(source).is_file():
            image = record.get("image") or {}
            self.teach.offer_frame(path.stem, width_nm=float(image.get("width_nm", 0)) or 1.0,
                                   height_nm=float(image.get("height_nm", 0)) or 1.0, path=Path(source),
                                   channel=str(image.get("channel", "Z")))
            teachable = True
        return web.json_response({**record, "name": path.stem, "teachable": teachable,
                                  "has_overlay": path.with_suffix(".png").is_file(),
                                  "has_labels": path.with_suffix(".npy").is_file()})

    async def _result_data(self, request: web.Request) -> web.Response:
        path = self._stored(request.match_info["name"])
        if request.match_info["what"] == "overlay.png":
            png = path.with_suffix(".png")
            if not png.is_file():
                raise _fail(web.HTTPNotFound, "no overlay PNG stored")
            return web.Response(body=png.read_bytes(), content_type="image/png")
        npy = path.with_suffix(".npy")
        if not npy.is_file():
            raise _fail(web.HTTPNotFound, "no class map stored")
        cmap = np.load(npy, allow_pickle=False)
        if cmap.dtype != np.uint8 or cmap.ndim != 2:
            raise _fail(web.HTTPInternalServerError, f"{npy}: not a uint8 class map")
        body = binary_message("labels", {"scan": path.stem, "row0": 0, "n": cmap.shape[0], "cols": cmap.shape[1]}, cmap)
        return web.Response(body=body, content_type="application/octet-stream")

    # -- teach-in ------------------------------------------------------------------

    def _need_teach(self) -> TeachIn:
        if self.teach is None:
            raise _fail(web.HTTPConflict, "teach-in needs the daemon itself (stm-live run, demo or label), "
                                        "not a page connected from afar")
        return self.teach

    async def _versions(self, request: web.Request) -> web.Response:
        return web.json_response(self._need_teach().latest)

    async def _version_file(self, request: web.Request) -> web.FileResponse:
        teach = self._need_teach()
        name = request.match_info["file"]
        path = teach.folder / "versions" / name
        if "/" in name or not name.endswith(".json") or not path.is_file():
            raise _fail(web.HTTPNotFound, f"no version file {name!r}")
        return web.FileResponse(path)

    async def _teach(self, request: web.Request) -> web.Response:
        teach = self._need_teach()
        try:
            body = await request.json()
            key = str(body["key"])
            raw_points = body.get("points", [])
            raw_regions = body.get("regions", [])
            if len(raw_points) + len(raw_regions) > _MAX_CLICKS:
                raise ValueError(f"more than {_MAX_CLICKS} examples at once")
            points = [Point(float(p["x_nm"]), float(p["y_nm"]), str(p["class"]).strip()) for p in raw_points]
            regions = [Region(float(r["x0_nm"]), float(r["y0_nm"]), float(r["x1_nm"]), float(r["y1_nm"]),
                              str(r.get("class", "background")).strip()) for r in raw_regions]
            if any(not p.class_name for p in points):
                raise ValueError("a point without a class name")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad teach-in request: {exc}"}, status=400)
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(None, teach.teach, key, points, regions)
        except StmLiveError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._broadcast_versions()
        return web.json_response(version.summary())

    async def _undo(self, request: web.Request) -> web.Response:
        teach = self._need_teach()
        try:
            now = await asyncio.get_running_loop().run_in_executor(None, teach.undo)
        except AdaptError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._broadcast_versions()
        return web.json_response({"model": dict(now)})

    async def _automation(self, request: web.Request) -> web.Response:
        """The bridge's automation: GET its state; POST ``{"command": "pause" | "resume"}``."""
        from ..bridge.link import operator_request
        from ..errors import ControllerError

        if self.automation is None:
            raise _fail(web.HTTPNotFound, "no controller bridge is configured (bridge.control_endpoint)")
        command = "status"
        if request.method == "POST":
            try:
                body = await request.json()
                command = str(body["command"])
            except (ValueError, KeyError, TypeError):
                command = ""
            if command not in ("pause", "resume"):
                return web.json_response({"error": 'expected {"command": "pause"} or {"command": "resume"}'},
                                         status=400)
        # A pause must take effect at once: the operator waits at most a few seconds for the answer.
        timeout = _AUTOMATION_STATUS_S if command == "status" else _AUTOMATION_COMMAND_S
        try:
            state = await asyncio.get_running_loop().run_in_executor(
                None, lambda: operator_request(self.automation or "", command, timeout_s=timeout))
        except ControllerError as exc:
            return web.json_response({"error": str(exc), "endpoint": self.automation}, status=503)
        if command != "status":
            log.warning("page: automation %s by the operator -> %s", command, state.get("state"))
        return web.json_response({"endpoint": self.automation, "state": state.get("state"),
                                  "reason": state.get("reason"), "counters": state.get("counters", {})})

    def _broadcast_versions(self) -> None:
        if self.teach is not None:
            self._fanout([json.dumps({"type": "versions", **self.teach.latest})], None)
