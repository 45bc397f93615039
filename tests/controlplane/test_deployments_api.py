"""Rollout through the API: approvals, optimistic concurrency, the transition table, one transaction per flow."""
from __future__ import annotations

import pytest
from sqlalchemy import select, text

from controlplane.audit.models import AuditEvent
from controlplane.auth.models import Role
from controlplane.deployments.models import Approval, Deployment, Stage
from controlplane.deployments.transitions import TRANSITIONS
from tests.factories import DeploymentFactory, EngineFactory, EvaluationFactory, passing_engine
from controlplane.evaluations.models import Verdict


def _post(client, path, headers, **body):
    return client.post(path, json=body, headers=headers)


def _create(client, as_role, engine_id, endpoint="chat"):
    response = _post(client, "/v1/deployments", as_role(Role.submitter), endpoint=endpoint, engine_id=engine_id,
                     reason="start rollout")
    assert response.status_code == 201, response.text
    return response.json()


def test_create_starts_in_shadow_with_policy_and_audit(client, session, as_role):
    engine = passing_engine()
    body = _create(client, as_role, engine.id)
    assert (body["stage"], body["traffic_share"], body["version"]) == ("shadow", 0.0, 1)
    policy = client.get(f"/v1/deployments/{body['id']}/drift-policy", headers=as_role(Role.viewer))
    assert policy.status_code == 200 and policy.json()["min_samples"] == 50
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "deployment.create"))
    assert (event.actor, event.object_id, event.reason) == ("submitter-user", str(body["id"]), "start rollout")
    assert event.before is None and event.after["stage"] == "shadow"


def test_engine_without_passing_evaluation_cannot_deploy(client, as_role):
    engine = EngineFactory()
    EvaluationFactory(engine=engine, verdict=Verdict.failed)
    response = _post(client, "/v1/deployments", as_role(Role.submitter), endpoint="chat", engine_id=engine.id,
                     reason="try")
    assert response.status_code == 409
    assert response.json()["detail"][0]["loc"] == ["body", "engine_id"]
    assert "no evaluation that passed" in response.json()["detail"][0]["msg"]
    missing = _post(client, "/v1/deployments", as_role(Role.submitter), endpoint="chat", engine_id=999_999,
                    reason="try")
    assert missing.status_code == 422 and "engine 999999 not found" in missing.json()["detail"][0]["msg"]


def test_one_rollout_per_endpoint(client, as_role):
    first = _create(client, as_role, passing_engine().id)
    response = _post(client, "/v1/deployments", as_role(Role.submitter), endpoint="chat",
                     engine_id=passing_engine().id, reason="second")
    assert response.status_code == 409
    assert f"already has deployment {first['id']}" in response.json()["detail"][0]["msg"]


def test_promotion_needs_approver_not_submitter(client, session, as_role):
    deployment = _create(client, as_role, passing_engine().id)
    body = {"expected_version": 1, "reason": "shadow looks clean"}
    for role in (Role.viewer, Role.submitter):
        response = client.post(f"/v1/deployments/{deployment['id']}/promote", json=body, headers=as_role(role))
        assert response.status_code == 403, role
        assert "'approver' role" in response.json()["detail"][0]["msg"]
    assert session.scalar(select(Approval)) is None
    response = client.post(f"/v1/deployments/{deployment['id']}/promote", json={**body, "traffic_share": 0.1},
                           headers=as_role(Role.approver))
    assert response.status_code == 200
    promoted = response.json()["promoted"]
    assert (promoted["stage"], promoted["traffic_share"], promoted["version"]) == ("canary", 0.1, 2)
    approval = session.scalar(select(Approval))
    assert (approval.approver, approval.from_stage, approval.to_stage, approval.reason) == (
        "approver-user", Stage.shadow, Stage.canary, "shadow looks clean")
    admin = client.post(f"/v1/deployments/{deployment['id']}/promote",
                        json={"expected_version": 2, "reason": "admin may approve"}, headers=as_role(Role.admin))
    assert admin.status_code == 200 and admin.json()["promoted"]["stage"] == "active"


def test_stale_version_is_409_and_changes_nothing(client, session, as_role):
    deployment = _create(client, as_role, passing_engine().id)
    url = f"/v1/deployments/{deployment['id']}"
    assert client.post(f"{url}/pause", json={"expected_version": 1, "reason": "hold"},
                       headers=as_role(Role.submitter)).status_code == 200
    response = client.post(f"{url}/promote", json={"expected_version": 1, "reason": "stale read"},
                           headers=as_role(Role.approver))
    assert response.status_code == 409
    detail = response.json()["detail"][0]
    assert detail["type"] == "stale_version" and detail["loc"] == ["body", "expected_version"]
    assert "is at version 2, not 1" in detail["msg"]
    assert client.get(url, headers=as_role(Role.viewer)).json()["stage"] == "paused"
    assert session.scalar(select(Approval)) is None


def test_version_column_guards_against_a_racing_writer(session):
    """Even past the expected_version check, an UPDATE that lost a race fails (version_id_col)."""
    from sqlalchemy.orm.exc import StaleDataError

    deployment = DeploymentFactory()
    session.commit()
    session.execute(text("UPDATE deployments SET version = version + 1 WHERE id = :id"), {"id": deployment.id})
    deployment.traffic_share = 0.5
    with pytest.raises(StaleDataError):
        session.flush()
    session.rollback()


def test_illegal_transition_says_what_is_allowed(client, as_role):
    deployment = _create(client, as_role, passing_engine().id)
    url = f"/v1/deployments/{deployment['id']}"
    response = client.post(f"{url}/resume", json={"expected_version": 1, "reason": "go"},
                           headers=as_role(Role.submitter))
    assert response.status_code == 409
    detail = response.json()["detail"][0]
    assert detail["type"] == "illegal_transition"
    assert detail["msg"] == ("cannot resume a deployment in stage 'shadow'; from 'shadow' it can move to: "
                             "canary, paused, rolled_back, retired")
    assert client.post(f"{url}/retire", json={"expected_version": 1, "reason": "done"},
                       headers=as_role(Role.approver)).status_code == 200
    response = client.post(f"{url}/promote", json={"expected_version": 2, "reason": "again"},
                           headers=as_role(Role.approver))
    assert response.status_code == 409
    assert response.json()["detail"][0]["msg"] == (
        "cannot promote a deployment in stage 'retired'; from 'retired' it can move to: nothing (it is final)")


def test_transition_table_is_closed_and_terminal_stages_are_final():
    assert set(TRANSITIONS) == set(Stage)
    assert TRANSITIONS[Stage.rolled_back] == TRANSITIONS[Stage.retired] == frozenset()
    assert Stage.active not in TRANSITIONS[Stage.shadow]  # no skipping the canary


def test_pause_keeps_share_and_resume_returns_to_the_stage(client, as_role):
    deployment = _create(client, as_role, passing_engine().id)
    url = f"/v1/deployments/{deployment['id']}"
    client.post(f"{url}/promote", json={"expected_version": 1, "reason": "ok"}, headers=as_role(Role.approver))
    paused = client.post(f"{url}/pause", json={"expected_version": 2, "reason": "investigate"},
                         headers=as_role(Role.submitter)).json()
    assert (paused["stage"], paused["paused_from"], paused["traffic_share"]) == ("paused", "canary", 0.05)
    resumed = client.post(f"{url}/resume", json={"expected_version": 3, "reason": "fine"},
                          headers=as_role(Role.submitter)).json()
    assert (resumed["stage"], resumed["paused_from"]) == ("canary", None)


def test_traffic_share_only_for_canary_and_bounded(client, as_role):
    deployment = _create(client, as_role, passing_engine().id)
    url = f"/v1/deployments/{deployment['id']}/traffic"
    shadow = client.post(url, json={"expected_version": 1, "traffic_share": 0.2, "reason": "more"},
                         headers=as_role(Role.approver))
    assert shadow.status_code == 409 and "only a canary" in shadow.json()["detail"][0]["msg"]
    client.post(f"/v1/deployments/{deployment['id']}/promote", json={"expected_version": 1, "reason": "ok"},
                headers=as_role(Role.approver))
    too_much = client.post(url, json={"expected_version": 2, "traffic_share": 1.5, "reason": "all"},
                           headers=as_role(Role.approver))
    assert too_much.status_code == 422 and too_much.json()["detail"][0]["loc"] == ["body", "traffic_share"]
    ok = client.post(url, json={"expected_version": 2, "traffic_share": 0.25, "reason": "widen"},
                     headers=as_role(Role.approver))
    assert ok.status_code == 200 and ok.json()["traffic_share"] == 0.25


def test_full_rollout_then_rollback_restores_last_known_good(client, session, as_role):
    approver = as_role(Role.approver)
    old_engine, new_engine = passing_engine(), passing_engine()
    old = DeploymentFactory(endpoint="chat", engine=old_engine, stage=Stage.active, traffic_share=1.0)
    session.commit()
    new = _create(client, as_role, new_engine.id)
    assert new["last_known_good_engine_id"] == old_engine.id
    url = f"/v1/deployments/{new['id']}"
    client.post(f"{url}/promote", json={"expected_version": 1, "reason": "canary"}, headers=approver)
    result = client.post(f"{url}/promote", json={"expected_version": 2, "reason": "active"}, headers=approver)
    assert result.status_code == 200
    assert result.json()["retired"]["id"] == old.id and result.json()["retired"]["stage"] == "retired"
    assert result.json()["promoted"]["stage"] == "active"

    submitter = client.post(f"{url}/rollback", json={"expected_version": 3, "reason": "mine"},
                            headers=as_role(Role.submitter))
    assert submitter.status_code == 403
    response = client.post(f"{url}/rollback", json={"expected_version": 3, "reason": "users report garbage"},
                           headers=approver)
    assert response.status_code == 200
    body = response.json()
    assert body["rolled_back"]["stage"] == "rolled_back" and body["rolled_back"]["traffic_share"] == 0.0
    restored = body["restored"]
    assert (restored["engine_id"], restored["stage"], restored["endpoint"]) == (old_engine.id, "active", "chat")
    active = session.scalars(select(Deployment).where(Deployment.endpoint == "chat",
                                                      Deployment.stage == Stage.active)).all()
    assert [d.engine_id for d in active] == [old_engine.id]
    approvals = session.scalars(select(Approval).where(Approval.deployment_id == new["id"])
                                .order_by(Approval.id)).all()
    assert [(a.action, a.from_stage.value, a.to_stage.value) for a in approvals] == [
        ("promote", "shadow", "canary"), ("promote", "canary", "active"), ("rollback", "active", "rolled_back")]
    listed = client.get(f"{url}/approvals", params={"action": "rollback"}, headers=as_role(Role.viewer)).json()
    assert listed["count"] == 1 and listed["data"][0]["reason"] == "users report garbage"
    actions = session.scalars(select(AuditEvent.action).where(AuditEvent.object_type == "deployment")).all()
    assert {"deployment.promote", "deployment.retire", "deployment.rollback", "deployment.restore"} <= set(actions)


def test_first_active_engine_cannot_roll_back_to_nothing(client, session, as_role):
    deployment = DeploymentFactory(stage=Stage.active, traffic_share=1.0)
    session.commit()
    response = client.post(f"/v1/deployments/{deployment.id}/rollback",
                           json={"expected_version": 1, "reason": "x"}, headers=as_role(Role.approver))
    assert response.status_code == 409 and "no last known-good engine" in response.json()["detail"][0]["msg"]


def test_flow_that_loses_a_race_leaves_nothing_behind(session):
    """Promotion to active retires the old active deployment first; if the promoted row then turns out
    to have been changed by a racing writer, the retirement, approval and audit events all roll back."""
    from sqlalchemy.orm.exc import StaleDataError

    from controlplane.deployments import flows

    canary = DeploymentFactory(stage=Stage.canary, traffic_share=0.1)
    old = DeploymentFactory(endpoint=canary.endpoint, stage=Stage.active, traffic_share=1.0)
    session.commit()
    events_before = session.scalar(text("SELECT count(*) FROM audit_events"))
    session.execute(text("UPDATE deployments SET version = version + 1 WHERE id = :id"), {"id": canary.id})
    with pytest.raises(StaleDataError):
        flows.promote(db=session, deployment=canary, expected_version=1, approver="racer", reason="go")
    session.rollback()
    session.expire_all()
    assert session.get(Deployment, old.id).stage == Stage.active
    assert session.get(Deployment, canary.id).stage == Stage.canary
    assert session.scalar(select(Approval)) is None
    assert session.scalar(text("SELECT count(*) FROM audit_events")) == events_before


def test_list_filters_and_paginates(client, session, as_role):
    for i in range(5):
        DeploymentFactory(endpoint=f"ep-{i}", stage=Stage.active if i % 2 else Stage.shadow)
    session.commit()
    page = client.get("/v1/deployments", params={"stage": "shadow", "limit": 2, "offset": 1},
                      headers=as_role(Role.viewer)).json()
    assert page["count"] == 3 and len(page["data"]) == 2
    assert all(d["stage"] == "shadow" for d in page["data"])
    assert client.get("/v1/deployments", params={"stage": "bogus"}, headers=as_role(Role.viewer)).status_code == 422
    assert client.get("/v1/deployments/999999", headers=as_role(Role.viewer)).status_code == 404
