"""Use cases that need an approval: each changes the deployments, the approval and the audit events in ONE commit."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.audit import service as audit
from controlplane.deployments import service, transitions
from controlplane.deployments.models import Deployment, DriftPolicy, Stage
from controlplane.deployments.schemas import DEFAULT_CANARY_SHARE
from controlplane.errors import Conflict


def _audit_change(db: Session, deployment: Deployment, *, action: str, actor: str, reason: str, before: dict) -> None:
    audit.record(db=db, actor=actor, action=f"deployment.{action}", object_type="deployment",
                 object_id=deployment.id, before=before, after=audit.snapshot(deployment), reason=reason)


def promote(*, db: Session, deployment: Deployment, expected_version: int, approver: str, reason: str,
            traffic_share: float | None = None) -> tuple[Deployment, Deployment | None]:
    """shadow -> canary (a traffic share) or canary -> active (replacing the endpoint's active deployment).

    Returns the promoted deployment and the one it retired, if any.
    """
    service.check_version(deployment, expected_version)
    current = deployment.stage
    target = transitions.promotion_target(current)
    if traffic_share is not None and target != Stage.canary:
        raise Conflict("traffic_share applies only to a promotion to canary; an active deployment serves the rest",
                       loc=("body", "traffic_share"))
    before = audit.snapshot(deployment)
    retired = None
    if target == Stage.active:
        retired = service.active_for(db=db, endpoint=deployment.endpoint)
        if retired is not None:
            retired_before = audit.snapshot(retired)
            retired.stage, retired.traffic_share = Stage.retired, 0.0
            db.flush()  # free the endpoint's one active slot before taking it
            _audit_change(db, retired, action="retire", actor=approver, before=retired_before,
                          reason=f"replaced by deployment {deployment.id}: {reason}")
            deployment.last_known_good_engine_id = retired.engine_id
        deployment.traffic_share = 1.0
    else:
        deployment.traffic_share = traffic_share if traffic_share is not None else DEFAULT_CANARY_SHARE
    deployment.stage = target
    db.flush()
    service.record_approval(db=db, deployment=deployment, approver=approver, action="promote", from_stage=current,
                            to_stage=target, reason=reason)
    _audit_change(db, deployment, action="promote", actor=approver, reason=reason, before=before)
    db.commit()
    return deployment, retired


def set_traffic(*, db: Session, deployment: Deployment, expected_version: int, traffic_share: float, approver: str,
                reason: str) -> Deployment:
    """Changes a canary's share of the endpoint's requests (an approved change: it changes who is exposed)."""
    service.check_version(deployment, expected_version)
    if deployment.stage != Stage.canary:
        raise Conflict(f"only a canary has a traffic share to set; deployment {deployment.id} is in stage "
                       f"{deployment.stage.value!r}", loc=("body", "traffic_share"))
    before = audit.snapshot(deployment)
    deployment.traffic_share = traffic_share
    db.flush()
    service.record_approval(db=db, deployment=deployment, approver=approver, action="traffic",
                            from_stage=Stage.canary, to_stage=Stage.canary,
                            reason=f"traffic {before['traffic_share']:g} -> {traffic_share:g}: {reason}")
    _audit_change(db, deployment, action="traffic", actor=approver, reason=reason, before=before)
    db.commit()
    return deployment


def _restore_last_known_good(db: Session, deployment: Deployment, *, actor: str, reason: str) -> Deployment:
    """Makes the rolled-back active deployment's last known-good engine active again."""
    previous = db.scalar(
        select(Deployment)
        .where(Deployment.endpoint == deployment.endpoint, Deployment.engine_id == deployment.last_known_good_engine_id,
               Deployment.id != deployment.id)
        .order_by(Deployment.id.desc()).limit(1)
    )
    restored = Deployment(
        endpoint=deployment.endpoint,
        engine_id=deployment.last_known_good_engine_id,
        stage=Stage.active,
        traffic_share=1.0,
        last_known_good_engine_id=previous.last_known_good_engine_id if previous is not None else None,
        created_by=actor,
    )
    db.add(restored)
    db.flush()
    old_policy = db.scalar(select(DriftPolicy).where(DriftPolicy.deployment_id == (previous or deployment).id))
    if old_policy is not None:
        fields = {k: getattr(old_policy, k) for k in (
            "kl_mean_max", "kl_p95_max", "top1_agreement_min", "saturation_max", "amax_ratio_max", "window_seconds",
            "min_samples", "false_alarm_rate", "consecutive_failure_limit", "consecutive_error_limit")}
        db.add(DriftPolicy(deployment_id=restored.id, updated_by=actor, **fields))
    audit.record(db=db, actor=actor, action="deployment.restore", object_type="deployment", object_id=restored.id,
                 after=audit.snapshot(restored), reason=f"rollback of deployment {deployment.id}: {reason}")
    return restored


def rollback(*, db: Session, deployment: Deployment, expected_version: int | None, approver: str, reason: str,
             action: str = "rollback") -> tuple[Deployment, Deployment | None]:
    """Rolls a deployment back now, skipping analysis; an active one hands the endpoint to its last known-good engine.

    `expected_version=None` is for system callers (drift analysis) that locked and read the row themselves.
    Returns the rolled-back deployment and the restored one, if any.
    """
    service.check_version(deployment, expected_version)
    current = deployment.stage
    transitions.check(current, Stage.rolled_back, action="roll back")
    if current == Stage.active and deployment.last_known_good_engine_id is None:
        raise Conflict(f"deployment {deployment.id} is the first active engine of {deployment.endpoint!r}: there is "
                       "no last known-good engine to return to; retire it instead", loc=("body", "stage"))
    before = audit.snapshot(deployment)
    deployment.stage, deployment.traffic_share, deployment.paused_from = Stage.rolled_back, 0.0, None
    db.flush()  # free the endpoint's active slot before the restored deployment takes it
    restored = _restore_last_known_good(db, deployment, actor=approver, reason=reason) if current == Stage.active else None
    service.record_approval(db=db, deployment=deployment, approver=approver, action=action, from_stage=current,
                            to_stage=Stage.rolled_back, reason=reason)
    _audit_change(db, deployment, action=action, actor=approver, reason=reason, before=before)
    db.commit()
    return deployment, restored
