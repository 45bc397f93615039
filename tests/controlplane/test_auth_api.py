"""API keys and roles: 401 vs 403, roles in order, approver as its own permission, keys never stored or logged."""
from __future__ import annotations

import logging

from sqlalchemy import select

from controlplane.auth.models import ApiKey, Role
from controlplane.audit.models import AuditEvent


def test_missing_key_is_401_with_challenge(client):
    response = client.get("/v1/recipes")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "missing API key" in response.json()["detail"][0]["msg"]


def test_wrong_and_malformed_keys_are_401(client, keys):
    good = keys[Role.admin]
    for presented in (good[:-1] + ("A" if good[-1] != "A" else "B"), "pops_00000000_" + "x" * 43, "garbage"):
        response = client.get("/v1/recipes", headers={"Authorization": f"Bearer {presented}"})
        assert response.status_code == 401, presented
        assert response.json()["detail"][0]["msg"] == "invalid or revoked API key"


def test_key_works_as_bearer_and_as_x_api_key(client, keys):
    assert client.get("/v1/api-keys/me", headers={"Authorization": f"Bearer {keys[Role.viewer]}"}).status_code == 200
    response = client.get("/v1/api-keys/me", headers={"X-API-Key": keys[Role.viewer]})
    assert response.status_code == 200
    assert response.json()["owner"] == "viewer-user"
    assert "key" not in response.json()


def test_insufficient_role_is_403_naming_the_role(client, as_role):
    response = client.post("/v1/models", json={"name": "m", "path": "/nowhere"}, headers=as_role(Role.viewer))
    assert response.status_code == 403
    assert "'submitter' role" in response.json()["detail"][0]["msg"]


def test_roles_are_ordered(client, as_role):
    for role in Role:
        response = client.get("/v1/api-keys", headers=as_role(role))
        assert response.status_code == (200 if role == Role.admin else 403), role


def test_admin_issues_key_shown_once_and_stored_hashed(client, session, as_role, caplog):
    caplog.set_level(logging.DEBUG)
    response = client.post("/v1/api-keys", json={"owner": "carol", "role": "approver", "reason": "on call"},
                           headers=as_role(Role.admin))
    assert response.status_code == 201
    body = response.json()
    plaintext = body["key"]
    assert plaintext.startswith(f"pops_{body['prefix']}_")
    row = session.scalar(select(ApiKey).where(ApiKey.id == body["id"]))
    assert plaintext not in (row.key_hash, row.salt) and len(row.key_hash) == 64
    assert client.get(f"/v1/api-keys/{body['id']}", headers=as_role(Role.admin)).json().get("key") is None
    assert client.get("/v1/api-keys/me", headers={"X-API-Key": plaintext}).json()["owner"] == "carol"
    secret = plaintext.split("_", 2)[2]
    assert secret not in caplog.text
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "api_key.create",
                                                    AuditEvent.object_id == str(body["id"])))
    assert event.actor == "admin-user" and event.reason == "on call"
    assert "key_hash" not in event.after and "salt" not in event.after


def test_revoked_key_stops_working(client, as_role):
    created = client.post("/v1/api-keys", json={"owner": "dave", "role": "viewer"}, headers=as_role(Role.admin)).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert client.get("/v1/recipes", headers=headers).status_code == 200
    response = client.post(f"/v1/api-keys/{created['id']}/revoke", json={"reason": "left the team"},
                           headers=as_role(Role.admin))
    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    assert client.get("/v1/recipes", headers=headers).status_code == 401
    again = client.post(f"/v1/api-keys/{created['id']}/revoke", json={"reason": "twice"}, headers=as_role(Role.admin))
    assert again.status_code == 409


def test_key_list_filters_and_paginates(client, as_role):
    response = client.get("/v1/api-keys", params={"role": "approver", "limit": 1}, headers=as_role(Role.admin))
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1 and [k["owner"] for k in body["data"]] == ["approver-user"]
    assert client.get("/v1/api-keys", params={"limit": 0}, headers=as_role(Role.admin)).status_code == 422
