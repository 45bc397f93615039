"""Drift analysis as a use case across domains: samples -> sequential test -> analysis -> alert -> rollback or pause.

Everything an analysis changes (its record, the sequential state, the traffic profile, alerts, the rollback with
its approval, and every audit event) commits in ONE transaction, the ingest of the samples that triggered it
included. Analyses of one deployment take turns on its locked deployment row, re-read it, then lock its
sequential state, so of two analyses that both find drift the second sees the first one's rollback and does
nothing: concurrent alerts roll back once.

Lock order (as every writer of a deployment's rollout state, so no deadlock): deployment -> its canary window
(ingest) -> drift state -> endpoint traffic profile.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.alerts import service as alerts
from controlplane.db import utcnow
from controlplane.deployments import flows as deployment_flows
from controlplane.deployments import service as deployments
from controlplane.deployments.models import Deployment, DriftPolicy, Stage
from controlplane.drift import analysis, notify, sequential, service
from controlplane.drift import profile as traffic
from controlplane.drift.analysis import METRICS, Outcome, Result
from controlplane.drift.models import DriftAnalysis, DriftState
from controlplane.drift.service import CalibrationCoverage
from controlplane.errors import Conflict, NotFound

SYSTEM_ACTOR = "drift-analysis"
_CLOSED = (Stage.rolled_back, Stage.retired)
_PAUSABLE = (Stage.shadow, Stage.canary)
_EVIDENCE_ROWS = 10  # layers and slices kept in an analysis's evidence


@dataclass
class _Analysis:
    """What one analysis works with, all read under the locks."""

    deployment: Deployment
    state: DriftState
    policy: DriftPolicy
    calibration: CalibrationCoverage | None
    cusum: sequential.Cusum


def _begin(db: Session, deployment: Deployment, policy: DriftPolicy) -> _Analysis | None:
    """Locks the deployment, then its state; None when the deployment was closed meanwhile."""
    deployment = service.locked_deployment(db=db, deployment_id=deployment.id)
    if deployment.stage in _CLOSED:
        return None
    state = service.locked_state(db=db, deployment=deployment)
    return _Analysis(deployment=deployment, state=state, policy=policy,
                     calibration=service.calibration_coverage(db=db, engine_id=deployment.engine_id),
                     cusum=sequential.for_rate(policy.false_alarm_rate, len(METRICS)))


def _policy(db: Session, deployment_id: int) -> DriftPolicy | None:
    return db.scalar(select(DriftPolicy).where(DriftPolicy.deployment_id == deployment_id))


def after_ingest(*, db: Session, deployment: Deployment, samples: Sequence[Any]) -> DriftAnalysis | None:
    """Takes in a batch of canary samples just stored, in the ingest's transaction, and analyses the window.

    The batch goes into the endpoint's traffic profile (with a coverage warning when traffic leaves what the
    engine's calibration corpus covered) and, request by request in the order sent, into the sequential test.
    Returns the analysis when it was recorded. A rollback or pause commits the transaction, the ingest with it.
    """
    policy = _policy(db, deployment.id)
    if not samples or policy is None:
        return None
    ctx = _begin(db, deployment, policy)
    if ctx is None:
        return None
    profile = service.locked_profile(db=db, endpoint=ctx.deployment.endpoint)
    traffic.fold(profile, samples)
    if ctx.calibration is not None:
        _warn_coverage(db, ctx, profile)
    statistics = {m: ctx.state.statistics.get(m, 0) for m in METRICS}
    for sample in samples:
        for metric, breached in analysis.breaches(sample, policy).items():
            statistics[metric] = ctx.cusum.update(statistics[metric], breached)
    ctx.state.statistics = statistics
    ctx.state.samples_seen += len(samples)
    return _analyze(db, ctx, trigger="ingest", new_samples=len(samples), actor=SYSTEM_ACTOR, force_record=False)


def analyze_now(*, db: Session, deployment: Deployment, actor: str) -> DriftAnalysis:
    """Analyses the deployment's window as it stands now, records the analysis and acts on it; commits."""
    policy = _policy(db, deployment.id)
    if policy is None:
        raise NotFound("drift_policy", f"of deployment {deployment.id}")
    ctx = _begin(db, deployment, policy)
    if ctx is None:
        raise Conflict(f"deployment {deployment.id} is {deployment.stage.value}; there is nothing left to analyse",
                       loc=("path", "deployment_id"))
    row = _analyze(db, ctx, trigger="manual", new_samples=0, actor=actor, force_record=True)
    db.commit()
    return row


# --- one analysis ------------------------------------------------------------------------------------


def _count(state: DriftState, outcome: Outcome) -> None:
    """Consecutive failures and errors: any other outcome breaks a run of either."""
    state.consecutive_failures = state.consecutive_failures + 1 if outcome == Outcome.failed else 0
    state.consecutive_errors = state.consecutive_errors + 1 if outcome == Outcome.error else 0


def _plan(db: Session, ctx: _Analysis, result: Result) -> tuple[str, str | None]:
    """(action, alert kind) for an outcome: roll back at the failure limit; at the error limit or between
    thresholds, pause a rollout and ask a human (an active deployment cannot pause: the alert asks)."""
    deployment, state, policy = ctx.deployment, ctx.state, ctx.policy
    if result.outcome == Outcome.failed and state.consecutive_failures >= policy.consecutive_failure_limit:
        kind = "drift_failed"
        if deployment.stage != Stage.active or deployment.last_known_good_engine_id is not None:
            return "rolled_back", kind
    elif result.outcome == Outcome.error and state.consecutive_errors >= policy.consecutive_error_limit:
        kind = "drift_error"
    elif result.outcome == Outcome.inconclusive and result.between:
        kind = "drift_inconclusive"
    else:
        return "none", None
    if service.open_alerts(db=db, deployment_id=deployment.id, kind=kind):
        return "none", None  # asked already; the open alert stands until someone resolves it
    return ("paused" if deployment.stage in _PAUSABLE else "alert"), kind


def _analyze(db: Session, ctx: _Analysis, *, trigger: str, new_samples: int, actor: str,
             force_record: bool) -> DriftAnalysis | None:
    deployment, state, policy = ctx.deployment, ctx.state, ctx.policy
    now = utcnow()
    since = now - timedelta(seconds=policy.window_seconds)
    samples = service.window_samples(db=db, deployment=deployment, since=since)
    result = analysis.decide(
        samples=samples, policy=policy, statistics=state.statistics, cusum=ctx.cusum,
        expected=service.expected_measurements(db=db, engine_id=deployment.engine_id),
        calibration=ctx.calibration.coverage if ctx.calibration else None)
    _count(state, result.outcome)
    action, kind = _plan(db, ctx, result)
    # Analyses run on every batch; the record keeps changes, actions, and one per window while nothing changes.
    due = state.last_recorded_at is None or now - state.last_recorded_at >= timedelta(seconds=policy.window_seconds)
    changed = state.last_outcome != result.outcome
    state.last_outcome = result.outcome
    if not (force_record or action != "none" or changed or due):
        db.flush()
        return None
    row = service.record(db=db, analysis=DriftAnalysis(
        deployment_id=deployment.id, engine_id=deployment.engine_id, outcome=result.outcome, reason=result.reason,
        trigger=trigger, window_start=since, window_end=now, sample_count=result.sample_count,
        new_samples=new_samples, checks=[c.as_dict() for c in result.checks], sequential=result.sequential,
        evidence=_evidence(ctx, result), consecutive_failures=state.consecutive_failures,
        consecutive_errors=state.consecutive_errors, action=action, created_by=actor))
    state.last_recorded_at = now
    if kind is not None:
        message = _message(ctx, result, action)
        alert = alerts.raise_alert(
            db=db, deployment_id=deployment.id, engine_id=deployment.engine_id,
            metric=_alert_metric(result), message=message, actor=SYSTEM_ACTOR,
            severity="critical" if kind != "drift_inconclusive" else "warning",
            evidence={"kind": kind, "analysis_id": row.id, "action": action, **_alert_context(ctx, action),
                      **row.evidence, "checks": row.checks, "sequential": row.sequential,
                      "window": {"start": since.isoformat(), "end": now.isoformat(), "seconds": policy.window_seconds,
                                 "samples": result.sample_count}})
        row.alert_id = alert.id
        notify.on_commit(db, _payload(alert, deployment))
    db.flush()
    if action == "rolled_back":
        deployment_flows.rollback(db=db, deployment=deployment, expected_version=None, approver=SYSTEM_ACTOR,
                                  reason=f"automatic rollback after drift analysis {row.id}: {result.reason}",
                                  action="auto_rollback")
    elif action == "paused":
        deployments.pause(db=db, deployment=deployment, expected_version=deployment.version, actor=SYSTEM_ACTOR,
                          reason=f"drift analysis {row.id} asks a human: {result.reason}")
    return row


# --- evidence and messages ---------------------------------------------------------------------------


def _evidence(ctx: _Analysis, result: Result) -> dict[str, Any]:
    if not result.layers and not result.slices:
        return {}
    return {
        "failed_metrics": result.failed_metrics,
        "saturating_layers": result.saturating_layers[:_EVIDENCE_ROWS],
        "layers": result.layers[:_EVIDENCE_ROWS],
        "layer_samples": result.layer_samples,
        "drifted_slices": result.drifted_slices[:_EVIDENCE_ROWS],
        "slices": result.slices[:_EVIDENCE_ROWS],
        "calibration": ctx.calibration.as_dict() if ctx.calibration else None,
    }


def _alert_context(ctx: _Analysis, action: str) -> dict[str, Any]:
    d = ctx.deployment
    context = {"deployment": {"id": d.id, "endpoint": d.endpoint, "stage": d.stage.value, "engine_id": d.engine_id}}
    if action == "rolled_back":
        context["restored_engine_id"] = d.last_known_good_engine_id if d.stage == Stage.active else None
    return context


def _alert_metric(result: Result) -> str:
    if result.failed_metrics:
        return result.failed_metrics[0]
    names = [c.name for c in result.checks if c.status in ("missing", "over")]
    return names[0] if names else "drift"


def _layer_text(layer: dict[str, Any]) -> str:
    parts = []
    if layer["amax_ratio_max"] is not None:
        parts.append(f"amax up to {layer['amax_ratio_max']:.2f}x its calibrated range")
    if layer["saturation_max"] is not None:
        parts.append(f"up to {layer['saturation_max']:.2%} of values saturated")
    return f"{layer['layer']} ({', '.join(parts)})"


def _slice_text(row: dict[str, Any], calibration: CalibrationCoverage | None) -> str:
    if row["covered"] is None:
        return row["slice"]
    if row["covered"]:
        return f"{row['slice']} (covered by calibration corpus {calibration.corpus_name})"
    missing = [text for what, text in (("script", f"script {row['script']}"),
                                       ("length_bucket", f"length {row['length_bucket']} tokens"))
               if row["calibration_covers"][what] is False]
    return f"{row['slice']} (not covered by calibration corpus {calibration.corpus_name}: {', '.join(missing)})"


def _message(ctx: _Analysis, result: Result, action: str) -> str:
    d = ctx.deployment
    text = f"{result.outcome.value} analysis of deployment {d.id} ({d.endpoint!r}, engine {d.engine_id}, " \
           f"{d.stage.value}): {result.reason}"
    if result.saturating_layers:
        text += "; saturating layers: " + ", ".join(_layer_text(layer) for layer in result.saturating_layers[:5])
    if result.drifted_slices:
        text += "; drifted slices: " + ", ".join(_slice_text(row, ctx.calibration) for row in result.drifted_slices[:5])
    if action == "rolled_back":
        text += (f"; rolled back, engine {d.last_known_good_engine_id} (last known good) serves the endpoint again"
                 if d.stage == Stage.active else f"; rolled back, the {d.stage.value} no longer serves")
    elif action == "paused":
        text += "; rollout paused until a human resumes or rolls it back"
    elif result.outcome == Outcome.failed:
        text += "; no last known-good engine to roll back to: a human must decide"
    return text


def _payload(alert, deployment: Deployment) -> dict[str, Any]:
    return {"alert_id": alert.id, "deployment_id": deployment.id, "endpoint": deployment.endpoint,
            "engine_id": alert.engine_id, "severity": alert.severity, "metric": alert.metric,
            "message": alert.message, "evidence": alert.evidence}


def _warn_coverage(db: Session, ctx: _Analysis, profile) -> None:
    """A warning alert for each length bucket or script that reached the profile's minimum share of traffic
    with no sample in the engine's calibration corpus (once per gap while its alert is open)."""
    found = traffic.gaps(profile, ctx.calibration.coverage)
    if not found:
        return
    d = ctx.deployment
    warned = {key for a in service.open_alerts(db=db, deployment_id=d.id, kind="calibration_coverage")
              for key in a.evidence.get("gap_keys", [])}
    new = [g for g in found if f"{g.kind}:{g.key}" not in warned]
    if not new:
        return
    message = (f"traffic on endpoint {d.endpoint!r} left the calibration coverage of engine {d.engine_id} "
               f"(deployment {d.id}, corpus {ctx.calibration.corpus_name}): " + "; ".join(g.message for g in new))
    alert = alerts.raise_alert(
        db=db, deployment_id=d.id, engine_id=d.engine_id, metric="calibration_coverage", message=message,
        severity="warning", actor=SYSTEM_ACTOR,
        evidence={"kind": "calibration_coverage", "gap_keys": [f"{g.kind}:{g.key}" for g in new],
                  "gaps": [g.model_dump() for g in new],
                  "traffic": traffic.as_coverage(profile).model_dump(exclude={"tags", "slices"}),
                  "calibration": ctx.calibration.as_dict()})
    notify.on_commit(db, _payload(alert, d))
