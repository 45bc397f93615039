"""Ingesting canary samples in batches and keeping per-window aggregates current."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controlplane.audit import service as audit
from controlplane.canary.models import CanarySample, CanaryWindow
from controlplane.canary.schemas import CanaryIngestResult, CanarySampleFilters, CanarySampleIn, CanaryWindowFilters
from controlplane.db import utcnow
from controlplane.deployments.models import Deployment, Stage
from controlplane.drift import flows as drift_flows
from controlplane.errors import Conflict, InvalidInput
from controlplane.pagination import PageParams, paginate

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CLOSED = (Stage.retired, Stage.rolled_back)


def window_start(at: datetime, seconds: int) -> datetime:
    """The start of the fixed window of `seconds` that contains `at` (windows are aligned to the epoch)."""
    offset = int((at - _EPOCH).total_seconds()) // seconds * seconds
    return _EPOCH + timedelta(seconds=offset)


def _validate(deployment: Deployment, samples: list[CanarySampleIn], *, max_batch: int) -> None:
    if deployment.stage in _CLOSED:
        raise Conflict(f"deployment {deployment.id} is {deployment.stage.value}; it takes no more canary samples",
                       loc=("path", "deployment_id"))
    if not samples:
        raise InvalidInput("the batch is empty; send at least one sample", loc=("body",))
    if len(samples) > max_batch:
        raise InvalidInput(f"a batch holds at most {max_batch} samples; got {len(samples)}", loc=("body",))
    wrong = [{"loc": ("body", i, "engine_id"), "type": "value_error",
              "msg": f"sample is for engine {s.engine_id}, but deployment {deployment.id} serves engine "
                     f"{deployment.engine_id}"}
             for i, s in enumerate(samples) if s.engine_id != deployment.engine_id]
    if wrong:
        raise InvalidInput("", errors=wrong)


def _new_samples(db: Session, deployment: Deployment, samples: list[CanarySampleIn]) -> list[CanarySampleIn]:
    """The samples not stored before: request ids repeated in the batch or already stored are dropped."""
    ids = {s.request_id for s in samples if s.request_id is not None}
    stored = set(db.scalars(select(CanarySample.request_id).where(
        CanarySample.deployment_id == deployment.id, CanarySample.request_id.in_(ids)))) if ids else set()
    fresh, seen = [], set(stored)
    for s in samples:
        if s.request_id is not None:
            if s.request_id in seen:
                continue
            seen.add(s.request_id)
        fresh.append(s)
    return fresh


def _locked_window(db: Session, *, deployment: Deployment, start: datetime, seconds: int) -> CanaryWindow:
    """The window row, created if missing, locked for this transaction (concurrent batches merge in turn)."""
    key = {"deployment_id": deployment.id, "engine_id": deployment.engine_id, "window_start": start}
    dialect = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
    db.execute(dialect.insert(CanaryWindow).values(**key, window_seconds=seconds, sample_count=0, kl_mean_sum=0.0,
                                                  kl_mean_sq_sum=0.0, kl_max=0.0, top1_sum=0.0, top1_min=1.0,
                                                  saturation_max={}, amax_ratio_max={}, slices={},
                                                  updated_at=utcnow())
               .on_conflict_do_nothing(index_elements=list(key)))
    return db.scalars(select(CanaryWindow).filter_by(**key).with_for_update()
                      .execution_options(populate_existing=True)).one()


def _merge(window: CanaryWindow, samples: list[CanarySampleIn]) -> None:
    saturation, amax, slices = dict(window.saturation_max), dict(window.amax_ratio_max), dict(window.slices)
    for s in samples:
        window.sample_count += 1
        window.kl_mean_sum += s.kl_mean
        window.kl_mean_sq_sum += s.kl_mean * s.kl_mean
        window.kl_max = max(window.kl_max, s.kl_max)
        window.top1_sum += s.top1_agreement
        window.top1_min = min(window.top1_min, s.top1_agreement)
        for layer, value in s.saturation.items():
            saturation[layer] = max(saturation.get(layer, 0.0), value)
        for layer, value in s.amax_ratio.items():
            amax[layer] = max(amax.get(layer, 0.0), value)
        if s.slice is not None:
            slices[s.slice] = slices.get(s.slice, 0) + 1
    # New dict objects: the JSON columns are not mutation-tracked.
    window.saturation_max, window.amax_ratio_max, window.slices = saturation, amax, slices


def ingest(*, db: Session, deployment: Deployment, samples: list[CanarySampleIn], window_seconds: int,
           max_batch: int, actor: str) -> CanaryIngestResult:
    """Stores a batch of samples and folds them into the current window, in one transaction."""
    _validate(deployment, samples, max_batch=max_batch)
    now = utcnow()
    start = window_start(now, window_seconds)
    # Batches of one deployment take turns from here to the commit: the deployment row first, then its
    # window (drift analysis and rollbacks lock the deployment too). Taken before any sample insert, whose
    # foreign-key check holds a KEY SHARE lock on the deployment: upgrading from that deadlocks when two
    # batches race. NO KEY UPDATE (PostgreSQL) is the lock an UPDATE of the row takes anyway.
    db.execute(select(Deployment.id).where(Deployment.id == deployment.id).with_for_update(key_share=True))
    fresh = _new_samples(db, deployment, samples)
    result = CanaryIngestResult(deployment_id=deployment.id, accepted=len(fresh),
                                duplicates=len(samples) - len(fresh), window_start=start)
    audit.record(db=db, actor=actor, action="canary.ingest", object_type="deployment", object_id=deployment.id,
                 after=result.model_dump(mode="json"))
    db.flush()
    if fresh:
        # With RETURNING, SQLAlchemy's "insertmanyvalues" sends the batch as a few multi-row INSERTs
        # (one round trip per ~1000 rows) instead of one statement per sample.
        db.scalars(insert(CanarySample).returning(CanarySample.id), [
            {**s.model_dump(), "deployment_id": deployment.id, "created_at": now} for s in fresh
        ]).all()
        _merge(_locked_window(db, deployment=deployment, start=start, seconds=window_seconds), fresh)
        # Same transaction: each sample reaches the sequential test exactly once and a rollback commits with the
        # batch. Only this deployment's batches wait the longer lock; they take turns on its drift state anyway.
        drift_flows.after_ingest(db=db, deployment=deployment, samples=fresh)
    db.commit()
    return result


def list_samples(*, db: Session, deployment_id: int, filters: CanarySampleFilters,
                 page: PageParams) -> tuple[list[CanarySample], int]:
    """A deployment's samples, newest first."""
    stmt = select(CanarySample).where(CanarySample.deployment_id == deployment_id)
    if filters.engine_id is not None:
        stmt = stmt.where(CanarySample.engine_id == filters.engine_id)
    if filters.slice is not None:
        stmt = stmt.where(CanarySample.slice == filters.slice)
    if filters.since is not None:
        stmt = stmt.where(CanarySample.created_at >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(CanarySample.created_at < filters.until)
    return paginate(db=db, stmt=stmt.order_by(CanarySample.id.desc()), page=page)


def list_windows(*, db: Session, deployment_id: int, filters: CanaryWindowFilters,
                 page: PageParams) -> tuple[list[CanaryWindow], int]:
    """A deployment's window aggregates, newest first."""
    stmt = select(CanaryWindow).where(CanaryWindow.deployment_id == deployment_id)
    if filters.engine_id is not None:
        stmt = stmt.where(CanaryWindow.engine_id == filters.engine_id)
    if filters.since is not None:
        stmt = stmt.where(CanaryWindow.window_start >= window_start(filters.since, 1))
    return paginate(db=db, stmt=stmt.order_by(CanaryWindow.window_start.desc(), CanaryWindow.id.desc()), page=page)
