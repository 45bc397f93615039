"""Search jobs in the embedded default: a searched recipe stored and versioned, tracked in MLflow, refusals by field."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from controlplane.auth.models import Role
from controlplane.db import session_scope
from controlplane.main import create_app
from controlplane.recipes.models import Recipe

from .conftest import seed
from .test_jobs_embedded import api_key, job_count


@pytest.fixture
def env(sqlite_settings, model_dir, corpus_file):
    ids = seed(sqlite_settings, model_dir=model_dir, corpus_file=corpus_file)
    key = api_key(sqlite_settings, Role.submitter)
    with TestClient(create_app(sqlite_settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client, sqlite_settings, ids


def search_body(ids, accelerator: str = "h100", **extra) -> dict:
    body = {"model_id": ids.model_id, "corpus_id": ids.corpus_id, "accelerator_id": ids.accelerator_ids[accelerator],
            "budget": {"bits_per_weight": 5.0}, "candidates": ["int4_g128", "int8"], "samples": 4, "seq_len": 32}
    return {**body, **extra}


def recipes_named(settings, name: str) -> list[Recipe]:
    with session_scope(settings) as db:
        rows = db.scalars(select(Recipe).where(Recipe.name == name).order_by(Recipe.version)).all()
        for r in rows:
            db.expunge(r)
        return rows


def test_search_job_stores_a_versioned_recipe_and_tracks_it(env):
    from mlflow.tracking import MlflowClient

    from controlplane.tracking import store_uris
    from runtime.recipes import Recipe as RuntimeRecipe

    client, settings, ids = env
    response = client.post("/v1/jobs/search", json=search_body(ids, name="searched", reason="issue 7"))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "search" and job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0 and job["queue"] == "cpu" and "tracking failed" not in job["message"]
    result = job["result"]
    assert result["recipe_name"] == "searched" and result["recipe_version"] == 1 and result["created"] is True
    metrics = result["metrics"]
    assert 4.0 < metrics["bits_per_weight"] <= 5.0 and metrics["predicted_kl"] > 0
    assert metrics["predicted_latency_us"] > 0  # the h100 profile has a decode latency model

    [row] = recipes_named(settings, "searched")
    assert row.id == result["recipe_id"] and row.content_hash == result["content_hash"]
    spec = RuntimeRecipe.from_dict(row.spec)
    assert spec.content_hash() == row.content_hash and row.model_id == ids.model_id
    assert all("sensitivity" in r.reason for r in spec.rules)
    # The recipe API serves it like any submitted recipe; its audit event names the job.
    admin = {"Authorization": f"Bearer {api_key(settings, Role.admin)}"}
    assert client.get(f"/v1/recipes/{row.id}", headers=admin).status_code == 200
    events = client.get("/v1/audit-events", params={"object_type": "recipe", "object_id": str(row.id)},
                        headers=admin).json()
    assert events["count"] == 1 and events["data"][0]["actor"] == f"job:{job['id']}"
    assert "5 bits/weight on h100" in events["data"][0]["reason"]

    mlflow = MlflowClient(store_uris(settings.mlflow_tracking_uri)[0])
    run = mlflow.get_run(job["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["kind"] == "search" and run.data.params["budget.bits_per_weight"] == "5.0"
    assert run.data.params["recipe_hash"] == row.content_hash and run.data.params["accelerator"] == "h100"
    assert run.data.metrics["bits_per_weight"] == pytest.approx(metrics["bits_per_weight"])
    assert "search_result.json" in [a.path for a in mlflow.list_artifacts(run.info.run_id)]

    # The same search again: the identical recipe is reused, not stored twice.
    again = client.post("/v1/jobs/search", json=search_body(ids, name="searched")).json()
    assert again["status"] == "succeeded" and again["id"] != job["id"]
    assert again["result"]["recipe_id"] == row.id and again["result"]["created"] is False
    assert len(recipes_named(settings, "searched")) == 1
    # Another budget under the same name: the next version.
    other = client.post("/v1/jobs/search", json=search_body(ids, name="searched", budget={"bits_per_weight": 6.5}))
    assert other.json()["result"]["recipe_version"] == 2, other.json()["error"]


def test_latency_budget_is_met_and_recorded(env):
    client, settings, ids = env
    job = client.post("/v1/jobs/search", json=search_body(ids, accelerator="l4", granularity="op",
                                                          budget={"latency_us": 200.0})).json()
    assert job["status"] == "succeeded", job["error"]
    metrics = job["result"]["metrics"]
    assert metrics["latency_budget_us"] == 200.0 and metrics["predicted_latency_us"] <= 200.0
    assert "µs/token on l4" in job["message"]
    from controlplane.model_registry.models import RegisteredModel

    with session_scope(settings) as db:
        model_name = db.get(RegisteredModel, ids.model_id).name
    assert job["result"]["recipe_name"] == f"search-{model_name}-op"  # the default name


def test_infeasible_latency_fails_the_job_naming_the_field_and_stores_no_recipe(env):
    client, settings, ids = env
    job = client.post("/v1/jobs/search", json=search_body(ids, accelerator="l4", name="too-fast",
                                                          budget={"latency_us": 1.0})).json()
    assert job["status"] == "failed" and job["result"] is None
    assert job["error"].startswith("budget.latency_us: latency budget 1 µs is below") and "floor" in job["error"]
    assert recipes_named(settings, "too-fast") == []


def test_a_failure_while_completing_leaves_no_recipe(env, monkeypatch):
    """The recipe row and its audit event commit with the job's completion, or not at all."""
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs import runners
    from controlplane.jobs.models import JobKind

    client, settings, ids = env
    real = runners.RUNNERS[JobKind.search]

    def failing(ctx):
        outcome = real(ctx)

        def rows(db):
            outcome.rows(db)  # the recipe and its audit event are flushed...
            raise RuntimeError("the disk is full")  # ...then the completing transaction fails

        return runners.Outcome(rows, outcome.summary)

    monkeypatch.setitem(runners.RUNNERS, JobKind.search, failing)
    job = client.post("/v1/jobs/search", json=search_body(ids, name="half-written")).json()
    assert job["status"] == "failed" and "the disk is full" in job["error"]
    assert recipes_named(settings, "half-written") == []
    with session_scope(settings) as db:
        assert db.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "recipe.create")) == 0


@pytest.mark.parametrize("change, loc, message", [
    ({"budget": {"bits_per_weight": 5.0, "latency_us": 100.0}}, ["body", "budget"], "exactly one of"),
    ({"budget": {}}, ["body", "budget"], "exactly one of"),
    ({"budget": {"bits_per_weight": -1}}, ["body", "budget", "bits_per_weight"], "greater than 0"),
    ({"budget": {"latency_us": 100.0}, "accelerator": "cpu"}, ["body", "budget", "latency_us"],
     "no decode latency model"),
    ({"candidates": ["int3"]}, ["body", "candidates"], "unknown candidate formats ['int3']"),
    ({"granularity": "row"}, ["body", "granularity"], "'op' or 'channel'"),
    ({"samples": 0}, ["body", "samples"], "greater than or equal to 1"),
    ({"seq_len": 100_000}, ["body", "seq_len"], "less than or equal to 4096"),
    ({"name": "no spaces"}, ["body", "name"], "pattern"),
])
def test_bad_search_request_is_422_naming_the_field(env, change, loc, message):
    client, settings, ids = env
    accelerator = change.pop("accelerator", "h100")
    response = client.post("/v1/jobs/search", json=search_body(ids, accelerator=accelerator, **change))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc and message in detail["msg"]
    assert job_count(settings) == 0


@pytest.mark.parametrize("field", ["model_id", "corpus_id", "accelerator_id"])
def test_unknown_reference_is_404_naming_the_field(env, field):
    client, settings, ids = env
    response = client.post("/v1/jobs/search", json=search_body(ids, **{field: 999}))
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["body", field]
    assert job_count(settings) == 0


def test_search_idempotency_key_and_roles(env):
    client, settings, ids = env
    headers = {"Idempotency-Key": "search-1"}
    first = client.post("/v1/jobs/search", json=search_body(ids), headers=headers)
    again = client.post("/v1/jobs/search", json=search_body(ids), headers=headers)
    assert first.status_code == 202 and again.status_code == 200 and again.json() == first.json()
    other = client.post("/v1/jobs/search", json=search_body(ids, budget={"bits_per_weight": 6.0}), headers=headers)
    assert other.status_code == 409 and other.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    viewer = {"Authorization": f"Bearer {api_key(settings, Role.viewer)}"}
    assert client.post("/v1/jobs/search", json=search_body(ids), headers=viewer).status_code == 403
    assert client.get("/v1/jobs", params={"kind": "search"}, headers=viewer).json()["count"] == 1
    with session_scope(settings) as db:
        assert db.scalar(select(func.count()).select_from(Recipe).where(Recipe.name.like("search-%"))) == 1
