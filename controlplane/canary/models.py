"""Canary samples and their per-window aggregates (what drift analysis reads)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.db import Base, BigIntId, JSONType, UTCDateTime, utcnow


class CanarySample(Base):
    __tablename__ = "canary_samples"
    __table_args__ = (
        Index("ix_canary_samples_deployment_created", "deployment_id", "created_at"),
        # A batch resent after a timeout must not count its samples twice.
        UniqueConstraint("deployment_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    engine_id: Mapped[int] = mapped_column(ForeignKey("engines.id"), index=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    kl_mean: Mapped[float]
    kl_max: Mapped[float]
    top1_agreement: Mapped[float]
    saturation: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)  # layer -> share clipped
    amax_ratio: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)  # layer -> observed/calibrated
    slice: Mapped[str | None] = mapped_column(String(64))
    length_bucket: Mapped[str | None] = mapped_column(String(32))
    script: Mapped[str | None] = mapped_column(String(32))
    num_tokens: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CanaryWindow(Base):
    """Running sums over one fixed time window of one deployment's samples for one engine."""

    __tablename__ = "canary_windows"
    __table_args__ = (UniqueConstraint("deployment_id", "engine_id", "window_start"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    engine_id: Mapped[int] = mapped_column(ForeignKey("engines.id"))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_seconds: Mapped[int]
    sample_count: Mapped[int] = mapped_column(default=0)
    kl_mean_sum: Mapped[float] = mapped_column(default=0.0)
    kl_mean_sq_sum: Mapped[float] = mapped_column(default=0.0)
    kl_max: Mapped[float] = mapped_column(default=0.0)
    top1_sum: Mapped[float] = mapped_column(default=0.0)
    top1_min: Mapped[float] = mapped_column(default=1.0)
    saturation_max: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)  # layer -> max share
    amax_ratio_max: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)  # layer -> max ratio
    slices: Mapped[dict[str, int]] = mapped_column(JSONType, default=dict)  # slice -> sample count
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
