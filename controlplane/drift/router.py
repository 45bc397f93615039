"""Drift analyses of a deployment (read, or run one now) and its endpoint's traffic profile against calibration."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from controlplane.deps import CurrentDeployment, CurrentKey, DbSession, Submitter, Viewer
from controlplane.drift import flows, service
from controlplane.drift.schemas import (
    AnalysisFilters,
    DriftAnalysesPublic,
    DriftAnalysisPublic,
    TrafficProfilePublic,
)
from controlplane.fields import IdPath
from controlplane.pagination import Pagination

router = APIRouter(prefix="/deployments/{deployment_id}", tags=["drift"])


@router.get("/analyses", response_model=DriftAnalysesPublic, dependencies=[Viewer])
def list_analyses(deployment: CurrentDeployment, db: DbSession, page: Pagination,
                  filters: Annotated[AnalysisFilters, Query()]) -> DriftAnalysesPublic:
    """The deployment's recorded drift analyses, newest first."""
    rows, count = service.list_analyses(db=db, deployment_id=deployment.id, filters=filters, page=page)
    return DriftAnalysesPublic(data=[DriftAnalysisPublic.model_validate(r) for r in rows], count=count)


@router.get("/analyses/{analysis_id}", response_model=DriftAnalysisPublic, dependencies=[Viewer])
def get_analysis(deployment: CurrentDeployment, analysis_id: IdPath, db: DbSession) -> DriftAnalysisPublic:
    """One analysis with its evidence."""
    return DriftAnalysisPublic.model_validate(service.get_analysis(db=db, deployment_id=deployment.id,
                                                                   analysis_id=analysis_id))


@router.post("/analyze", response_model=DriftAnalysisPublic, status_code=status.HTTP_201_CREATED,
             dependencies=[Submitter])
def analyze(deployment: CurrentDeployment, db: DbSession, caller: CurrentKey) -> DriftAnalysisPublic:
    """Analyses the current window now and acts on the outcome as an analysis after a batch would."""
    return DriftAnalysisPublic.model_validate(flows.analyze_now(db=db, deployment=deployment, actor=caller.owner))


@router.get("/traffic-profile", response_model=TrafficProfilePublic, dependencies=[Viewer])
def traffic_profile(deployment: CurrentDeployment, db: DbSession) -> TrafficProfilePublic:
    """The endpoint's recent traffic by length bucket and script, what the engine's calibration corpus covered,
    and the gaps between them."""
    return service.traffic_report(db=db, deployment=deployment)
