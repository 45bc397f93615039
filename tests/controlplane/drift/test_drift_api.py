"""Drift analysis through the API on both databases: batches of canary samples drive the sequential test and the
window analysis; failures alert and roll back, between-threshold results pause and ask, missing measurements
count as errors, and traffic outside the calibration corpus raises a warning first."""
from __future__ import annotations

from sqlalchemy import func, select

from controlplane.alerts.models import Alert
from controlplane.audit.models import AuditEvent
from controlplane.auth.models import Role
from controlplane.canary.models import CanarySample
from controlplane.deployments.models import Approval, Deployment, Stage
from controlplane.drift import flows
from controlplane.drift.models import DriftAnalysis
from tests import factories

from .conftest import HOT_LAYER, LAYERS, sample, static_engine


def post(client, as_role, deployment_id: int, batch: list[dict]):
    return client.post(f"/v1/deployments/{deployment_id}/canary-samples", json=batch,
                       headers=as_role(Role.submitter))


def analyses(client, as_role, deployment_id: int, **params) -> list[dict]:
    r = client.get(f"/v1/deployments/{deployment_id}/analyses", params=params, headers=as_role(Role.viewer))
    assert r.status_code == 200, r.text
    return r.json()["data"]


def batch(engine_id: int, rng, n: int, *, drift: bool = False, tag: str = "", **overrides) -> list[dict]:
    return [sample(engine_id, rng, drift=drift, request_id=f"{tag}{'d' if drift else 'c'}{i}-{rng.random()}",
                   **overrides) for i in range(n)]


def alerts_of(session, deployment_id: int, *, kind: str | None = None) -> list[Alert]:
    rows = session.scalars(select(Alert).where(Alert.deployment_id == deployment_id).order_by(Alert.id))
    return [a for a in rows if kind is None or a.evidence.get("kind") == kind]


def test_sustained_drift_alerts_with_evidence_and_rolls_back_once(client, session, as_role, rollout, rng):
    active, engine = rollout.active, rollout.active.engine_id
    assert post(client, as_role, active.id, batch(engine, rng, 60)).status_code == 201
    assert [a["outcome"] for a in analyses(client, as_role, active.id)] == ["successful"]

    # The first drifted batch fails the sequential test; one failure is below the limit of 2.
    assert post(client, as_role, active.id, batch(engine, rng, 8, drift=True)).status_code == 201
    first = analyses(client, as_role, active.id)[0]
    assert (first["outcome"], first["action"], first["consecutive_failures"]) == ("failed", "none", 1)
    assert set(first["evidence"]["failed_metrics"]) == {"kl", "top1_agreement", "saturation", "amax_ratio"}
    # The batch's long CJK requests also left the calibration corpus's coverage: a warning, not a rollback.
    [warning] = alerts_of(session, active.id)
    assert (warning.severity, warning.evidence["kind"]) == ("warning", "calibration_coverage")

    # The second one reaches the limit: an alert with the evidence, and the last known-good engine serves again.
    assert post(client, as_role, active.id, batch(engine, rng, 8, drift=True)).status_code == 201
    second = analyses(client, as_role, active.id)[0]
    assert (second["outcome"], second["action"], second["consecutive_failures"]) == ("failed", "rolled_back", 2)
    session.expire_all()
    assert session.get(Deployment, active.id).stage == Stage.rolled_back
    restored = session.scalar(select(Deployment).where(Deployment.endpoint == rollout.endpoint,
                                                       Deployment.stage == Stage.active))
    assert restored.engine_id == rollout.previous.engine_id != engine

    [_, alert] = alerts_of(session, active.id)
    assert alert.id == second["alert_id"] and alert.severity == "critical" and alert.metric == "kl"
    evidence = alert.evidence
    assert evidence["kind"] == "drift_failed" and evidence["restored_engine_id"] == rollout.previous.engine_id
    assert evidence["window"]["samples"] == 76 and evidence["sequential"]["kl"]["alarm"] is True
    assert evidence["saturating_layers"][0]["layer"] == HOT_LAYER
    assert evidence["saturating_layers"][0]["breaching_requests"] == {"saturation": 16, "amax_ratio": 16}
    assert [layer["layer"] for layer in evidence["saturating_layers"]] == [HOT_LAYER]
    [drifted] = evidence["drifted_slices"]
    assert drifted["slice"] == "CJK/512-2048" and drifted["covered"] is False
    assert drifted["calibration_covers"] == {"length_bucket": False, "script": False}
    clean = next(s for s in evidence["slices"] if s["slice"] == "Latin/0-128")
    assert clean["drifted"] is False and clean["covered"] is True
    assert HOT_LAYER in alert.message and "CJK/512-2048" in alert.message
    assert "not covered by calibration corpus" in alert.message and "rolled back" in alert.message

    # The rollback is an approval by the drift analysis, and every change has its audit event.
    approval = session.scalar(select(Approval).where(Approval.deployment_id == active.id))
    assert (approval.approver, approval.action, approval.to_stage) == (flows.SYSTEM_ACTOR, "auto_rollback",
                                                                       Stage.rolled_back)
    actions = set(session.scalars(select(AuditEvent.action).where(AuditEvent.actor == flows.SYSTEM_ACTOR)))
    assert {"alert.raise", "deployment.auto_rollback", "deployment.restore"} <= actions

    # The rolled-back deployment takes no more samples, and nothing rolls back twice.
    assert post(client, as_role, active.id, batch(engine, rng, 8, drift=True)).status_code == 409
    assert session.scalar(select(func.count()).select_from(Deployment).where(
        Deployment.endpoint == rollout.endpoint, Deployment.stage == Stage.active)) == 1


def test_one_outlier_never_fails_a_deployment(client, session, as_role, rollout, rng):
    active, engine = rollout.active, rollout.active.engine_id
    worst = sample(engine, rng, drift=True, kl_mean=1e6, kl_max=1e6, top1_agreement=0.0,
                   saturation={n: 1.0 for n in LAYERS}, amax_ratio={n: 1e12 for n in LAYERS})
    body = batch(engine, rng, 30) + [worst] + batch(engine, rng, 30, tag="after")
    assert post(client, as_role, active.id, body).status_code == 201
    [analysis] = analyses(client, as_role, active.id)
    assert analysis["outcome"] == "successful", analysis["reason"]
    assert all(not s["alarm"] for s in analysis["sequential"].values())
    # Winsorized means: a request at KL 1e6 moves the window mean by at most 4x the limit / 61.
    kl_mean = next(c for c in analysis["checks"] if c["name"] == "kl_mean")
    assert kl_mean["status"] == "within" and kl_mean["value"] < 0.05
    assert session.get(Deployment, active.id).stage == Stage.active and alerts_of(session, active.id) == []


def test_drifting_canary_is_rolled_back_and_the_active_engine_keeps_serving(client, session, as_role, rng):
    endpoint = f"ep-{rng.randrange(10**9)}"
    active = factories.DeploymentFactory(endpoint=endpoint, stage=Stage.active, traffic_share=1.0)
    canary = factories.DeploymentFactory(endpoint=endpoint, engine=static_engine(), stage=Stage.canary,
                                         traffic_share=0.1, last_known_good_engine_id=active.engine_id)
    session.commit()
    for _ in range(2):
        assert post(client, as_role, canary.id, batch(canary.engine_id, rng, 6, drift=True)).status_code == 201
    session.expire_all()
    assert session.get(Deployment, canary.id).stage == Stage.rolled_back
    assert session.get(Deployment, active.id).stage == Stage.active
    assert session.scalar(select(func.count()).select_from(Deployment).where(Deployment.endpoint == endpoint)) == 2
    [alert] = alerts_of(session, canary.id, kind="drift_failed")
    assert alert.evidence["restored_engine_id"] is None and "the canary no longer serves" in alert.message


def test_between_thresholds_pauses_the_rollout_and_asks_once(client, session, as_role, rng):
    shadow = factories.DeploymentFactory(engine=static_engine(), stage=Stage.shadow)
    session.commit()
    # KL means of 0.06: over the window limit of 0.05, but no request near the per-request limit of 0.2.
    body = batch(shadow.engine_id, rng, 60, kl_mean=0.06, kl_max=0.1)
    assert post(client, as_role, shadow.id, body).status_code == 201
    [analysis] = analyses(client, as_role, shadow.id)
    assert (analysis["outcome"], analysis["action"]) == ("inconclusive", "paused")
    assert analysis["reason"].startswith("between thresholds: kl_mean 0.06 over 0.05")
    session.expire_all()
    paused = session.get(Deployment, shadow.id)
    assert (paused.stage, paused.paused_from) == (Stage.paused, Stage.shadow)
    [alert] = alerts_of(session, shadow.id)
    assert (alert.severity, alert.metric, alert.evidence["kind"]) == ("warning", "kl_mean", "drift_inconclusive")

    # Still between thresholds: the open alert already asks, so nothing more happens.
    assert post(client, as_role, shadow.id, batch(shadow.engine_id, rng, 10, kl_mean=0.06, kl_max=0.1,
                                                  tag="more")).status_code == 201
    assert len(alerts_of(session, shadow.id)) == 1


def test_missing_measurements_are_errors_with_their_own_limit(client, session, as_role, rng):
    canary = factories.DeploymentFactory(engine=static_engine(), stage=Stage.canary, traffic_share=0.1)
    session.commit()
    outcomes = []
    for i in range(3):  # the policy's consecutive_error_limit
        body = batch(canary.engine_id, rng, 20, saturation={}, amax_ratio={}, tag=str(i))
        assert post(client, as_role, canary.id, body).status_code == 201
        session.expire_all()
        outcomes.append(session.scalar(select(DriftAnalysis.consecutive_errors).where(
            DriftAnalysis.deployment_id == canary.id).order_by(DriftAnalysis.id.desc()).limit(1)))
    latest = analyses(client, as_role, canary.id)[0]
    assert latest["outcome"] == "error" and "reports saturation" in latest["reason"]
    assert latest["action"] == "paused" and latest["consecutive_errors"] == 3
    [alert] = alerts_of(session, canary.id)
    assert alert.evidence["kind"] == "drift_error" and alert.metric == "saturation"
    assert session.get(Deployment, canary.id).stage == Stage.paused


def test_too_few_samples_is_inconclusive_and_changes_nothing(client, session, as_role, rollout, rng):
    active = rollout.active
    assert post(client, as_role, active.id, batch(active.engine_id, rng, 10)).status_code == 201
    [analysis] = analyses(client, as_role, active.id)
    assert (analysis["outcome"], analysis["action"]) == ("inconclusive", "none")
    assert analysis["reason"] == "not enough samples: 10 in the window, the policy needs 50"
    assert {c["status"] for c in analysis["checks"]} == {"insufficient"}
    # The same outcome again is not recorded again (one record per window while nothing changes).
    assert post(client, as_role, active.id, batch(active.engine_id, rng, 10, tag="b")).status_code == 201
    assert len(analyses(client, as_role, active.id)) == 1
    assert session.get(Deployment, active.id).stage == Stage.active and alerts_of(session, active.id) == []


def test_traffic_leaving_calibration_coverage_warns_before_quality_falls(client, session, as_role, rollout, rng):
    active, engine = rollout.active, rollout.active.engine_id
    assert post(client, as_role, active.id, batch(engine, rng, 100)).status_code == 201
    profile = client.get(f"/v1/deployments/{active.id}/traffic-profile", headers=as_role(Role.viewer)).json()
    assert profile["gaps"] == [] and profile["length_buckets"] == {"0-128": 1.0}
    assert profile["calibration"]["scripts"] == {"Latin": 1.0}

    # Long CJK requests that the engine still serves well: quality has not fallen, coverage has.
    long_cjk = dict(slice="CJK/512-2048", length_bucket="512-2048", script="CJK", num_tokens=900)
    assert post(client, as_role, active.id, batch(engine, rng, 3, tag="cjk", **long_cjk)).status_code == 201
    [warning] = alerts_of(session, active.id)
    assert (warning.severity, warning.metric) == ("warning", "calibration_coverage")
    assert set(warning.evidence["gap_keys"]) == {"length:512-2048", "script:CJK"}
    assert "no calibration sample longer than 120 tokens" in warning.message
    assert analyses(client, as_role, active.id)[0]["outcome"] == "successful"
    profile = client.get(f"/v1/deployments/{active.id}/traffic-profile", headers=as_role(Role.viewer)).json()
    assert {g["key"] for g in profile["gaps"]} == {"512-2048", "CJK"}
    assert profile["scripts"]["CJK"] > 0.01 and profile["samples"] == 103

    # The same endpoint seen from an engine without static scales: no calibration corpus, so no gaps.
    plain = client.get(f"/v1/deployments/{rollout.previous.id}/traffic-profile", headers=as_role(Role.viewer)).json()
    assert plain["calibration"] is None and plain["gaps"] == [] and plain["samples"] == 103

    # Warned once per gap while the alert is open.
    assert post(client, as_role, active.id, batch(engine, rng, 3, tag="cjk2", **long_cjk)).status_code == 201
    assert len(alerts_of(session, active.id)) == 1
    assert session.get(Deployment, active.id).stage == Stage.active


def test_manual_analysis_roles_and_reads(client, session, as_role, rollout, rng):
    active = rollout.active
    url = f"/v1/deployments/{active.id}/analyze"
    assert client.post(url, headers=as_role(Role.viewer)).status_code == 403
    assert client.post(url).status_code == 401
    assert post(client, as_role, active.id, batch(active.engine_id, rng, 60)).status_code == 201
    r = client.post(url, headers=as_role(Role.submitter))
    assert r.status_code == 201, r.text
    manual = r.json()
    assert (manual["trigger"], manual["outcome"], manual["new_samples"]) == ("manual", "successful", 0)
    assert manual["created_by"] == "submitter-user" and manual["sample_count"] == 60

    one = client.get(f"/v1/deployments/{active.id}/analyses/{manual['id']}", headers=as_role(Role.viewer))
    assert one.status_code == 200 and one.json() == manual
    other = client.get(f"/v1/deployments/{rollout.previous.id}/analyses/{manual['id']}", headers=as_role(Role.viewer))
    assert other.status_code == 404
    assert [a["trigger"] for a in analyses(client, as_role, active.id, outcome="successful")] == ["manual", "ingest"]
    assert analyses(client, as_role, active.id, outcome="failed") == []

    closed = client.post(f"/v1/deployments/{rollout.previous.id}/analyze", headers=as_role(Role.submitter))
    assert closed.status_code == 409 and closed.json()["detail"][0]["loc"] == ["path", "deployment_id"]
    bad = client.get(f"/v1/deployments/{active.id}/analyses", params={"outcome": "bad"}, headers=as_role(Role.viewer))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "outcome"]


def test_a_failed_rollback_leaves_nothing_behind(client, session, as_role, rollout, rng, monkeypatch):
    """The samples, the analysis, the alert and the rollback commit together or not at all."""
    active, engine = rollout.active, rollout.active.engine_id
    assert post(client, as_role, active.id, batch(engine, rng, 8, drift=True)).status_code == 201
    before = {"samples": session.scalar(select(func.count()).select_from(CanarySample)),
              "analyses": session.scalar(select(func.count()).select_from(DriftAnalysis)),
              "alerts": session.scalar(select(func.count()).select_from(Alert))}

    def broken_rollback(**kwargs):
        raise RuntimeError("the rollback broke halfway")

    monkeypatch.setattr(flows.deployment_flows, "rollback", broken_rollback)
    assert post(client, as_role, active.id, batch(engine, rng, 8, drift=True, tag="x")).status_code == 500
    session.expire_all()
    assert before == {"samples": session.scalar(select(func.count()).select_from(CanarySample)),
                      "analyses": session.scalar(select(func.count()).select_from(DriftAnalysis)),
                      "alerts": session.scalar(select(func.count()).select_from(Alert))}
    assert session.get(Deployment, active.id).stage == Stage.active
