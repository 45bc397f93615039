"""Reading engines."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.engines.models import Engine
from controlplane.engines.schemas import EngineFilters
from controlplane.errors import NotFound
from controlplane.pagination import PageParams, paginate


def get(*, db: Session, engine_id: int, loc: tuple = ()) -> Engine:
    """An engine by id, or NotFound."""
    engine = db.get(Engine, engine_id)
    if engine is None:
        raise NotFound("engine", engine_id, loc=loc)
    return engine


def get_by_hash(*, db: Session, content_hash: str) -> Engine | None:
    """The engine with this content hash (how a retried build finds its finished artifact)."""
    return db.scalar(select(Engine).where(Engine.content_hash == content_hash))


def list_engines(*, db: Session, filters: EngineFilters, page: PageParams) -> tuple[list[Engine], int]:
    """Engines, newest first."""
    stmt = select(Engine)
    for column in ("model_id", "recipe_id", "accelerator_id", "calibration_id", "content_hash"):
        value = getattr(filters, column)
        if value is not None:
            stmt = stmt.where(getattr(Engine, column) == value)
    return paginate(db=db, stmt=stmt.order_by(Engine.id.desc()), page=page)
