"""Reading alerts, acknowledging and resolving them."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controlplane.alerts import service
from controlplane.alerts.schemas import AlertFilters, AlertPublic, AlertsPublic, AlertUpdate
from controlplane.deps import CurrentKey, DbSession, Submitter, Viewer
from controlplane.fields import IdPath
from controlplane.pagination import Pagination

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("", response_model=AlertsPublic, dependencies=[Viewer])
def list_alerts(db: DbSession, page: Pagination, filters: Annotated[AlertFilters, Query()]) -> AlertsPublic:
    """Alerts, newest first."""
    rows, count = service.list_alerts(db=db, filters=filters, page=page)
    return AlertsPublic(data=[AlertPublic.model_validate(r) for r in rows], count=count)


@router.get("/{alert_id}", response_model=AlertPublic, dependencies=[Viewer])
def get_alert(alert_id: IdPath, db: DbSession) -> AlertPublic:
    """One alert with its evidence."""
    return AlertPublic.model_validate(service.get(db=db, alert_id=alert_id))


@router.patch("/{alert_id}", response_model=AlertPublic, dependencies=[Submitter])
def update_alert(alert_id: IdPath, body: AlertUpdate, db: DbSession, caller: CurrentKey) -> AlertPublic:
    """Acknowledges or resolves an alert."""
    return AlertPublic.model_validate(service.update_status(db=db, alert_id=alert_id, update=body, actor=caller.owner))
