"""Decision rules and safety limits: the ``decide:`` section of ``config.yaml``, validated at start-up.

A rule is *when* (conditions that must all hold) -> *action* (with
parameters), with a cooldown and a per-hour cap. Rules are tried in their
order; the first that fires on a document wins. Example::

    decide:
      rules:
        - name: tip-change
          when: [{tip_change: {}}]
          action: pulse
          params: {bias_v: 3.0, width_s: 0.05}
          cooldown_s: 60
        - name: zoom-on-ash3
          when: [{count: {class: AsH3, min: 1}}, {fraction_scanned: {min: 1.0}}]
          action: zoom
          params: {target: AsH3, width_nm: 12}
      limits: {max_offset_nm: 1000, max_range_nm: 500, max_step_nm: 300, max_pulse_v: 4.0}
      tip_change: {threshold: 9.0}   # the line-by-line detector's sensitivity (TipChangeSettings)

Conditions (each a one-key mapping):

* ``count: {class, min, max, region}``: detections of a class in the frame
  (or in ``region: [x0, y0, x1, y1]`` nm of the image);
* ``density: {class, min_per_100nm2, max_per_100nm2, region}``: the same per
  100 nm^2 of the scanned area;
* ``near: {class, other, within_nm}``: a feature of ``class`` within
  ``within_nm`` of one of ``other``;
* ``fraction_scanned: {min, max}``: rows done / rows;
* ``found_again: {class, within_nm}``: a feature of ``class`` of the previous
  frame is found again in this one (positions mapped through both frames'
  centre, size and angle when known);
* ``tip_change: {}``: the line-by-line detector saw a tip change in this scan;
* ``frame_quality: {verdict}``: the finished frame was judged ``bad`` or
  ``tip_change`` (:func:`stm_live.quality.judge_frame`).

Actions: ``stop``, ``rescan``, ``move`` (re-centre on ``params.target``),
``zoom`` (re-centre on it at ``params.width_nm``), ``pulse`` (bias pulse
``params.bias_v`` for ``params.width_s``, then rescan), ``tip_shape`` (the
controller's tip shaper, then rescan), ``survey`` (the next frame of
``params.grid``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..ranges import Range

__all__ = ["ACTIONS", "Condition", "DecideSection", "Limits", "Rule", "RuleParams", "SurveyGrid",
           "TipChangeSettings"]

#: What a decision may ask the controller to do.
ACTIONS = ("stop", "rescan", "move", "zoom", "pulse", "tip_shape", "survey")

NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Region = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=4, max_length=4)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, populate_by_name=True)


class CountCondition(_Model):
    """Detections of ``class`` in the frame or a region: at least ``min``, at most ``max``."""

    class_name: str = Field(alias="class")
    min: Annotated[int, Field(ge=0)] | None = None
    max: Annotated[int, Field(ge=0)] | None = None
    region: Region | None = None


class DensityCondition(_Model):
    """Detections of ``class`` per 100 nm^2 of the scanned part of the frame (or region)."""

    class_name: str = Field(alias="class")
    min_per_100nm2: NonNeg | None = None
    max_per_100nm2: NonNeg | None = None
    region: Region | None = None


class NearCondition(_Model):
    """A feature of ``class`` within ``within_nm`` of a feature of ``other``."""

    class_name: str = Field(alias="class")
    other: str
    within_nm: Pos


class FractionCondition(_Model):
    """Fraction of the frame's rows scanned, 0..1."""

    min: Annotated[float, Field(ge=0, le=1)] | None = None
    max: Annotated[float, Field(ge=0, le=1)] | None = None


class FoundAgainCondition(_Model):
    """A feature of ``class`` of the previous frame is found again within ``within_nm``."""

    class_name: str = Field(alias="class")
    within_nm: Pos = 1.0


class TipChangeCondition(_Model):
    """The line-by-line detector saw a tip change in this scan."""


class FrameQualityCondition(_Model):
    """The finished frame was judged ``bad`` or ``tip_change`` (or either: ``not_good``)."""

    verdict: Literal["bad", "tip_change", "not_good"] = "not_good"


class Condition(_Model):
    """Exactly one condition."""

    count: CountCondition | None = None
    density: DensityCondition | None = None
    near: NearCondition | None = None
    fraction_scanned: FractionCondition | None = None
    found_again: FoundAgainCondition | None = None
    tip_change: TipChangeCondition | None = None
    frame_quality: FrameQualityCondition | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one condition of {', '.join(type(self).model_fields)}, got "
                             f"{', '.join(given) or 'none'}")
        return self

    @property
    def kind(self) -> str:
        """The condition's name (``"count"``, ``"near"`` ...)."""
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def spec(self) -> Any:
        """The condition's own settings."""
        return getattr(self, self.kind)


class SurveyGrid(_Model):
    """A survey: ``cols x rows`` frames of ``width_nm``, ``step_nm`` apart, centred on ``centre_nm``
    (controller coordinates), visited row by row, every other row backwards (no long jumps)."""

    centre_nm: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=2, max_length=2)]
    cols: Annotated[int, Field(ge=1, le=100)]
    rows: Annotated[int, Field(ge=1, le=100)]
    step_nm: Pos
    width_nm: Pos
    angle_deg: Annotated[float, Field(allow_inf_nan=False)] = 0.0


class RuleParams(_Model):
    """Parameters of a rule's action."""

    target: str | None = None
    width_nm: Pos | None = None
    bias_v: Annotated[float, Field(allow_inf_nan=False)] | None = None
    width_s: Pos | None = None
    rescan: bool = True
    grid: SurveyGrid | None = None


class Rule(_Model):
    """When every condition holds, do ``action``; at most once per scan, per cooldown, per hour cap."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    when: Annotated[list[Condition], Field(min_length=1)]
    action: Literal["stop", "rescan", "move", "zoom", "pulse", "tip_shape", "survey"]
    params: RuleParams = RuleParams()
    cooldown_s: NonNeg = 30.0
    max_per_hour: Annotated[int, Field(ge=1, le=3600)] = 20
    once_per_scan: bool = True

    @model_validator(mode="after")
    def _params_fit_action(self) -> Rule:
        p = self.params
        need: dict[str, tuple[str, ...]] = {"move": ("target",), "zoom": ("target", "width_nm"),
                                            "pulse": ("bias_v", "width_s"), "survey": ("grid",)}
        missing = [k for k in need.get(self.action, ()) if getattr(p, k) is None]
        if missing:
            raise ValueError(f"action {self.action!r} needs params {', '.join(missing)}")
        return self


class Limits(_Model):
    """What automation may never do, whatever a rule says (checked again before each command)."""

    max_offset_nm: Annotated[float, Range(0.0, 1e7, above=True, unit="nm")] = 1000.0
    min_range_nm: Annotated[float, Range(0.0, 1e7, above=True, unit="nm")] = 2.0
    max_range_nm: Annotated[float, Range(0.0, 1e7, above=True, unit="nm")] = 1000.0
    max_step_nm: Annotated[float, Range(0.0, 1e7, above=True, unit="nm")] = 500.0
    max_pulse_v: Annotated[float, Range(0.0, 10.0, above=True, unit="V")] = 5.0
    max_pulse_s: Annotated[float, Range(0.0, 10.0, above=True, unit="s")] = 0.5

    @model_validator(mode="after")
    def _ranges(self) -> Limits:
        if self.min_range_nm > self.max_range_nm:
            raise ValueError(f"min_range_nm ({self.min_range_nm:g}) exceeds max_range_nm ({self.max_range_nm:g})")
        return self


class TipChangeSettings(_Model):
    """The line-by-line tip-change detector of ``tip_change`` conditions
    (:class:`stm_live.quality.lines.TipChangeDetector`; ``docs/quality.md`` says how the
    defaults were chosen: 97 % of simulated tip changes found within 10 lines, 0.5 false
    alarms per 100 clean frames)."""

    #: Change that counts, in robust line-to-line spreads: lower finds subtler changes and alarms more.
    threshold: Annotated[float, Range(0.0, 1000.0, above=True)] = 9.0
    #: Lines the statistics are compared with (the lines before the test window).
    reference: Annotated[int, Range(4, 512)] = 24
    #: Lines that must all differ from the reference.
    test: Annotated[int, Range(1, 64)] = 4
    #: Lines each statistic is averaged over first (1: none).
    smooth: Annotated[int, Range(1, 16)] = 3
    #: How well the lines just before the test window must agree with the reference (spreads).
    stable: Annotated[float, Range(0.0, 1000.0, above=True)] = 6.0
    #: Smallest spread assumed for a statistic (log units).
    min_spread: Annotated[float, Range(0.0, 10.0, above=True)] = 0.04
    #: A change where detail along and across the lines moved apart by this much (log units) is the
    #: lattice turning (a step edge on Si(001)), not a tip change. null: never.
    turn: Annotated[float, Range(0.0, 100.0, above=True)] | None = 0.4

    def detector_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~stm_live.quality.lines.TipChangeDetector`."""
        kwargs = self.model_dump()
        if kwargs["turn"] is None:
            kwargs["turn"] = float("inf")
        return kwargs


class FrameQualityThresholds(_Model):
    """Thresholds of the learned frame judgement of ``frame_quality`` conditions, calibrated on a
    lab's own good frames (``stm-live quality --calibrate``; ``docs/quality.md``)."""

    #: A frame is a tip change above this probability.
    tip_change: Annotated[float, Range(0.0, 1.0, above=True)]
    #: A frame (not a tip change) is bad above this probability.
    bad: Annotated[float, Range(0.0, 1.0, above=True)]


class DecideSection(_Model):
    """Rules over the live results and image quality, and the limits on what they may do."""

    rules: list[Rule] = []
    limits: Limits = Limits()
    tip_change: TipChangeSettings = TipChangeSettings()
    #: null: the shipped thresholds (set on simulated good frames); else those of a calibration.
    frame_quality_thresholds: FrameQualityThresholds | None = None

    @model_validator(mode="after")
    def _check(self) -> DecideSection:
        names = [r.name for r in self.rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dup)}")
        lim = self.limits
        for r in self.rules:
            p = r.params
            if p.bias_v is not None and abs(p.bias_v) > lim.max_pulse_v:
                raise ValueError(f"rule {r.name!r}: pulse of {p.bias_v:g} V exceeds limits.max_pulse_v "
                                 f"({lim.max_pulse_v:g} V)")
            if p.width_s is not None and p.width_s > lim.max_pulse_s:
                raise ValueError(f"rule {r.name!r}: pulse of {p.width_s:g} s exceeds limits.max_pulse_s "
                                 f"({lim.max_pulse_s:g} s)")
            if p.grid is not None and p.grid.step_nm > lim.max_step_nm:
                raise ValueError(f"rule {r.name!r}: survey step {p.grid.step_nm:g} nm exceeds limits.max_step_nm "
                                 f"({lim.max_step_nm:g} nm)")
            if p.width_nm is not None and not lim.min_range_nm <= p.width_nm <= lim.max_range_nm:
                raise ValueError(f"rule {r.name!r}: width_nm {p.width_nm:g} outside limits "
                                 f"{lim.min_range_nm:g}..{lim.max_range_nm:g} nm")
        return self
