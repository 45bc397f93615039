"""Reading evaluations."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.errors import NotFound
from controlplane.evaluations.models import Evaluation, Verdict
from controlplane.evaluations.schemas import EvaluationFilters
from controlplane.pagination import PageParams, paginate


def get(*, db: Session, evaluation_id: int, loc: tuple = ()) -> Evaluation:
    """An evaluation by id, or NotFound."""
    evaluation = db.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound("evaluation", evaluation_id, loc=loc)
    return evaluation


def latest_passing(*, db: Session, engine_id: int) -> Evaluation | None:
    """The engine's most recent evaluation whose gates passed."""
    return db.scalar(select(Evaluation).where(Evaluation.engine_id == engine_id, Evaluation.verdict == Verdict.passed)
                     .order_by(Evaluation.id.desc()).limit(1))


def list_evaluations(*, db: Session, filters: EvaluationFilters, page: PageParams) -> tuple[list[Evaluation], int]:
    """Evaluations, newest first."""
    stmt = select(Evaluation)
    for column in ("engine_id", "corpus_id", "verdict"):
        value = getattr(filters, column)
        if value is not None:
            stmt = stmt.where(getattr(Evaluation, column) == value)
    return paginate(db=db, stmt=stmt.order_by(Evaluation.id.desc()), page=page)
