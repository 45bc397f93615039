"""Reading calibrations."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controlplane.calibrations import service
from controlplane.calibrations.schemas import CalibrationFilters, CalibrationPublic, CalibrationsPublic
from controlplane.deps import DbSession, Viewer
from controlplane.fields import IdPath
from controlplane.pagination import Pagination

router = APIRouter(prefix="/calibrations", tags=["calibrations"], dependencies=[Viewer])


@router.get("", response_model=CalibrationsPublic)
def list_calibrations(db: DbSession, page: Pagination,
                      filters: Annotated[CalibrationFilters, Query()]) -> CalibrationsPublic:
    """Calibrations, newest first."""
    rows, count = service.list_calibrations(db=db, filters=filters, page=page)
    return CalibrationsPublic(data=[CalibrationPublic.model_validate(r) for r in rows], count=count)


@router.get("/{calibration_id}", response_model=CalibrationPublic)
def get_calibration(calibration_id: IdPath, db: DbSession) -> CalibrationPublic:
    """One calibration with its summary."""
    return CalibrationPublic.model_validate(service.get(db=db, calibration_id=calibration_id))
