"""Engines for the serving tests: one tiny Llama built as bf16, fp8 (dynamic) and fp8 with a too-narrow calibration.

Built once per session (each build takes well under a second); every test loads its own
ServedEngine from the folders, so locks, counters and registry ids never leak between tests.
"""
from __future__ import annotations

import functools
import json
import sys
import threading
from pathlib import Path

import httpx
import pytest
import torch

from tests import polling

# Calibrated ranges are divided by this: a calibration corpus far narrower than the traffic it meets.
NARROW_CALIBRATION = 50.0

CALIBRATION_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Calibration records the range of every activation in the model.",
    "Precision is deployment state; it is versioned and rolled out in stages.",
    "def add(a, b):\n    return a + b\n",
]

FP8_STATIC = {
    "name": "fp8_static_narrow",
    "description": "fp8 weights and statically scaled fp8 activations",
    "default": {"weights": {"format": "fp8_e4m3", "strategy": "channel"},
                "input_activations": {"format": "fp8_e4m3", "strategy": "tensor", "dynamic": False}},
    "calibration": {"corpus": "tiny", "samples": 8, "seq_len": 32},
}


@pytest.fixture(scope="session")
def serving_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="session")
def reference_dir(serving_root, tiny_tokenizer) -> Path:
    """A 2-layer Llama (hidden 64) saved as a model folder: the reference every engine is built from."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tiny_tokenizer.pad_token_id, bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    path = serving_root / "reference"
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _build(reference_dir: Path, recipe, out_root: Path, calibration=None) -> Path:
    from runtime.accelerators import get_profile
    from runtime.engines import build

    return build(reference_dir, recipe, get_profile("cpu"), calibration=calibration, out_root=out_root).path


@pytest.fixture(scope="session")
def engine_dirs(serving_root, reference_dir, tiny_tokenizer) -> dict[str, Path]:
    """Engine folders by name: `bf16`, `fp8` (dynamic per-token activations), `fp8_narrow` (static, narrow ranges)."""
    from runtime.calibration import calibrate
    from runtime.corpora import Corpus
    from runtime.models import load_model
    from runtime.recipes import Recipe, preset

    out = serving_root / "engines"
    corpus_path = serving_root / "calibration.jsonl"
    corpus_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CALIBRATION_TEXTS), encoding="utf-8")
    recipe = Recipe.from_dict(FP8_STATIC)
    loaded = load_model(reference_dir)
    calibration = calibrate(loaded.model, loaded.tokenizer, Corpus.load(corpus_path), recipe,
                            model_hash=loaded.content_hash)
    narrow = calibration.model_copy(update={"tensors": {
        name: stats.model_copy(update={"observer_amax": stats.observer_amax / NARROW_CALIBRATION})
        for name, stats in calibration.tensors.items()}})
    return {"bf16": _build(reference_dir, preset("bf16"), out),
            "fp8": _build(reference_dir, preset("fp8_w8a8"), out),
            "fp8_narrow": _build(reference_dir, recipe, out, narrow)}


@pytest.fixture
def load_engine_dir(engine_dirs):
    """Loads a fresh ServedEngine by name (optionally with a control-plane registry id)."""
    from runtime.serving import ServedEngine

    def load(name: str, registry_id: int | None = None) -> ServedEngine:
        return ServedEngine.load(engine_dirs[name], registry_id=registry_id)

    return load


@pytest.fixture
def make_service(engine_dirs):
    """A ServingService over given routes (standalone unless config says otherwise), stopped after the test."""
    from runtime.serving import Routes, ServeConfig, ServingService

    services = []

    def make(routes: Routes | None = None, **config) -> ServingService:
        config.setdefault("endpoint", "tiny")
        if "control_plane_url" not in config:
            config.setdefault("engine_paths", [engine_dirs["bf16"]])
        service = ServingService(ServeConfig(**config))
        if routes is not None:
            service.router.swap(routes)
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()


# --- a real control plane under uvicorn --------------------------------------------------------------


# Serving tests poll fast: requests finish in milliseconds.
wait_for = functools.partial(polling.wait_for, interval=0.05)


class ControlPlane:
    """`controlplane.main:create_app` on an SQLite file, served by uvicorn in a thread; can be stopped and restarted."""

    def __init__(self, settings, port: int):
        from controlplane.main import create_app as create_control_plane

        self.settings, self.port = settings, port
        self.url = f"http://127.0.0.1:{port}"
        self.app = create_control_plane(settings)
        self.keys: dict[str, str] = {}
        self._server = self._thread = None

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="control-plane", daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started, timeout=30, what="the control plane to listen")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(30)
            self._server = self._thread = None

    def client(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/v1", headers={"Authorization": f"Bearer {self.keys[role]}"},
                            timeout=30)

    def register_engine(self, path: Path, reference_dir: Path) -> int:
        """An engine row for a built folder, with a passing evaluation (what a deployment needs)."""
        from controlplane.db import create_db_engine, make_session_factory
        from tests import factories

        manifest = json.loads((path / "manifest.json").read_text())
        engine = create_db_engine(self.settings)
        try:
            with make_session_factory(engine)() as db:
                factories.bind(db)
                try:
                    row = factories.passing_engine(
                        content_hash=manifest["engine_id"], uri=path.as_uri(), manifest=manifest,
                        model=factories.RegisteredModelFactory(path=str(reference_dir)))
                    db.commit()
                    return row.id
                finally:
                    factories.bind(None)
        finally:
            engine.dispose()


@pytest.fixture
def control_plane(tmp_path) -> ControlPlane:
    """A migrated control plane with an admin and a submitter key, listening on a free port."""
    repo = str(Path(__file__).resolve().parents[3])
    if repo not in sys.path:  # `tests.*` helpers import from the repository root
        sys.path.insert(0, repo)
    from controlplane import migrate
    from controlplane.auth import service as auth_service
    from controlplane.auth.models import Role
    from controlplane.auth.schemas import ApiKeyCreate
    from controlplane.db import create_db_engine, make_session_factory
    from controlplane.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'control-plane.db'}", artifact_root=tmp_path / "artifacts",
                        models_roots=[tmp_path], mlflow_tracking_uri=(tmp_path / "mlruns").as_uri(),
                        api_key_pepper="serving-tests-pepper-0123456789", seed_accelerators=False)
    migrate.upgrade(settings)
    cp = ControlPlane(settings, polling.free_port())
    engine = create_db_engine(settings)
    with make_session_factory(engine)() as db:
        for role in (Role.admin, Role.submitter):
            _, cp.keys[role.value] = auth_service.create(
                db=db, key_in=ApiKeyCreate(owner=f"serving-{role.value}", role=role), pepper=settings.api_key_pepper.get_secret_value(),
                actor="tests")
    engine.dispose()
    cp.start()
    yield cp
    cp.stop()


@pytest.fixture
def wait_until():
    """`wait_until(predicate, timeout=..., what=...)`: polls until truthy, fails the test naming `what`."""
    return wait_for


@pytest.fixture
def unreachable_url() -> str:
    """A URL where nothing listens: a control plane that is down."""
    return f"http://127.0.0.1:{polling.free_port()}"
