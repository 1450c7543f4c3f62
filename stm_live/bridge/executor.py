"""Run decisions on the controller, safely: the bridge's acting side.

:class:`Executor` takes ``decision`` messages (:mod:`stm_live.decide`) and,
only when automation is on, turns each into controller commands through a
:class:`Controller` (for Nanonis: :class:`~stm_live.bridge.nanonis.control.NanonisControl`).

Safety, in this order:

* automation is **off by default**: a dry run; every decision is logged with
  what would have been sent, and nothing is sent;
* an operator **pause** (:meth:`Executor.pause`, ``stm-live bridge pause``)
  takes effect before the next command; :meth:`Executor.resume` lifts it;
* every command is checked against the limits (position, range, step, pulse
  voltage and width) right before it is sent; one that breaks a limit is
  refused and logged;
* a command that **fails** on the controller stops automation and says why
  (a resume is needed);
* an operator **changing the scan by hand** (a frame, buffer size or running
  state the bridge did not set) pauses automation and says so.

Every action and its reason are logged, and written to the event log when
one is given.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from ..decide.rules import Limits
from ..decide.safety import check_frame, check_pulse
from ..errors import ControllerError
from .drift import DriftTracker
from .geometry import ScanFrame

__all__ = ["Controller", "Executor", "ScanContext"]

log = logging.getLogger(__name__)

State = Literal["dry_run", "running", "paused", "stopped"]


class Controller(Protocol):
    """What the executor needs of a controller."""

    def frame(self) -> ScanFrame: ...

    def set_frame(self, frame: ScanFrame) -> None: ...

    def action(self, action: Literal["start", "stop", "pause", "resume"], *, up: bool = False) -> None: ...

    def pulse(self, bias_v: float, width_s: float, *, wait: bool = True) -> None: ...

    def tip_shaper(self, *, timeout_s: float = 30.0) -> None: ...


class ScanContext:
    """What the executor knows of a scan: its frame, buffer size and direction, when it started and ended."""

    def __init__(self, frame: ScanFrame, pixels: int, lines: int, up: bool, started_t: float | None = None) -> None:
        self.frame = frame
        self.pixels = pixels
        self.lines = lines
        self.up = up
        self.started_t = started_t
        self.ended_t: float | None = None


class Executor:
    """Turn decisions into controller commands when automation is on.

    Parameters
    ----------
    controller : Controller
    limits : Limits
    automation : bool
        False (the default everywhere) = dry run.
    event_log : callable, optional
        ``event_log(record)`` with a JSON-able dict per decision handled.
    clock : callable
        Unix seconds.
    drift : DriftTracker, optional
        The sample's drift from successive frames: moves and zooms aim where
        the feature will be when the new frame scans it, not where it was.
    """

    def __init__(self, controller: Controller, limits: Limits, *, automation: bool = False,
                 event_log: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.time, drift: DriftTracker | None = None) -> None:
        self.controller = controller
        self.limits = limits
        self._state: State = "running" if automation else "dry_run"
        self.reason = "" if automation else "automation is off (bridge.automation: false): dry run"
        self._event_log = event_log
        self._clock = clock
        self._lock = threading.RLock()
        self.scans: dict[str, ScanContext] = {}
        self._expected: ScanContext | None = None
        self._we_stopped = False
        self.counters: Counter[str] = Counter()
        self.drift = drift
        self._frame_s: float | None = None  # how long the last complete frame took

    # -- state ------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``dry_run``, ``running``, ``paused`` (operator, or a manual change) or ``stopped`` (a failure)."""
        return self._state

    def status(self) -> dict[str, Any]:
        """State, reason and counters, JSON-able."""
        with self._lock:
            return {"state": self._state, "reason": self.reason, "counters": dict(self.counters)}

    def _set(self, state: State, reason: str, level: int = logging.WARNING) -> None:
        self._state = state
        self.reason = reason
        log.log(level, "automation %s: %s", state, reason)
        self._log({"event": f"automation_{state}", "reason": reason})

    def pause(self, reason: str = "paused by the operator") -> dict[str, Any]:
        """Stop executing decisions now (a dry run continues); :meth:`resume` lifts it.

        Takes effect at once, even while a decision is being executed (from
        another thread): no further command of it is sent.
        """
        if self._state in ("running", "stopped"):
            self._set("paused", reason)
        return {"state": self._state, "reason": self.reason, "counters": dict(self.counters)}

    def resume(self) -> dict[str, Any]:
        """Execute decisions again (after a pause or a failure); the scan as it is now becomes the expected one.

        A dry run stays a dry run: automation is switched on in the configuration only.
        """
        with self._lock:
            if self._state in ("paused", "stopped"):
                self._expected = None  # accept the frame as the operator left it
                self._set("running", "resumed by the operator", logging.INFO)
            return self.status()

    def _log(self, record: dict[str, Any]) -> None:
        if self._event_log is not None:
            try:
                self._event_log({"t": round(self._clock(), 3), **record})
            except OSError as exc:  # the event log never stops the bridge
                log.warning("cannot write the bridge event log: %s", exc)

    # -- what the controller does by itself --------------------------------------

    def on_scan(self, scan_id: str, context: ScanContext) -> None:
        """A new scan started with this frame and buffer: pause automation if nobody here set them."""
        with self._lock:
            self.scans[scan_id] = context
            while len(self.scans) > 64:
                self.scans.pop(next(iter(self.scans)))
            expected = self._expected
            self._expected = context
            if self._state != "running" or expected is None:
                return
            changes = []
            if not context.frame.close_to(expected.frame):
                changes.append(f"frame {_show(context.frame)} (the bridge last set or saw {_show(expected.frame)})")
            if (context.pixels, context.lines) != (expected.pixels, expected.lines):
                changes.append(f"buffer {context.pixels} x {context.lines} px (was {expected.pixels} x "
                               f"{expected.lines})")
            if changes:
                self.counters["manual_changes"] += 1
                self._set("paused", "the scan was changed by hand: " + "; ".join(changes) +
                          "; automation paused (stm-live bridge resume to go on)")

    def on_end(self, scan_id: str, complete: bool) -> None:
        """A scan ended (its duration is the expected duration of the next)."""
        with self._lock:
            scan = self.scans.get(scan_id)
            if scan is None:
                return
            scan.ended_t = self._clock()
            if complete and scan.started_t is not None:
                self._frame_s = scan.ended_t - scan.started_t

    def on_idle(self, running: bool) -> None:
        """No line for a while; ``running`` is what the controller says: a stop nobody here asked for pauses."""
        with self._lock:
            if not running and self._state == "running" and not self._we_stopped:
                self.counters["manual_changes"] += 1
                self._set("paused", "the scan stopped and the bridge did not stop it; automation paused "
                                    "(stm-live bridge resume to go on)")

    # -- decisions ------------------------------------------------------------------

    def handle(self, decision: Mapping[str, Any]) -> dict[str, Any]:
        """Execute (or, in a dry run or pause, only log) one decision.

        Returns
        -------
        dict
            ``{"decision", "executed", "commands", "state", "reason"}``: what
            was sent (or would have been) and why not, if not.
        """
        with self._lock:
            self.counters["decisions"] += 1
            try:
                plan = self._plan(decision)
            except ControllerError as exc:
                plan, refusal = [], str(exc)
            else:
                refusal = ""
            shown = [p[0] for p in plan]
            outcome: dict[str, Any] = {"decision": dict(decision), "commands": shown, "executed": False,
                                       "state": self._state, "reason": refusal}
            what = f"{decision.get('action')} for rule {decision.get('rule')!r} on {decision.get('scan_id')} " \
                   f"({decision.get('reason', '')})"
            if refusal:
                self.counters["refused"] += 1
                log.warning("decision refused: %s: %s", what, refusal)
            elif self._state != "running":
                self.counters["not_executed"] += 1
                outcome["reason"] = self.reason
                log.info("%s: would send %s: %s", self._state.replace("_", " "), ", ".join(shown) or "nothing", what)
            else:
                done = []
                for name, run in plan:
                    if self._state != "running":  # paused between two commands of one decision
                        outcome["reason"] = self.reason
                        break
                    try:
                        run()
                    except ControllerError as exc:
                        self.counters["failed"] += 1
                        outcome["reason"] = f"{name} failed: {exc}"
                        self._set("stopped", f"{name} failed while executing {what}: {exc}; automation stopped "
                                             "(stm-live bridge resume to go on)", logging.ERROR)
                        break
                    done.append(name)
                outcome["commands"] = done
                outcome["executed"] = len(done) == len(plan)
                if outcome["executed"]:
                    self.counters["executed"] += 1
                    log.info("executed %s: %s", ", ".join(done), what)
            outcome["state"] = self._state
            self._log({"event": "decision", **outcome})
            return outcome

    def _plan(self, d: Mapping[str, Any]) -> list[tuple[str, Callable[[], None]]]:
        """The commands a decision means, each already checked against the limits."""
        action = d.get("action")
        params = dict(d.get("params") or {})
        scan = self.scans.get(str(d.get("scan_id")))
        up = scan.up if scan is not None else False
        c = self.controller
        restart = ("Scan.Action start", lambda: self._start(up))
        if action == "stop":
            return [("Scan.Action stop", self._stop)]
        if action == "rescan":
            return [restart]
        if action in ("move", "zoom", "survey"):
            new = self._target_frame(action, params, scan)
            current = scan.frame if scan is not None else None
            why = check_frame(new, current, self.limits)
            if why is not None:
                raise ControllerError(why)
            return [(f"Scan.FrameSet {_show(new)}", lambda: self._set_frame(new)), restart]
        if action == "pulse":
            bias, width = float(params.get("bias_v", float("nan"))), float(params.get("width_s", float("nan")))
            why = check_pulse(bias, width, self.limits)
            if why is not None:
                raise ControllerError(why)
            plan = [(f"Bias.Pulse {bias:g} V {width:g} s", lambda: c.pulse(bias, width))]
            return plan + ([restart] if params.get("rescan", True) else [])
        if action == "tip_shape":
            return [("TipShaper.Start", lambda: c.tip_shaper())] + ([restart] if params.get("rescan", True) else [])
        raise ControllerError(f"unknown action {action!r}")

    def _target_frame(self, action: str, params: Mapping[str, Any], scan: ScanContext | None) -> ScanFrame:
        f = params.get("frame")
        if f is not None:
            return ScanFrame((float(f["x_m"]), float(f["y_m"])), float(f["width_m"]), float(f["height_m"]),
                             float(f.get("angle_deg", 0.0)))
        if scan is None:
            raise ControllerError("the decision's scan is not one this bridge forwarded: its frame is unknown")
        width = params.get("width_nm")
        new = scan.frame.centred_on(float(params["x_nm"]), float(params["y_nm"]),
                                    width_m=None if width is None or action == "move" else float(width) * 1e-9)
        return self._ahead_of_drift(new, scan)

    def _ahead_of_drift(self, frame: ScanFrame, scan: ScanContext) -> ScanFrame:
        """``frame`` moved by the drift expected between the scan that saw the target and the middle of
        the new frame (nothing without a drift measurement or the scan's times)."""
        if self.drift is None or self.drift.measurements == 0 or scan.started_t is None:
            return frame
        now = self._clock()
        seen = (scan.started_t + (scan.ended_t or now)) / 2.0
        ahead = now - seen + 0.5 * (self._frame_s or (now - scan.started_t))
        x, y = self.drift.predict(*frame.centre_m, ahead)
        self.counters["drift_corrections"] += 1
        return frame.shifted(x - frame.centre_m[0], y - frame.centre_m[1])

    def _set_frame(self, frame: ScanFrame) -> None:
        self.controller.set_frame(frame)
        prev = self._expected
        self._expected = ScanContext(frame, prev.pixels if prev else 0, prev.lines if prev else 0,
                                     prev.up if prev else False) if prev else None

    def _start(self, up: bool) -> None:
        self._we_stopped = False
        self.controller.action("start", up=up)

    def _stop(self) -> None:
        self._we_stopped = True
        self.controller.action("stop")


def _show(f: ScanFrame) -> str:
    return (f"({f.centre_m[0] * 1e9:.4g}, {f.centre_m[1] * 1e9:.4g}) nm, {f.width_m * 1e9:.4g} x "
            f"{f.height_m * 1e9:.4g} nm, {f.angle_deg:g} deg")
