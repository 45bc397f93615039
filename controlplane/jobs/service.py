"""Jobs: submission with idempotency keys, the job state machine, throttled progress, queries.

A job moves queued -> running -> succeeded | failed. `claim` may take a job that is already
`running` (its worker died and the broker redelivered it); `complete` and `fail` only move a job
that is still `running`, so however often a task is delivered, a job finishes exactly once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from typing import Any

from sqlalchemy import func, literal, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from controlplane.accelerators.models import Accelerator
from controlplane.audit import service as audit
from controlplane.calibrations.models import Calibration
from controlplane.corpora.models import Corpus
from controlplane.engines.models import Engine
from controlplane.db import UTCDateTime, utcnow
from controlplane.errors import Conflict, InvalidInput, NotFound, Unavailable
from controlplane.jobs.models import Job, JobKind, JobStatus
from controlplane.jobs.schemas import (
    BuildJobCreate,
    CalibrateJobCreate,
    EvaluateJobCreate,
    JobFilters,
    JobParams,
    SearchJobCreate,
)
from controlplane.model_registry.models import RegisteredModel
from controlplane.pagination import PageParams, paginate
from controlplane.recipes.models import Recipe
from controlplane.settings import Settings

log = logging.getLogger(__name__)

TASK_NAMES = {JobKind.calibrate: "pops.calibrate", JobKind.build: "pops.build", JobKind.evaluate: "pops.evaluate",
              JobKind.search: "pops.search"}
_ERROR_MAX = 4000


def params_hash(kind: JobKind, params: dict[str, Any]) -> str:
    """sha256 of the kind and canonical JSON params: an idempotent retry must match it."""
    canonical = json.dumps({"kind": kind.value, "params": params}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _require(db: Session, model: type, object_id: int | None, field: str, label: str) -> Any:
    """The referenced row, or a 404 naming the body field that referenced it."""
    row = db.get(model, object_id) if object_id is not None else None
    if row is None:
        raise NotFound(label, object_id, loc=("body", field))
    return row


def _check_references(*, db: Session, kind: JobKind, job_in: JobParams) -> bool:
    """Checks every id the request names; returns whether the job needs a GPU host."""
    if kind == JobKind.calibrate:
        assert isinstance(job_in, CalibrateJobCreate)
        _require(db, RegisteredModel, job_in.model_id, "model_id", "model")
        _require(db, Recipe, job_in.recipe_id, "recipe_id", "recipe")
        _require(db, Corpus, job_in.corpus_id, "corpus_id", "corpus")
        return False
    if kind == JobKind.build:
        assert isinstance(job_in, BuildJobCreate)
        _require(db, RegisteredModel, job_in.model_id, "model_id", "model")
        _require(db, Recipe, job_in.recipe_id, "recipe_id", "recipe")
        accelerator = _require(db, Accelerator, job_in.accelerator_id, "accelerator_id", "accelerator")
        if job_in.calibration_id is not None:
            calibration = _require(db, Calibration, job_in.calibration_id, "calibration_id", "calibration")
            if calibration.model_id != job_in.model_id:
                raise InvalidInput(
                    f"calibration {calibration.id} was made on model {calibration.model_id}, not model {job_in.model_id}",
                    loc=("body", "calibration_id"),
                )
        return accelerator.min_capability is not None
    if kind == JobKind.search:
        assert isinstance(job_in, SearchJobCreate)
        _require(db, RegisteredModel, job_in.model_id, "model_id", "model")
        _require(db, Corpus, job_in.corpus_id, "corpus_id", "corpus")
        accelerator = _require(db, Accelerator, job_in.accelerator_id, "accelerator_id", "accelerator")
        if job_in.budget.latency_us is not None:
            _check_latency_model(accelerator)
        return False  # the sensitivity runs the reference paths: any host will do
    assert isinstance(job_in, EvaluateJobCreate)
    engine = _require(db, Engine, job_in.engine_id, "engine_id", "engine")
    _require(db, Corpus, job_in.corpus_id, "corpus_id", "corpus")
    accelerator = db.get(Accelerator, engine.accelerator_id)
    return accelerator is not None and accelerator.min_capability is not None


def _check_latency_model(accelerator: Accelerator) -> None:
    """A latency budget needs the accelerator's decode latency model (the CPU has none)."""
    from runtime.accelerators import get_profile
    from runtime.errors import InputError

    try:
        profile = get_profile(accelerator.name)
    except InputError:
        return  # not a runtime profile: the job says so when it runs
    if profile.latency is None:
        raise InvalidInput(f"accelerator {accelerator.name!r} has no decode latency model, so a latency budget "
                           "cannot be converted; give bits_per_weight or total_bytes instead",
                           loc=("body", "budget", "latency_us"))


def _replay(existing: Job, kind: JobKind, digest: str, key: str) -> Job:
    """The job an idempotency key already names, provided the request repeats it exactly."""
    if existing.kind != kind or existing.params_hash != digest:
        raise Conflict(
            f"Idempotency-Key {key!r} was used for job {existing.id} ({existing.kind.value}) with other "
            "parameters; send a new key for a new job",
            loc=("header", "idempotency-key"),
        )
    return existing


def submit(
    *, db: Session, kind: JobKind, job_in: JobParams, idempotency_key: str | None, actor: str, settings: Settings
) -> tuple[Job, bool]:
    """Validates a job request, stores it and queues it; returns (job, created).

    With an idempotency key, a repeated request returns the job the key already names (created
    False); the same key with other parameters is a 409.
    """
    from controlplane.celery_app import queue_for  # the Celery app imports this module's tasks

    params = job_in.job_params()
    digest = params_hash(kind, params)
    if idempotency_key is not None:
        existing = db.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is not None:
            return _replay(existing, kind, digest, idempotency_key), False
    gpu = _check_references(db=db, kind=kind, job_in=job_in)
    job = Job(
        kind=kind,
        status=JobStatus.queued,
        progress=0.0,
        message="queued",
        params=params,
        params_hash=digest,
        idempotency_key=idempotency_key,
        attempts=0,
        queue=queue_for(kind=kind.value, gpu=gpu),
        celery_task_id=str(uuid.uuid4()),
        submitted_by=actor,
    )
    db.add(job)
    try:
        db.flush()
    except IntegrityError:
        # A concurrent request with the same key won the insert; answer as its replay.
        db.rollback()
        existing = db.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return _replay(existing, kind, digest, idempotency_key), False
    audit.record(db=db, actor=actor, action=f"job.{kind.value}", object_type="job", object_id=job.id,
                 after=audit.snapshot(job), reason=job_in.reason)
    db.commit()
    dispatch(db=db, job=job, settings=settings)
    db.refresh(job)  # embedded mode ran the job in this call
    return job, True


def dispatch(*, db: Session, job: Job, settings: Settings) -> None:
    """Queues the job's task (runs it in-process when embedded); a broker that cannot be reached fails the job."""
    from controlplane.celery_app import get_celery

    task = get_celery(settings).tasks[TASK_NAMES[job.kind]]
    try:
        task.apply_async(args=[job.id], task_id=job.celery_task_id, queue=job.queue)
    except Exception as exc:  # kombu raises OperationalError after its own publish retries
        if settings.broker_url is None:
            raise
        log.error("job %s: could not queue task: %s", job.id, type(exc).__name__)
        fail(db=db, job_id=job.id, error=f"could not queue the job: the task broker is unreachable ({type(exc).__name__})",
             from_statuses=(JobStatus.queued,))
        raise Unavailable("the task broker is unreachable; the job was not queued", loc=("broker",)) from exc


def get(*, db: Session, job_id: int) -> Job:
    """One job, or 404."""
    job = db.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    return job


def list_jobs(*, db: Session, filters: JobFilters, page: PageParams) -> tuple[list[Job], int]:
    """Jobs matching the filters, newest first."""
    stmt = select(Job)
    if filters.kind is not None:
        stmt = stmt.where(Job.kind == filters.kind)
    if filters.status is not None:
        stmt = stmt.where(Job.status == filters.status)
    if filters.submitted_by is not None:
        stmt = stmt.where(Job.submitted_by == filters.submitted_by)
    if filters.created_after is not None:
        stmt = stmt.where(Job.created_at >= filters.created_after)
    if filters.created_before is not None:
        stmt = stmt.where(Job.created_at < filters.created_before)
    return paginate(db=db, stmt=stmt.order_by(Job.id.desc()), page=page)


# --- the state machine, as run by a worker --------------------------------------------------------


def claim(*, db: Session, job_id: int) -> Job | None:
    """Marks the job running for one more attempt and commits; None when it already finished."""
    result = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.queued, JobStatus.running]))
        .values(status=JobStatus.running, attempts=Job.attempts + 1, message="running",
                started_at=func.coalesce(Job.started_at, literal(utcnow(), UTCDateTime())))
        .execution_options(synchronize_session=False)
    )
    db.commit()
    job = db.get(Job, job_id, populate_existing=True)
    if job is None:
        raise LookupError(f"job {job_id} does not exist")
    db.commit()  # end the read transaction: no lock is held while the work runs
    return job if result.rowcount == 1 else None


def set_run_id(*, db: Session, job_id: int, run_id: str | None) -> None:
    """Stores the job's MLflow run id."""
    db.execute(update(Job).where(Job.id == job_id).values(mlflow_run_id=run_id))
    db.commit()


def complete(*, db: Session, job_id: int, result: dict[str, Any], message: str) -> bool:
    """Moves a running job to succeeded in the caller's transaction; False when another attempt finished it first.

    The caller adds the job's result rows to the same transaction and commits when this returns True,
    or rolls back when it returns False.
    """
    done = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running)
        .values(status=JobStatus.succeeded, progress=1.0, result=result, message=message, error=None,
                finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return done.rowcount == 1


def fail(*, db: Session, job_id: int, error: str, from_statuses: tuple[JobStatus, ...] = (JobStatus.running,),
         message: str = "failed") -> bool:
    """Moves the job to failed with its error, in a transaction of its own; False when it had already finished."""
    db.rollback()
    done = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(from_statuses))
        .values(status=JobStatus.failed, error=error[:_ERROR_MAX], message=message, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return done.rowcount == 1


def note(*, db: Session, job_id: int, message: str) -> None:
    """Replaces the job's message (e.g. a retry after a transient error) in its own transaction."""
    db.execute(update(Job).where(Job.id == job_id).values(message=message[:_ERROR_MAX]))
    db.commit()


class ProgressWriter:
    """Writes a job's progress at most once per `interval_s` (a build reports every layer).

    Each write is its own short transaction, so readers see progress while the job runs; a failed
    write is logged and skipped, never fatal: progress is advisory.
    """

    def __init__(self, *, db: Session, job_id: int, interval_s: float = 1.0):
        self.db, self.job_id, self.interval_s = db, job_id, interval_s
        self._lo, self._hi, self._stage = 0.0, 1.0, "running"
        self._last_write = float("-inf")
        self.value = 0.0

    def stage(self, name: str, lo: float, hi: float) -> "ProgressWriter":
        """Starts a stage covering [lo, hi] of the job; its progress callback maps into that range."""
        self._lo, self._hi, self._stage = lo, hi, name
        self.write(lo, force=True)
        return self

    def __call__(self, done: int | float, total: int | float | None = None) -> None:
        """The runtime's `progress(done, total)` callback, within the current stage."""
        fraction = done / total if total else float(done)
        self.write(self._lo + (self._hi - self._lo) * min(max(fraction, 0.0), 1.0))

    def write(self, value: float, *, force: bool = False) -> None:
        value = min(max(value, self.value), 1.0)  # progress never goes backwards
        now = time.monotonic()
        if not force and now - self._last_write < self.interval_s:
            self.value = value
            return
        self.value, self._last_write = value, now
        try:
            self.db.execute(update(Job).where(Job.id == self.job_id, Job.status == JobStatus.running)
                            .values(progress=value, message=self._stage))
            self.db.commit()
        except OperationalError as exc:
            self.db.rollback()
            log.warning("job %s: progress not written: %s", self.job_id, exc.__class__.__name__)
