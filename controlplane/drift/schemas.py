"""Drift analysis schemas: analyses as read back, their filters, and an endpoint's traffic profile against the
engine's calibration coverage."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controlplane.drift.analysis import Outcome
from controlplane.pagination import Page

Action = Literal["none", "alert", "paused", "rolled_back"]


class DriftAnalysisPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    deployment_id: int
    engine_id: int
    outcome: Outcome
    reason: str
    trigger: str = Field(description="`ingest` (after a batch of canary samples) or `manual`.")
    window_start: datetime
    window_end: datetime
    sample_count: int = Field(description="Samples in the window the analysis read.")
    new_samples: int = Field(description="Samples the sequential test took in with this analysis.")
    checks: list[dict[str, Any]] = Field(description="Each window value against its limit: within, over, missing, "
                                                     "insufficient or n/a.")
    sequential: dict[str, Any] = Field(description="Each metric's CUSUM statistic, threshold and alarm.")
    evidence: dict[str, Any] = Field(description="Saturating layers, drifted slices and their calibration coverage.")
    consecutive_failures: int
    consecutive_errors: int
    action: Action
    alert_id: int | None
    created_at: datetime
    created_by: str


class DriftAnalysesPublic(Page[DriftAnalysisPublic]):
    pass


class AnalysisFilters(BaseModel):
    outcome: Outcome | None = None
    action: Action | None = None


class CoverageGapPublic(BaseModel):
    kind: str
    key: str
    traffic_share: float
    calibration_share: float
    message: str


class TrafficProfilePublic(BaseModel):
    """An endpoint's recent traffic (shares with counts halving every `half_life` samples) and what the
    deployment's calibration corpus covered."""

    endpoint: str
    samples: int = Field(description="Samples folded in since the endpoint's first.")
    half_life: int
    mean_tokens: float
    max_tokens: int
    length_buckets: dict[str, float]
    scripts: dict[str, float]
    calibration: dict[str, Any] | None = Field(description="The engine's calibration corpus and what it covers; "
                                                           "null for an engine without static scales.")
    gaps: list[CoverageGapPublic] = Field(description="Recent traffic the calibration corpus never covered.")
