"""Evaluation schemas (read-only over the API: evaluate jobs write the rows)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from controlplane.evaluations.models import Verdict
from controlplane.fields import Id
from controlplane.pagination import Page


class EvaluationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    engine_id: int
    corpus_id: int
    metrics: dict[str, Any]
    by_slice: dict[str, Any]
    by_bucket: dict[str, Any]
    gates: list[Any]
    verdict: Verdict
    report_uri: str | None
    created_at: datetime


class EvaluationsPublic(Page[EvaluationPublic]):
    pass


class EvaluationFilters(BaseModel):
    engine_id: Id | None = None
    corpus_id: Id | None = None
    verdict: Verdict | None = None
