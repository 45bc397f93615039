"""The audit log, alerts, accelerators and the catalog reads; plus error-shape guarantees."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from controlplane.alerts import service as alerts_service
from controlplane.audit import service as audit_service
from controlplane.auth.models import Role
from tests.factories import (
    AlertFactory,
    CalibrationFactory,
    DeploymentFactory,
    EngineFactory,
    EvaluationFactory,
)


def test_audit_events_are_append_only_in_the_database(session):
    event = audit_service.record(db=session, actor="x", action="test.write", object_type="thing", object_id=1,
                                 after={"a": 1}, reason="because")
    session.commit()
    for statement in ("UPDATE audit_events SET actor = 'mallory' WHERE id = :id",
                      "DELETE FROM audit_events WHERE id = :id"):
        with pytest.raises(IntegrityError, match="append-only"):
            session.execute(text(statement), {"id": event.id})
        session.rollback()


def test_approvals_are_append_only_in_the_database(session):
    from controlplane.deployments import service as deployments_service
    from controlplane.deployments.models import Stage

    deployment = DeploymentFactory()
    approval = deployments_service.record_approval(db=session, deployment=deployment, approver="a", action="promote",
                                                   from_stage=Stage.shadow, to_stage=Stage.canary, reason="r")
    session.commit()
    with pytest.raises(IntegrityError, match="append-only"):
        session.execute(text("UPDATE approvals SET approver = 'mallory' WHERE id = :id"), {"id": approval.id})
    session.rollback()


def test_audit_log_filters_and_paginates(client, session, as_role):
    for i in range(4):
        audit_service.record(db=session, actor="alice" if i % 2 else "bob", action="thing.write",
                             object_type="thing", object_id=i, before={"n": i}, after={"n": i + 1}, reason=f"r{i}")
    session.commit()
    headers = as_role(Role.viewer)
    page = client.get("/v1/audit-events", params={"actor": "alice", "object_type": "thing", "limit": 1},
                      headers=headers).json()
    assert page["count"] == 2 and len(page["data"]) == 1
    newest = page["data"][0]
    assert (newest["object_id"], newest["before"], newest["after"], newest["reason"]) == ("3", {"n": 3}, {"n": 4}, "r3")
    one = client.get(f"/v1/audit-events/{newest['id']}", headers=headers)
    assert one.status_code == 200 and one.json() == newest
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert client.get("/v1/audit-events", params={"since": future}, headers=headers).json()["count"] == 0
    naive = client.get("/v1/audit-events", params={"since": "2025-01-01T00:00:00"}, headers=headers)
    assert naive.status_code == 422 and naive.json()["detail"][0]["loc"] == ["query", "since"]


def test_alert_lifecycle_is_versioned_and_audited(client, session, as_role):
    alert = AlertFactory()
    session.commit()
    url = f"/v1/alerts/{alert.id}"
    headers = as_role(Role.submitter)
    assert client.get("/v1/alerts", params={"status": "open"}, headers=headers).json()["count"] == 1
    ack = client.patch(url, json={"status": "acknowledged", "expected_version": 1, "reason": "looking"},
                       headers=headers)
    assert ack.status_code == 200 and ack.json()["version"] == 2
    stale = client.patch(url, json={"status": "resolved", "expected_version": 1, "reason": "x"}, headers=headers)
    assert stale.status_code == 409 and stale.json()["detail"][0]["type"] == "stale_version"
    done = client.patch(url, json={"status": "resolved", "expected_version": 2, "reason": "rolled back"},
                        headers=headers)
    assert done.status_code == 200 and done.json()["resolved_at"] is not None
    again = client.patch(url, json={"status": "acknowledged", "expected_version": 3, "reason": "x"}, headers=headers)
    assert again.status_code == 409
    assert again.json()["detail"][0]["msg"] == (
        "cannot move an alert from status 'resolved' to 'acknowledged'; from 'resolved' it can move to: "
        "nothing (it is final)")
    actions = [e["action"] for e in client.get("/v1/audit-events", params={"object_type": "alert"},
                                               headers=headers).json()["data"]]
    assert actions == ["alert.resolved", "alert.acknowledged"]


def test_raise_alert_joins_the_callers_transaction(session):
    deployment = DeploymentFactory()
    alert = alerts_service.raise_alert(db=session, deployment_id=deployment.id, engine_id=deployment.engine_id,
                                       metric="kl_mean", message="drift", evidence={"value": 0.3}, actor="drift")
    session.rollback()
    from controlplane.alerts.models import Alert

    assert session.get(Alert, alert.id) is None


def test_accelerators_and_matrix_seeded_from_runtime(client, as_role):
    from runtime.accelerators import compatibility_matrix, list_profiles

    headers = as_role(Role.viewer)
    listed = client.get("/v1/accelerators", headers=headers).json()
    assert sorted(a["name"] for a in listed["data"]) == sorted(p.name for p in list_profiles())
    rows = compatibility_matrix()
    matrix = client.get("/v1/accelerators/compatibility", params={"limit": 500}, headers=headers).json()
    assert matrix["count"] == len(rows)
    expected = {(r["accelerator"], r["format"], r["op_kind"]): (r["support"], r["kernel"], r["reason"]) for r in rows}
    got = {(r["accelerator"], r["format"], r["op_kind"]): (r["support"], r["kernel"], r["reason"])
           for r in matrix["data"]}
    assert got == expected
    native = client.get("/v1/accelerators/compatibility", params={"support": "native", "op_kind": "weight"},
                        headers=headers).json()
    assert native["count"] == sum(r["support"] == "native" and r["op_kind"] == "weight" for r in rows)
    assert client.post("/v1/accelerators/sync", headers=as_role(Role.approver)).status_code == 403
    synced = client.post("/v1/accelerators/sync", headers=as_role(Role.admin))
    assert synced.status_code == 200 and synced.json()["entries"] == len(rows)


def test_engines_calibrations_evaluations_are_readable(client, session, as_role):
    calibration = CalibrationFactory()
    engine = EngineFactory(calibration_id=calibration.id)
    evaluation = EvaluationFactory(engine=engine)
    session.commit()
    headers = as_role(Role.viewer)
    got = client.get(f"/v1/engines/{engine.id}", headers=headers).json()
    assert got["manifest"] == engine.manifest and got["calibration_id"] == calibration.id
    assert "manifest" not in client.get("/v1/engines", headers=headers).json()["data"][0]
    assert client.get("/v1/engines", params={"calibration_id": calibration.id},
                      headers=headers).json()["count"] == 1
    assert client.get(f"/v1/calibrations/{calibration.id}", headers=headers).json()["summary"] == calibration.summary
    evals = client.get("/v1/evaluations", params={"engine_id": engine.id, "verdict": "passed"}, headers=headers).json()
    assert evals["count"] == 1 and evals["data"][0]["id"] == evaluation.id
    for path in ("engines", "calibrations", "evaluations", "models", "corpora", "recipes", "alerts", "accelerators"):
        missing = client.get(f"/v1/{path}/2147483647", headers=headers)
        assert missing.status_code == 404, path
        assert set(missing.json()["detail"][0]) == {"loc", "msg", "type"}


@pytest.mark.parametrize("path", ["/v1/engines/99999999999999999999", "/v1/engines/0",
                                  "/v1/recipes?model_id=-1", "/v1/audit-events?actor=a%00b"])
def test_out_of_range_input_is_422_not_500(client, as_role, path):
    response = client.get(path, headers=as_role(Role.viewer))
    assert response.status_code == 422, response.text
    assert all(set(e) == {"loc", "msg", "type"} for e in response.json()["detail"])


def test_health_needs_no_key(client):
    response = client.get("/v1/health")
    assert response.status_code == 200 and response.json()["database"] == "ok"


def test_openapi_is_served(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/deployments/{deployment_id}/promote" in spec["paths"]
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
