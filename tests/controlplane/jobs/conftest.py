"""Fixtures for the jobs tests: a tiny model folder, a corpus, migrated databases, Redis, real workers.

Isolation on shared services: every test session gets its own PostgreSQL database (created and
dropped here) and its own Redis database number (claimed with SET NX, flushed afterwards), so
workers and queues of parallel runs never meet. `services` tests FAIL when CI=true and PostgreSQL
or Redis is unreachable; elsewhere they skip.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import polling

REPO = Path(__file__).resolve().parents[3]
PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT = "127.0.0.1", 5432, "127.0.0.1", 6379
PG_ADMIN_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"  # where databases are created and dropped
PEPPER = "jobs-tests-pepper-0123456789"
IN_CI = os.environ.get("CI", "").lower() == "true"

CORPUS_LINES = [
    {"text": "The quick brown fox jumps over the lazy dog.", "slice": "english"},
    {"text": "Calibration records the range of every activation in the model.", "slice": "english"},
    {"text": "Precision is deployment state; it is versioned and rolled out in stages.", "slice": "english"},
    {"text": "Быстрая коричневая лиса прыгает через ленивую собаку.", "slice": "russian"},
    {"text": "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n", "slice": "code"},
    {"text": " ".join(["the model keeps every activation in range"] * 6), "slice": "english"},
]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_services() -> None:
    """Fails under CI, skips elsewhere, when PostgreSQL or Redis is not listening."""
    down = [name for name, host, port in (("PostgreSQL", PG_HOST, PG_PORT), ("Redis", REDIS_HOST, REDIS_PORT))
            if not _reachable(host, port)]
    if down:
        message = f"{' and '.join(down)} unreachable on {PG_HOST}"
        if IN_CI:
            pytest.fail(f"CI=true but {message}: services tests must run in CI")
        pytest.skip(message)


# --- model, corpus, recipes ------------------------------------------------------------------------


def save_tiny_llama(path: Path, *, hidden: int = 128, layers: int = 2, intermediate: int = 256, seed: int = 1234) -> Path:
    """Saves a random LlamaForCausalLM with a byte-level BPE tokenizer as a transformers folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([line["text"] for line in CORPUS_LINES] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_dir(models_root) -> Path:
    """A 2-layer Llama (hidden 128, so int4 groups of 128 fit): each job on it is well under a second of compute."""
    return save_tiny_llama(models_root / "tiny-llama")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpora") / "tiny.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in CORPUS_LINES), encoding="utf-8")
    return path


# --- settings and databases ------------------------------------------------------------------------


def make_settings(root: Path, *, database_url: str, models_root: Path, broker_url: str | None = None,
                  mlflow_tracking_uri: str | None = None, **overrides):
    from controlplane.settings import Settings

    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        result_backend=broker_url,
        mlflow_tracking_uri=mlflow_tracking_uri or (root / "mlruns").as_uri(),
        artifact_root=root / "artifacts",
        models_roots=[models_root],
        api_key_pepper=PEPPER,
        seed_accelerators=True,
        **overrides,
    )


def settings_env(settings) -> dict[str, str]:
    """The environment that makes a worker process read exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPS_")}
    env.update({
        "POPS_DATABASE_URL": settings.database_url,
        "POPS_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "POPS_ARTIFACT_ROOT": str(settings.artifact_root),
        "POPS_MODELS_ROOTS": json.dumps([str(p) for p in settings.models_roots]),
        "POPS_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value(),
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    })
    if settings.broker_url:
        env["POPS_BROKER_URL"] = settings.broker_url
        env["POPS_RESULT_BACKEND"] = settings.result_backend or settings.broker_url
    return env


def migrate(database_url: str, revision: str = "head") -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(REPO / "alembic.ini"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One local MLflow store for the session: creating one costs seconds (MLflow migrates its schema)."""
    return (tmp_path_factory.mktemp("mlruns")).as_uri()


@pytest.fixture
def sqlite_settings(tmp_path, models_root, mlflow_uri):
    """Embedded settings: a migrated SQLite file, no broker, the session's MLflow store; files under tmp_path."""
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'pops.db'}", models_root=models_root,
                             mlflow_tracking_uri=mlflow_uri)
    migrate(settings.database_url)
    yield settings
    _dispose(settings)


def _dispose(settings) -> None:
    _dispose_url(settings.database_url)


def _dispose_url(url: str) -> None:
    """Closes the pooled connections `controlplane.db.get_engine` holds for this URL."""
    from controlplane.db import _ENGINES

    engine = _ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, migrated to head, dropped afterwards."""
    from tests.controlplane.databases import create_database, drop_database

    require_services()
    url = create_database()
    try:
        migrate(url)
        yield url
    finally:
        _dispose_url(url)
        drop_database(url)


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number claimed for this session (SET NX in it), flushed afterwards."""
    require_services()
    import redis

    token = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if client.dbsize() == 0 and client.set("pops-tests:claim", token, nx=True, ex=3600):
            break
    else:
        pytest.fail("no free Redis database (1-15) to claim for the jobs tests")
    try:
        yield db
    finally:
        if client.get("pops-tests:claim") == token.encode():
            client.flushdb()
        client.close()


# --- rows the jobs refer to --------------------------------------------------------------------------


@dataclass
class Seeded:
    model_id: int
    recipe_ids: dict[str, int]
    corpus_id: int
    accelerator_ids: dict[str, int] = field(default_factory=dict)


RECIPES: dict[str, dict[str, Any]] = {
    "int8_w8a8": {"preset": "int8_w8a8"},
    "int4_w4a16_g128": {"preset": "int4_w4a16_g128"},
    # Static fp8 activations and a static fp8 KV cache: the build needs a calibration.
    "fp8_static": {"document": {
        "name": "fp8_static", "description": "fp8 weights, calibrated fp8 activations and KV cache",
        "default": {"weights": {"format": "fp8_e4m3", "strategy": "channel"},
                    "input_activations": {"format": "fp8_e4m3", "strategy": "tensor", "dynamic": False}},
        "kv_cache_scheme": {"format": "fp8_e4m3", "dynamic": False},
        "calibration": {"corpus": "tiny", "samples": 4, "seq_len": 32},
    }},
}


def seed(settings, *, model_dir: Path, corpus_file: Path) -> Seeded:
    """Registers the model, the recipes, the corpus and the accelerator profiles as rows."""
    import yaml

    from controlplane.accelerators.models import Accelerator
    from controlplane.corpora.models import Corpus
    from controlplane.db import session_scope
    from controlplane.model_registry.models import RegisteredModel
    from controlplane.recipes.models import Recipe
    from runtime.accelerators import list_profiles
    from runtime.corpora import Corpus as RuntimeCorpus
    from runtime.models import content_hash
    from runtime.recipes import Recipe as RuntimeRecipe
    from runtime.recipes import preset

    corpus = RuntimeCorpus.load(corpus_file)
    with session_scope(settings) as db:
        model = RegisteredModel(name=f"tiny-{uuid.uuid4().hex[:6]}", path=str(model_dir),
                                content_hash=content_hash(model_dir), architecture="LlamaForCausalLM",
                                model_type="llama", size_bytes=sum(f.stat().st_size for f in model_dir.iterdir()),
                                created_by="tests")
        db.add(model)
        db.flush()
        recipe_ids = {}
        for name, spec in RECIPES.items():
            recipe = preset(spec["preset"]) if "preset" in spec else RuntimeRecipe.from_dict(spec["document"])
            row = Recipe(name=f"{name}-{uuid.uuid4().hex[:6]}", version=1, content_hash=recipe.content_hash(),
                         yaml_text=yaml.safe_dump(recipe.to_dict()), spec=recipe.to_dict(), model_id=model.id,
                         created_by="tests")
            db.add(row)
            db.flush()
            recipe_ids[name] = row.id
        corpus_row = Corpus(name=f"tiny-{uuid.uuid4().hex[:6]}", content_hash=corpus.content_hash,
                            uri=corpus_file.as_uri(), size_bytes=corpus_file.stat().st_size,
                            sample_count=len(corpus), coverage={}, tokenizer_model_id=model.id, created_by="tests")
        db.add(corpus_row)
        accelerators = {}
        for profile in list_profiles():
            from sqlalchemy import select

            row = db.scalar(select(Accelerator).where(Accelerator.name == profile.name))
            if row is None:
                row = Accelerator(name=profile.name, description=profile.description,
                                  min_capability=profile.min_capability, reference_only=profile.reference_only)
                db.add(row)
                db.flush()
            accelerators[profile.name] = row.id
        db.flush()
        return Seeded(model_id=model.id, recipe_ids=recipe_ids, corpus_id=corpus_row.id,
                      accelerator_ids=accelerators)


# --- jobs ------------------------------------------------------------------------------------------


# Jobs poll slower: each poll opens a database session.
wait_for = functools.partial(polling.wait_for, interval=0.2)


def read_job(settings, job_id: int):
    from controlplane.db import session_scope
    from controlplane.jobs.models import Job

    with session_scope(settings) as db:
        job = db.get(Job, job_id)
        db.expunge(job)
        return job


def wait_finished(settings, job_id: int, *, timeout: float = 90.0):
    """The job once it has succeeded or failed."""
    return wait_for(lambda: (lambda j: j if j.status.finished else None)(read_job(settings, job_id)),
                    timeout=timeout, what=f"job {job_id} to finish")


# --- worker processes ------------------------------------------------------------------------------


class WorkerProcess:
    """A real `celery worker` subprocess (solo pool: the task runs in the process we kill)."""

    def __init__(self, env: dict[str, str], log_path: Path, *, queues: str = "cpu,gpu"):
        self.env, self.log_path, self.queues = env, log_path, queues
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0

    def start(self, *, timeout: float = 120.0) -> "WorkerProcess":
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.controlplane.jobs.worker_app", "worker",
             "-Q", self.queues, "--pool=solo", "--concurrency=1", "-n", f"pops-test-{uuid.uuid4().hex[:8]}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_for(self._ready, timeout=timeout, interval=0.2, what=f"the worker to be ready (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return " ready." in self.log()

    def log(self) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no ack; the task in flight stays unacked in Redis."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Cold shutdown: the tests wait for their jobs, so nothing is in flight (warm shutdown takes ~8 s).
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class SharedWorker:
    """One worker for a whole test module (starting one and importing torch in it costs seconds).

    `write_delay(s)` makes its engine builds pause `s` seconds between writing the weights into
    the temporary folder and renaming it (see worker_app.py), without restarting it.
    """

    def __init__(self, settings, folder: Path):
        self.settings, self.folder = settings, folder
        self.delay_file = folder / "engine-write-delay"
        self.worker: WorkerProcess | None = None
        self.starts = 0

    def write_delay(self, seconds: float) -> None:
        self.delay_file.write_text(str(seconds))

    def ensure(self) -> WorkerProcess:
        """The running worker, started on first use (or again after it was killed or stopped)."""
        if self.worker is None or self.worker.proc.poll() is not None:
            env = {**settings_env(self.settings), "JOBS_TEST_ENGINE_WRITE_DELAY_FILE": str(self.delay_file)}
            self.starts += 1
            self.worker = WorkerProcess(env, self.folder / f"worker-{self.starts}.log").start()
        return self.worker

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None


# --- a private Redis that a test may restart -------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test alone on a free port: restarting it disturbs nobody else's data."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [shutil.which("redis-server") or "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1",
             "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log"), "--pidfile", str(self.workdir / "redis.pid")],
            check=True,
        )
        wait_for(lambda: _reachable("127.0.0.1", self.port), timeout=10, interval=0.05, what="redis-server")

    def shutdown(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
        wait_for(lambda: not _reachable("127.0.0.1", self.port), timeout=10, interval=0.05, what="redis to stop")


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    require_services()
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; the Redis restart test needs it")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if _reachable("127.0.0.1", server.port):
            server.shutdown()
