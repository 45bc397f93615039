"""Raising, reading and closing alerts."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.alerts.models import Alert, AlertStatus
from controlplane.alerts.schemas import AlertFilters, AlertUpdate
from controlplane.audit import service as audit
from controlplane.db import utcnow
from controlplane.errors import IllegalTransition, NotFound, StaleVersion
from controlplane.pagination import PageParams, paginate

# open -> acknowledged -> resolved; open -> resolved. Resolved is final.
_NEXT = {AlertStatus.open: (AlertStatus.acknowledged, AlertStatus.resolved),
         AlertStatus.acknowledged: (AlertStatus.resolved,),
         AlertStatus.resolved: ()}


def raise_alert(*, db: Session, deployment_id: int, engine_id: int | None, metric: str, message: str,
                evidence: dict[str, Any], actor: str, severity: str = "critical") -> Alert:
    """Adds an open alert and its audit event to the caller's transaction (drift analysis commits it)."""
    alert = Alert(deployment_id=deployment_id, engine_id=engine_id, metric=metric, message=message,
                  evidence=evidence, severity=severity, status=AlertStatus.open)
    db.add(alert)
    db.flush()
    audit.record(db=db, actor=actor, action="alert.raise", object_type="alert", object_id=alert.id,
                 after=audit.snapshot(alert), reason=message)
    return alert


def get(*, db: Session, alert_id: int) -> Alert:
    """An alert by id, or NotFound."""
    alert = db.get(Alert, alert_id)
    if alert is None:
        raise NotFound("alert", alert_id)
    return alert


def list_alerts(*, db: Session, filters: AlertFilters, page: PageParams) -> tuple[list[Alert], int]:
    """Alerts, newest first."""
    stmt = select(Alert)
    for column in ("deployment_id", "status", "metric"):
        value = getattr(filters, column)
        if value is not None:
            stmt = stmt.where(getattr(Alert, column) == value)
    return paginate(db=db, stmt=stmt.order_by(Alert.id.desc()), page=page)


def update_status(*, db: Session, alert_id: int, update: AlertUpdate, actor: str) -> Alert:
    """Acknowledges or resolves an alert."""
    alert = get(db=db, alert_id=alert_id)
    if alert.version != update.expected_version:
        raise StaleVersion("alert", alert.id, expected=update.expected_version, current=alert.version)
    if update.status not in _NEXT[alert.status]:
        raise IllegalTransition(alert.status, update.status, allowed=_NEXT[alert.status], subject="alert",
                                field="status")
    before = audit.snapshot(alert)
    alert.status = update.status
    if update.status == AlertStatus.resolved:
        alert.resolved_at = utcnow()
    db.flush()
    audit.record(db=db, actor=actor, action=f"alert.{update.status.value}", object_type="alert", object_id=alert.id,
                 before=before, after=audit.snapshot(alert), reason=update.reason)
    db.commit()
    return alert
