"""Celery tasks: thin wrappers that take a job id, own a database session and run the job.

Routing (`cpu` / `gpu` queue) is decided at submission and stored on the job. Retries happen only
on transient errors (database or broker unreachable), with exponential backoff; when they run out,
the job is marked failed. This module imports no FastAPI route code.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from controlplane.db import make_session_factory, get_engine
from controlplane.jobs import runners, service
from controlplane.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _settings(task: Task) -> Settings:
    """The settings of the app this task is bound to (the API's in embedded mode, the worker's otherwise)."""
    return getattr(task.app, "settings", None) or get_settings()


class JobTask(Task):
    """A job task: acks late, retries transient errors with backoff, records exhausted retries on the job."""

    abstract = True
    # The jobs table is the result store (status, progress, result ids, error). Storing Celery results
    # too would make every publish subscribe the API to a Redis pub/sub channel it never reads, and
    # make a submission wait ~20 s on a down result backend before failing.
    ignore_result = True
    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = runners.TRANSIENT_ERRORS
    max_retries = 6
    retry_backoff = 2  # 2, 4, 8, ... seconds
    retry_backoff_max = 120
    retry_jitter = True

    def run_job(self, job_id: int) -> dict[str, Any] | None:
        settings = _settings(self)
        db = make_session_factory(get_engine(settings))()
        try:
            return runners.execute(db=db, job_id=job_id, settings=settings)
        except runners.TRANSIENT_ERRORS as exc:
            db.rollback()
            if not self.request.is_eager:
                raise  # autoretry_for: back off and run again
            # In-process (embedded) runs retry at once, with no backoff: the same error would come back.
            self._fail((job_id,), f"{type(exc).__name__}: {exc}")
            return None
        except BaseException:
            db.rollback()
            raise
        finally:
            db.close()

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        self._note(args, f"retrying after a transient error ({type(exc).__name__}), "
                         f"attempt {self.request.retries + 1} of {self.max_retries}")

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        # Only transient errors reach here (the job records every other failure itself): retries ran out.
        self._fail(args, f"gave up after {self.max_retries} retries: {type(exc).__name__}: {exc}")

    def _note(self, args: tuple, message: str) -> None:
        try:
            db = make_session_factory(get_engine(_settings(self)))()
            try:
                service.note(db=db, job_id=args[0], message=message)
            finally:
                db.close()
        except Exception as exc:  # the database may be the thing that is down
            log.warning("job %s: could not record %r: %s", args[0], message, type(exc).__name__)

    def _fail(self, args: tuple, error: str) -> None:
        try:
            db = make_session_factory(get_engine(_settings(self)))()
            try:
                service.fail(db=db, job_id=args[0], error=error)
            finally:
                db.close()
        except Exception as exc:
            log.error("job %s: could not record its failure (%s): %s", args[0], error, type(exc).__name__)


@shared_task(base=JobTask, bind=True, name="pops.calibrate")
def calibrate(self: JobTask, job_id: int) -> dict[str, Any] | None:
    """Calibrates a model on a corpus for the job's recipe."""
    return self.run_job(job_id)


@shared_task(base=JobTask, bind=True, name="pops.build")
def build(self: JobTask, job_id: int) -> dict[str, Any] | None:
    """Builds the job's engine."""
    return self.run_job(job_id)


@shared_task(base=JobTask, bind=True, name="pops.evaluate")
def evaluate(self: JobTask, job_id: int) -> dict[str, Any] | None:
    """Evaluates the job's engine."""
    return self.run_job(job_id)


@shared_task(base=JobTask, bind=True, name="pops.search")
def search(self: JobTask, job_id: int) -> dict[str, Any] | None:
    """Searches the job's mixed-precision recipe and stores it."""
    return self.run_job(job_id)
