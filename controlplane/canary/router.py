"""Canary-sample ingestion in batches, and reading samples and window aggregates back."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, status

from controlplane.canary import service
from controlplane.canary.schemas import (
    MAX_BATCH,
    CanaryIngestResult,
    CanarySampleFilters,
    CanarySampleIn,
    CanarySamplePublic,
    CanarySamplesPublic,
    CanaryWindowFilters,
    CanaryWindowPublic,
    CanaryWindowsPublic,
)
from controlplane.deps import AppSettings, CurrentDeployment, CurrentKey, DbSession, Submitter, Viewer
from controlplane.pagination import Pagination

router = APIRouter(prefix="/deployments/{deployment_id}", tags=["canary"])


@router.post("/canary-samples", response_model=CanaryIngestResult, status_code=status.HTTP_201_CREATED,
             dependencies=[Submitter])
def ingest_samples(
    deployment: CurrentDeployment,
    samples: Annotated[list[CanarySampleIn], Body(min_length=1, max_length=MAX_BATCH)],
    db: DbSession,
    settings: AppSettings,
    caller: CurrentKey,
) -> CanaryIngestResult:
    """Stores a batch of canary samples (a JSON list) and updates the deployment's current window."""
    return service.ingest(db=db, deployment=deployment, samples=samples, window_seconds=settings.canary_window_seconds,
                          max_batch=settings.max_canary_batch, actor=caller.owner)


@router.get("/canary-samples", response_model=CanarySamplesPublic, dependencies=[Viewer])
def list_samples(deployment: CurrentDeployment, db: DbSession, page: Pagination,
                 filters: Annotated[CanarySampleFilters, Query()]) -> CanarySamplesPublic:
    """The deployment's canary samples, newest first."""
    rows, count = service.list_samples(db=db, deployment_id=deployment.id, filters=filters, page=page)
    return CanarySamplesPublic(data=[CanarySamplePublic.model_validate(r) for r in rows], count=count)


@router.get("/canary-windows", response_model=CanaryWindowsPublic, dependencies=[Viewer])
def list_windows(deployment: CurrentDeployment, db: DbSession, page: Pagination,
                 filters: Annotated[CanaryWindowFilters, Query()]) -> CanaryWindowsPublic:
    """The deployment's per-window aggregates, newest first."""
    rows, count = service.list_windows(db=db, deployment_id=deployment.id, filters=filters, page=page)
    return CanaryWindowsPublic(data=[CanaryWindowPublic.model_validate(r) for r in rows], count=count)
