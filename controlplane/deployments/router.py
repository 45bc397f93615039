"""Deployments: create, read, and move through the rollout stages (each write names the version it read)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from controlplane.deployments import flows, service
from controlplane.deployments.schemas import (
    ApprovalFilters,
    ApprovalPublic,
    ApprovalsPublic,
    DeploymentCreate,
    DeploymentFilters,
    DeploymentPublic,
    DeploymentsPublic,
    DriftPolicyPublic,
    DriftPolicyUpdate,
    Promotion,
    PromotionResult,
    RollbackResult,
    TrafficChange,
    Transition,
)
from controlplane.deps import Approver, CurrentDeployment, CurrentKey, DbSession, LockedDeployment, Submitter, Viewer
from controlplane.pagination import Pagination

router = APIRouter(prefix="/deployments", tags=["deployments"])


def _public(deployment) -> DeploymentPublic | None:
    return DeploymentPublic.model_validate(deployment) if deployment is not None else None


@router.post("", response_model=DeploymentPublic, status_code=status.HTTP_201_CREATED, dependencies=[Submitter])
def create_deployment(deployment_in: DeploymentCreate, db: DbSession, caller: CurrentKey) -> DeploymentPublic:
    """Starts a rollout: an engine that passed its gates enters shadow on an endpoint."""
    return _public(service.create(db=db, deployment_in=deployment_in, actor=caller.owner))


@router.get("", response_model=DeploymentsPublic, dependencies=[Viewer])
def list_deployments(db: DbSession, page: Pagination,
                     filters: Annotated[DeploymentFilters, Query()]) -> DeploymentsPublic:
    """Deployments, newest first."""
    rows, count = service.list_deployments(db=db, filters=filters, page=page)
    return DeploymentsPublic(data=[_public(r) for r in rows], count=count)


@router.get("/{deployment_id}", response_model=DeploymentPublic, dependencies=[Viewer])
def get_deployment(deployment: CurrentDeployment) -> DeploymentPublic:
    """One deployment."""
    return _public(deployment)


@router.post("/{deployment_id}/promote", response_model=PromotionResult, dependencies=[Approver])
def promote(deployment: LockedDeployment, body: Promotion, db: DbSession, caller: CurrentKey) -> PromotionResult:
    """shadow -> canary or canary -> active, recorded as an approval (approver role)."""
    promoted, retired = flows.promote(db=db, deployment=deployment, expected_version=body.expected_version,
                                      approver=caller.owner, reason=body.reason, traffic_share=body.traffic_share)
    return PromotionResult(promoted=_public(promoted), retired=_public(retired))


@router.post("/{deployment_id}/traffic", response_model=DeploymentPublic, dependencies=[Approver])
def set_traffic(deployment: LockedDeployment, body: TrafficChange, db: DbSession, caller: CurrentKey) -> DeploymentPublic:
    """Sets a canary's traffic share, recorded as an approval (approver role)."""
    return _public(flows.set_traffic(db=db, deployment=deployment, expected_version=body.expected_version,
                                     traffic_share=body.traffic_share, approver=caller.owner, reason=body.reason))


@router.post("/{deployment_id}/pause", response_model=DeploymentPublic, dependencies=[Submitter])
def pause(deployment: LockedDeployment, body: Transition, db: DbSession, caller: CurrentKey) -> DeploymentPublic:
    """Holds a rollout in shadow or canary."""
    return _public(service.pause(db=db, deployment=deployment, expected_version=body.expected_version,
                                 actor=caller.owner, reason=body.reason))


@router.post("/{deployment_id}/resume", response_model=DeploymentPublic, dependencies=[Submitter])
def resume(deployment: LockedDeployment, body: Transition, db: DbSession, caller: CurrentKey) -> DeploymentPublic:
    """Resumes a paused rollout in the stage it was paused in."""
    return _public(service.resume(db=db, deployment=deployment, expected_version=body.expected_version,
                                  actor=caller.owner, reason=body.reason))


@router.post("/{deployment_id}/rollback", response_model=RollbackResult, dependencies=[Approver])
def rollback(deployment: LockedDeployment, body: Transition, db: DbSession, caller: CurrentKey) -> RollbackResult:
    """Rolls back now, skipping analysis (approver role); an active deployment hands over to its last known-good."""
    rolled_back, restored = flows.rollback(db=db, deployment=deployment, expected_version=body.expected_version,
                                           approver=caller.owner, reason=body.reason)
    return RollbackResult(rolled_back=_public(rolled_back), restored=_public(restored))


@router.post("/{deployment_id}/retire", response_model=DeploymentPublic, dependencies=[Approver])
def retire(deployment: LockedDeployment, body: Transition, db: DbSession, caller: CurrentKey) -> DeploymentPublic:
    """Takes a deployment out of service for good (approver role)."""
    return _public(service.retire(db=db, deployment=deployment, expected_version=body.expected_version,
                                  actor=caller.owner, reason=body.reason))


@router.get("/{deployment_id}/approvals", response_model=ApprovalsPublic, dependencies=[Viewer])
def list_approvals(deployment: CurrentDeployment, db: DbSession, page: Pagination,
                   filters: Annotated[ApprovalFilters, Query()]) -> ApprovalsPublic:
    """Who approved which stage change of this deployment, and why."""
    rows, count = service.list_approvals(db=db, deployment_id=deployment.id, filters=filters, page=page)
    return ApprovalsPublic(data=[ApprovalPublic.model_validate(r) for r in rows], count=count)


@router.get("/{deployment_id}/drift-policy", response_model=DriftPolicyPublic, dependencies=[Viewer])
def get_drift_policy(deployment: CurrentDeployment, db: DbSession) -> DriftPolicyPublic:
    """The drift thresholds applied to this deployment's canary samples."""
    return DriftPolicyPublic.model_validate(service.get_policy(db=db, deployment_id=deployment.id))


@router.put("/{deployment_id}/drift-policy", response_model=DriftPolicyPublic, dependencies=[Approver])
def update_drift_policy(deployment: LockedDeployment, body: DriftPolicyUpdate, db: DbSession,
                        caller: CurrentKey) -> DriftPolicyPublic:
    """Replaces the drift thresholds (approver role: loosening them changes when rollback happens)."""
    return DriftPolicyPublic.model_validate(service.update_policy(db=db, deployment=deployment, policy_in=body,
                                                                  actor=caller.owner))
