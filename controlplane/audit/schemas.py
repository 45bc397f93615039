"""Audit event schemas."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict

from controlplane.fields import Text
from controlplane.pagination import Page


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    actor: str
    action: str
    object_type: str
    object_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str | None
    at: datetime


class AuditEventsPublic(Page[AuditEventPublic]):
    pass


class AuditFilters(BaseModel):
    actor: Text | None = None
    action: Text | None = None
    object_type: Text | None = None
    object_id: Text | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
