"""Canary-sample ingestion: batches, validation per sample, idempotent resends, window aggregates."""
from __future__ import annotations

import random

import pytest
from sqlalchemy import func, select

from controlplane.auth.models import Role
from controlplane.canary.models import CanarySample, CanaryWindow
from controlplane.canary.service import window_start
from controlplane.deployments.models import Stage
from tests.factories import DeploymentFactory


def _sample(engine_id: int, rng: random.Random, **overrides) -> dict:
    kl_mean = rng.uniform(0.001, 0.05)
    sample = {
        "engine_id": engine_id,
        "kl_mean": kl_mean,
        "kl_max": kl_mean * rng.uniform(1.0, 8.0),
        "top1_agreement": rng.uniform(0.85, 1.0),
        "saturation": {f"model.layers.{i}.mlp.down_proj": rng.uniform(0, 1e-3) for i in range(4)},
        "amax_ratio": {f"model.layers.{i}.mlp.down_proj": rng.uniform(0.5, 1.5) for i in range(4)},
        "slice": rng.choice(["en-short", "zh-long"]),
        "length_bucket": "0-128",
        "script": "Latin",
        "num_tokens": rng.randint(1, 128),
    }
    return {**sample, **overrides}


@pytest.fixture
def deployment(session):
    deployment = DeploymentFactory(stage=Stage.canary, traffic_share=0.1)
    session.commit()
    return deployment


def test_batch_is_stored_and_folded_into_its_window(client, session, as_role, deployment):
    rng = random.Random(7)
    batch = [_sample(deployment.engine_id, rng, request_id=f"req-{i}") for i in range(40)]
    response = client.post(f"/v1/deployments/{deployment.id}/canary-samples", json=batch,
                           headers=as_role(Role.submitter))
    assert response.status_code == 201, response.text
    assert response.json()["accepted"] == 40 and response.json()["duplicates"] == 0

    windows = client.get(f"/v1/deployments/{deployment.id}/canary-windows", headers=as_role(Role.viewer)).json()
    assert windows["count"] == 1
    window = windows["data"][0]
    kl = [s["kl_mean"] for s in batch]
    assert window["sample_count"] == 40
    # Aggregates against a float64 reference computed here from the same random samples.
    assert window["kl_mean"] == pytest.approx(sum(kl) / 40, rel=1e-12)
    mean = sum(kl) / 40
    assert window["kl_std"] == pytest.approx((sum((k - mean) ** 2 for k in kl) / 40) ** 0.5, rel=1e-9)
    assert window["kl_max"] == pytest.approx(max(s["kl_max"] for s in batch), rel=1e-12)
    assert window["top1_min"] == pytest.approx(min(s["top1_agreement"] for s in batch), rel=1e-12)
    layer = "model.layers.2.mlp.down_proj"
    assert window["saturation_max"][layer] == pytest.approx(max(s["saturation"][layer] for s in batch), rel=1e-12)
    assert sum(window["slices"].values()) == 40

    listed = client.get(f"/v1/deployments/{deployment.id}/canary-samples",
                        params={"slice": "zh-long", "limit": 5}, headers=as_role(Role.viewer)).json()
    assert listed["count"] == sum(s["slice"] == "zh-long" for s in batch) and len(listed["data"]) == 5


def test_resent_batch_counts_once(client, session, as_role, deployment):
    rng = random.Random(3)
    batch = [_sample(deployment.engine_id, rng, request_id=f"r{i}") for i in range(10)]
    url = f"/v1/deployments/{deployment.id}/canary-samples"
    assert client.post(url, json=batch, headers=as_role(Role.submitter)).json()["accepted"] == 10
    again = client.post(url, json=batch + [_sample(deployment.engine_id, rng, request_id="r-new")],
                        headers=as_role(Role.submitter)).json()
    assert (again["accepted"], again["duplicates"]) == (1, 10)
    total = session.scalar(select(func.sum(CanaryWindow.sample_count)).where(
        CanaryWindow.deployment_id == deployment.id))
    assert total == 11 == session.scalar(select(func.count()).select_from(CanarySample))


@pytest.mark.parametrize("override, loc, message", [
    ({"top1_agreement": 1.5}, ["body", 1, "top1_agreement"], "less than or equal to 1"),
    ({"kl_mean": -0.1}, ["body", 1, "kl_mean"], "greater than or equal to 0"),
    ({"kl_mean": 0.5, "kl_max": 0.1}, ["body", 1], "kl_max (0.1) is below kl_mean (0.5)"),
    ({"saturation": {"layer": 2.0}}, ["body", 1, "saturation", "layer"], "less than or equal to 1"),
    ({"colour": "red"}, ["body", 1, "colour"], "Extra inputs are not permitted"),
    ({"engine_id": 999_999}, ["body", 1, "engine_id"], "serves engine"),
])
def test_bad_samples_are_422_naming_index_and_field_and_store_nothing(client, session, as_role, deployment,
                                                                      override, loc, message):
    rng = random.Random(11)
    batch = [_sample(deployment.engine_id, rng), {**_sample(deployment.engine_id, rng), **override}]
    response = client.post(f"/v1/deployments/{deployment.id}/canary-samples", json=batch,
                           headers=as_role(Role.submitter))
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"][:len(loc)] == loc and message in e["msg"] for e in errors), errors
    assert session.scalar(select(func.count()).select_from(CanarySample)) == 0


def test_non_finite_numbers_and_empty_batches_are_refused(client, as_role, deployment):
    url = f"/v1/deployments/{deployment.id}/canary-samples"
    body = '[{"engine_id": %d, "kl_mean": NaN, "kl_max": 1, "top1_agreement": 1}]' % deployment.engine_id
    nan = client.post(url, content=body, headers={**as_role(Role.submitter), "Content-Type": "application/json"})
    assert nan.status_code == 422
    assert client.post(url, json=[], headers=as_role(Role.submitter)).status_code == 422


def test_closed_deployment_takes_no_samples(client, session, as_role):
    retired = DeploymentFactory(stage=Stage.retired)
    session.commit()
    response = client.post(f"/v1/deployments/{retired.id}/canary-samples",
                           json=[_sample(retired.engine_id, random.Random(1))], headers=as_role(Role.submitter))
    assert response.status_code == 409 and "is retired" in response.json()["detail"][0]["msg"]


def test_batch_limit_comes_from_settings(client, app, as_role, deployment):
    app.state.settings = app.state.settings.model_copy(update={"max_canary_batch": 3})
    rng = random.Random(5)
    response = client.post(f"/v1/deployments/{deployment.id}/canary-samples",
                           json=[_sample(deployment.engine_id, rng) for _ in range(4)], headers=as_role(Role.submitter))
    assert response.status_code == 422 and "at most 3 samples" in response.json()["detail"][0]["msg"]


def test_viewer_cannot_ingest(client, as_role, deployment):
    response = client.post(f"/v1/deployments/{deployment.id}/canary-samples",
                           json=[_sample(deployment.engine_id, random.Random(2))], headers=as_role(Role.viewer))
    assert response.status_code == 403


def test_windows_align_to_the_epoch():
    from datetime import datetime, timezone

    at = datetime(2025, 3, 1, 12, 34, 56, 789000, tzinfo=timezone.utc)
    assert window_start(at, 60) == datetime(2025, 3, 1, 12, 34, tzinfo=timezone.utc)
    assert window_start(at, 300) == datetime(2025, 3, 1, 12, 30, tzinfo=timezone.utc)
