"""Reading evaluations and their metrics."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controlplane.deps import DbSession, Viewer
from controlplane.evaluations import service
from controlplane.evaluations.schemas import EvaluationFilters, EvaluationPublic, EvaluationsPublic
from controlplane.fields import IdPath
from controlplane.pagination import Pagination

router = APIRouter(prefix="/evaluations", tags=["evaluations"], dependencies=[Viewer])


@router.get("", response_model=EvaluationsPublic)
def list_evaluations(db: DbSession, page: Pagination,
                     filters: Annotated[EvaluationFilters, Query()]) -> EvaluationsPublic:
    """Evaluations, newest first."""
    rows, count = service.list_evaluations(db=db, filters=filters, page=page)
    return EvaluationsPublic(data=[EvaluationPublic.model_validate(r) for r in rows], count=count)


@router.get("/{evaluation_id}", response_model=EvaluationPublic)
def get_evaluation(evaluation_id: IdPath, db: DbSession) -> EvaluationPublic:
    """One evaluation with metrics per slice and bucket, gate results and verdict."""
    return EvaluationPublic.model_validate(service.get(db=db, evaluation_id=evaluation_id))
