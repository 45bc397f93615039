"""The audit log, read-only."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controlplane.audit import service
from controlplane.audit.schemas import AuditEventPublic, AuditEventsPublic, AuditFilters
from controlplane.deps import DbSession, Viewer
from controlplane.errors import NotFound
from controlplane.fields import IdPath
from controlplane.pagination import Pagination

router = APIRouter(prefix="/audit-events", tags=["audit"], dependencies=[Viewer])


@router.get("", response_model=AuditEventsPublic)
def list_events(db: DbSession, page: Pagination, filters: Annotated[AuditFilters, Query()]) -> AuditEventsPublic:
    """Audit events, newest first, filtered by actor, action, object and time."""
    rows, count = service.list_events(db=db, filters=filters, page=page)
    return AuditEventsPublic(data=[AuditEventPublic.model_validate(r) for r in rows], count=count)


@router.get("/{event_id}", response_model=AuditEventPublic)
def get_event(event_id: IdPath, db: DbSession) -> AuditEventPublic:
    """One audit event."""
    event = service.get(db=db, event_id=event_id)
    if event is None:
        raise NotFound("audit_event", event_id)
    return AuditEventPublic.model_validate(event)
