"""Jobs on real Celery worker processes against PostgreSQL and Redis, and the faults they survive.

The tests start `celery worker --pool=solo` subprocesses (worker_app.py: the production app with a
3 s visibility timeout) on this session's own PostgreSQL database and Redis db number. One worker
is shared by the module and restarted where a test kills it; worker_app's write delay holds a
build with its engine half-written, so faults land mid-build deterministically.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select

from controlplane.db import session_scope
from controlplane.engines.models import Engine
from controlplane.jobs import service
from controlplane.jobs.models import Job, JobKind, JobStatus
from controlplane.jobs.schemas import BuildJobCreate, CalibrateJobCreate, EvaluateJobCreate, SearchJobCreate

from .conftest import (
    PG_ADMIN_URL,
    REDIS_HOST,
    REDIS_PORT,
    SharedWorker,
    make_settings,
    read_job,
    seed,
    wait_finished,
    wait_for,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]


def submit(settings, kind: JobKind, job_in, key: str | None = None) -> Job:
    with session_scope(settings) as db:
        job, _ = service.submit(db=db, kind=kind, job_in=job_in, idempotency_key=key, actor="worker-tests",
                                settings=settings)
        return job


def build_request(ids, recipe: str) -> BuildJobCreate:
    return BuildJobCreate(model_id=ids.model_id, recipe_id=ids.recipe_ids[recipe],
                          accelerator_id=ids.accelerator_ids["cpu"])


def visible_engine_dirs(root: Path) -> set[Path]:
    """Engine folders under their final names (temporary ones start with a dot)."""
    return {p for p in root.iterdir() if not p.name.startswith(".")} if root.is_dir() else set()


class EngineWatcher(threading.Thread):
    """Lists the engines folder every few milliseconds, recording any final-named folder that is incomplete."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.partial, self.seen_tmp = root, [], set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for path in visible_engine_dirs(self.root):
                if not ((path / "manifest.json").is_file() and (path / "model.safetensors").is_file()):
                    self.partial.append(path.name)
            if self.root.is_dir():
                self.seen_tmp.update(p.name for p in self.root.iterdir() if p.name.startswith(".tmp-"))
            time.sleep(0.005)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


@pytest.fixture(scope="module")
def pg_settings(tmp_path_factory, pg_url, redis_db, models_root, mlflow_uri):
    """PostgreSQL and the claimed Redis db; the module's tests share one artifact folder."""
    return make_settings(tmp_path_factory.mktemp("pg-jobs"), database_url=pg_url, models_root=models_root,
                         mlflow_tracking_uri=mlflow_uri, broker_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}")


@pytest.fixture(scope="module")
def worker(pg_settings, tmp_path_factory):
    shared = SharedWorker(pg_settings, tmp_path_factory.mktemp("worker"))
    yield shared
    shared.stop()


@pytest.fixture
def ids(pg_settings, model_dir, corpus_file):
    return seed(pg_settings, model_dir=model_dir, corpus_file=corpus_file)


def test_sigkill_mid_build_is_redelivered_and_completes_once(pg_settings, ids, worker):
    """A worker SIGKILLed while its engine is half-written: a restarted worker gets the task again
    (acks_late + visibility timeout) and the job completes exactly once; no partial engine is ever visible."""
    engines_root = pg_settings.artifact_root / "engines"
    before = visible_engine_dirs(engines_root)  # engines of other tests in this module
    watcher = EngineWatcher(engines_root)
    watcher.start()
    worker.write_delay(60)
    doomed = worker.ensure()
    job = submit(pg_settings, JobKind.build, build_request(ids, "int8_w8a8"), key="sigkill-build")

    # The weights are in the temporary folder and the worker holds before the rename: kill it there.
    wait_for(lambda: watcher.seen_tmp, timeout=90, interval=0.02, what="the build to write its temporary folder")
    doomed.kill()
    killed = read_job(pg_settings, job.id)
    assert killed.status == JobStatus.running and killed.attempts == 1
    assert killed.message == "building" and 0.05 <= killed.progress < 1  # progress was visible mid-job
    assert visible_engine_dirs(engines_root) == before

    worker.write_delay(0)
    worker.ensure()  # a fresh worker process is handed the unacked task
    done = wait_finished(pg_settings, job.id, timeout=90)
    watcher.stop()
    assert done.status == JobStatus.succeeded, done.error
    assert done.attempts == 2  # the killed delivery and the redelivery
    assert watcher.partial == []
    engine_dir = engines_root / done.result["content_hash"]
    assert visible_engine_dirs(engines_root) == before | {engine_dir}
    with session_scope(pg_settings) as db:
        assert db.scalar(select(func.count()).select_from(Engine)
                         .where(Engine.content_hash == done.result["content_hash"])) == 1

    from runtime.engines import load_engine

    loaded = load_engine(engine_dir)  # the engine the redelivery wrote is whole
    assert loaded.engine_id == done.result["content_hash"]


def test_worker_runs_calibrate_build_evaluate(pg_settings, ids, worker):
    """calibrate -> build (with its calibration) -> evaluate, each queued to Redis and run by a worker process."""
    worker.write_delay(0)
    worker.ensure()
    recipe_id = ids.recipe_ids["fp8_static"]

    calibrate = submit(pg_settings, JobKind.calibrate,
                       CalibrateJobCreate(model_id=ids.model_id, recipe_id=recipe_id, corpus_id=ids.corpus_id))
    assert calibrate.status == JobStatus.queued and calibrate.queue == "cpu"
    calibrate = wait_finished(pg_settings, calibrate.id)
    assert calibrate.status == JobStatus.succeeded, calibrate.error
    assert calibrate.progress == 1.0 and calibrate.attempts == 1 and calibrate.mlflow_run_id

    build = submit(pg_settings, JobKind.build, BuildJobCreate(
        model_id=ids.model_id, recipe_id=recipe_id, accelerator_id=ids.accelerator_ids["cpu"],
        calibration_id=calibrate.result["calibration_id"]))
    build = wait_finished(pg_settings, build.id)
    assert build.status == JobStatus.succeeded, build.error
    with session_scope(pg_settings) as db:
        engine = db.get(Engine, build.result["engine_id"])
        assert engine.calibration_id == calibrate.result["calibration_id"]
        assert engine.manifest["calibration"]["content_hash"] == calibrate.result["content_hash"]
        # Static fp8 activation scales came from the calibration, not a default.
        assert any("calibrated on" in source for source in engine.manifest["scale_sources"].values())

    evaluate = submit(pg_settings, JobKind.evaluate, EvaluateJobCreate(
        engine_id=build.result["engine_id"], corpus_id=ids.corpus_id, max_samples=4, seq_len=32,
        gates=[{"metric": "top1_agreement", "min": 0.0}]))
    evaluate = wait_finished(pg_settings, evaluate.id)
    assert evaluate.status == JobStatus.succeeded, evaluate.error
    assert evaluate.result["verdict"] == "passed"


def test_worker_runs_a_search_and_its_recipe_builds(pg_settings, ids, worker):
    """search -> build: a worker process searches a recipe with a latency budget, stores it, and it builds."""
    from controlplane.recipes.models import Recipe

    worker.write_delay(0)
    worker.ensure()
    search = submit(pg_settings, JobKind.search, SearchJobCreate(
        model_id=ids.model_id, corpus_id=ids.corpus_id, accelerator_id=ids.accelerator_ids["l4"],
        budget={"latency_us": 200.0}, granularity="op", candidates=["int4_g128"], samples=4, seq_len=32,
        name="worker-searched"), key="worker-search")
    assert search.status == JobStatus.queued and search.queue == "cpu"
    search = wait_finished(pg_settings, search.id)
    assert search.status == JobStatus.succeeded, search.error
    assert search.progress == 1.0 and search.attempts == 1 and search.mlflow_run_id
    assert search.result["metrics"]["predicted_latency_us"] <= 200.0
    with session_scope(pg_settings) as db:
        recipe = db.get(Recipe, search.result["recipe_id"])
        assert recipe.name == "worker-searched" and recipe.content_hash == search.result["content_hash"]

    build = submit(pg_settings, JobKind.build, BuildJobCreate(
        model_id=ids.model_id, recipe_id=search.result["recipe_id"], accelerator_id=ids.accelerator_ids["l4"]))
    build = wait_finished(pg_settings, build.id)
    assert build.status == JobStatus.succeeded, build.error


def test_database_outage_mid_job_is_retried_with_backoff(pg_settings, pg_url, ids, worker):
    """PostgreSQL refuses connections while a build runs: the task retries (a transient error), the
    job stays running meanwhile, and completes once the database is back."""
    database = pg_url.rsplit("/", 1)[-1]
    worker.write_delay(3)
    worker.ensure()
    job = submit(pg_settings, JobKind.build, build_request(ids, "int4_w4a16_g128"))
    wait_for(lambda: read_job(pg_settings, job.id).message == "building", timeout=90, interval=0.05,
             what="the build to start")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            time.sleep(5)  # the build finishes its pause and fails to record its result
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    worker.write_delay(0)

    done = wait_finished(pg_settings, job.id, timeout=90)
    assert done.status == JobStatus.succeeded, done.error
    # The first try lost the database after its build; a retry found the engine by content hash.
    assert done.attempts >= 2
    log = worker.worker.log()
    assert "retry: Retry in" in log and "OperationalError" in log
    with session_scope(pg_settings) as db:
        assert db.scalar(select(func.count()).select_from(Engine)
                         .where(Engine.content_hash == done.result["content_hash"])) == 1


def test_redis_restart_during_run_worker_reconnects(tmp_path, pg_url, models_root, mlflow_uri, model_dir, corpus_file,
                                                    private_redis):
    """Redis goes away and comes back (empty) while a job runs: the job finishes and the worker takes new jobs.

    A private redis-server is restarted (`shutdown nosave`, then started again with no persistence), so
    the shared Redis of other tests and helpers is never touched.
    """
    settings = make_settings(tmp_path, database_url=pg_url, models_root=models_root, mlflow_tracking_uri=mlflow_uri,
                             broker_url=private_redis.url)
    ids = seed(settings, model_dir=model_dir, corpus_file=corpus_file)
    engines_root = settings.artifact_root / "engines"
    worker = SharedWorker(settings, tmp_path)
    try:
        worker.write_delay(4)
        worker.ensure()
        first = submit(settings, JobKind.build, build_request(ids, "int8_w8a8"))
        wait_for(lambda: engines_root.is_dir() and any(engines_root.iterdir()), timeout=90, interval=0.05,
                 what="the build to start writing")
        assert read_job(settings, first.id).status == JobStatus.running
        private_redis.shutdown()
        time.sleep(1.0)
        private_redis.start()
        worker.write_delay(0)

        first = wait_finished(settings, first.id, timeout=60)
        assert first.status == JobStatus.succeeded, first.error
        second = submit(settings, JobKind.build, build_request(ids, "int4_w4a16_g128"))
        second = wait_finished(settings, second.id, timeout=60)
        assert second.status == JobStatus.succeeded, second.error
        assert read_job(settings, first.id).attempts == 1  # completed once, never redelivered
        assert "Connection to broker lost" in worker.worker.log()
    finally:
        worker.stop()  # before the fixture stops its Redis
