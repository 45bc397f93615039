"""Calibration schemas (read-only over the API: jobs write the rows)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from controlplane.fields import Id, Text
from controlplane.pagination import Page


class CalibrationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    content_hash: str
    model_id: int
    recipe_id: int
    corpus_id: int
    stats_uri: str
    samples: int
    seq_len: int
    summary: dict[str, Any]
    created_at: datetime


class CalibrationsPublic(Page[CalibrationPublic]):
    pass


class CalibrationFilters(BaseModel):
    model_id: Id | None = None
    recipe_id: Id | None = None
    corpus_id: Id | None = None
    content_hash: Text | None = None
