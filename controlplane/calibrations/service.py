"""Reading calibrations."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.calibrations.models import Calibration
from controlplane.calibrations.schemas import CalibrationFilters
from controlplane.errors import NotFound
from controlplane.pagination import PageParams, paginate


def get(*, db: Session, calibration_id: int, loc: tuple = ()) -> Calibration:
    """A calibration by id, or NotFound."""
    calibration = db.get(Calibration, calibration_id)
    if calibration is None:
        raise NotFound("calibration", calibration_id, loc=loc)
    return calibration


def get_by_hash(*, db: Session, content_hash: str) -> Calibration | None:
    """The calibration with this content hash (how a retried job finds its finished work)."""
    return db.scalar(select(Calibration).where(Calibration.content_hash == content_hash))


def list_calibrations(*, db: Session, filters: CalibrationFilters, page: PageParams) -> tuple[list[Calibration], int]:
    """Calibrations, newest first."""
    stmt = select(Calibration)
    for column in ("model_id", "recipe_id", "corpus_id", "content_hash"):
        value = getattr(filters, column)
        if value is not None:
            stmt = stmt.where(getattr(Calibration, column) == value)
    return paginate(db=db, stmt=stmt.order_by(Calibration.id.desc()), page=page)
