"""Canary sample schemas: what serving posts per request, and the window aggregates read back."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, computed_field, model_validator

from controlplane.fields import Id, Text
from controlplane.pagination import Page

LayerName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
Share = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0.0, le=1e12, allow_inf_nan=False)]
Tag = Annotated[str | None, Field(None, min_length=1, max_length=64, pattern=r"^[^\x00]+$")]
MAX_LAYERS = 4096
MAX_BATCH = 10_000  # the schema's bound; the service applies the (smaller) configured limit


class CanarySampleIn(BaseModel):
    """One request re-run in reference precision beside the engine."""

    model_config = ConfigDict(extra="forbid")

    engine_id: Id
    request_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[^\x00]+$",
                                   description="Idempotency: a sample resent with the same id is counted once.")
    kl_mean: Ratio = Field(description="Mean token-level KL(reference || engine).")
    kl_max: Ratio = Field(description="Largest token-level KL of the request.")
    top1_agreement: Share
    saturation: dict[LayerName, Share] = Field(default_factory=dict, max_length=MAX_LAYERS,
                                               description="Layer -> share of values clipped at the format's max.")
    amax_ratio: dict[LayerName, Ratio] = Field(default_factory=dict, max_length=MAX_LAYERS,
                                               description="Layer -> observed amax / calibrated amax.")
    slice: Tag = None
    length_bucket: Tag = None
    script: Tag = None
    num_tokens: int | None = Field(None, ge=0, le=10_000_000)

    @model_validator(mode="after")
    def _max_not_below_mean(self) -> "CanarySampleIn":
        if self.kl_max + 1e-9 * max(1.0, self.kl_mean) < self.kl_mean:
            raise ValueError(f"kl_max ({self.kl_max}) is below kl_mean ({self.kl_mean})")
        return self


class CanaryIngestResult(BaseModel):
    deployment_id: int
    accepted: int
    duplicates: int = Field(description="Samples whose request_id was already stored (not counted again).")
    window_start: datetime


class CanarySamplePublic(CanarySampleIn):
    model_config = ConfigDict(from_attributes=True, extra="ignore")

    id: int
    deployment_id: int
    created_at: datetime


class CanarySamplesPublic(Page[CanarySamplePublic]):
    pass


class CanarySampleFilters(BaseModel):
    engine_id: Id | None = None
    slice: Text | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


class CanaryWindowPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    deployment_id: int
    engine_id: int
    window_start: datetime
    window_seconds: int
    sample_count: int
    kl_mean_sum: float
    kl_mean_sq_sum: float
    kl_max: float
    top1_sum: float
    top1_min: float
    saturation_max: dict[str, float]
    amax_ratio_max: dict[str, float]
    slices: dict[str, int]

    @computed_field
    @property
    def kl_mean(self) -> float | None:
        """Window mean of per-request KL."""
        return self.kl_mean_sum / self.sample_count if self.sample_count else None

    @computed_field
    @property
    def kl_std(self) -> float | None:
        """Window standard deviation of per-request KL."""
        if not self.sample_count:
            return None
        mean = self.kl_mean_sum / self.sample_count
        return math.sqrt(max(self.kl_mean_sq_sum / self.sample_count - mean * mean, 0.0))

    @computed_field
    @property
    def top1_agreement(self) -> float | None:
        """Window mean top-1 agreement."""
        return self.top1_sum / self.sample_count if self.sample_count else None


class CanaryWindowsPublic(Page[CanaryWindowPublic]):
    pass


class CanaryWindowFilters(BaseModel):
    engine_id: Id | None = None
    since: AwareDatetime | None = None
