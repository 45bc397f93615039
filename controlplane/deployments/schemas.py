"""Deployment, approval and drift-policy schemas. Every write names the version it expects."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from controlplane.deployments.models import Stage
from controlplane.fields import MAX_ID, Id, Name, Reason, Text
from controlplane.pagination import Page

DEFAULT_CANARY_SHARE = 0.05

ExpectedVersion = Field(ge=1, le=MAX_ID, description="The version you read; a stale one gets 409.")
CanaryShare = Field(gt=0.0, lt=1.0, description="Share of the endpoint's requests the canary serves (0..1).")


class DriftPolicyIn(BaseModel):
    """Drift thresholds; an analysis needs `min_samples` in a window before it can fail."""

    model_config = ConfigDict(extra="forbid")

    kl_mean_max: float = Field(0.05, gt=0, le=100, description="Largest window mean of per-request KL(ref || engine).")
    kl_p95_max: float = Field(0.2, gt=0, le=100, description="Largest 95th percentile of per-request KL.")
    top1_agreement_min: float = Field(0.9, ge=0, le=1, description="Smallest window mean top-1 agreement.")
    saturation_max: float = Field(0.001, ge=0, le=1, description="Largest share of clipped values in any layer.")
    amax_ratio_max: float = Field(2.0, gt=0, le=1e6, description="Largest observed/calibrated amax in any layer.")
    window_seconds: int = Field(300, ge=1, le=86_400)
    min_samples: int = Field(50, ge=1, le=1_000_000)
    false_alarm_rate: float = Field(0.01, gt=0, lt=0.5, description="Target false-alarm rate of the sequential test.")
    consecutive_failure_limit: int = Field(2, ge=1, le=100)
    consecutive_error_limit: int = Field(3, ge=1, le=100)


class DriftPolicyUpdate(DriftPolicyIn):
    expected_version: int = ExpectedVersion
    reason: Reason


class DriftPolicyPublic(DriftPolicyIn):
    model_config = ConfigDict(from_attributes=True)

    id: int
    deployment_id: int
    version: int
    updated_at: datetime
    updated_by: str


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: Name
    engine_id: Id
    reason: Reason
    drift_policy: DriftPolicyIn | None = None


class DeploymentPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    endpoint: str
    engine_id: int
    stage: Stage
    paused_from: Stage | None
    traffic_share: float
    last_known_good_engine_id: int | None
    version: int
    created_at: datetime
    updated_at: datetime
    created_by: str


class DeploymentsPublic(Page[DeploymentPublic]):
    pass


class DeploymentFilters(BaseModel):
    endpoint: Text | None = None
    stage: Stage | None = None
    engine_id: Id | None = None


class Transition(BaseModel):
    """A stage change: the version you read and why."""

    model_config = ConfigDict(extra="forbid")

    expected_version: int = ExpectedVersion
    reason: Reason


class Promotion(Transition):
    traffic_share: float | None = Field(None, gt=0.0, lt=1.0,
                                        description=f"Canary share when promoting to canary (default {DEFAULT_CANARY_SHARE}).")


class TrafficChange(Transition):
    traffic_share: float = CanaryShare


class RollbackResult(BaseModel):
    rolled_back: DeploymentPublic
    restored: DeploymentPublic | None = Field(description="The last known-good engine, active again (active rollbacks).")


class PromotionResult(BaseModel):
    promoted: DeploymentPublic
    retired: DeploymentPublic | None = Field(description="The endpoint's previous active deployment, if replaced.")


class ApprovalPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    deployment_id: int
    approver: str
    action: str
    from_stage: Stage
    to_stage: Stage
    reason: str
    created_at: datetime


class ApprovalsPublic(Page[ApprovalPublic]):
    pass


class ApprovalFilters(BaseModel):
    approver: Text | None = None
    action: Text | None = None
