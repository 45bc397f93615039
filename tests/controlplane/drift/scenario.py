"""The drift demonstration with real components, shared by the scenario test and bench/drift_rollback.py.

A control plane (uvicorn, in a thread) on its own database; the reference model, corpora and recipes registered
through its API and the engines calibrated, built and evaluated by its jobs; `pops serve`'s ServingService
following the endpoint with shadow canaries; and traffic from the repository's corpora: short English (what
the calibration corpus covers) and long non-Latin text (what it does not).
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from controlplane import migrate
from controlplane.accelerators import service as accelerators
from controlplane.auth import service as auth
from controlplane.auth.models import Role
from controlplane.auth.schemas import ApiKeyCreate
from controlplane.db import create_db_engine, make_session_factory
from controlplane.demo.targets import free_port, wait
from controlplane.main import create_app
from controlplane.settings import Settings
from runtime.demo import demo_recipes
from runtime.recipes import preset

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "assets" / "models" / "pops-llama-tiny"
CORPORA = REPO / "assets" / "corpora"
ENDPOINT = "chat"

# A permissive policy while the shadow phase measures the engine's baseline on clean traffic.
OBSERVE_POLICY = {"kl_mean_max": 10.0, "kl_p95_max": 10.0, "top1_agreement_min": 0.0, "saturation_max": 1.0,
                  "amax_ratio_max": 1e6, "window_seconds": 300, "min_samples": 8}


def wait_for(predicate: Callable, *, timeout: float, what: str, interval: float = 0.05):
    """Polls until `predicate()` is truthy; raises TimeoutError naming `what`."""
    return wait(predicate, timeout=timeout, what=what, interval=interval, error=TimeoutError)


class ControlPlane:
    """The control plane app on a migrated database, served by uvicorn in a thread, with one key per role."""

    def __init__(self, settings: Settings):
        migrate.upgrade(settings)
        engine = create_db_engine(settings)
        with make_session_factory(engine)() as db:
            accelerators.sync_from_runtime(db=db)
            self.keys = {role: auth.create(db=db, key_in=ApiKeyCreate(owner=f"{role.value}-scenario", role=role),
                                           pepper=settings.api_key_pepper.get_secret_value(), actor="scenario")[1]
                         for role in Role}
        engine.dispose()
        self.port = free_port()
        self.settings, self.url = settings, f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        self._server = self._thread = None

    def start(self) -> "ControlPlane":
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, name="control-plane", daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started, timeout=30, what="the control plane to listen")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(30)
            self._server = None

    def http(self, role: Role = Role.admin) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/v1", headers={"Authorization": f"Bearer {self.keys[role]}"},
                            timeout=120)


def _ok(response: httpx.Response, *codes: int) -> dict:
    if response.status_code not in (codes or (200, 201)):
        raise AssertionError(f"{response.request.method} {response.request.url.path} answered "
                             f"{response.status_code}: {response.text[:2000]}")
    return response.json()


@dataclass
class Engines:
    """The engines the demonstration deploys, by control-plane id."""

    bf16: int
    fp8_static: int
    calibration_corpus: int


def build_engines(cp: ControlPlane, *, eval_samples: int = 8) -> Engines:
    """Registers the model, corpora and recipes, then calibrates, builds and evaluates through the jobs API."""
    http = cp.http(Role.submitter)
    model = _ok(http.post("/models", json={"name": "pops-llama-tiny", "path": str(MODEL)}))["id"]
    corpora = {}
    for name in ("calib-en-short", "eval-en"):
        with (CORPORA / f"{name}.jsonl").open("rb") as fh:
            corpora[name] = _ok(http.post("/corpora", data={"name": name, "tokenizer_model_id": str(model)},
                                          files={"file": (f"{name}.jsonl", fh, "application/jsonl")}))["id"]
    static = next(r for r in demo_recipes() if r.name == "fp8_w8a8_static")
    recipes = {r.name: _ok(http.post("/recipes", content=r.to_json(), headers={"Content-Type": "application/json"}))
               ["id"] for r in (preset("bf16"), static)}
    cpu = _ok(http.get("/accelerators", params={"name": "cpu"}))["data"][0]["id"]

    def job(kind: str, body: dict) -> dict:
        done = _ok(http.post(f"/jobs/{kind}", json=body), 200, 202)
        done = wait_for(lambda: (lambda j: j if j["status"] in ("succeeded", "failed") else None)(
            _ok(http.get(f"/jobs/{done['id']}"))), timeout=600, what=f"the {kind} job")
        if done["status"] != "succeeded":
            raise AssertionError(f"{kind} job failed: {done['error']}")
        return done["result"]

    calibration = job("calibrate", {"model_id": model, "recipe_id": recipes[static.name],
                                    "corpus_id": corpora["calib-en-short"]})["calibration_id"]
    engines = {"bf16": job("build", {"model_id": model, "recipe_id": recipes["bf16"], "accelerator_id": cpu}),
               "fp8": job("build", {"model_id": model, "recipe_id": recipes[static.name], "accelerator_id": cpu,
                                    "calibration_id": calibration})}
    for built in engines.values():
        verdict = job("evaluate", {"engine_id": built["engine_id"], "corpus_id": corpora["eval-en"],
                                   "max_samples": eval_samples, "seq_len": 128,
                                   "gates": [{"metric": "kl_mean", "max": 0.5}]})["verdict"]
        assert verdict == "passed", verdict
    return Engines(bf16=engines["bf16"]["engine_id"], fp8_static=engines["fp8"]["engine_id"],
                   calibration_corpus=corpora["calib-en-short"])


def deploy(cp: ControlPlane, engine_id: int, *, policy: dict | None = None, reason: str) -> dict:
    """A new deployment of `engine_id` on the endpoint, in shadow."""
    body = {"endpoint": ENDPOINT, "engine_id": engine_id, "reason": reason}
    if policy is not None:
        body["drift_policy"] = policy
    return _ok(cp.http(Role.submitter).post("/deployments", json=body))


def promote(cp: ControlPlane, deployment: dict, *, to_active: bool = True) -> dict:
    """shadow -> canary (-> active), each step approved by an approver."""
    http = cp.http(Role.approver)
    while True:
        current = _ok(http.get(f"/deployments/{deployment['id']}"))
        if current["stage"] == ("active" if to_active else "canary"):
            return current
        extra = {"traffic_share": 0.5} if current["stage"] == "shadow" else {}
        _ok(http.post(f"/deployments/{deployment['id']}/promote",
                      json={"expected_version": current["version"], "reason": "scenario: gates and baseline ok",
                            **extra}))


def set_policy(cp: ControlPlane, deployment_id: int, policy: dict, reason: str) -> dict:
    http = cp.http(Role.approver)
    current = _ok(http.get(f"/deployments/{deployment_id}/drift-policy"))
    fields = {k: current[k] for k in OBSERVE_POLICY} | {k: current[k] for k in (
        "false_alarm_rate", "consecutive_failure_limit", "consecutive_error_limit")}
    return _ok(http.put(f"/deployments/{deployment_id}/drift-policy",
                        json={**fields, **policy, "expected_version": current["version"], "reason": reason}))


def baseline_policy(samples: list[dict]) -> dict:
    """Thresholds from an engine's samples on clean traffic, with margins: what an operator sets after shadow.

    The defaults (top-1 >= 0.9, KL p95 <= 0.2) are for a production-size model; the tiny reference model's
    fp8 engine agrees on 0.87 of English tokens and its per-request KL stays under 0.035.
    """
    kl = [s["kl_mean"] for s in samples]
    return {
        "kl_mean_max": round(1.5 * statistics.mean(kl), 5),
        "kl_p95_max": round(1.25 * max(kl), 5),
        "top1_agreement_min": round(0.8 * min(s["top1_agreement"] for s in samples), 4),
        "saturation_max": max(1e-3, 2 * max(max(s["saturation"].values(), default=0.0) for s in samples)),
        "amax_ratio_max": max(1.5, round(1.25 * max(max(s["amax_ratio"].values(), default=0.0) for s in samples), 3)),
    }


def prompts(corpus: str, *, slices: Callable[[str], bool]) -> list[dict]:
    """The corpus's lines whose slice matches, in file order."""
    rows = [json.loads(line) for line in (CORPORA / f"{corpus}.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if slices(r.get("slice", ""))]


def english() -> list[dict]:
    """Short English requests held out of calibration."""
    return prompts("eval-en", slices=lambda s: s == "en-short")


def drift() -> list[dict]:
    """Long non-Latin requests, the languages interleaved as mixed traffic would bring them."""
    by_lang: dict[str, list[dict]] = {}
    for row in prompts("traffic-multiscript", slices=lambda s: s.endswith("-long")):
        by_lang.setdefault(row["slice"], []).append(row)
    return [row for group in zip(*by_lang.values()) for row in group]


@dataclass
class Traffic:
    """Requests to the serving app, each recorded with its status and the engine that answered."""

    client: object  # fastapi TestClient over runtime.serving.create_app
    log: list[dict] = field(default_factory=list)

    def send(self, text: str, request_id: str, *, max_tokens: int = 2) -> dict:
        started = time.perf_counter()
        r = self.client.post("/v1/completions", json={"prompt": text, "max_tokens": max_tokens, "temperature": 0},
                             headers={"X-Request-ID": request_id})
        entry = {"request_id": request_id, "status": r.status_code, "engine": r.headers.get("x-engine-id"),
                 "deployment": r.headers.get("x-deployment-id"), "seconds": time.perf_counter() - started}
        self.log.append(entry)
        return entry


def samples_of(cp: ControlPlane, deployment_id: int) -> list[dict]:
    """Every canary sample of a deployment, oldest first."""
    http, rows, offset = cp.http(Role.viewer), [], 0
    while True:
        page = _ok(http.get(f"/deployments/{deployment_id}/canary-samples", params={"limit": 500, "offset": offset}))
        rows.extend(page["data"])
        offset += len(page["data"])
        if offset >= page["count"] or not page["data"]:
            return rows[::-1]
