"""What the page tests share: a plain WebSocket client (aiohttp) on a thread of its own, and page set-ups."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stm_live.viewer.state import parse_binary


class WsClient:
    """A WebSocket client of the page that keeps every message (JSON as dicts, binary as (header, payload)).

    ``read=False`` makes a client that connects and then never reads: the
    server's buffer for it fills, as for a stuck browser.
    """

    def __init__(self, url: str, *, token: str | None = None, read: bool = True) -> None:
        self.url = url.rstrip("/") + "/ws" + (f"?token={token}" if token else "")
        self.read = read
        self.messages: list[Any] = []
        self.closed = threading.Event()
        self.opened = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:
            self.error = exc
            self.opened.set()
        finally:
            self.closed.set()
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        connector = aiohttp.TCPConnector(force_close=True)
        # A tiny receive buffer, so that a client that does not read pushes back on the server soon.
        async with aiohttp.ClientSession(connector=connector, read_bufsize=2**16 if self.read else 1024) as session, \
                session.ws_connect(self.url, max_msg_size=0, heartbeat=None) as ws:
            self.opened.set()
            if not self.read:
                await self._stop.wait()
                return
            reader = asyncio.ensure_future(self._read(ws))
            stopper = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, stopper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                item: Any = json.loads(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                item = parse_binary(msg.data)
            else:
                break
            with self._lock:
                self.messages.append(item)

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, match: Callable[[Any], bool], timeout: float = 30.0, what: str = "a message") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.snapshot():
                if match(m):
                    return m
            if self.closed.is_set() and self.error is not None:
                raise self.error
            time.sleep(0.02)
        pytest.fail(f"timed out after {timeout:g} s waiting for {what} on {self.url}")

    def texts(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.snapshot() if isinstance(m, dict) and m.get("type") == kind]

    def binaries(self, kind: str) -> list[tuple[dict[str, Any], bytes]]:
        return [m for m in self.snapshot() if isinstance(m, tuple) and m[0]["k"] == kind]

    def close(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10.0)


def page_settings(tmp_path: Path, model: Path, **extra: Any) -> dict[str, Any]:
    """Daemon settings with the page on a free port (``daemon_kit.base_settings`` plus the viewer)."""
    from daemon_kit import base_settings

    return base_settings(tmp_path, model, **{"viewer.port": 0, **extra})
