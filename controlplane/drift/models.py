"""Drift analysis state: each deployment's sequential statistics, the analyses it recorded, and each endpoint's
traffic profile."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.db import Base, BigIntId, JSONType, UTCDateTime, str_enum, utcnow
from controlplane.drift.analysis import Outcome


class DriftState(Base):
    """Where a deployment's sequential test stands; locked for the length of every analysis."""

    __tablename__ = "drift_states"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), unique=True)
    engine_id: Mapped[int] = mapped_column(ForeignKey("engines.id"))
    statistics: Mapped[dict[str, int]] = mapped_column(JSONType, default=dict)  # metric -> CUSUM statistic
    samples_seen: Mapped[int] = mapped_column(default=0)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    consecutive_errors: Mapped[int] = mapped_column(default=0)
    last_outcome: Mapped[Outcome | None] = mapped_column(str_enum(Outcome, "drift_state_outcome"))
    last_recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}


class DriftAnalysis(Base):
    """One recorded analysis: outcome, window values, sequential statistics, evidence and what was done."""

    __tablename__ = "drift_analyses"
    __table_args__ = (Index("ix_drift_analyses_deployment_created", "deployment_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    engine_id: Mapped[int] = mapped_column(ForeignKey("engines.id"))
    outcome: Mapped[Outcome] = mapped_column(str_enum(Outcome, "drift_analysis_outcome"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(String(16))  # ingest | manual
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    sample_count: Mapped[int]
    new_samples: Mapped[int]
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    sequential: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    consecutive_failures: Mapped[int]
    consecutive_errors: Mapped[int]
    action: Mapped[str] = mapped_column(String(32))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class TrafficProfile(Base):
    """An endpoint's recent traffic by length bucket and script: counts that halve every PROFILE_HALF_LIFE samples."""

    __tablename__ = "traffic_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(128), unique=True)
    samples: Mapped[int] = mapped_column(default=0)  # every sample ever folded in
    weight: Mapped[float] = mapped_column(default=0.0)  # decayed sample count
    tokens: Mapped[float] = mapped_column(default=0.0)  # decayed token count
    max_tokens: Mapped[int] = mapped_column(default=0)
    length_buckets: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)  # bucket -> decayed count
    scripts: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)  # script -> decayed count
    version: Mapped[int] = mapped_column(default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}
