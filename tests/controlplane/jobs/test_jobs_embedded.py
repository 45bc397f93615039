"""The embedded default: jobs submitted over HTTP run in-process on SQLite, with no broker and no worker."""
from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from controlplane.auth import service as auth_service
from controlplane.auth.models import Role
from controlplane.auth.schemas import ApiKeyCreate
from controlplane.db import get_engine, session_scope
from controlplane.engines.models import Engine
from controlplane.jobs import service
from controlplane.jobs.models import Job, JobKind, JobStatus
from controlplane.jobs.schemas import BuildJobCreate, EvaluateJobCreate
from controlplane.main import create_app

from .conftest import PEPPER, make_settings, seed


def api_key(settings, role: Role) -> str:
    with session_scope(settings) as db:
        _, plaintext = auth_service.create(db=db, key_in=ApiKeyCreate(owner=f"{role.value}-tester", role=role),
                                           pepper=PEPPER, actor="tests")
    return plaintext


@pytest.fixture
def env(sqlite_settings, model_dir, corpus_file):
    """(client with a submitter key, settings, seeded ids) on a fresh SQLite database."""
    ids = seed(sqlite_settings, model_dir=model_dir, corpus_file=corpus_file)
    key = api_key(sqlite_settings, Role.submitter)
    with TestClient(create_app(sqlite_settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client, sqlite_settings, ids


def build_body(ids, recipe: str = "int8_w8a8", accelerator: str = "cpu", **extra) -> dict:
    return {"model_id": ids.model_id, "recipe_id": ids.recipe_ids[recipe],
            "accelerator_id": ids.accelerator_ids[accelerator], **extra}


def job_count(settings) -> int:
    with session_scope(settings) as db:
        return db.scalar(select(func.count()).select_from(Job))


def test_build_job_runs_in_process_and_leaves_engine(env):
    client, settings, ids = env
    response = client.post("/v1/jobs/build", json=build_body(ids, reason="first engine"))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0 and job["attempts"] == 1 and job["queue"] == "cpu"
    assert job["message"].startswith("built engine") and "tracking failed" not in job["message"]

    with session_scope(settings) as db:
        engine = db.get(Engine, job["result"]["engine_id"])
        assert engine.content_hash == job["result"]["content_hash"] == engine.manifest["engine_id"]
        folder = settings.artifact_root / "engines" / engine.content_hash
        assert engine.uri == folder.as_uri()
        assert (folder / "manifest.json").is_file() and (folder / "model.safetensors").is_file()
        assert engine.size_bytes == sum(f.stat().st_size for f in folder.iterdir())
    assert client.get(f"/v1/jobs/{job['id']}").json() == job

    from mlflow.tracking import MlflowClient

    from controlplane.tracking import store_uris

    run = MlflowClient(store_uris(settings.mlflow_tracking_uri)[0]).get_run(job["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["accelerator"] == "cpu"
    assert run.data.params["recipe_hash"] == engine.manifest["recipe"]["content_hash"]
    assert run.data.params["model_hash"] == engine.manifest["model"]["content_hash"]
    assert run.data.metrics["bytes.total"] > 0


def test_same_engine_twice_is_found_by_content_hash(env):
    client, settings, ids = env
    first = client.post("/v1/jobs/build", json=build_body(ids)).json()
    second = client.post("/v1/jobs/build", json=build_body(ids)).json()
    assert first["id"] != second["id"] and second["status"] == "succeeded"
    assert second["result"] == first["result"]  # the same engine row, not a second copy
    with session_scope(settings) as db:
        assert db.scalar(select(func.count()).select_from(Engine)) == 1


def test_idempotency_key_returns_the_same_job(env):
    client, settings, ids = env
    headers = {"Idempotency-Key": "build-7f3a"}
    first = client.post("/v1/jobs/build", json=build_body(ids), headers=headers)
    again = client.post("/v1/jobs/build", json=build_body(ids), headers=headers)
    assert first.status_code == 202 and again.status_code == 200, (first.text, again.text)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert job_count(settings) == 1

    other = client.post("/v1/jobs/build", json=build_body(ids, recipe="int4_w4a16_g128"), headers=headers)
    assert other.status_code == 409
    assert other.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    assert "other parameters" in other.json()["detail"][0]["msg"]
    also_other_kind = client.post("/v1/jobs/calibrate", headers=headers, json={
        "model_id": ids.model_id, "recipe_id": ids.recipe_ids["fp8_static"], "corpus_id": ids.corpus_id})
    assert also_other_kind.status_code == 409
    assert job_count(settings) == 1


@pytest.mark.parametrize("field, kind, body_of", [
    ("model_id", "build", lambda ids: build_body(ids, model_id=999)),
    ("recipe_id", "build", lambda ids: build_body(ids, recipe_id=999)),
    ("accelerator_id", "build", lambda ids: build_body(ids, accelerator_id=999)),
    ("calibration_id", "build", lambda ids: build_body(ids, calibration_id=999)),
    ("corpus_id", "calibrate", lambda ids: {"model_id": ids.model_id, "recipe_id": ids.recipe_ids["fp8_static"],
                                            "corpus_id": 999}),
    ("engine_id", "evaluate", lambda ids: {"engine_id": 999, "corpus_id": ids.corpus_id}),
])
def test_unknown_reference_is_404_naming_the_field_and_stores_nothing(env, field, kind, body_of):
    client, settings, ids = env
    response = client.post(f"/v1/jobs/{kind}", json=body_of(ids))
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["body", field]
    assert "999 not found" in response.json()["detail"][0]["msg"]
    assert job_count(settings) == 0


def test_bad_request_is_422_naming_the_field(env):
    client, settings, ids = env
    response = client.post("/v1/jobs/build", json=build_body(ids, accelerator="cpu", colour="red"))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "colour"]
    response = client.post("/v1/jobs/calibrate", json={"model_id": ids.model_id, "recipe_id": 1,
                                                       "corpus_id": ids.corpus_id, "samples": 0})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "samples"]
    assert job_count(settings) == 0


def test_runtime_refusal_fails_the_job_with_a_message_naming_it(env):
    """A static-fp8 recipe built without its calibration: the job fails, the error says what is missing."""
    client, settings, ids = env
    job = client.post("/v1/jobs/build", json=build_body(ids, recipe="fp8_static")).json()
    assert job["status"] == "failed" and job["result"] is None
    assert "calibration" in job["error"] and "needs a calibrated" in job["error"]
    with session_scope(settings) as db:
        assert db.scalar(select(func.count()).select_from(Engine)) == 0


def test_gpu_accelerator_jobs_go_to_the_gpu_queue(env):
    client, settings, ids = env
    job = client.post("/v1/jobs/build", json=build_body(ids, accelerator="h100")).json()
    assert job["queue"] == "gpu" and job["status"] == "succeeded", job["error"]
    evaluate = {"engine_id": job["result"]["engine_id"], "corpus_id": ids.corpus_id}
    with session_scope(settings) as db:
        assert service._check_references(db=db, kind=JobKind.evaluate,
                                         job_in=EvaluateJobCreate(**evaluate)) is True


def test_roles_and_list_filters(env):
    client, settings, ids = env
    client.post("/v1/jobs/build", json=build_body(ids))
    client.post("/v1/jobs/build", json=build_body(ids, recipe="fp8_static"))  # fails
    viewer = {"Authorization": f"Bearer {api_key(settings, Role.viewer)}"}
    assert client.post("/v1/jobs/build", json=build_body(ids), headers=viewer).status_code == 403
    assert client.post("/v1/jobs/build", json=build_body(ids), headers={"Authorization": "Bearer nope"}).status_code == 401

    listed = client.get("/v1/jobs", headers=viewer).json()
    assert listed["count"] == 2 and [j["status"] for j in listed["data"]] == ["failed", "succeeded"]
    failed = client.get("/v1/jobs", params={"status": "failed"}, headers=viewer).json()
    assert failed["count"] == 1 and failed["data"][0]["error"]
    page = client.get("/v1/jobs", params={"limit": 1, "offset": 1}, headers=viewer).json()
    assert page["count"] == 2 and len(page["data"]) == 1 and page["data"][0]["status"] == "succeeded"
    assert client.get("/v1/jobs", params={"kind": "calibrate"}, headers=viewer).json()["count"] == 0
    assert client.get("/v1/jobs", params={"created_after": "2100-01-01T00:00:00Z"}, headers=viewer).json()["count"] == 0
    assert client.get("/v1/jobs", params={"created_before": "2100-01-01T00:00:00Z"}, headers=viewer).json()["count"] == 2
    assert client.get("/v1/jobs", params={"submitted_by": "submitter-tester"}, headers=viewer).json()["count"] == 2
    assert client.get("/v1/jobs", params={"status": "bogus"}, headers=viewer).status_code == 422
    assert client.get("/v1/jobs/424242", headers=viewer).status_code == 404


def test_tracking_failure_does_not_fail_the_job(tmp_path, models_root, model_dir, corpus_file):
    """MLflow unreachable: the job succeeds, and its message says tracking failed."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'pops.db'}", models_root=models_root,
                             mlflow_tracking_uri=f"http://127.0.0.1:{port}")
    from .conftest import migrate

    migrate(settings.database_url)
    ids = seed(settings, model_dir=model_dir, corpus_file=corpus_file)
    with session_scope(settings) as db:
        job, _ = service.submit(db=db, kind=JobKind.build, job_in=BuildJobCreate(**build_body(ids)),
                                idempotency_key=None, actor="tests", settings=settings)
    assert job.status == JobStatus.succeeded, job.error
    assert job.mlflow_run_id is None
    assert "tracking failed: MLflow unavailable" in job.message


def test_a_finished_job_redelivered_is_left_as_it_is(env):
    """A duplicate delivery (the broker redelivers after the job finished) neither reruns nor rewrites it."""
    from controlplane.jobs import runners

    client, settings, ids = env
    job = client.post("/v1/jobs/build", json=build_body(ids)).json()
    with session_scope(settings) as db:
        assert runners.execute(db=db, job_id=job["id"], settings=settings) == job["result"]
    assert client.get(f"/v1/jobs/{job['id']}").json() == job


def test_progress_writes_are_throttled(sqlite_settings):
    """A build reports every layer; the job row is written at most once per interval, plus stage starts."""
    settings = sqlite_settings
    with session_scope(settings) as db:
        job = Job(kind=JobKind.build, status=JobStatus.running, progress=0.0, params={}, params_hash="x", attempts=1,
                  queue="cpu", submitted_by="tests")
        db.add(job)
    updates = []
    engine = get_engine(settings)

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            updates.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with session_scope(settings) as db:
            progress = service.ProgressWriter(db=db, job_id=job.id, interval_s=3600)
            progress.stage("building", 0.2, 0.8)
            for layer in range(1, 501):
                progress(layer, 500)
            assert progress.value == pytest.approx(0.8)
            progress.stage("saving", 0.8, 0.9)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(updates) == 2  # the two stage starts; the 500 layer callbacks were throttled
    with session_scope(settings) as db:
        row = db.get(Job, job.id)
        assert row.progress == pytest.approx(0.8) and row.message == "saving"


def test_calibrate_build_evaluate_chain_in_process(env):
    """calibrate -> build with those scales -> evaluate against the reference, with a gate that fails."""
    from mlflow.tracking import MlflowClient

    from controlplane.calibrations.models import Calibration
    from controlplane.evaluations.models import Evaluation
    from controlplane.tracking import store_uris

    client, settings, ids = env
    calibrate = client.post("/v1/jobs/calibrate", json={
        "model_id": ids.model_id, "recipe_id": ids.recipe_ids["fp8_static"], "corpus_id": ids.corpus_id}).json()
    assert calibrate["status"] == "succeeded", calibrate["error"]
    build = client.post("/v1/jobs/build", json=build_body(
        ids, recipe="fp8_static", calibration_id=calibrate["result"]["calibration_id"])).json()
    assert build["status"] == "succeeded", build["error"]
    evaluate = client.post("/v1/jobs/evaluate", json={
        "engine_id": build["result"]["engine_id"], "corpus_id": ids.corpus_id, "max_samples": 6, "seq_len": 32,
        "gates": [{"metric": "top1_agreement", "min": 0.5}, {"metric": "kl_mean", "max": 0.0, "slice": "english"}],
    }).json()
    assert evaluate["status"] == "succeeded", evaluate["error"]
    assert evaluate["result"]["verdict"] == "failed"  # fp8 is not bit-exact: KL on `english` is above 0

    with session_scope(settings) as db:
        calibration = db.get(Calibration, calibrate["result"]["calibration_id"])
        # the recipe's calibration source: 4 samples of at most 32 tokens; 2 layers x 7 linears + lm_head
        assert calibration.samples == 4 and calibration.seq_len == 32
        assert calibration.summary["tensors"] == 15 and calibration.summary["kv_layers"] == 2
        assert calibration.summary["amax_max"] > 0
        evaluation = db.get(Evaluation, evaluate["result"]["evaluation_id"])
        assert evaluation.engine_id == build["result"]["engine_id"] and evaluation.verdict.value == "failed"
        assert 0 < evaluation.metrics["kl_mean"] and 0.5 <= evaluation.metrics["top1_agreement"] <= 1
        assert set(evaluation.by_slice) == {"english", "russian", "code"}
        failing = [g for g in evaluation.gates if not g["passed"]]
        assert [(g["metric"], g["slice"]) for g in failing] == [("kl_mean", "english")]
        report = local_report(evaluation.report_uri)
        assert report["metrics"] == evaluation.metrics

    mlflow = MlflowClient(store_uris(settings.mlflow_tracking_uri)[0])
    run = mlflow.get_run(evaluate["mlflow_run_id"])
    assert run.data.metrics["kl_mean"] == pytest.approx(evaluation.metrics["kl_mean"])
    assert run.data.metrics["passed"] == 0.0 and "slice.english.kl_mean" in run.data.metrics
    assert run.data.params["corpus_hash"] and run.data.params["accelerator"] == "cpu"
    assert "evaluation_report.json" in [a.path for a in mlflow.list_artifacts(run.info.run_id)]
    calibration_run = mlflow.get_run(calibrate["mlflow_run_id"])
    assert calibration_run.data.metrics["calibration.tensors"] == 15


def local_report(uri: str) -> dict:
    import json

    from controlplane.jobs.runners import local_path

    return json.loads(local_path(uri).read_text())


def test_bad_gate_is_422_naming_it(env):
    client, settings, ids = env
    response = client.post("/v1/jobs/evaluate", json={
        "engine_id": 1, "corpus_id": ids.corpus_id, "gates": [{"metric": "vibes", "min": 1}]})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"][:4] == ["body", "gates", 0, "metric"] and "unknown metric 'vibes'" in detail["msg"]
    assert job_count(settings) == 0


def test_submission_is_audited(env):
    client, settings, ids = env
    job = client.post("/v1/jobs/build", json=build_body(ids, reason="nightly fp8 refresh")).json()
    admin = {"Authorization": f"Bearer {api_key(settings, Role.admin)}"}
    events = client.get("/v1/audit-events", params={"object_type": "job", "object_id": str(job["id"])},
                        headers=admin).json()
    assert events["count"] == 1
    event = events["data"][0]
    assert event["action"] == "job.build" and event["actor"] == "submitter-tester"
    assert event["reason"] == "nightly fp8 refresh" and event["before"] is None
    assert event["after"]["params"] == job["params"] and event["after"]["status"] == "queued"


def test_unreachable_broker_is_503_and_the_job_is_marked_failed(tmp_path, models_root, mlflow_uri, model_dir,
                                                                corpus_file):
    from .conftest import migrate

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'pops.db'}", models_root=models_root,
                             mlflow_tracking_uri=mlflow_uri, broker_url=f"redis://127.0.0.1:{port}/0")
    migrate(settings.database_url)
    ids = seed(settings, model_dir=model_dir, corpus_file=corpus_file)
    key = api_key(settings, Role.submitter)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        response = client.post("/v1/jobs/build", json=build_body(ids), headers={"Idempotency-Key": "no-broker"})
        assert response.status_code == 503
        assert response.json()["detail"][0]["loc"] == ["broker"]
        replay = client.post("/v1/jobs/build", json=build_body(ids), headers={"Idempotency-Key": "no-broker"})
    assert replay.status_code == 200  # the key names the job that could not be queued; it says why
    assert replay.json()["status"] == "failed" and "broker is unreachable" in replay.json()["error"]


@pytest.mark.parametrize("env, args, message", [
    ({"POPS_BROKER_URL": None}, ["worker"], "POPS_BROKER_URL is not set"),
    ({"POPS_BROKER_URL": "redis://127.0.0.1:1/0"}, ["worker", "-Q", "cpu,tpu"], "unknown queue(s) tpu"),
])
def test_pops_worker_refuses_bad_configuration(env, args, message):
    from typer.testing import CliRunner

    from controlplane import cli
    from controlplane.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli.app, args, env=env)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow
def test_reference_model_int8_engine_evaluates_close_to_bf16(sqlite_settings):
    """The trained reference model (assets/models/pops-llama-tiny): int8 W8A8 built and evaluated as jobs.

    On a trained network int8 with per-token activations should keep >= 90% top-1 agreement and
    a small KL; the gates say so, and the job records which way they went.
    """
    from .conftest import REPO

    model = REPO / "assets" / "models" / "pops-llama-tiny"
    corpus = REPO / "assets" / "corpora" / "eval-en.jsonl"
    ids = seed(sqlite_settings, model_dir=model, corpus_file=corpus)
    with session_scope(sqlite_settings) as db:
        build, _ = service.submit(db=db, kind=JobKind.build, job_in=BuildJobCreate(**build_body(ids)),
                                  idempotency_key=None, actor="tests", settings=sqlite_settings)
        assert build.status == JobStatus.succeeded, build.error
        evaluate, _ = service.submit(
            db=db, kind=JobKind.evaluate, idempotency_key=None, actor="tests", settings=sqlite_settings,
            job_in=EvaluateJobCreate(engine_id=build.result["engine_id"], corpus_id=ids.corpus_id, max_samples=4,
                                     seq_len=48, gates=[{"metric": "top1_agreement", "min": 0.9},
                                                        {"metric": "kl_mean", "max": 0.05}]))
    assert evaluate.status == JobStatus.succeeded, evaluate.error
    report = local_report(_evaluation(sqlite_settings, evaluate.result["evaluation_id"]).report_uri)
    assert evaluate.result["verdict"] == "passed", report["gate_results"]
    assert 0 < report["metrics"]["kl_mean"] < 0.05


def _evaluation(settings, evaluation_id: int):
    from controlplane.evaluations.models import Evaluation

    with session_scope(settings) as db:
        return db.get(Evaluation, evaluation_id)
