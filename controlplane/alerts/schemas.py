"""Alert schemas."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controlplane.alerts.models import AlertStatus
from controlplane.fields import MAX_ID, Id, Reason, Text
from controlplane.pagination import Page


class AlertPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    deployment_id: int
    engine_id: int | None
    metric: str
    severity: str
    message: str
    evidence: dict[str, Any]
    status: AlertStatus
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    version: int


class AlertsPublic(Page[AlertPublic]):
    pass


class AlertFilters(BaseModel):
    deployment_id: Id | None = None
    status: AlertStatus | None = None
    metric: Text | None = None


class AlertUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal[AlertStatus.acknowledged, AlertStatus.resolved]
    expected_version: int = Field(ge=1, le=MAX_ID)
    reason: Reason
