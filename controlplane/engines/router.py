"""Reading engines and their manifests."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controlplane.deps import DbSession, Viewer
from controlplane.engines import service
from controlplane.engines.schemas import EngineFilters, EnginePublic, EngineSummary, EnginesPublic
from controlplane.fields import IdPath
from controlplane.pagination import Pagination

router = APIRouter(prefix="/engines", tags=["engines"], dependencies=[Viewer])


@router.get("", response_model=EnginesPublic)
def list_engines(db: DbSession, page: Pagination, filters: Annotated[EngineFilters, Query()]) -> EnginesPublic:
    """Engines, newest first (manifests on the single-engine route)."""
    rows, count = service.list_engines(db=db, filters=filters, page=page)
    return EnginesPublic(data=[EngineSummary.model_validate(r) for r in rows], count=count)


@router.get("/{engine_id}", response_model=EnginePublic)
def get_engine(engine_id: IdPath, db: DbSession) -> EnginePublic:
    """One engine with its plan manifest."""
    return EnginePublic.model_validate(service.get(db=db, engine_id=engine_id))
