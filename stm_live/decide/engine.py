"""The decision engine: rules over result documents -> ``decision`` documents. Pure.

``DecisionEngine(rules, clock).feed(doc) -> list[decision]`` is the whole
interface. Documents are plain dicts, whichever sink feeds them:

* a **scan** document ``{"kind": "scan", "scan_id", "rows", "cols",
  "frame": {"x_m", "y_m", "width_m", "height_m", "angle_deg"}}``: a scan
  started with this frame (optional; without it positions cannot be mapped
  between frames);
* a **line** document ``{"kind": "line", "scan_id", "row", "data", ...}``:
  one scan line (levelled or raw, display order; ``"backward"`` optional),
  in acquisition order; the tip-change detector and the frame judgement
  read them;
* ``seg.partial`` / ``seg.frame`` documents: the JSON headers the daemon
  publishes (``scan_id``, ``rows_done``, ``rows``, ``cols``, ``width_m``,
  ``height_m``, ``detections``, and for ``seg.frame`` ``complete``);
* an **end** document ``{"kind": "end", "scan_id", "complete"}``.

``kind`` may be left out: ``row`` + ``data`` make a line, ``rows_done`` a
``seg.partial`` (``seg.frame`` when ``complete`` or ``source`` is present).
The daemon's document topics are understood as they are: ``scan.started``
(its ``position`` gives the frame), ``level.line`` (the levelled row is the
document's payload: feed ``{"kind": doc.topic, **doc.header, "data":
doc.payload}``), ``seg.partial``/``seg.frame`` (with ``position``) and
``scan.finished``. A sink hosting the engine is::

    for decision in engine.feed({"kind": doc.topic, **doc.header, "data": doc.payload}):
        bus.emit(decision)          # topic "decision", schema schemas/decision.json

After each document the rules are tried in their order on the document's
scan; the first whose conditions all hold, that has not fired on this scan
(``once_per_scan``), is out of its cooldown and under its per-hour cap,
fires: one ``decision`` ``{"v": 1, "id", "scan_id", "rule", "action",
"params", "reason", "t"}`` (schema ``stm_live/schemas/decision.json``).
The engine never talks to a controller: running decisions, and whether to
(automation on or a dry run), is the executor's job
(:class:`stm_live.bridge.executor.Executor`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bridge.geometry import ScanFrame
from ..errors import DecisionError
from ..quality.lines import TipChangeDetector, TipChangeEvent
from .rules import Condition, DecideSection, Limits, Rule, TipChangeSettings

__all__ = ["DecisionEngine"]

#: Scans whose state is kept (the oldest is forgotten beyond this).
MAX_SCANS = 16


@dataclass
class _Det:
    id: int
    cls: str
    x: float
    y: float
    score: float


@dataclass
class _Scan:
    """What the engine knows about one scan."""

    scan_id: str
    rows: int = 0
    cols: int = 0
    width_nm: float | None = None
    height_nm: float | None = None
    frame: ScanFrame | None = None
    detections: list[_Det] = field(default_factory=list)
    rows_done: int = 0
    lines: int = 0
    finished: bool = False
    complete: bool = False
    detector: TipChangeDetector = field(default_factory=TipChangeDetector)
    tip_events: list[TipChangeEvent] = field(default_factory=list)
    image: np.ndarray | None = None
    verdict: str | None = None
    fired: set[str] = field(default_factory=set)

    @property
    def fraction(self) -> float:
        if self.finished and self.complete:
            return 1.0
        if self.rows <= 0:
            return 0.0
        return min(1.0, max(self.rows_done, self.lines) / self.rows)


#: The daemon's document topics (``stm_live.publish.documents``) and what the engine makes of them.
_ALIASES = {"scan.started": "scan", "scan.finished": "end", "level.line": "line"}


def _kind(doc: Mapping[str, Any]) -> str:
    kind = doc.get("kind") or doc.get("topic")
    if kind:
        return _ALIASES.get(str(kind), str(kind))
    if "row" in doc and "data" in doc:
        return "line"
    if "rows_done" in doc:
        return "seg.frame" if ("complete" in doc or "source" in doc) else "seg.partial"
    if "complete" in doc:
        return "end"
    if "frame" in doc:
        return "scan"
    raise DecisionError(f"document of scan {doc.get('scan_id')!r} has no kind and is not a line, seg.partial, "
                        f"seg.frame, scan or end document (keys: {', '.join(sorted(doc))})")


def _frame(obj: Any) -> ScanFrame | None:
    """A scan frame from ``{"x_m", "y_m", "width_m", "height_m", "angle_deg"}`` or from the daemon's
    ``position`` (``{"centre_m": [x, y], "size_m": [w, h], "angle_deg"}``); None when unknown."""
    if not isinstance(obj, Mapping):
        return None
    try:
        if "centre_m" in obj:
            if obj["centre_m"] is None:
                return None
            (x, y), (w, h) = obj["centre_m"], obj["size_m"]
            return ScanFrame((float(x), float(y)), float(w), float(h), float(obj.get("angle_deg") or 0.0))
        return ScanFrame((float(obj["x_m"]), float(obj["y_m"])), float(obj["width_m"]), float(obj["height_m"]),
                         float(obj.get("angle_deg") or 0.0))
    except (KeyError, TypeError, ValueError):
        return None


class DecisionEngine:
    """Rules over result documents; emits decisions.

    Parameters
    ----------
    rules : DecideSection or sequence of Rule
        The rules (and limits) of the ``decide`` section.
    clock : callable
        Unix seconds (the ``t`` of decisions, cooldowns, the per-hour cap).
    judge : callable, optional
        ``judge(image) -> verdict`` for ``frame_quality`` conditions
        (default :func:`stm_live.quality.frame.judge_frame`'s verdict).

    Examples
    --------
    >>> from stm_live.decide.rules import DecideSection
    >>> rules = DecideSection.model_validate({"rules": [{"name": "zoom", "action": "zoom",
    ...     "when": [{"count": {"class": "AsH3", "min": 1}}, {"fraction_scanned": {"min": 1.0}}],
    ...     "params": {"target": "AsH3", "width_nm": 10}}]})
    >>> engine = DecisionEngine(rules, clock=lambda: 100.0)
    >>> doc = {"scan_id": "s1", "rows_done": 512, "rows": 512, "cols": 512, "width_m": 5e-8, "height_m": 5e-8,
    ...        "complete": True, "detections": [{"id": 1, "class": "AsH3", "x_nm": 12.0, "y_nm": 30.0,
    ...                                         "area_nm2": 1.0, "score": 0.9}]}
    >>> [(d["action"], d["params"]["x_nm"], d["params"]["width_nm"]) for d in engine.feed(doc)]
    [('zoom', 12.0, 10.0)]
    >>> engine.feed(doc)  # once per scan
    []
    """

    def __init__(self, rules: DecideSection | Sequence[Rule], *, clock: Callable[[], float] = time.time,
                 judge: Callable[[np.ndarray], str] | None = None) -> None:
        if isinstance(rules, DecideSection):
            self.rules = list(rules.rules)
            self.limits = rules.limits
            self.tip_change = rules.tip_change
            self.frame_quality_thresholds = rules.frame_quality_thresholds
        else:
            self.rules = list(rules)
            self.limits = Limits()
            self.tip_change = TipChangeSettings()
            self.frame_quality_thresholds = None
        self._clock = clock
        self._judge = judge
        self._scans: OrderedDict[str, _Scan] = OrderedDict()
        self._previous: _Scan | None = None  # the last finished scan
        self._fires: dict[str, deque[float]] = {r.name: deque() for r in self.rules}
        self._survey: dict[str, int] = {}
        self._serial = 0
        self.suppressed: dict[str, int] = {}

    # -- documents ------------------------------------------------------------------

    def _scan(self, scan_id: str) -> _Scan:
        s = self._scans.get(scan_id)
        if s is None:
            s = self._scans[scan_id] = _Scan(scan_id, detector=TipChangeDetector(**self.tip_change.detector_kwargs()))
            while len(self._scans) > MAX_SCANS:
                self._scans.popitem(last=False)
        return s

    def feed(self, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Take one document; return the decisions it triggers (zero or one).

        Raises
        ------
        DecisionError
            The document has no ``scan_id`` or cannot be told apart.
        """
        scan_id = doc.get("scan_id")
        if not isinstance(scan_id, str) or not scan_id:
            raise DecisionError(f"document without a scan_id: keys {', '.join(sorted(doc))}")
        kind = _kind(doc)
        s = self._scan(scan_id)
        was_finished = s.finished
        if kind == "scan":
            s.rows = int(doc.get("rows", s.rows) or 0)
            s.cols = int(doc.get("cols", s.cols) or 0)
            s.frame = _frame(doc.get("frame")) or _frame(doc.get("position")) or s.frame
            if s.frame is not None:
                s.width_nm, s.height_nm = s.frame.width_m * 1e9, s.frame.height_m * 1e9
        elif kind == "line":
            self._line(s, doc)
        elif kind in ("seg.partial", "seg.frame"):
            self._seg(s, doc, final=kind == "seg.frame")
        elif kind == "end":
            self._finish(s, bool(doc.get("complete", False)))
        else:
            raise DecisionError(f"document of scan {scan_id!r}: unknown kind {kind!r}")
        decisions = self._evaluate(s)
        if s.finished and not was_finished:
            self._previous = s  # found_again compares the next frames with this one
        return decisions

    def _line(self, s: _Scan, doc: Mapping[str, Any]) -> None:
        data = np.asarray(doc["data"], dtype=np.float32)
        if s.cols <= 0:
            s.cols = int(doc.get("cols") or data.size)
        if s.rows <= 0 and doc.get("rows"):
            s.rows = int(doc["rows"])
        backward = doc.get("backward")
        event = s.detector.push(data, None if backward is None else np.asarray(backward, dtype=np.float32))
        if event is not None:
            s.tip_events.append(event)
        s.lines += 1
        row = int(doc.get("row", -1))
        if s.rows > 0 and 0 <= row < s.rows and data.size == s.cols:
            if s.image is None:
                s.image = np.full((s.rows, s.cols), np.nan, dtype=np.float32)
            s.image[row] = data

    def _seg(self, s: _Scan, doc: Mapping[str, Any], *, final: bool) -> None:
        s.frame = _frame(doc.get("position")) or s.frame
        s.rows = int(doc.get("rows") or s.rows)
        s.cols = int(doc.get("cols") or s.cols)
        if doc.get("width_m"):
            s.width_nm = float(doc["width_m"]) * 1e9
        if doc.get("height_m"):
            s.height_nm = float(doc["height_m"]) * 1e9
        s.rows_done = int(doc.get("rows_done") or 0)
        s.detections = [
            _Det(int(d.get("id", i)), str(d["class"]), float(d["x_nm"]), float(d["y_nm"]), float(d.get("score", 1.0)))
            for i, d in enumerate(doc.get("detections") or ())
        ]
        if final:
            self._finish(s, bool(doc.get("complete", s.rows_done >= s.rows > 0)))

    def _finish(self, s: _Scan, complete: bool) -> None:
        if s.finished:
            s.complete = s.complete or complete
            return
        s.finished = True
        s.complete = complete
        if s.image is not None and s.verdict is None:
            s.verdict = self._verdict(s.image)

    def _verdict(self, image: np.ndarray) -> str | None:
        done = np.isfinite(image).any(axis=1)
        if done.sum() < 16:
            return None
        part = image[done]
        if self._judge is not None:
            return self._judge(part)
        from ..quality.frame import judge_frame

        th = self.frame_quality_thresholds
        return judge_frame(part, calibration=None if th is None else th.model_dump()).verdict

    # -- rules ------------------------------------------------------------------------

    def _evaluate(self, s: _Scan) -> list[dict[str, Any]]:
        now = self._clock()
        out: list[dict[str, Any]] = []
        for rule in self.rules:
            if rule.once_per_scan and rule.name in s.fired:
                continue
            reasons = []
            for cond in rule.when:
                ok, why = self._holds(cond, s)
                if not ok:
                    break
                reasons.append(why)
            else:
                fires = self._fires[rule.name]
                while fires and now - fires[0] > 3600.0:
                    fires.popleft()
                if fires and now - fires[-1] < rule.cooldown_s:
                    self.suppressed[rule.name] = self.suppressed.get(rule.name, 0) + 1
                    continue
                if len(fires) >= rule.max_per_hour:
                    self.suppressed[rule.name] = self.suppressed.get(rule.name, 0) + 1
                    continue
                params = self._params(rule, s)
                if params is None:
                    continue
                fires.append(now)
                s.fired.add(rule.name)
                self._serial += 1
                out.append({"v": 1, "id": f"{rule.name}-{self._serial}", "scan_id": s.scan_id, "rule": rule.name,
                            "action": rule.action, "params": params, "reason": "; ".join(reasons),
                            "t": round(float(now), 3)})
                break
        return out

    def _in_region(self, d: _Det, region: list[float] | None) -> bool:
        if region is None:
            return True
        x0, y0, x1, y1 = region
        return min(x0, x1) <= d.x <= max(x0, x1) and min(y0, y1) <= d.y <= max(y0, y1)

    def _holds(self, cond: Condition, s: _Scan) -> tuple[bool, str]:
        kind, c = cond.kind, cond.spec
        if kind == "count":
            n = sum(1 for d in s.detections if d.cls == c.class_name and self._in_region(d, c.region))
            ok = (c.min is None or n >= c.min) and (c.max is None or n <= c.max)
            return ok, f"{n} {c.class_name}" + (" in the region" if c.region else "")
        if kind == "density":
            n = sum(1 for d in s.detections if d.cls == c.class_name and self._in_region(d, c.region))
            area = self._area(s, c.region)
            if area <= 0:
                return False, ""
            dens = 100.0 * n / area
            ok = (c.min_per_100nm2 is None or dens >= c.min_per_100nm2) and (
                c.max_per_100nm2 is None or dens <= c.max_per_100nm2)
            return ok, f"{dens:.3g} {c.class_name} per 100 nm^2"
        if kind == "near":
            a = [d for d in s.detections if d.cls == c.class_name]
            b = [d for d in s.detections if d.cls == c.other]
            for da in a:
                for db in b:
                    if da is not db and math.hypot(da.x - db.x, da.y - db.y) <= c.within_nm:
                        return True, (f"{c.class_name} at ({da.x:.1f}, {da.y:.1f}) nm within {c.within_nm:g} nm of "
                                      f"{c.other} at ({db.x:.1f}, {db.y:.1f}) nm")
            return False, ""
        if kind == "fraction_scanned":
            f = s.fraction
            ok = (c.min is None or f >= c.min - 1e-9) and (c.max is None or f <= c.max + 1e-9)
            return ok, f"{100 * f:.0f} % scanned"
        if kind == "found_again":
            return self._found_again(s, c.class_name, c.within_nm)
        if kind == "tip_change":
            if s.tip_events:
                e = s.tip_events[0]
                return True, f"tip change at line {e.line} (seen at line {e.detected_at}; {_show_z(e.z)})"
            return False, ""
        if kind == "frame_quality":
            v = s.verdict
            ok = v is not None and (v == c.verdict or (c.verdict == "not_good" and v != "good"))
            return ok, f"frame judged {v}"
        raise DecisionError(f"unknown condition {kind!r}")  # pragma: no cover - the model forbids it

    def _area(self, s: _Scan, region: list[float] | None) -> float:
        if s.width_nm is None or s.height_nm is None:
            return 0.0
        scanned_h = s.height_nm * s.fraction
        if region is None:
            return s.width_nm * scanned_h
        x0, y0, x1, y1 = region
        w = max(0.0, min(max(x0, x1), s.width_nm) - max(min(x0, x1), 0.0))
        h = max(0.0, min(max(y0, y1), s.height_nm) - max(min(y0, y1), 0.0))
        return w * h

    def _found_again(self, s: _Scan, cls: str, within: float) -> tuple[bool, str]:
        prev = self._previous
        if prev is None or prev.scan_id == s.scan_id:
            return False, ""
        old = [d for d in prev.detections if d.cls == cls]
        new = [d for d in s.detections if d.cls == cls]
        if not old or not new:
            return False, ""
        xs = np.array([d.x for d in old])
        ys = np.array([d.y for d in old])
        if prev.frame is not None and s.frame is not None:
            cx, cy = prev.frame.image_to_controller(xs, ys)
            xs, ys = (np.asarray(v) for v in s.frame.controller_to_image(cx, cy))
        for d in new:
            dist = np.hypot(xs - d.x, ys - d.y)
            k = int(np.argmin(dist))
            if dist[k] <= within:
                return True, (f"{cls} of {prev.scan_id} found again at ({d.x:.1f}, {d.y:.1f}) nm, "
                              f"{dist[k]:.2f} nm from where it was expected")
        return False, ""

    def _params(self, rule: Rule, s: _Scan) -> dict[str, Any] | None:
        p = rule.params
        if rule.action in ("move", "zoom"):
            targets = [d for d in s.detections if d.cls == p.target]
            if not targets:
                return None
            w, h = s.width_nm or 0.0, s.height_nm or 0.0
            best = max(targets, key=lambda d: (d.score, -math.hypot(d.x - w / 2, d.y - h / 2)))
            out: dict[str, Any] = {"x_nm": best.x, "y_nm": best.y,
                                   "target": {"class": best.cls, "id": best.id, "score": round(best.score, 4)}}
            if rule.action == "zoom":
                out["width_nm"] = p.width_nm
            return out
        if rule.action == "pulse":
            return {"bias_v": p.bias_v, "width_s": p.width_s, "rescan": p.rescan}
        if rule.action == "tip_shape":
            return {"rescan": p.rescan}
        if rule.action == "survey":
            g = p.grid
            assert g is not None
            k = self._survey.get(rule.name, 0) % (g.cols * g.rows)
            self._survey[rule.name] = k + 1
            row, col = divmod(k, g.cols)
            if row % 2:
                col = g.cols - 1 - col  # every other row backwards: no long jumps
            x = g.centre_nm[0] + (col - (g.cols - 1) / 2) * g.step_nm
            y = g.centre_nm[1] - (row - (g.rows - 1) / 2) * g.step_nm
            return {"frame": {"x_m": x * 1e-9, "y_m": y * 1e-9, "width_m": g.width_nm * 1e-9,
                              "height_m": g.width_nm * 1e-9, "angle_deg": g.angle_deg},
                    "cell": [int(col), int(row)]}
        return {}


def _show_z(z: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:+.1f} spreads" for k, v in z.items() if abs(v) > 0)
