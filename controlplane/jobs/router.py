"""Jobs API: submit calibrate / build / evaluate / search jobs, read their status and progress."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response, status

from controlplane.deps import AppSettings, CurrentKey, DbSession, Submitter, Viewer
from controlplane.fields import IdPath
from controlplane.jobs import service
from controlplane.jobs.models import JobKind
from controlplane.jobs.schemas import (
    IDEMPOTENCY_KEY_MAX,
    BuildJobCreate,
    CalibrateJobCreate,
    EvaluateJobCreate,
    JobFilters,
    JobParams,
    JobPublic,
    JobsPublic,
    SearchJobCreate,
)
from controlplane.pagination import Pagination

router = APIRouter(prefix="/jobs", tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=IDEMPOTENCY_KEY_MAX, pattern=r"^[\x21-\x7e]+$",
           description="Makes a retried submission return the job the first one created (printable ASCII)."),
]
_SUBMIT = {
    "response_model": JobPublic,
    "status_code": status.HTTP_202_ACCEPTED,
    "dependencies": [Submitter],
    "responses": {200: {"model": JobPublic, "description": "A replay: the job this Idempotency-Key already names."}},
}


def _submit(kind: JobKind, job_in: JobParams, *, db: DbSession, settings: AppSettings, caller: CurrentKey,
            idempotency_key: str | None, response: Response) -> JobPublic:
    job, created = service.submit(db=db, kind=kind, job_in=job_in, idempotency_key=idempotency_key,
                                  actor=caller.owner, settings=settings)
    if not created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return JobPublic.model_validate(job)


@router.post("/calibrate", **_SUBMIT)
def submit_calibrate(job_in: CalibrateJobCreate, db: DbSession, settings: AppSettings, caller: CurrentKey,
                     response: Response, idempotency_key: IdempotencyKey = None) -> JobPublic:
    """Queues a calibration of a model on a corpus for a recipe."""
    return _submit(JobKind.calibrate, job_in, db=db, settings=settings, caller=caller,
                   idempotency_key=idempotency_key, response=response)


@router.post("/build", **_SUBMIT)
def submit_build(job_in: BuildJobCreate, db: DbSession, settings: AppSettings, caller: CurrentKey,
                 response: Response, idempotency_key: IdempotencyKey = None) -> JobPublic:
    """Queues the build of an engine for a model, recipe and accelerator."""
    return _submit(JobKind.build, job_in, db=db, settings=settings, caller=caller,
                   idempotency_key=idempotency_key, response=response)


@router.post("/evaluate", **_SUBMIT)
def submit_evaluate(job_in: EvaluateJobCreate, db: DbSession, settings: AppSettings, caller: CurrentKey,
                    response: Response, idempotency_key: IdempotencyKey = None) -> JobPublic:
    """Queues the evaluation of an engine against its reference precision on a corpus."""
    return _submit(JobKind.evaluate, job_in, db=db, settings=settings, caller=caller,
                   idempotency_key=idempotency_key, response=response)


@router.post("/search", **_SUBMIT)
def submit_search(job_in: SearchJobCreate, db: DbSession, settings: AppSettings, caller: CurrentKey,
                  response: Response, idempotency_key: IdempotencyKey = None) -> JobPublic:
    """Queues a mixed-precision search: a recipe within a budget of bits, bytes or decode latency, stored versioned."""
    return _submit(JobKind.search, job_in, db=db, settings=settings, caller=caller,
                   idempotency_key=idempotency_key, response=response)


@router.get("", response_model=JobsPublic, dependencies=[Viewer])
def list_jobs(db: DbSession, page: Pagination, filters: Annotated[JobFilters, Depends()]) -> JobsPublic:
    """Jobs, newest first, filtered by kind, status, submitter and creation time."""
    rows, count = service.list_jobs(db=db, filters=filters, page=page)
    return JobsPublic(data=[JobPublic.model_validate(r) for r in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic, dependencies=[Viewer])
def get_job(job_id: IdPath, db: DbSession) -> JobPublic:
    """One job with its status, progress, result ids and error."""
    return JobPublic.model_validate(service.get(db=db, job_id=job_id))
