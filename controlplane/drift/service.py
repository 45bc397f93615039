"""Drift rows: locking a deployment's sequential state and its endpoint's profile, reading windows, recording and
listing analyses."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controlplane.alerts.models import Alert, AlertStatus
from controlplane.calibrations.models import Calibration
from controlplane.canary.models import CanarySample
from controlplane.corpora.models import Corpus
from controlplane.db import utcnow
from controlplane.deployments.models import Deployment
from controlplane.drift import analysis
from controlplane.drift import profile as traffic
from controlplane.drift.models import DriftAnalysis, DriftState, TrafficProfile
from controlplane.drift.schemas import AnalysisFilters, CoverageGapPublic, TrafficProfilePublic
from controlplane.engines.models import Engine
from controlplane.errors import NotFound
from controlplane.pagination import PageParams, paginate

# An analysis reads at most this many of the window's newest samples: p95s and slices need the samples, and
# 500 estimate a p95 to within about 1 percentile point while keeping an analysis per batch cheap.
MAX_WINDOW_SAMPLES = 500


def _insert(db: Session):
    return (postgresql if db.get_bind().dialect.name == "postgresql" else sqlite).insert


def _for_update(stmt):
    # FOR NO KEY UPDATE: rows inserted meanwhile that reference this one (samples, alerts) take KEY SHARE locks
    # on it, which FOR UPDATE would wait on and deadlock against. populate_existing: an object already in the
    # session is refreshed from the locked row, not trusted as it was read.
    return stmt.with_for_update(key_share=True).execution_options(populate_existing=True)


def _locked_or_created(db: Session, stmt, create) -> Any:
    row = db.scalars(_for_update(stmt)).one_or_none()
    if row is None:  # the first analysis: a concurrent first one may insert it too, then both lock the same row
        db.execute(create.on_conflict_do_nothing())
        row = db.scalars(_for_update(stmt)).one()
    return row


def locked_state(*, db: Session, deployment: Deployment) -> DriftState:
    """The deployment's sequential state, created if missing, locked for this transaction (analyses take turns)."""
    return _locked_or_created(
        db, select(DriftState).where(DriftState.deployment_id == deployment.id),
        _insert(db)(DriftState).values(deployment_id=deployment.id, engine_id=deployment.engine_id, statistics={},
                                       samples_seen=0, consecutive_failures=0, consecutive_errors=0, version=1,
                                       updated_at=utcnow()))


def locked_deployment(*, db: Session, deployment_id: int) -> Deployment:
    """The deployment row, locked and re-read (a concurrent rollback that committed first is seen here)."""
    return db.scalars(_for_update(select(Deployment).where(Deployment.id == deployment_id))).one()


def locked_profile(*, db: Session, endpoint: str) -> TrafficProfile:
    """The endpoint's traffic profile, created if missing, locked for this transaction."""
    return _locked_or_created(
        db, select(TrafficProfile).where(TrafficProfile.endpoint == endpoint),
        _insert(db)(TrafficProfile).values(endpoint=endpoint, samples=0, weight=0.0, tokens=0.0, max_tokens=0,
                                           length_buckets={}, scripts={}, version=1, updated_at=utcnow()))


def get_profile(*, db: Session, endpoint: str) -> TrafficProfile | None:
    """The endpoint's traffic profile, if any sample has arrived."""
    return db.scalar(select(TrafficProfile).where(TrafficProfile.endpoint == endpoint))


def traffic_report(*, db: Session, deployment: Deployment) -> TrafficProfilePublic:
    """The endpoint's traffic profile as shares, the deployment engine's calibration coverage, and the gaps."""
    profile = get_profile(db=db, endpoint=deployment.endpoint) or TrafficProfile(
        endpoint=deployment.endpoint, samples=0, weight=0.0, tokens=0.0, max_tokens=0, length_buckets={}, scripts={})
    calibration = calibration_coverage(db=db, engine_id=deployment.engine_id)
    shares = traffic.as_coverage(profile)
    gaps = traffic.gaps(profile, calibration.coverage) if calibration is not None else []
    return TrafficProfilePublic(
        endpoint=deployment.endpoint, samples=shares.samples, half_life=traffic.PROFILE_HALF_LIFE,
        mean_tokens=shares.mean_tokens, max_tokens=shares.max_tokens, length_buckets=shares.length_buckets,
        scripts=shares.scripts, calibration=calibration.as_dict() if calibration else None,
        gaps=[CoverageGapPublic.model_validate(g.model_dump()) for g in gaps])


def window_samples(*, db: Session, deployment: Deployment, since: datetime) -> list[Any]:
    """The measurements of the deployment's samples of its engine since `since`, newest first, at most
    MAX_WINDOW_SAMPLES (rows with the columns analysis reads, not ORM objects: one is read per batch)."""
    return list(db.execute(
        select(CanarySample.kl_mean, CanarySample.top1_agreement, CanarySample.saturation, CanarySample.amax_ratio,
               CanarySample.slice, CanarySample.length_bucket, CanarySample.script)
        .where(CanarySample.deployment_id == deployment.id, CanarySample.engine_id == deployment.engine_id,
               CanarySample.created_at >= since)
        .order_by(CanarySample.id.desc()).limit(MAX_WINDOW_SAMPLES)))


@dataclass(frozen=True)
class CalibrationCoverage:
    """What the corpus an engine was calibrated on covers."""

    calibration_id: int
    corpus_id: int
    corpus_name: str
    coverage: dict[str, Any]  # runtime.corpora.CoverageProfile

    def as_dict(self) -> dict[str, Any]:
        return {"calibration_id": self.calibration_id, "corpus_id": self.corpus_id, "corpus": self.corpus_name,
                "length_buckets": {k: v for k, v in self.coverage.get("length_buckets", {}).items() if v > 0},
                "scripts": {k: v for k, v in self.coverage.get("scripts", {}).items() if v > 0},
                "max_tokens": self.coverage.get("max_tokens")}


def calibration_coverage(*, db: Session, engine_id: int) -> CalibrationCoverage | None:
    """The coverage of the corpus an engine's static scales came from; None for engines without a calibration."""
    row = db.execute(
        select(Calibration.id, Corpus.id, Corpus.name, Corpus.coverage)
        .join(Engine, Engine.calibration_id == Calibration.id)
        .join(Corpus, Corpus.id == Calibration.corpus_id)
        .where(Engine.id == engine_id)).first()
    return CalibrationCoverage(*row) if row is not None else None


_EXPECTED: dict[str, set[str]] = {}  # engine content hash -> measurements; engines never change
_EXPECTED_MAX = 4096


def expected_measurements(*, db: Session, engine_id: int) -> set[str]:
    """What an engine's samples must report (from its manifest, read once per engine and process)."""
    content_hash = db.scalar(select(Engine.content_hash).where(Engine.id == engine_id))
    expected = _EXPECTED.get(content_hash)
    if expected is None:
        manifest = db.scalar(select(Engine.manifest).where(Engine.id == engine_id)) or {}
        if len(_EXPECTED) >= _EXPECTED_MAX:
            _EXPECTED.clear()
        expected = _EXPECTED[content_hash] = analysis.expected_measurements(manifest)
    return expected


def open_alerts(*, db: Session, deployment_id: int, kind: str) -> list[Alert]:
    """The deployment's open or acknowledged alerts of one kind (drift analysis dedupes on them)."""
    rows = db.scalars(select(Alert).where(Alert.deployment_id == deployment_id,
                                          Alert.status != AlertStatus.resolved).order_by(Alert.id))
    return [a for a in rows if (a.evidence or {}).get("kind") == kind]


def record(*, db: Session, analysis: DriftAnalysis) -> DriftAnalysis:
    """Adds an analysis to the caller's transaction."""
    db.add(analysis)
    db.flush()
    return analysis


def list_analyses(*, db: Session, deployment_id: int, filters: AnalysisFilters,
                  page: PageParams) -> tuple[list[DriftAnalysis], int]:
    """A deployment's recorded analyses, newest first."""
    stmt = select(DriftAnalysis).where(DriftAnalysis.deployment_id == deployment_id)
    if filters.outcome is not None:
        stmt = stmt.where(DriftAnalysis.outcome == filters.outcome)
    if filters.action is not None:
        stmt = stmt.where(DriftAnalysis.action == filters.action)
    return paginate(db=db, stmt=stmt.order_by(DriftAnalysis.id.desc()), page=page)


def get_analysis(*, db: Session, deployment_id: int, analysis_id: int) -> DriftAnalysis:
    """One analysis of a deployment, or NotFound."""
    analysis = db.get(DriftAnalysis, analysis_id)
    if analysis is None or analysis.deployment_id != deployment_id:
        raise NotFound("analysis", analysis_id)
    return analysis
