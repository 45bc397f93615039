"""Writing and reading audit events; writes join the caller's transaction."""
from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from controlplane.audit.models import AuditEvent
from controlplane.audit.schemas import AuditFilters
from controlplane.pagination import PageParams, paginate


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def snapshot(obj: Any, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The column values of an ORM object as JSON, minus secrets the model marks `__audit_exclude__`."""
    skip = set(exclude) | set(getattr(obj, "__audit_exclude__", ()))
    mapper = inspect(obj).mapper
    return {attr.key: _jsonable(getattr(obj, attr.key)) for attr in mapper.column_attrs if attr.key not in skip}


def record(
    *,
    db: Session,
    actor: str,
    action: str,
    object_type: str,
    object_id: Any,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
) -> AuditEvent:
    """Adds an audit event to the caller's transaction: it commits or rolls back with the change."""
    event = AuditEvent(
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        before=_jsonable(before) if before is not None else None,
        after=_jsonable(after) if after is not None else None,
        reason=reason,
    )
    db.add(event)
    return event


def list_events(*, db: Session, filters: AuditFilters, page: PageParams) -> tuple[list[AuditEvent], int]:
    """Audit events matching the filters, newest first."""
    stmt = select(AuditEvent)
    for column in ("actor", "action", "object_type", "object_id"):
        value = getattr(filters, column)
        if value is not None:
            stmt = stmt.where(getattr(AuditEvent, column) == value)
    if filters.since is not None:
        stmt = stmt.where(AuditEvent.at >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(AuditEvent.at < filters.until)
    return paginate(db=db, stmt=stmt.order_by(AuditEvent.id.desc()), page=page)


def get(*, db: Session, event_id: int) -> AuditEvent | None:
    """One audit event by id."""
    return db.get(AuditEvent, event_id)
