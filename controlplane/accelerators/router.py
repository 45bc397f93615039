"""Accelerator profiles and the compatibility matrix."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controlplane.accelerators import service
from controlplane.accelerators.schemas import (
    AcceleratorFilters,
    AcceleratorPublic,
    AcceleratorsPublic,
    CompatibilityFilters,
    CompatibilityMatrixPublic,
    SyncResult,
)
from controlplane.deps import Admin, CurrentKey, DbSession, Viewer
from controlplane.fields import IdPath
from controlplane.pagination import Pagination

router = APIRouter(prefix="/accelerators", tags=["accelerators"])


@router.get("", response_model=AcceleratorsPublic, dependencies=[Viewer])
def list_accelerators(db: DbSession, page: Pagination,
                      filters: Annotated[AcceleratorFilters, Query()]) -> AcceleratorsPublic:
    """Accelerator profiles by name."""
    rows, count = service.list_accelerators(db=db, filters=filters, page=page)
    return AcceleratorsPublic(data=[AcceleratorPublic.model_validate(r) for r in rows], count=count)


@router.get("/compatibility", response_model=CompatibilityMatrixPublic, dependencies=[Viewer])
def compatibility(db: DbSession, page: Pagination,
                  filters: Annotated[CompatibilityFilters, Query()]) -> CompatibilityMatrixPublic:
    """accelerator x format x op kind -> native / emulated / unsupported, with the kernel and the reason."""
    rows, count = service.matrix(db=db, filters=filters, page=page)
    return CompatibilityMatrixPublic(data=rows, count=count)


@router.post("/sync", response_model=SyncResult, dependencies=[Admin])
def sync(db: DbSession, caller: CurrentKey) -> SyncResult:
    """Re-reads the runtime's accelerator profiles into the database."""
    return service.sync_from_runtime(db=db, actor=caller.owner)


@router.get("/{accelerator_id}", response_model=AcceleratorPublic, dependencies=[Viewer])
def get_accelerator(accelerator_id: IdPath, db: DbSession) -> AcceleratorPublic:
    """One accelerator profile."""
    return AcceleratorPublic.model_validate(service.get(db=db, accelerator_id=accelerator_id))
