"""Typed Nanonis commands over one connection: what the bridge reads and what it may do.

:class:`NanonisControl` wraps a :class:`~.client.NanonisConnection` with one
method per command stm-live uses, in SI units and stm-live's types
(:class:`~stm_live.bridge.geometry.ScanFrame`). It implements the
:class:`~stm_live.bridge.executor.Controller` protocol the executor drives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..geometry import ScanFrame
from .client import NanonisConnection

__all__ = ["Grab", "NanonisControl", "ScanState"]

_ACTIONS = {"start": 0, "stop": 1, "pause": 2, "resume": 3}


@dataclass(frozen=True)
class ScanState:
    """What the controller says about its scan: frame, buffer size, bias, setpoint, running."""

    frame: ScanFrame
    pixels: int
    lines: int
    bias_v: float
    setpoint_a: float
    running: bool


@dataclass(frozen=True, eq=False)
class Grab:
    """One ``Scan.FrameDataGrab``: the channel's name and unit, the buffer, the scan direction."""

    channel: str
    unit: str
    data: np.ndarray  # (rows, cols) float32, acquisition order, NaN = not scanned
    up: bool


def split_channel_name(name: str) -> tuple[str, str]:
    """``"Z (m)"`` -> ``("Z", "m")``; a name without a unit keeps ``""``.

    Examples
    --------
    >>> split_channel_name("Current (A)"), split_channel_name("Z")
    (('Current', 'A'), ('Z', ''))
    """
    name = name.strip()
    if name.endswith(")") and " (" in name:
        base, _, unit = name[:-1].rpartition(" (")
        return base.strip(), unit.strip()
    return name, ""


class NanonisControl:
    """The commands of one connection, typed.

    Parameters
    ----------
    conn : NanonisConnection
    """

    def __init__(self, conn: NanonisConnection) -> None:
        self.conn = conn

    @property
    def where(self) -> str:
        """The controller and port, for messages."""
        return self.conn.where

    def frame(self) -> ScanFrame:
        """``Scan.FrameGet``."""
        r = self.conn.call("Scan.FrameGet")
        return ScanFrame((r["x_m"], r["y_m"]), r["width_m"], r["height_m"], r["angle_deg"])

    def set_frame(self, frame: ScanFrame) -> None:
        """``Scan.FrameSet``."""
        self.conn.call("Scan.FrameSet", frame.to_dict())

    def buffer(self) -> tuple[list[int], int, int]:
        """``Scan.BufferGet``: ``(channel indexes, pixels, lines)``."""
        r = self.conn.call("Scan.BufferGet")
        return [int(i) for i in r["channel_indexes"]], int(r["pixels"]), int(r["lines"])

    def running(self) -> bool:
        """``Scan.StatusGet``."""
        return bool(self.conn.call("Scan.StatusGet")["running"])

    def action(self, action: Literal["start", "stop", "pause", "resume"], *, up: bool = False) -> None:
        """``Scan.Action``: start (in direction ``up``), stop, pause or resume."""
        self.conn.call("Scan.Action", {"action": _ACTIONS[action], "direction": 1 if up else 0})

    def bias(self) -> float:
        """``Bias.Get``, V."""
        return float(self.conn.call("Bias.Get")["bias_v"])

    def setpoint(self) -> float:
        """``ZCtrl.SetpntGet``, A."""
        return float(self.conn.call("ZCtrl.SetpntGet")["setpoint"])

    def line_time_s(self) -> float:
        """``Scan.SpeedGet``: forward plus backward time per line, s."""
        r = self.conn.call("Scan.SpeedGet")
        return float(r["forward_time_s"]) + float(r["backward_time_s"])

    def pulse(self, bias_v: float, width_s: float, *, wait: bool = True) -> None:
        """``Bias.Pulse``: an absolute bias pulse, the Z controller held during it."""
        self.conn.call("Bias.Pulse", {"wait": int(wait), "width_s": float(width_s), "bias_v": float(bias_v),
                                      "z_hold": 1, "absolute": 2},
                       timeout_s=self.conn.timeout_s + float(width_s))

    def tip_shaper(self, *, timeout_s: float = 30.0) -> None:
        """``TipShaper.Start``, waiting until it has finished (with the properties set on the controller)."""
        self.conn.call("TipShaper.Start", {"wait": 1, "timeout_ms": int(timeout_s * 1000)})

    def state(self) -> ScanState:
        """Frame, buffer size, bias, setpoint and running state, in five commands."""
        _, pixels, lines = self.buffer()
        return ScanState(self.frame(), pixels, lines, self.bias(), self.setpoint(), self.running())

    def grab(self, channel_index: int, *, backward: bool = False) -> Grab:
        """``Scan.FrameDataGrab`` of one channel and direction."""
        r = self.conn.call("Scan.FrameDataGrab", {"channel_index": int(channel_index),
                                                  "data_direction": 0 if backward else 1})
        name, unit = split_channel_name(r["channel_name"])
        return Grab(name, unit, r["data"], bool(r["scan_direction"]))
