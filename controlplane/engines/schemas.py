"""Engine schemas (read-only over the API: build jobs write the rows)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from controlplane.fields import Id, Text
from controlplane.pagination import Page


class EngineSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    content_hash: str
    uri: str
    model_id: int
    recipe_id: int
    accelerator_id: int
    calibration_id: int | None
    size_bytes: int | None
    created_at: datetime


class EnginePublic(EngineSummary):
    manifest: dict[str, Any]


class EnginesPublic(Page[EngineSummary]):
    pass


class EngineFilters(BaseModel):
    model_id: Id | None = None
    recipe_id: Id | None = None
    accelerator_id: Id | None = None
    calibration_id: Id | None = None
    content_hash: Text | None = None
