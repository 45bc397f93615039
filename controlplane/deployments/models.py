"""Deployments, their append-only approvals, and each deployment's drift policy."""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.db import Base, UTCDateTime, str_enum, utcnow


class Stage(str, enum.Enum):
    shadow = "shadow"  # mirrored and compared, serves nobody
    canary = "canary"  # serves `traffic_share` of the endpoint's requests
    active = "active"  # serves the rest
    paused = "paused"  # a rollout on hold; resumes to the stage it left
    rolled_back = "rolled_back"
    retired = "retired"


ROLLOUT_STAGES = (Stage.shadow, Stage.canary, Stage.paused)
_ROLLOUT_SQL = "stage IN ('shadow', 'canary', 'paused')"


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        # One active engine per endpoint, and one rollout in progress per endpoint.
        Index("uq_deployments_endpoint_active", "endpoint", unique=True,
              postgresql_where=text("stage = 'active'"), sqlite_where=text("stage = 'active'")),
        Index("uq_deployments_endpoint_rollout", "endpoint", unique=True,
              postgresql_where=text(_ROLLOUT_SQL), sqlite_where=text(_ROLLOUT_SQL)),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(128), index=True)
    engine_id: Mapped[int] = mapped_column(ForeignKey("engines.id"), index=True)
    stage: Mapped[Stage] = mapped_column(str_enum(Stage, "deployment_stage"), index=True)
    paused_from: Mapped[Stage | None] = mapped_column(str_enum(Stage, "deployment_paused_from"))
    traffic_share: Mapped[float] = mapped_column(default=0.0)
    last_known_good_engine_id: Mapped[int | None] = mapped_column(ForeignKey("engines.id"))
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))

    # UPDATE ... WHERE version = :old: a write that raced past the expected_version check still fails.
    __mapper_args__ = {"version_id_col": version}


class Approval(Base):
    """Who approved a stage change and why. Append-only (the migration adds triggers)."""

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    approver: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    from_stage: Mapped[Stage] = mapped_column(str_enum(Stage, "approval_from_stage"))
    to_stage: Mapped[Stage] = mapped_column(str_enum(Stage, "approval_to_stage"))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DriftPolicy(Base):
    """Thresholds the drift analysis applies to a deployment's canary samples."""

    __tablename__ = "drift_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), unique=True)
    kl_mean_max: Mapped[float]
    kl_p95_max: Mapped[float]
    top1_agreement_min: Mapped[float]
    saturation_max: Mapped[float]
    amax_ratio_max: Mapped[float]
    window_seconds: Mapped[int]
    min_samples: Mapped[int]
    false_alarm_rate: Mapped[float]
    consecutive_failure_limit: Mapped[int]
    consecutive_error_limit: Mapped[int]
    version: Mapped[int] = mapped_column(default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))

    __mapper_args__ = {"version_id_col": version}
