"""What one source may send: a message rate, new scans per minute and megabytes per hour.

A source is a sender as the socket knows it: the CURVE key it authenticated
with, else its network address (``ingest.stm.line`` from a bridge on the
controller PC, a script on another computer). Without limits a single sender,
authenticated or not, could fill the disk with thousands of one-line scans
(each leaves a journal and a result) or the memory with messages. Pure: time
comes from the caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Admission", "SourceLimits"]

#: Sources remembered at once (each costs a few hundred bytes); the idlest is forgotten first.
MAX_SOURCES: Final = 4096


@dataclass(frozen=True)
class SourceLimits:
    """Per source: ``messages_per_s`` (sustained, bursts of one second), ``new_scans_per_min``, ``mb_per_hour``."""

    messages_per_s: float
    new_scans_per_min: int
    mb_per_hour: float


@dataclass
class _Source:
    tokens: float
    last: float
    scans: deque[tuple[float, str]] = field(default_factory=deque)
    known: set[str] = field(default_factory=set)
    volume: deque[tuple[float, int]] = field(default_factory=deque)
    volume_bytes: int = 0


class Admission:
    """Decides, per message, whether its source is within its limits; says why not.

    Examples
    --------
    >>> gate = Admission(SourceLimits(messages_per_s=2, new_scans_per_min=1, mb_per_hour=1))
    >>> gate.check("pc", 0.0, scan_id="a", n_bytes=10), gate.check("pc", 0.0, scan_id="b", n_bytes=10)
    (None, 'more than 1 new scans per minute from pc (scan b); wait or raise ingest.max_new_scans_per_min')
    """

    def __init__(self, limits: SourceLimits) -> None:
        self.limits = limits
        self._sources: dict[str, _Source] = {}

    def check(self, source: str, now: float, *, scan_id: str | None, n_bytes: int) -> str | None:
        """None when the message may pass (and it is counted), else the reason it may not."""
        lim = self.limits
        state = self._sources.pop(source, None)  # re-inserted last: the dict is ordered by activity
        if state is None:
            state = _Source(tokens=lim.messages_per_s, last=now)
            while len(self._sources) >= MAX_SOURCES:
                del self._sources[next(iter(self._sources))]
        self._sources[source] = state
        state.tokens = min(lim.messages_per_s, state.tokens + (now - state.last) * lim.messages_per_s)
        state.last = now
        if state.tokens < 1.0:
            return (f"more than {lim.messages_per_s:g} messages per second from {source}; "
                    "slow down or raise ingest.max_messages_per_s")
        while state.scans and now - state.scans[0][0] > 60.0:
            state.known.discard(state.scans.popleft()[1])
        if scan_id is not None and scan_id not in state.known:
            if len(state.scans) >= lim.new_scans_per_min:
                return (f"more than {lim.new_scans_per_min} new scans per minute from {source} (scan {scan_id}); "
                        "wait or raise ingest.max_new_scans_per_min")
            state.scans.append((now, scan_id))
            state.known.add(scan_id)
        while state.volume and now - state.volume[0][0] > 3600.0:
            state.volume_bytes -= state.volume.popleft()[1]
        if state.volume_bytes + n_bytes > lim.mb_per_hour * 2**20:
            return (f"more than {lim.mb_per_hour:g} MB in the last hour from {source}; "
                    "wait or raise ingest.max_mb_per_hour")
        state.tokens -= 1.0
        state.volume.append((now, n_bytes))
        state.volume_bytes += n_bytes
        return None
