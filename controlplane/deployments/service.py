"""Deployments: creating them, reading them, and the stage changes that need no approval."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.audit import service as audit
from controlplane.deployments import transitions
from controlplane.deployments.models import ROLLOUT_STAGES, Approval, Deployment, DriftPolicy, Stage
from controlplane.deployments.schemas import (
    ApprovalFilters,
    DeploymentCreate,
    DeploymentFilters,
    DriftPolicyIn,
    DriftPolicyUpdate,
)
from controlplane.engines import service as engine_service
from controlplane.errors import Conflict, InvalidInput, NotFound, StaleVersion
from controlplane.evaluations import service as evaluation_service
from controlplane.pagination import PageParams, paginate


def get(*, db: Session, deployment_id: int, for_update: bool = False) -> Deployment:
    """A deployment by id (row-locked on PostgreSQL when `for_update`), or NotFound."""
    deployment = db.get(Deployment, deployment_id, with_for_update=for_update or None)
    if deployment is None:
        raise NotFound("deployment", deployment_id)
    return deployment


def check_version(deployment: Deployment, expected_version: int | None) -> None:
    """StaleVersion unless the caller read the version the row has now (None: system callers that just read it)."""
    if expected_version is not None and deployment.version != expected_version:
        raise StaleVersion("deployment", deployment.id, expected=expected_version, current=deployment.version)


def active_for(*, db: Session, endpoint: str) -> Deployment | None:
    """The endpoint's active deployment."""
    return db.scalar(select(Deployment).where(Deployment.endpoint == endpoint, Deployment.stage == Stage.active))


def rollout_for(*, db: Session, endpoint: str) -> Deployment | None:
    """The endpoint's deployment in shadow, canary or paused, if a rollout is in progress."""
    return db.scalar(select(Deployment).where(Deployment.endpoint == endpoint, Deployment.stage.in_(ROLLOUT_STAGES)))


def create(*, db: Session, deployment_in: DeploymentCreate, actor: str) -> Deployment:
    """Starts a rollout: the engine enters shadow on its endpoint, with a drift policy."""
    try:
        engine = engine_service.get(db=db, engine_id=deployment_in.engine_id, loc=("body", "engine_id"))
    except NotFound as exc:
        raise InvalidInput(str(exc), loc=("body", "engine_id")) from None
    if evaluation_service.latest_passing(db=db, engine_id=engine.id) is None:
        raise Conflict(f"engine {engine.id} has no evaluation that passed its gates; evaluate it first",
                       loc=("body", "engine_id"))
    in_progress = rollout_for(db=db, endpoint=deployment_in.endpoint)
    if in_progress is not None:
        raise Conflict(f"endpoint {deployment_in.endpoint!r} already has deployment {in_progress.id} in stage "
                       f"{in_progress.stage.value!r}; finish, roll back or retire it first", loc=("body", "endpoint"))
    active = active_for(db=db, endpoint=deployment_in.endpoint)
    deployment = Deployment(
        endpoint=deployment_in.endpoint,
        engine_id=engine.id,
        stage=Stage.shadow,
        traffic_share=0.0,
        last_known_good_engine_id=active.engine_id if active is not None else None,
        created_by=actor,
    )
    db.add(deployment)
    db.flush()
    policy_in = deployment_in.drift_policy or DriftPolicyIn()
    policy = DriftPolicy(deployment_id=deployment.id, updated_by=actor, **policy_in.model_dump())
    db.add(policy)
    db.flush()
    audit.record(db=db, actor=actor, action="deployment.create", object_type="deployment", object_id=deployment.id,
                 after={**audit.snapshot(deployment), "drift_policy": audit.snapshot(policy)},
                 reason=deployment_in.reason)
    db.commit()
    return deployment


def list_deployments(*, db: Session, filters: DeploymentFilters, page: PageParams) -> tuple[list[Deployment], int]:
    """Deployments, newest first."""
    stmt = select(Deployment)
    for column in ("endpoint", "stage", "engine_id"):
        value = getattr(filters, column)
        if value is not None:
            stmt = stmt.where(getattr(Deployment, column) == value)
    return paginate(db=db, stmt=stmt.order_by(Deployment.id.desc()), page=page)


def _move(*, db: Session, deployment: Deployment, to: Stage, action: str, actor: str, reason: str,
          expected_version: int | None) -> Deployment:
    check_version(deployment, expected_version)
    transitions.check(deployment.stage, to, action=action)
    before = audit.snapshot(deployment)
    if to == Stage.paused:
        deployment.paused_from = deployment.stage
    elif deployment.stage == Stage.paused:
        deployment.paused_from = None
    if to in (Stage.retired, Stage.rolled_back):
        deployment.traffic_share = 0.0
    deployment.stage = to
    db.flush()
    audit.record(db=db, actor=actor, action=f"deployment.{action}", object_type="deployment",
                 object_id=deployment.id, before=before, after=audit.snapshot(deployment), reason=reason)
    return deployment


def pause(*, db: Session, deployment: Deployment, expected_version: int, actor: str, reason: str) -> Deployment:
    """Holds a rollout where it is (a canary keeps its share) until resumed."""
    _move(db=db, deployment=deployment, to=Stage.paused, action="pause", actor=actor, reason=reason,
          expected_version=expected_version)
    db.commit()
    return deployment


def resume(*, db: Session, deployment: Deployment, expected_version: int, actor: str, reason: str) -> Deployment:
    """Returns a paused rollout to the stage it was paused in."""
    check_version(deployment, expected_version)
    target = transitions.resume_target(deployment.stage, deployment.paused_from)
    _move(db=db, deployment=deployment, to=target, action="resume", actor=actor, reason=reason,
          expected_version=None)
    db.commit()
    return deployment


def retire(*, db: Session, deployment: Deployment, expected_version: int, actor: str, reason: str) -> Deployment:
    """Takes a deployment out of service for good."""
    _move(db=db, deployment=deployment, to=Stage.retired, action="retire", actor=actor, reason=reason,
          expected_version=expected_version)
    db.commit()
    return deployment


def record_approval(*, db: Session, deployment: Deployment, approver: str, action: str, from_stage: Stage,
                    to_stage: Stage, reason: str) -> Approval:
    """Adds an approval to the caller's transaction."""
    approval = Approval(deployment_id=deployment.id, approver=approver, action=action, from_stage=from_stage,
                        to_stage=to_stage, reason=reason)
    db.add(approval)
    return approval


def list_approvals(*, db: Session, deployment_id: int, filters: ApprovalFilters,
                   page: PageParams) -> tuple[list[Approval], int]:
    """A deployment's approvals, newest first."""
    stmt = select(Approval).where(Approval.deployment_id == deployment_id)
    if filters.approver is not None:
        stmt = stmt.where(Approval.approver == filters.approver)
    if filters.action is not None:
        stmt = stmt.where(Approval.action == filters.action)
    return paginate(db=db, stmt=stmt.order_by(Approval.id.desc()), page=page)


def get_policy(*, db: Session, deployment_id: int) -> DriftPolicy:
    """A deployment's drift policy."""
    policy = db.scalar(select(DriftPolicy).where(DriftPolicy.deployment_id == deployment_id))
    if policy is None:
        raise NotFound("drift_policy", f"of deployment {deployment_id}")
    return policy


def update_policy(*, db: Session, deployment: Deployment, policy_in: DriftPolicyUpdate, actor: str) -> DriftPolicy:
    """Replaces a deployment's drift thresholds."""
    policy = get_policy(db=db, deployment_id=deployment.id)
    if policy.version != policy_in.expected_version:
        raise StaleVersion("drift_policy", policy.id, expected=policy_in.expected_version, current=policy.version)
    before = audit.snapshot(policy)
    for field, value in policy_in.model_dump(exclude={"expected_version", "reason"}).items():
        setattr(policy, field, value)
    policy.updated_by = actor
    db.flush()
    audit.record(db=db, actor=actor, action="drift_policy.update", object_type="drift_policy", object_id=policy.id,
                 before=before, after=audit.snapshot(policy), reason=policy_in.reason)
    db.commit()
    return policy
