"""The Celery app's delivery guarantees and queue routing."""
from __future__ import annotations

import pytest

from pydantic import ValidationError

from controlplane.celery_app import CPU_QUEUE, GPU_QUEUE, create_celery, get_celery, queue_for

from .conftest import REDIS_HOST, REDIS_PORT, make_settings


def test_worker_app_acks_late_and_requeues_on_worker_loss(tmp_path, models_root):
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", models_root=models_root,
                             broker_url="redis://127.0.0.1:6379/0")
    conf = create_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 6 * 3600  # the default: longer than a build
    assert conf.broker_connection_retry_on_startup and conf.broker_connection_max_retries is None
    assert not conf.task_always_eager
    assert conf.result_backend == settings.broker_url
    for name in ("pops.calibrate", "pops.build", "pops.evaluate", "pops.search"):
        task = get_celery(settings).tasks[name]
        assert task.acks_late and task.reject_on_worker_lost and task.max_retries > 0
        assert task.ignore_result  # the jobs table is the result store
        # Only transient errors retry: a bad recipe must fail the job at once, not five times.
        assert ValueError not in task.autoretry_for and Exception not in task.autoretry_for


def test_visibility_timeout_is_a_setting_with_a_floor(tmp_path, models_root):
    # Builds of large models outlast the default: an operator raises it, and the workers' app follows.
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", models_root=models_root,
                             broker_url="redis://127.0.0.1:6379/0", job_visibility_timeout_s=12 * 3600)
    assert create_celery(settings).conf.broker_transport_options["visibility_timeout"] == 12 * 3600
    assert get_celery(settings).conf.broker_transport_options["visibility_timeout"] == 12 * 3600
    with pytest.raises(ValidationError, match="job_visibility_timeout_s"):
        make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", models_root=models_root,
                      broker_url="redis://127.0.0.1:6379/0", job_visibility_timeout_s=5)


def test_embedded_app_runs_tasks_in_process(sqlite_settings):
    conf = get_celery(sqlite_settings).conf
    assert conf.task_always_eager and conf.broker_url == "memory://localhost/" and conf.result_backend is None


def test_queue_choice():
    assert queue_for(kind="build", gpu=True) == GPU_QUEUE
    assert queue_for(kind="evaluate", gpu=True) == GPU_QUEUE
    assert queue_for(kind="calibrate", gpu=True) == CPU_QUEUE
    assert queue_for(kind="build", gpu=False) == CPU_QUEUE


@pytest.mark.services
def test_a_gpu_job_is_delivered_to_the_gpu_queue_only(tmp_path, models_root, redis_db):
    import redis

    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", models_root=models_root,
                             broker_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}")
    app = get_celery(settings)
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db)
    client.delete(CPU_QUEUE, GPU_QUEUE)
    app.tasks["pops.build"].apply_async(args=[1], queue=GPU_QUEUE)
    app.tasks["pops.calibrate"].apply_async(args=[2], queue=CPU_QUEUE)
    try:
        assert client.llen(GPU_QUEUE) == 1 and client.llen(CPU_QUEUE) == 1
    finally:
        client.delete(CPU_QUEUE, GPU_QUEUE)
