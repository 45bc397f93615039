"""A real control plane for dashboard tests: uvicorn on a free port, SQLite, seeded through the REST API.

The seed is what an operator would have done by then: the reference model and corpora registered,
recipes submitted, a calibration, engines built for the CPU and for an A100 (which falls back),
evaluations with gates, and two endpoints: `chat` (an active int8 engine and a calibrated fp8
canary with canary samples in several windows) and `code` (an engine in shadow awaiting approval).
"""
from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.dashboard.support import free_port, wait_for  # noqa: E402

MODEL = REPO / "assets" / "models" / "pops-llama-tiny"
CORPORA = REPO / "assets" / "corpora"
PEPPER = "dashboard-tests-pepper-0123456789"
GATES = [{"metric": "kl_mean", "max": 0.2}, {"metric": "top1_agreement", "min": 0.7}]
STATIC_FP8 = {
    "name": "fp8_static",
    "description": "fp8 weights per channel, static per-tensor fp8 activations calibrated on short English",
    "default": {"weights": {"format": "fp8_e4m3", "strategy": "channel"},
                "input_activations": {"format": "fp8_e4m3", "strategy": "tensor", "observer": "minmax"}},
    "kv_cache_scheme": {"format": "fp8_e4m3"},
    "calibration": {"corpus": "calib-en-short", "samples": 8, "seq_len": 64},
}


@dataclass
class LiveApi:
    """The running control plane: its URL, one key per role, and the ids the seed made."""

    url: str
    keys: dict[str, str]
    ids: dict[str, int] = field(default_factory=dict)

    def client(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/v1", headers={"Authorization": f"Bearer {self.keys[role]}"},
                            timeout=300)


def _ok(response: httpx.Response) -> dict:
    assert response.status_code < 300, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()


def _job(api: httpx.Client, kind: str, body: dict) -> dict:
    job = _ok(api.post(f"/jobs/{kind}", json=body))  # embedded: the job ran inside this request
    assert job["status"] == "succeeded", job
    return job["result"]


def _samples(engine_id: int, n: int, *, kl: float, rng: random.Random, start: int, drift: float = 1.0) -> list[dict]:
    """Canary samples as serving posts them, with saturation and amax ratio on two layers.

    `drift` 1 keeps every request within the default drift policy; larger values push the per-layer
    ranges past it (long, non-Latin traffic the calibration never saw).
    """
    out = []
    for i in range(n):
        kl_mean = kl * rng.uniform(0.5, 1.5)
        out.append({
            "engine_id": engine_id, "request_id": f"req-{start + i}", "kl_mean": kl_mean,
            "kl_max": kl_mean * rng.uniform(1.5, 4.0), "top1_agreement": rng.uniform(0.93, 1.0) ** drift,
            "saturation": {"model.layers.0.mlp.down_proj": rng.uniform(0, 2e-4) * drift ** 2,
                           "model.layers.1.self_attn.o_proj": rng.uniform(0, 5e-4) * drift ** 2},
            "amax_ratio": {"model.layers.0.mlp.down_proj": rng.uniform(0.6, 1.2) * drift,
                           "model.layers.1.self_attn.o_proj": rng.uniform(0.8, 1.6) * drift},
            "slice": rng.choice(["en-short", "code"]) if drift == 1.0 else "multiscript-long",
            "length_bucket": "0-128" if drift == 1.0 else "512-2048", "script": "Latin" if drift == 1.0 else "CJK",
            "num_tokens": rng.randint(16, 120) if drift == 1.0 else rng.randint(512, 2000),
        })
    return out


def seed(live: LiveApi) -> None:
    """Fills the control plane through its API, as an operator and serving would."""
    from runtime.recipes import preset

    admin, approver = live.client("admin"), live.client("approver")
    ids = live.ids
    ids["model"] = _ok(admin.post("/models", json={"name": "pops-llama-tiny", "path": str(MODEL)}))["id"]
    for name in ("calib-en-short", "eval-en", "traffic-multiscript"):
        with open(CORPORA / f"{name}.jsonl", "rb") as fh:
            ids[name] = _ok(admin.post("/corpora", data={"name": name, "tokenizer_model_id": ids["model"]},
                                       files={"file": (f"{name}.jsonl", fh)}))["id"]
    for name, doc in (("int8", preset("int8_w8a8").to_dict()), ("fp8", preset("fp8_w8a8").to_dict()),
                      ("fp8_static", STATIC_FP8)):
        ids[f"recipe:{name}"] = _ok(admin.post("/recipes", json=doc, params={"model_id": ids["model"]}))["id"]
    accelerators = {a["name"]: a["id"] for a in _ok(admin.get("/accelerators"))["data"]}
    ids["calibration"] = _job(admin, "calibrate", {
        "model_id": ids["model"], "recipe_id": ids["recipe:fp8_static"], "corpus_id": ids["calib-en-short"],
        "samples": 8, "seq_len": 64})["calibration_id"]
    for name, accelerator, calibration in (("int8", "cpu", None), ("fp8_static", "cpu", ids["calibration"]),
                                           ("fp8", "cpu", None), ("fp8", "a100", None)):
        result = _job(admin, "build", {"model_id": ids["model"], "recipe_id": ids[f"recipe:{name}"],
                                       "accelerator_id": accelerators[accelerator], "calibration_id": calibration})
        ids[f"engine:{name}@{accelerator}"] = result["engine_id"]
    for engine in ("int8@cpu", "fp8_static@cpu", "fp8@cpu"):
        ids[f"evaluation:{engine}"] = _job(admin, "evaluate", {
            "engine_id": ids[f"engine:{engine}"], "corpus_id": ids["eval-en"], "gates": GATES,
            "max_samples": 8, "seq_len": 64})["evaluation_id"]

    # chat: int8 becomes active; the calibrated fp8 engine follows it as a 20% canary with samples.
    first = _ok(admin.post("/deployments", json={"endpoint": "chat", "engine_id": ids["engine:int8@cpu"],
                                                 "reason": "first engine of chat"}))
    canary = _ok(approver.post(f"/deployments/{first['id']}/promote",
                               json={"expected_version": first["version"], "reason": "shadow looked clean"}))["promoted"]
    _ok(approver.post(f"/deployments/{first['id']}/promote",
                      json={"expected_version": canary["version"], "reason": "canary held a day"}))
    ids["deployment:chat-active"] = first["id"]
    rollout = _ok(admin.post("/deployments", json={"endpoint": "chat", "engine_id": ids["engine:fp8_static@cpu"],
                                                   "reason": "calibrated fp8 halves the weights"}))
    promoted = _ok(approver.post(f"/deployments/{rollout['id']}/promote", json={
        "expected_version": rollout["version"], "reason": "shadow agreed with bf16", "traffic_share": 0.2}))["promoted"]
    ids["deployment:chat-canary"] = promoted["id"]
    rng = random.Random(0)
    for window in range(3):  # canary windows are 1 s wide here: one batch per window
        batch = _samples(ids["engine:fp8_static@cpu"], 20, kl=0.01 * (1 + window), rng=rng, start=100 * window)
        _ok(admin.post(f"/deployments/{promoted['id']}/canary-samples", json=batch))
        time.sleep(1.05)
    # support: an int8 canary whose traffic drifts; drift analysis raises an alert and rolls it back.
    support = _ok(admin.post("/deployments", json={
        "endpoint": "support", "engine_id": ids["engine:int8@cpu"], "reason": "int8 for support",
        "drift_policy": {"min_samples": 10, "window_seconds": 60}}))
    _ok(approver.post(f"/deployments/{support['id']}/promote", json={
        "expected_version": support["version"], "reason": "shadow agreed", "traffic_share": 0.1}))
    ids["deployment:support-drifted"] = support["id"]
    _ok(admin.post(f"/deployments/{support['id']}/canary-samples",
                   json=_samples(ids["engine:int8@cpu"], 15, kl=0.01, rng=rng, start=1000)))
    time.sleep(1.05)
    for batch in range(2):
        response = admin.post(f"/deployments/{support['id']}/canary-samples", json=_samples(
            ids["engine:int8@cpu"], 15, kl=0.3, rng=rng, start=1100 + 100 * batch, drift=6.0))
        if response.status_code == 409:  # rolled back after the first drifting batch
            break
        _ok(response)
        time.sleep(1.05)
    # code: a fresh endpoint with an engine in shadow, waiting for an approver.
    ids["deployment:code-shadow"] = _ok(admin.post("/deployments", json={
        "endpoint": "code", "engine_id": ids["engine:fp8@cpu"], "reason": "try fp8 on code traffic"}))["id"]


@pytest.fixture(scope="session")
def live_api(tmp_path_factory) -> LiveApi:
    """A migrated, seeded control plane served by uvicorn in a thread for the whole session."""
    import uvicorn

    from controlplane import migrate
    from controlplane.accelerators import service as accelerators_service
    from controlplane.auth import service as auth_service
    from controlplane.auth.schemas import ApiKeyCreate
    from controlplane.db import create_db_engine, make_session_factory
    from controlplane.main import create_app
    from controlplane.settings import Settings

    tmp = tmp_path_factory.mktemp("dashboard-api")
    settings = Settings(database_url=f"sqlite:///{tmp / 'pops.db'}", artifact_root=tmp / "artifacts",
                        models_roots=[REPO / "assets" / "models"], mlflow_tracking_uri=(tmp / "mlruns").as_uri(),
                        api_key_pepper=PEPPER, canary_window_seconds=1, seed_accelerators=False)
    migrate.upgrade(settings)
    engine = create_db_engine(settings)
    keys = {}
    with make_session_factory(engine)() as db:
        accelerators_service.sync_from_runtime(db=db)
        for role in ("viewer", "submitter", "approver", "admin"):
            _, keys[role] = auth_service.create(db=db, key_in=ApiKeyCreate(owner=f"{role}-user", role=role),
                                                pepper=PEPPER, actor="tests")
    engine.dispose()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard-api", daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="the control plane to listen")
    live = LiveApi(url=f"http://127.0.0.1:{port}", keys=keys)
    seed(live)
    yield live
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def app_test(live_api):
    """`AppTest` of dashboard/app.py signed in with a role's key: `app_test("viewer")`."""
    from streamlit.testing.v1 import AppTest

    def make(role: str = "approver") -> AppTest:
        at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=60)
        at.session_state["api_url"] = live_api.url
        at.session_state["api_key"] = live_api.keys[role]
        return at

    return make
