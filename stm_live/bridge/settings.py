"""The ``bridge:`` section of ``config.yaml``: how the controller bridge connects and behaves.

Checked at start-up with the rest of the configuration (:mod:`stm_live.config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..ranges import Range, Seconds, check_retry_max

__all__ = ["BridgeSection"]


class BridgeSection(BaseModel):
    """A controller bridge: where the controller is, which lines it forwards, what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    controller: Literal["nanonis"] = "nanonis"
    host: str = "127.0.0.1"
    port: Annotated[int, Range(1, 65532)] = 6501
    layout: Literal["current", "legacy"] = "current"
    lines_from: Literal["auto", "wait_end_of_line", "poll"] = "auto"
    poll_lines: Annotated[float, Range(0.5, 1000.0)] = 4.0
    channel_index: Annotated[int, Range(0, 1023)] = 14
    directions: list[Literal["forward", "backward"]] = ["forward"]
    timeout_s: Annotated[float, Range(1e-3, 600.0, unit="s")] = 10.0
    wait_ms: Annotated[int, Range(10, 60000, unit="ms")] = 1000
    retry_initial_s: Seconds = 0.1
    retry_max_s: Seconds = 5.0
    scan_id_prefix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = "nanonis"
    automation: bool = False
    decisions: Literal["off", "local", "daemon"] = "local"
    control_endpoint: str | None = "tcp://127.0.0.1:5557"
    event_log: Path | None = None

    @field_validator("directions")
    @classmethod
    def _check_directions(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("expected one or both of forward, backward, each once")
        return value

    @field_validator("retry_max_s")
    @classmethod
    def _check_retry(cls, value: float, info: ValidationInfo) -> float:
        return check_retry_max(value, info)

    @field_validator("control_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if "://" not in value:
            raise ValueError("expected a ZeroMQ endpoint such as tcp://127.0.0.1:5557")
        return value
