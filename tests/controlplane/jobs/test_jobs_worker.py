"""Jobs on real Celery worker processes against PostgreSQL and Redis, and the faults they survive.

Each test starts `celery worker --pool=solo` subprocesses (the app in worker_app.py: production
config with a 3 s visibility timeout) on this session's own PostgreSQL database and Redis db number.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from controlplane.db import session_scope
from controlplane.engines.models import Engine
from controlplane.jobs import service
from controlplane.jobs.models import Job, JobKind, JobStatus
from controlplane.jobs.schemas import BuildJobCreate, CalibrateJobCreate, EvaluateJobCreate

from .conftest import (
    REDIS_HOST,
    REDIS_PORT,
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


def complete_engine_dirs(root: Path) -> list[Path]:
    """Engine folders under their final names; each must hold a manifest and the weights."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if not p.name.startswith(".")]


class EngineWatcher(threading.Thread):
    """Lists the engines folder every few milliseconds and records any final-named folder that is incomplete."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.partial, self.seen_tmp = root, [], set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for path in complete_engine_dirs(self.root):
                if not ((path / "manifest.json").is_file() and (path / "model.safetensors").is_file()):
                    self.partial.append(path.name)
            if self.root.is_dir():
                self.seen_tmp.update(p.name for p in self.root.iterdir() if p.name.startswith(".tmp-"))
            time.sleep(0.005)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


@pytest.fixture
def pg_settings(tmp_path, pg_url, redis_db, models_root, mlflow_uri):
    return make_settings(tmp_path, database_url=pg_url, models_root=models_root, mlflow_tracking_uri=mlflow_uri,
                         broker_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}")


def test_worker_runs_calibrate_build_evaluate(pg_settings, model_dir, corpus_file, start_worker):
    """calibrate -> build (with its calibration) -> evaluate, each queued to Redis and run by a worker process."""
    ids = seed(pg_settings, model_dir=model_dir, corpus_file=corpus_file)
    start_worker(pg_settings)
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


def test_sigkill_mid_build_is_redelivered_and_completes_once(pg_settings, model_dir, corpus_file, start_worker):
    """A worker SIGKILLed while its engine is half-written: a restarted worker gets the task again
    (acks_late + visibility timeout) and the job completes exactly once; no partial engine is ever visible."""
    ids = seed(pg_settings, model_dir=model_dir, corpus_file=corpus_file)
    engines_root = pg_settings.artifact_root / "engines"
    watcher = EngineWatcher(engines_root)
    watcher.start()
    slow = start_worker(pg_settings, extra_env={"JOBS_TEST_ENGINE_WRITE_DELAY_S": "60"})
    job = submit(pg_settings, JobKind.build, BuildJobCreate(
        model_id=ids.model_id, recipe_id=ids.recipe_ids["int8_w8a8"], accelerator_id=ids.accelerator_ids["cpu"]),
        key="sigkill-build")

    # The weights are in the temporary folder and the worker holds before the rename: kill it there.
    wait_for(lambda: watcher.seen_tmp, timeout=60, interval=0.02, what="the build to write its temporary folder")
    slow.kill()
    killed = read_job(pg_settings, job.id)
    assert killed.status == JobStatus.running and killed.attempts == 1
    assert complete_engine_dirs(engines_root) == []

    start_worker(pg_settings)  # no delay: this one finishes the redelivered task
    done = wait_finished(pg_settings, job.id, timeout=90)
    watcher.stop()
    assert done.status == JobStatus.succeeded, done.error
    assert done.attempts == 2  # the killed delivery and the redelivery
    assert watcher.partial == []
    finals = complete_engine_dirs(engines_root)
    assert [p.name for p in finals] == [done.result["content_hash"]]
    with session_scope(pg_settings) as db:
        assert db.scalar(select(func.count()).select_from(Engine)
                         .where(Engine.content_hash == done.result["content_hash"])) == 1

    from runtime.engines import load_engine

    loaded = load_engine(finals[0])  # the engine the redelivery wrote is whole
    assert loaded.engine_id == done.result["content_hash"]


def test_redis_restart_during_run_worker_reconnects(tmp_path, pg_url, models_root, mlflow_uri, model_dir, corpus_file,
                                                    start_worker, private_redis):
    """Redis goes away and comes back (empty) while a job runs: the job finishes and the worker takes new jobs."""
    settings = make_settings(tmp_path, database_url=pg_url, models_root=models_root, mlflow_tracking_uri=mlflow_uri,
                             broker_url=private_redis.url)
    ids = seed(settings, model_dir=model_dir, corpus_file=corpus_file)
    engines_root = settings.artifact_root / "engines"
    start_worker(settings, extra_env={"JOBS_TEST_ENGINE_WRITE_DELAY_S": "4"})
    first = submit(settings, JobKind.build, BuildJobCreate(
        model_id=ids.model_id, recipe_id=ids.recipe_ids["int8_w8a8"], accelerator_id=ids.accelerator_ids["cpu"]))
    wait_for(lambda: engines_root.is_dir() and any(engines_root.iterdir()), timeout=60, interval=0.05,
             what="the build to start writing")
    private_redis.shutdown()
    time.sleep(1.0)
    private_redis.start()

    first = wait_finished(settings, first.id, timeout=60)
    assert first.status == JobStatus.succeeded, first.error

    second = submit(settings, JobKind.build, BuildJobCreate(
        model_id=ids.model_id, recipe_id=ids.recipe_ids["int4_w4a16_g128"], accelerator_id=ids.accelerator_ids["cpu"]))
    second = wait_finished(settings, second.id, timeout=60)
    assert second.status == JobStatus.succeeded, second.error
    assert read_job(settings, first.id).attempts == 1
