"""A virtual Nanonis controller: the binary TCP protocol on four ports, scanning a virtual sample.

For tests, benchmarks and the demo, :class:`VirtualController` stands in for
a Nanonis controller: it listens on ``port .. port + 3`` (one client per
port, as the real one), speaks the protocol of
:mod:`stm_live.bridge.nanonis.protocol` (the same code the bridge uses) and
scans windows of one :class:`~stm_live.sim.sample.VirtualSample`:

* the scan runs line by line in a thread (forward then backward pass per
  line, ``line_time_s`` per line), filling a buffer that
  ``Scan.FrameDataGrab`` returns with NaN for lines not scanned yet;
  ``Scan.WaitEndOfLine`` and ``Scan.WaitEndOfScan`` return as lines and
  frames end; with ``continuous`` (the default) a new frame follows each one;
* ``Scan.FrameSet`` moves or zooms the frame (the next frame shows the new
  window; a running scan restarts there); frames must lie on the sample;
* the sample drifts under the scanner by ``drift_nm_per_line`` per line;
* the tip changes now and then (``tip_change_per_line``) and stays changed
  until a ``Bias.Pulse`` or ``TipShaper.Start`` restores it (with
  ``restore_chance``); :meth:`VirtualController.force_tip_change` makes one
  happen now;
* fault injection (:class:`Fault`): error replies, dropped connections, slow
  answers, for a command or any, after some calls, a number of times;
* an "operator" can change the frame behind the bridge's back
  (:meth:`VirtualController.operator_set_frame`).

Every command received is recorded (:attr:`VirtualController.received`), so
tests can check what the bridge sent. Randomness comes from ``seed``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bridge.geometry import ScanFrame
from ..bridge.nanonis.protocol import (
    HEADER_SIZE,
    ProtocolError,
    command,
    decode_request,
    encode_response,
    parse_request_header,
)
from .artefacts import Artefacts, signal_artefacts
from .sample import TipState, VirtualSample

__all__ = ["Fault", "ReceivedCommand", "VirtualController", "parse_fault"]

log = logging.getLogger(__name__)

#: Signal indexes of the channels in the scan buffer, and their names as ``Scan.FrameDataGrab`` gives them.
CHANNELS: dict[int, str] = {0: "Current (A)", 14: "Z (m)"}
Z_INDEX = 14
_SIGNAL_STREAMS = ("tilt", "line_offset", "line_slope", "flicker", "white_noise", "scars")
#: Z-signal artefacts of the virtual microscope (lateral ones and the tip are modelled by the controller).
_SIGNAL = Artefacts(tilt=0.01, line_offset_nm=0.02, line_slope_nm=0.01, white_noise_nm=0.004,
                    flicker_noise_nm=0.004, scars_per_100_lines=0.5)


@dataclass
class Fault:
    """A misbehaviour to inject.

    Parameters
    ----------
    command : str
        The command it applies to, or ``"*"`` for any.
    kind : {"error", "drop", "delay"}
        Answer with an error status; close the connection instead of
        answering; answer ``delay_s`` late.
    count : int
        How many times (then it is spent).
    after : int
        Let this many matching calls through first.
    delay_s : float
        For ``"delay"``.
    """

    command: str
    kind: str
    count: int = 1
    after: int = 0
    delay_s: float = 1.0
    seen: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("error", "drop", "delay"):
            raise ValueError(f"fault kind {self.kind!r}: expected error, drop or delay")
        if self.command != "*":
            command(self.command)  # raises for an unknown command


def parse_fault(text: str) -> Fault:
    """``COMMAND:KIND[:COUNT[:AFTER]]`` (as ``--fault`` takes it) -> :class:`Fault`.

    Examples
    --------
    >>> parse_fault("Scan.FrameSet:error:2")
    Fault(command='Scan.FrameSet', kind='error', count=2, after=0, delay_s=1.0, seen=0)
    """
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"fault {text!r}: expected COMMAND:KIND[:COUNT[:AFTER]]")
    try:
        numbers = [int(p) for p in parts[2:]]
    except ValueError:
        raise ValueError(f"fault {text!r}: COUNT and AFTER must be integers") from None
    return Fault(parts[0], parts[1], *numbers)


@dataclass(frozen=True)
class ReceivedCommand:
    """A command the controller received: which port, its name, arguments and the time (monotonic s)."""

    port: int
    name: str
    args: dict[str, Any]
    t: float


class _Scan:
    """The frame being scanned: what it will show (rendered at its start) and how far it got."""

    def __init__(self, number: int, frame: ScanFrame, rows: int, cols: int, up: bool,
                 forward: np.ndarray, backward: np.ndarray) -> None:
        self.number = number
        self.frame = frame
        self.rows = rows
        self.cols = cols
        self.up = up
        self.forward = forward  # display orientation, m
        self.backward = backward
        self.next_line = 0  # acquisition index of the next line
        self.buf_f = np.full((rows, cols), np.nan, dtype=np.float32)  # acquisition order
        self.buf_b = np.full((rows, cols), np.nan, dtype=np.float32)

    def display_row(self, k: int) -> int:
        return self.rows - 1 - k if self.up else k


class VirtualController:
    """A virtual Nanonis controller on ``port .. port + 3`` of ``host``.

    Parameters
    ----------
    sample : VirtualSample, optional
        Default: a 300 nm Si(001)+AsH3 sample of ``seed``.
    host : str
        Interface to listen on (127.0.0.1).
    port : int
        First of the four consecutive ports; 0 finds four free ones (see :attr:`ports`).
    layout : {"current", "legacy"}
        Protocol layout answered (``"legacy"`` has no ``Scan.WaitEndOfLine``).
    pixels, lines : int
        Scan buffer size.
    frame : ScanFrame, optional
        Initial frame (default 50 nm at the sample centre).
    line_time_s : float
        Time per line (forward and backward pass).
    drift_nm_per_line : float
        Drift speed of the sample under the scanner, nm per line, in a random direction.
    tip_change_per_line : float
        Chance of a spontaneous tip change per line.
    restore_chance : float
        Chance that a bias pulse (tip shaper: ``(1 + restore_chance) / 2``) restores a changed tip.
    continuous : bool
        Start the next frame when one ends.
    autostart : bool
        Start scanning at once.
    faults : iterable of Fault
    seed : int
    scan_up : bool
        Scan upwards until a ``Scan.Action`` start says otherwise.
    record_line_times : bool
        Keep the time (monotonic s) each forward line entered the buffer in
        :attr:`line_times` ``{(scan number, display row): t}`` (benchmarks).
    """

    def __init__(
        self,
        sample: VirtualSample | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        layout: str = "current",
        pixels: int = 256,
        lines: int = 256,
        frame: ScanFrame | None = None,
        line_time_s: float = 0.02,
        drift_nm_per_line: float = 0.002,
        tip_change_per_line: float = 0.0,
        restore_chance: float = 0.8,
        continuous: bool = True,
        autostart: bool = True,
        bias_v: float = -1.8,
        setpoint_a: float = 50e-12,
        faults: Iterable[Fault] = (),
        seed: int = 0,
        scan_up: bool = False,
        record_line_times: bool = False,
    ) -> None:
        self.sample = sample if sample is not None else VirtualSample(seed=seed)
        self.host = host
        self.layout = layout
        self.pixels, self.lines = int(pixels), int(lines)
        self.frame = frame or ScanFrame((0.0, 0.0), 50e-9, 50e-9)
        if not self.sample.contains(self.frame):
            raise ValueError(f"the initial frame {self.frame} does not lie on the {self.sample.size_nm:g} nm sample")
        self.line_time_s = float(line_time_s)
        self.tip_change_per_line = float(tip_change_per_line)
        self.restore_chance = float(restore_chance)
        self.continuous = continuous
        self.bias_v = float(bias_v)
        self.setpoint_a = float(setpoint_a)
        self.faults = list(faults)
        self.received: list[ReceivedCommand] = []
        self.saved: list[str] = []
        self.tip_events: list[dict[str, Any]] = []
        self.line_times: dict[tuple[int, int], float] | None = {} if record_line_times else None
        #: Pause between the end of a frame and the start of the next (the tip's way back), s.
        self.frame_gap_s = 2 * self.line_time_s
        self._rng = np.random.default_rng(np.random.SeedSequence([int(seed), 20]))
        angle = self._rng.uniform(0, 2 * math.pi)
        self._drift_step = np.array([math.cos(angle), math.sin(angle)]) * drift_nm_per_line * 1e-9
        self._drift = np.zeros(2)  # sample displacement under the scanner, m
        self._tip = self.sample.nominal_tip
        self._changed_tip = False
        self._cond = threading.Condition()
        self._running = bool(autostart)
        self._paused = False
        self._up = bool(scan_up)
        self._scan: _Scan | None = None
        self._scans_started = 0
        self._line_events = 0  # end-of-line counter (two per line: forward, backward)
        self._last_line_event: tuple[int, int] = (0, 3)
        self._scan_events = 0
        self._restart = bool(autostart)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []
        self._clients: dict[int, socket.socket] = {}
        self.ports: list[int] = []
        self._bind(port)

    # -- life cycle -------------------------------------------------------------

    def _bind(self, port: int) -> None:
        """Listen on four consecutive ports from ``port`` (0: four free ones, found by trying)."""
        rng = np.random.default_rng()
        for attempt in range(100):
            base = port if port else int(rng.integers(20000, 60000))
            listeners = []
            try:
                for k in range(4):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    listeners.append(sock)
                    sock.bind((self.host, base + k))
                    sock.listen(2)
            except OSError:
                for sock in listeners:
                    sock.close()
                if port or attempt == 99:
                    raise
                continue
            self._listeners = listeners
            self.ports = [base + k for k in range(4)]
            return

    @property
    def port(self) -> int:
        """The first port (the one a bridge is given)."""
        return self.ports[0]

    def start(self) -> VirtualController:
        """Start listening and scanning (threads)."""
        for sock, port in zip(self._listeners, self.ports, strict=True):
            t = threading.Thread(target=self._accept, args=(sock, port), name=f"nanonis-{port}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._scanner, name="nanonis-scanner", daemon=True)
        t.start()
        self._threads.append(t)
        log.info("virtual Nanonis controller on %s ports %s (%s layout)", self.host,
                 ", ".join(map(str, self.ports)), self.layout)
        return self

    def close(self) -> None:
        """Stop scanning, close every socket, join the threads."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for sock in self._listeners:
            with contextlib.suppress(OSError):
                sock.close()
        for sock in list(self._clients.values()):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for t in self._threads:
            t.join(5.0)

    def __enter__(self) -> VirtualController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what tests and the demo may do --------------------------------------------

    def force_tip_change(self, severity: float = 0.6) -> None:
        """Make the tip change now (blurred, dimmer, shifted) until a pulse restores it."""
        with self._cond:
            self._change_tip(severity, reason="forced")

    def operator_set_frame(self, frame: ScanFrame) -> None:
        """Change the frame as an operator would by hand (no TCP command)."""
        with self._cond:
            self._set_frame(frame)

    def add_fault(self, fault: Fault) -> None:
        """Inject a fault from now on."""
        with self._cond:
            self.faults.append(fault)

    def commands(self, name: str | None = None) -> list[ReceivedCommand]:
        """The commands received so far (of one name)."""
        with self._cond:
            return [c for c in self.received if name is None or c.name == name]

    @property
    def scans_started(self) -> int:
        """Frames started so far."""
        with self._cond:
            return self._scans_started

    @property
    def tip_is_changed(self) -> bool:
        """True while the tip is in a changed (worse) state."""
        with self._cond:
            return self._changed_tip

    @property
    def busy_ports(self) -> set[int]:
        """The ports with a client connected now (one client per port; a new one waits until it is free)."""
        return set(self._clients)

    @property
    def current_frame(self) -> ScanFrame:
        """The frame set now."""
        with self._cond:
            return self.frame

    def wait_for_scans(self, n: int, timeout_s: float) -> bool:
        """Block until ``n`` frames have started (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._scans_started < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # -- the microscope -----------------------------------------------------------

    def _change_tip(self, severity: float, reason: str) -> None:
        base = self.sample.nominal_tip
        sign = 1.0 if self._rng.random() < 0.5 else -1.0
        self._tip = TipState(base.sigma_nm + 0.15 * severity, 1.0 - 0.4 * severity, sign * 0.08 * severity)
        self._changed_tip = True
        scan = self._scan
        event = {"reason": reason, "severity": severity, "scan": None if scan is None else scan.number,
                 "line": None if scan is None else scan.next_line, "t": time.monotonic()}
        self.tip_events.append(event)
        log.info("virtual controller: tip changed (%s) at scan %s line %s", reason, event["scan"], event["line"])
        if scan is not None:
            self._rerender_from(scan, scan.next_line)

    def _restore_tip(self, chance: float, reason: str) -> bool:
        if not self._changed_tip or self._rng.random() >= chance:
            return False
        self._tip = self.sample.nominal_tip
        self._changed_tip = False
        scan = self._scan
        self.tip_events.append({"reason": reason, "restored": True, "scan": None if scan is None else scan.number,
                                "line": None if scan is None else scan.next_line, "t": time.monotonic()})
        if scan is not None:
            self._rerender_from(scan, scan.next_line)
        return True

    def _set_frame(self, frame: ScanFrame) -> None:
        self.frame = frame
        if self._running:
            self._restart = True
        self._cond.notify_all()

    def _render(self, number: int, first_line: int = 0, scan: _Scan | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Forward and backward Z (m) of a whole frame with the tip and drift from ``first_line`` on."""
        rows, cols = self.lines, self.pixels
        frame = self.frame if scan is None else scan.frame
        up = self._up if scan is None else scan.up
        order = np.arange(rows)[::-1] if up else np.arange(rows)  # display row of the k-th line
        drift = np.empty((rows, 2))
        drift[order] = self._drift[None, :] + self._drift_step[None, :] * (np.arange(rows) - first_line)[:, None]
        tips = [self._tip] * rows
        heights = self.sample.render(frame, rows, cols, tips=tips, drift_m=drift)
        streams = {name: np.random.default_rng(np.random.SeedSequence([self.sample.seed, number, i]))
                   for i, name in enumerate(_SIGNAL_STREAMS)}
        x_cols = np.arange(cols) * frame.width_m * 1e9 / cols
        y_rows = np.arange(rows) * frame.height_m * 1e9 / rows
        add_f, add_b, _ = signal_artefacts(
            _SIGNAL, streams, rows=rows, cols=cols, x_rows=np.zeros(rows), y_rows=y_rows, x_cols=(x_cols, x_cols),
            size_nm=(frame.width_m * 1e9, frame.height_m * 1e9), scan_direction="up" if up else "down")
        return ((heights + add_f) * np.float32(1e-9)).astype(np.float32), \
            ((heights + add_b) * np.float32(1e-9)).astype(np.float32)

    def _rerender_from(self, scan: _Scan, first_line: int) -> None:
        """The tip changed mid-frame: the lines not scanned yet show the new tip."""
        fwd, bwd = self._render(scan.number, first_line, scan)
        rows_left = [scan.display_row(k) for k in range(first_line, scan.rows)]
        scan.forward[rows_left] = fwd[rows_left]
        scan.backward[rows_left] = bwd[rows_left]

    def _start_scan(self) -> None:
        self._scans_started += 1
        fwd, bwd = self._render(self._scans_started)
        self._scan = _Scan(self._scans_started, self.frame, self.lines, self.pixels, self._up, fwd, bwd)
        self._restart = False
        self._line_events += 1
        self._last_line_event = (0, 3)  # moved to the start point
        log.debug("virtual controller: scan %d started", self._scans_started)
        self._cond.notify_all()

    def _scanner(self) -> None:
        half = self.line_time_s / 2
        while not self._stopping.is_set():
            with self._cond:
                if not self._running or self._paused:
                    self._cond.wait(0.05)
                    continue
                restart = self._restart or self._scan is None
                ended = self._scan is not None and self._scan.next_line >= self._scan.rows
            if restart and ended and self._stopping.wait(self.frame_gap_s):
                return  # the tip travels back to the start of the frame: the finished buffer stays a moment
            with self._cond:
                if self._restart or self._scan is None:
                    self._start_scan()
            for movement in (0, 1):
                if self._stopping.wait(half):
                    return
                with self._cond:
                    scan = self._scan
                    if scan is None or self._restart or not self._running or self._paused:
                        break
                    k = scan.next_line
                    row = scan.display_row(k)
                    if movement == 0:
                        scan.buf_f[k] = scan.forward[row]
                        if self.line_times is not None:
                            self.line_times[(scan.number, row)] = time.monotonic()
                    else:
                        scan.buf_b[k] = scan.backward[row, ::-1]  # as scanned: right to left
                        scan.next_line += 1
                        self._drift = self._drift + self._drift_step
                        if self.tip_change_per_line > 0 and not self._changed_tip \
                                and self._rng.random() < self.tip_change_per_line:
                            self._change_tip(0.6, reason="spontaneous")
                    self._line_events += 1
                    self._last_line_event = (k + 1, movement)
                    if scan.next_line >= scan.rows:
                        self._end_scan(scan)
                    self._cond.notify_all()

    def _end_scan(self, scan: _Scan) -> None:
        path = f"C:\\virtual\\scan{scan.number:05d}.sxm"
        self.saved.append(path)
        self._scan_events += 1
        if self.continuous:
            self._restart = True
        else:
            self._running = False
        log.debug("virtual controller: scan %d ended", scan.number)

    # -- the protocol ------------------------------------------------------------

    def _accept(self, listener: socket.socket, port: int) -> None:
        listener.settimeout(0.1)  # closing a listening socket does not wake accept(): look now and then
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            if port in self._clients:
                # One client per port, as on the real controller.
                log.warning("virtual controller: port %d is taken; refusing a second client", port)
                conn.close()
                continue
            self._clients[port] = conn
            t = threading.Thread(target=self._serve, args=(conn, port), name=f"nanonis-{port}-client", daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: socket.socket, n: int) -> bytes | None:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = conn.recv_into(view[got:], n - got)
            except OSError:
                return None
            if k == 0:
                return None
            got += k
        return bytes(buf)

    def _serve(self, conn: socket.socket, port: int) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not self._stopping.is_set():
                header = self._read(conn, HEADER_SIZE)
                if header is None:
                    return
                try:
                    name, size, _ = parse_request_header(header)
                except ProtocolError as exc:
                    log.warning("virtual controller port %d: %s; closing", port, exc)
                    return
                body = self._read(conn, size)
                if body is None:
                    return
                reply = self._handle(port, name, body)
                if reply is None:  # a "drop" fault
                    return
                try:
                    conn.sendall(reply)
                except OSError:
                    return
        finally:
            self._clients.pop(port, None)
            with contextlib.suppress(OSError):
                conn.close()

    def _fault_for(self, name: str) -> Fault | None:
        for f in self.faults:
            if f.count > 0 and f.command in ("*", name):
                f.seen += 1
                if f.seen > f.after:
                    f.count -= 1
                    return f
        return None

    def _handle(self, port: int, name: str, body: bytes) -> bytes | None:
        try:
            args = decode_request(name, body, layout=self.layout)
        except ProtocolError as exc:
            # Unknown command or bad arguments: answered with an error, as the real one does.
            log.warning("virtual controller port %d: %s", port, exc)
            return _bare_error(name, str(exc))
        with self._cond:
            self.received.append(ReceivedCommand(port, name, dict(args), time.monotonic()))
            fault = self._fault_for(name)
        if fault is not None:
            log.info("virtual controller: injecting %s for %s", fault.kind, name)
            if fault.kind == "drop":
                return None
            if fault.kind == "error":
                return encode_response(name, layout=self.layout, error=(1, f"injected fault: {name} refused"))
            time.sleep(fault.delay_s)
        try:
            values = self._execute(name, args)
        except _Refused as exc:
            return encode_response(name, layout=self.layout, error=(1, str(exc)))
        return encode_response(name, values, layout=self.layout)

    def _wait(self, predicate: Any, timeout_ms: int) -> bool:
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0
        with self._cond:
            while not predicate():
                if self._stopping.is_set():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.2 if left is None else min(left, 0.2))
        return True

    def _execute(self, name: str, a: dict[str, Any]) -> dict[str, Any]:
        if name == "Scan.WaitEndOfLine":
            with self._cond:
                start = self._line_events
            ok = self._wait(lambda: self._line_events > start, a["timeout_ms"])
            with self._cond:
                line, movement = self._last_line_event
            return {"timed_out": 0 if ok else 1, "line": line, "movement": movement, "pass_number": 1}
        if name == "Scan.WaitEndOfScan":
            with self._cond:
                start = self._scan_events
            ok = self._wait(lambda: self._scan_events > start, a["timeout_ms"])
            with self._cond:
                path = self.saved[-1] if ok and self.saved else ""
            return {"timed_out": 0 if ok else 1, "path": path}
        if name == "Bias.Pulse":
            if not abs(a["bias_v"]) <= 10.0 or not 0 < a["width_s"] <= 5.0:
                raise _Refused(f"pulse {a['bias_v']:g} V for {a['width_s']:g} s outside +-10 V, 0..5 s")
            with self._cond:
                restored = self._restore_tip(self.restore_chance, "bias pulse")
            log.info("virtual controller: bias pulse %.3g V %.3g s (tip restored: %s)", a["bias_v"], a["width_s"],
                     restored)
            if a["wait"]:
                self._stopping.wait(a["width_s"])
            return {}
        if name == "TipShaper.Start":
            with self._cond:
                self._restore_tip((1 + self.restore_chance) / 2, "tip shaper")
            if a["wait"]:
                self._stopping.wait(min(0.2, self.line_time_s * 4))
            return {}
        with self._cond:
            return self._execute_locked(name, a)

    def _execute_locked(self, name: str, a: dict[str, Any]) -> dict[str, Any]:
        if name == "Scan.Action":
            action, direction = a["action"], a["direction"]
            if action == 0:
                self._up = direction == 1
                self._running, self._paused, self._restart = True, False, True
            elif action == 1:
                self._running = False
                self._paused = False
            elif action == 2:
                self._paused = True
            elif action == 3:
                self._paused = False
            else:
                raise _Refused(f"scan action {action} is not one of 0 (start), 1 (stop), 2 (pause), 3 (resume)")
            self._cond.notify_all()
            return {}
        if name == "Scan.StatusGet":
            return {"running": int(self._running and not self._paused)}
        if name == "Scan.FrameSet":
            try:
                frame = ScanFrame((a["x_m"], a["y_m"]), a["width_m"], a["height_m"], a["angle_deg"])
            except ValueError as exc:
                raise _Refused(str(exc)) from None
            if not self.sample.contains(frame):
                raise _Refused(f"scan frame centred at ({a['x_m']:.4g}, {a['y_m']:.4g}) m, {a['width_m']:.4g} x "
                               f"{a['height_m']:.4g} m, angle {a['angle_deg']:g} deg leaves the scan range "
                               f"(+-{self.sample.half_m:.4g} m)")
            self._set_frame(frame)
            return {}
        if name == "Scan.FrameGet":
            return self.frame.to_dict()
        if name == "Scan.BufferGet":
            return {"channel_indexes": np.array(sorted(CHANNELS), dtype=np.int32), "pixels": self.pixels,
                    "lines": self.lines}
        if name == "Scan.FrameDataGrab":
            index = a["channel_index"]
            if index not in CHANNELS:
                raise _Refused(f"channel {index} is not in the scan buffer ({', '.join(map(str, sorted(CHANNELS)))})")
            scan = self._scan
            if scan is None:
                data = np.full((self.lines, self.pixels), np.nan, dtype=np.float32)
                up = self._up
            else:
                data = scan.buf_f if a["data_direction"] == 1 else scan.buf_b
                up = scan.up
                if index != Z_INDEX:  # current: the setpoint where Z was scanned
                    data = np.where(np.isfinite(data), np.float32(self.setpoint_a), np.float32(np.nan))
            return {"channel_name": CHANNELS[index], "data": data, "scan_direction": int(up)}
        if name == "Scan.SpeedGet":
            values: dict[str, Any] = {"forward_speed_m_s": self.frame.width_m / (self.line_time_s / 2),
                                      "backward_speed_m_s": self.frame.width_m / (self.line_time_s / 2),
                                      "forward_time_s": self.line_time_s / 2, "backward_time_s": self.line_time_s / 2,
                                      "keep_constant": 1}
            if self.layout == "current":
                values["speed_ratio"] = 1.0
            return values
        if name == "Scan.SpeedSet":
            self.line_time_s = float(a["forward_time_s"] + a["backward_time_s"])
            return {}
        if name == "Bias.Get":
            return {"bias_v": self.bias_v}
        if name == "Bias.Set":
            self.bias_v = float(a["bias_v"])
            return {}
        if name == "ZCtrl.SetpntGet":
            return {"setpoint": self.setpoint_a}
        raise _Refused(f"{name} is not implemented by the virtual controller")


class _Refused(Exception):
    """A command the virtual controller answers with an error status."""


def _bare_error(name: str, text: str) -> bytes:
    """An error reply to a command we cannot even parse: header and error block only."""
    import struct

    raw = text.encode("utf-8")
    body = struct.pack(">Ii", 1, len(raw)) + raw
    return struct.pack(">32si4x", name.encode("ascii", errors="replace")[:32], len(body)) + body
