"""`pops demo-stack`: the whole story over the REST API, as an operator and serving would tell it.

Registers the reference model and corpora, submits recipes, calibrates, builds and evaluates them,
rolls the best passing engine out through shadow and canary to active (each promotion approved by
a recorded demo approver), replays English traffic through `pops serve`, then injects drift (long,
non-Latin requests from traffic-multiscript) until drift analysis raises an alert and rolls back to
the last known-good engine. Finally writes a report with plots and prints where to look.

By default everything runs here on the embedded default (SQLite, in-process jobs, an MLflow file
store, the API and serving on local ports in this process). `--stack` runs the same story through
a local process stack (`pops stack up`), and `--api-url/--serve-url` through any deployment.
"""
from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "assets" / "models" / "pops-llama-tiny"
CORPORA = {name: REPO / "assets" / "corpora" / f"{name}.jsonl"
           for name in ("calib-en-short", "eval-en", "traffic-multiscript")}
APPROVER = "demo-approver"
BASELINE = "bf16"


def _static(fmt: str, description: str, kv: bool) -> dict:
    """A W8A8 recipe with static per-tensor activation scales calibrated on short English."""
    recipe = {"name": f"{fmt.split('_')[0]}_w8a8_static", "description": description,
              "default": {"weights": {"format": fmt, "strategy": "channel"},
                          "input_activations": {"format": fmt, "strategy": "tensor", "observer": "minmax"}},
              "calibration": {"corpus": "calib-en-short"}}
    if kv:
        recipe["kv_cache_scheme"] = {"format": "fp8_e4m3"}
    return recipe


def candidate_recipes() -> list[dict]:
    """The baseline and the candidates a latency-minded team would ship: static scales need no per-token amax,
    so they are the cheapest to serve, and they trust their calibration corpus: the drift this demo shows."""
    from runtime.recipes import preset

    return [
        preset(BASELINE).to_dict(),
        _static("fp8_e4m3", "fp8 per-channel weights; fp8 activations and KV cache with calibrated static scales",
                kv=True),
        _static("int8", "int8 per-channel weights; int8 activations with calibrated static scales", kv=False),
        preset("int4_w4a16_g128").to_dict(),
    ]


@dataclass
class DemoConfig:
    """How big the demo is; the defaults finish in a few minutes on 2 CPU cores."""

    home: Path = Path(".pops") / "demo-full"
    calibration_samples: int = 32
    calibration_seq_len: int = 128
    eval_samples: int = 24
    eval_seq_len: int = 256
    gates: list[dict] = field(default_factory=lambda: [
        {"metric": "kl_mean", "max": 0.03}, {"metric": "top1_agreement", "min": 0.85},
        {"metric": "ppl_delta_pct", "max": 5.0}])
    shadow_requests: int = 24
    canary_requests: int = 24
    canary_share: float = 0.5
    drift_requests: int = 48
    drift_prompt_tokens: int = 768  # long requests, cut to bound the demo's time
    max_tokens: int = 8
    min_samples: int = 16
    window_seconds: int = 60
    canary_window_seconds: int = 5  # embedded control plane: width of a canary aggregate window
    timeout_s: float = 300.0  # longest wait for one job, one analysis or one route change
    recipes: tuple[str, ...] = ()  # candidate names to run (the baseline always runs); empty: all of them


class DemoError(Exception):
    """The story could not go on; the message says where and why."""


# --- talking to the control plane and serving -----------------------------------------------------

class Api:
    """The control plane's /v1 as the demo uses it; errors carry the server's detail."""

    def __init__(self, url: str, key: str, timeout_s: float):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=f"{self.url}/v1", headers={"Authorization": f"Bearer {key}"},
                                 timeout=timeout_s)

    def call(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise DemoError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def all(self, path: str, **params) -> list[dict]:
        rows, offset = [], 0
        while True:
            page = self.call("GET", path, params={**params, "limit": 500, "offset": offset})
            rows += page["data"]
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                return rows

    def as_key(self, key: str) -> Api:
        return Api(self.url, key, self.http.timeout.read or 60.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class _Server:
    """An ASGI app under uvicorn in a thread of this process."""

    def __init__(self, app, name: str):
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    def __enter__(self) -> _Server:
        self._thread.start()
        _wait(lambda: self._server.started, timeout=120, what=f"{self._thread.name} to listen", interval=0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(60)


@dataclass
class Target:
    """Where the story runs: the control plane, serving, an admin key, and how to look afterwards."""

    api_url: str
    serve_url: str | None
    admin_key: str
    look: list[str] = field(default_factory=list)  # commands that bring the dashboard up afterwards


@contextmanager
def embedded(config: DemoConfig) -> Iterator[Target]:
    """The embedded default in this process: the API on SQLite (jobs in-process) and `pops serve` following it."""
    from controlplane import migrate
    from controlplane.auth import service as auth
    from controlplane.auth.schemas import ApiKeyCreate
    from controlplane.db import create_db_engine, make_session_factory
    from controlplane.main import create_app
    from controlplane.settings import Settings
    from runtime.serving import ServeConfig
    from runtime.serving import create_app as create_serving

    home = config.home.resolve()
    for stale in ("pops.db", "artifacts", "mlruns", "report"):  # every run tells the story from the start
        path = home / stale
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    env = {"POPS_DATABASE_URL": f"sqlite:///{home / 'pops.db'}", "POPS_ARTIFACT_ROOT": str(home / "artifacts"),
           "POPS_MLFLOW_TRACKING_URI": (home / "mlruns").as_uri(),
           "POPS_MODELS_ROOTS": json.dumps([str(REPO / "assets" / "models")]),
           "POPS_CANARY_WINDOW_SECONDS": str(config.canary_window_seconds)}
    settings = Settings(database_url=env["POPS_DATABASE_URL"], artifact_root=home / "artifacts",
                        mlflow_tracking_uri=env["POPS_MLFLOW_TRACKING_URI"], models_roots=[REPO / "assets" / "models"],
                        canary_window_seconds=config.canary_window_seconds)
    migrate.upgrade(settings)
    engine = create_db_engine(settings)
    with make_session_factory(engine)() as db:
        pepper = settings.api_key_pepper.get_secret_value()
        _, admin = auth.create(db=db, key_in=ApiKeyCreate(owner="demo-admin", role="admin", reason="the demo"),
                               pepper=pepper, actor="demo")
    engine.dispose()
    with _Server(create_app(settings), "control-plane") as api:
        serve_key = Api(api.url, admin, 60).call("POST", "/api-keys", json={
            "owner": "demo-serve", "role": "submitter", "reason": "serving posts canary samples"})["key"]
        serving = ServeConfig(endpoint="chat", control_plane_url=api.url, api_key=serve_key, sample_share=1.0,
                              canary_sample_share=1.0, poll_interval_s=1.0, flush_interval_s=1.0)
        with _Server(create_serving(serving), "serving") as serve:
            (home / "demo.env").write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))
            yield Target(api_url=api.url, serve_url=serve.url, admin_key=admin, look=[
                f"set -a; . {home / 'demo.env'}; set +a; pops api --port 8000 &",
                "POPS_DASHBOARD_API_URL=http://127.0.0.1:8000 POPS_DASHBOARD_API_KEY={viewer_key} "
                "streamlit run dashboard/app.py"])


def stack_target(state_dir: Path) -> Target:
    """A running local process stack (`pops stack up`): its API, serving and admin key."""
    from controlplane.stack import DEFAULT_STATE_DIR, StackConfig, State

    state = State.load(StackConfig(state_dir=state_dir or DEFAULT_STATE_DIR))
    if state is None or "api" not in state.services:
        raise DemoError(f"no stack in {state_dir}; start one with `pops stack up`")
    admin = state.keys.get("POPS_STACK_ADMIN_KEY")
    if not admin:
        raise DemoError("the stack's state has no admin key (POPS_STACK_ADMIN_KEY was set in its env file); "
                        "pass --api-url, --serve-url and --api-key instead")
    return Target(api_url=state.url("api"), serve_url=state.url("serve"), admin_key=admin,
                  look=[f"open {state.url('dashboard')} (the stack's dashboard; paste an approver key to act)"])


# --- the story ------------------------------------------------------------------------------------

class Story:
    """Runs the demo's steps against a target; `log` keeps what happened for the report."""

    def __init__(self, target: Target, config: DemoConfig, console: Console):
        self.target, self.config, self.console = target, config, console
        self.admin = Api(target.api_url, target.admin_key, config.timeout_s)
        self.ids: dict[str, Any] = {}
        self.candidates: list[dict] = []
        self.events: list[dict] = []  # (time, what) lines of the story, for the report

    # - plumbing -
    def say(self, text: str) -> None:
        self.console.print(text)
        self.events.append({"at": time.time(), "what": text})

    def progress(self) -> Progress:
        return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=self.console, transient=True,
                        disable=not self.console.is_terminal)

    def job(self, kind: str, body: dict, label: str) -> dict:
        """Submits a job and follows it to the end (embedded: it ran in the request; a stack: a worker runs it)."""
        job = self.admin.call("POST", f"/jobs/{kind}", json=body,
                              headers={"Idempotency-Key": f"demo-{uuid.uuid4().hex}"})
        with self.progress() as bar:
            task = bar.add_task(label, total=100)
            deadline = time.monotonic() + self.config.timeout_s
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() > deadline:
                    raise DemoError(f"{label}: job {job['id']} still {job['status']} after {self.config.timeout_s:.0f} s")
                time.sleep(0.5)
                job = self.admin.call("GET", f"/jobs/{job['id']}")
                bar.update(task, completed=int(100 * job["progress"]), description=f"{label}: {job['message'] or ''}")
        if job["status"] != "succeeded":
            raise DemoError(f"{label}: job {job['id']} {job['status']}: {job['error']}")
        return job["result"]

    # - 1. catalog -
    def register(self) -> None:
        self.ids["model"] = self.admin.call("POST", "/models", json={
            "name": MODEL.name, "path": str(MODEL), "reason": "the demo's reference model"})["id"]
        for name, path in CORPORA.items():
            with open(path, "rb") as fh:
                corpus = self.admin.call("POST", "/corpora", files={"file": (path.name, fh)},
                                         data={"name": name, "tokenizer_model_id": self.ids["model"],
                                               "reason": "demo corpus"})
            self.ids[name] = corpus["id"]
            self.ids[f"coverage:{name}"] = corpus["coverage"]
        accelerators = {a["name"]: a["id"] for a in self.admin.all("/accelerators")}
        self.ids["cpu"] = accelerators["cpu"]
        self.say(f"registered model {MODEL.name} (#{self.ids['model']}) and corpora "
                 + ", ".join(f"{n} (#{self.ids[n]})" for n in CORPORA))

    # - 2. recipes, calibration, builds, evaluations -
    def build_candidates(self) -> None:
        config = self.config
        for doc in candidate_recipes():
            if config.recipes and doc["name"] not in (BASELINE, *config.recipes):
                continue
            recipe = self.admin.call("POST", "/recipes", json=doc,
                                     params={"model_id": self.ids["model"], "reason": "demo candidate"})
            row = {"recipe": recipe["name"], "recipe_id": recipe["id"], "calibration_id": None}
            if doc.get("calibration"):
                row["calibration_id"] = self.job("calibrate", {
                    "model_id": self.ids["model"], "recipe_id": recipe["id"], "corpus_id": self.ids["calib-en-short"],
                    "samples": config.calibration_samples, "seq_len": config.calibration_seq_len,
                    "reason": "static scales for the demo"}, f"calibrate {recipe['name']}")["calibration_id"]
            built = self.job("build", {"model_id": self.ids["model"], "recipe_id": recipe["id"],
                                       "accelerator_id": self.ids["cpu"], "calibration_id": row["calibration_id"]},
                             f"build {recipe['name']}")
            row["engine_id"] = built["engine_id"]
            evaluated = self.job("evaluate", {"engine_id": row["engine_id"], "corpus_id": self.ids["eval-en"],
                                              "gates": config.gates, "max_samples": config.eval_samples,
                                              "seq_len": config.eval_seq_len}, f"evaluate {recipe['name']}")
            evaluation = self.admin.call("GET", f"/evaluations/{evaluated['evaluation_id']}")
            manifest = self.admin.call("GET", f"/engines/{row['engine_id']}")["manifest"]
            row.update(evaluation_id=evaluation["id"], verdict=evaluation["verdict"],
                       kl_mean=evaluation["metrics"]["kl_mean"], kl_p95=evaluation["metrics"]["kl_p95"],
                       top1_agreement=evaluation["metrics"]["top1_agreement"],
                       ppl_delta_pct=evaluation["metrics"]["ppl_delta_pct"],
                       linear_bytes=manifest["bytes"]["linear_ops"], fallbacks=len(manifest["fallbacks"]),
                       failed_gates=[g["message"] for g in evaluation["gates"] if not g["passed"]])
            self.candidates.append(row)
            self.say(f"{recipe['name']}: engine #{row['engine_id']}, KL {row['kl_mean']:.4f}, top-1 "
                     f"{row['top1_agreement']:.3f}, {row['linear_bytes'] / 2**20:.2f} MiB of linear weights: "
                     f"{row['verdict']}" + (f" ({'; '.join(row['failed_gates'])})" if row["failed_gates"] else ""))

    def best(self) -> dict:
        """The passing candidate with the fewest linear-weight bytes, then the lowest KL."""
        passing = [c for c in self.candidates if c["recipe"] != BASELINE and c["verdict"] == "passed"]
        if not passing:
            raise DemoError("no candidate passed its gates; nothing to roll out")
        return min(passing, key=lambda c: (c["linear_bytes"], c["kl_mean"]))

    # - 3. rollout -
    def endpoint(self) -> str:
        if self.target.serve_url is None:
            raise DemoError("the target has no serving URL; the rollout needs `pops serve`")
        return httpx.get(f"{self.target.serve_url}/v1/models", timeout=30).json()["data"][0]["id"]

    def approver(self) -> Api:
        if "approver" not in self.ids:
            key = self.admin.call("POST", "/api-keys", json={
                "owner": APPROVER, "role": "approver", "reason": "approves the demo's promotions"})
            self.ids["approver"] = key["key"]
        return self.admin.as_key(self.ids["approver"])

    def clear_endpoint(self, endpoint: str) -> None:
        """Rolls back a rollout an earlier run left unfinished on the endpoint (a stack keeps its database)."""
        for d in self.admin.all("/deployments", endpoint=endpoint):
            if d["stage"] in ("shadow", "canary", "paused"):
                self.approver().call("POST", f"/deployments/{d['id']}/rollback", json={
                    "expected_version": d["version"], "reason": "an earlier demo run left this rollout unfinished"})

    def deploy(self, endpoint: str, engine_id: int, reason: str, policy: dict | None = None) -> dict:
        body = {"endpoint": endpoint, "engine_id": engine_id, "reason": reason}
        if policy:
            body["drift_policy"] = policy
        return self.admin.call("POST", "/deployments", json=body)

    def promote(self, deployment: dict, reason: str, traffic_share: float | None = None) -> dict:
        body = {"expected_version": deployment["version"], "reason": reason}
        if traffic_share is not None:
            body["traffic_share"] = traffic_share
        promoted = self.approver().call("POST", f"/deployments/{deployment['id']}/promote", json=body)["promoted"]
        self.say(f"{APPROVER} promoted deployment #{promoted['id']} to {promoted['stage']}"
                 + (f" ({promoted['traffic_share']:.0%} of traffic)" if promoted["stage"] == "canary" else "")
                 + f": {reason}")
        return promoted

    def serving(self, role: str, deployment_id: int | None) -> None:
        """Waits until serving's routes show the deployment in the role (None: the role is empty)."""
        def routed() -> bool:
            engines = httpx.get(f"{self.target.serve_url}/healthz", timeout=30).json().get("engines", {})
            return (engines.get(role) or {}).get("deployment_id") == deployment_id
        _wait(routed, timeout=self.config.timeout_s, what=f"serving to route {role} to deployment {deployment_id}")

    def policy_for(self, chosen: dict) -> dict:
        """Drift limits from what evaluation measured on held-out English: a window may not average twice its KL,
        no request may pass its token-level KL p95 more often than the test tolerates, and activations may not
        run 50% past the calibrated range."""
        return {"kl_mean_max": round(max(2 * chosen["kl_mean"], 1e-3), 4),
                "kl_p95_max": round(max(chosen["kl_p95"], 2 * chosen["kl_mean"], 1e-3), 4),
                "top1_agreement_min": round(max(chosen["top1_agreement"] - 0.2, 0.0), 3),
                "saturation_max": 0.001, "amax_ratio_max": 1.5,
                "window_seconds": self.config.window_seconds, "min_samples": self.config.min_samples,
                "false_alarm_rate": 0.01, "consecutive_failure_limit": 2, "consecutive_error_limit": 3}

    # - 4. traffic -
    def prompts(self, corpus: str, n: int, *, max_tokens: int, keep: Callable[[dict], bool]) -> list[dict]:
        """The first `n` texts of a corpus that `keep` accepts, cut to `max_tokens` tokens of the model."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
        out = []
        for line in CORPORA[corpus].read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if not keep(row):
                continue
            ids = tokenizer.encode(row["text"], add_special_tokens=False).ids[:max_tokens]
            out.append({"prompt": tokenizer.decode(ids), "slice": row.get("slice")})
            if len(out) == n:
                break
        return out

    def replay(self, prompts: list[dict], label: str, *, stop: Callable[[], bool] | None = None) -> int:
        """Sends prompts to serving one by one (greedy); returns how many went out before `stop` said enough."""
        sent = 0
        with httpx.Client(base_url=self.target.serve_url, timeout=self.config.timeout_s) as http, \
                self.progress() as bar:
            task = bar.add_task(label, total=len(prompts))
            for p in prompts:
                if stop is not None and stop():
                    break
                body = {"prompt": p["prompt"], "max_tokens": self.config.max_tokens, "temperature": 0.0}
                if p.get("slice"):
                    body["slice"] = p["slice"]
                response = http.post("/v1/completions", json=body)
                if response.status_code != 200:
                    raise DemoError(f"{label}: serving answered {response.status_code} {response.text[:300]}")
                sent += 1
                bar.advance(task)
        return sent

    def drained(self) -> bool:
        """Serving measured every shadowed request and shipped every sample."""
        health = httpx.get(f"{self.target.serve_url}/healthz", timeout=30).json()
        return health.get("shadow_queue", 0) == 0 and health.get("sample_buffer", 0) == 0

    def last_analysis(self, deployment_id: int) -> int:
        latest = self.admin.call("GET", f"/deployments/{deployment_id}/analyses", params={"limit": 1})["data"]
        return latest[0]["id"] if latest else 0

    def verdict(self, deployment_id: int, label: str, *, after: int) -> dict:
        """Waits for an analysis newer than `after` to succeed on enough samples; a failure ends the story."""
        def analysed() -> dict | None:
            if not self.drained():
                return None
            latest = self.admin.call("GET", f"/deployments/{deployment_id}/analyses", params={"limit": 1})["data"]
            newer = [a for a in latest if a["id"] > after and a["outcome"] in ("successful", "failed")]
            # Analyses after a batch are recorded when something changed; otherwise ask for one now.
            analysis = newer[0] if newer else self.admin.call("POST", f"/deployments/{deployment_id}/analyze")
            if analysis["outcome"] == "failed":
                raise DemoError(f"{label}: drift analysis failed before promotion: {analysis['reason']}")
            return analysis if analysis["outcome"] == "successful" else None

        with self.progress() as bar:
            bar.add_task(f"{label}: waiting for drift analysis", total=None)
            analysis = _wait(analysed, timeout=self.config.timeout_s, what=f"{label}: a successful analysis",
                             interval=1.0)
        self.say(f"{label}: drift analysis #{analysis['id']} {analysis['outcome']} on {analysis['sample_count']} "
                 f"samples ({analysis['reason']})")
        return analysis

    # - 5. the whole story -
    def rollout(self) -> None:
        chosen = self.best()
        self.ids["chosen"] = chosen
        baseline = next(c for c in self.candidates if c["recipe"] == BASELINE)
        endpoint = self.ids["endpoint"] = self.endpoint()
        self.clear_endpoint(endpoint)
        self.say(f"best passing candidate: {chosen['recipe']} (engine #{chosen['engine_id']}); endpoint {endpoint!r}")
        active = next((d for d in self.admin.all("/deployments", endpoint=endpoint, stage="active")), None)
        if active is None or active["engine_id"] != baseline["engine_id"]:
            first = self.deploy(endpoint, baseline["engine_id"], "bf16 baseline: what the endpoint serves today")
            first = self.promote(self.promote(first, "baseline: reference precision needs no shadow period",
                                              traffic_share=0.5), "baseline takes the endpoint")
            self.serving("active", first["id"])
        english = self.prompts("eval-en", self.config.shadow_requests + self.config.canary_requests, max_tokens=192,
                               keep=lambda row: True)
        rollout = self.deploy(endpoint, chosen["engine_id"], f"{chosen['recipe']}: passed its gates with the fewest "
                                                             "weight bytes", policy=self.policy_for(chosen))
        self.ids["rollout"] = rollout["id"]
        self.say(f"deployment #{rollout['id']} enters shadow with drift policy {json.dumps(self.policy_for(chosen))}")
        self.serving("shadow", rollout["id"])
        self.replay(english[:self.config.shadow_requests], "shadow: English traffic")
        self.verdict(rollout["id"], "shadow", after=0)
        canary = self.promote(self.admin.call("GET", f"/deployments/{rollout['id']}"),
                              "shadow agreed with reference precision", traffic_share=self.config.canary_share)
        self.serving("canary", rollout["id"])
        before = self.last_analysis(rollout["id"])
        self.replay(english[self.config.shadow_requests:], "canary: English traffic")
        self.verdict(rollout["id"], "canary", after=before)
        self.promote(self.admin.call("GET", f"/deployments/{canary['id']}"), "canary held on English traffic")
        self.serving("active", rollout["id"])

    def drift(self) -> dict:
        """Long non-Latin requests until drift analysis rolls the engine back; returns the rollback's alert."""
        rollout_id = self.ids["rollout"]
        drifting = self.prompts("traffic-multiscript", self.config.drift_requests,
                                max_tokens=self.config.drift_prompt_tokens,
                                keep=lambda row: row.get("slice", "").endswith("-long"))
        self.say(f"injecting drift: {len(drifting)} long requests in Chinese, Japanese, Russian, Arabic, Greek and "
                 f"Hindi (calibration saw short English only)")

        def rolled_back() -> bool:
            return self.admin.call("GET", f"/deployments/{rollout_id}")["stage"] == "rolled_back"

        self.replay(drifting, "drift: long multiscript traffic", stop=rolled_back)
        with self.progress() as bar:
            bar.add_task("waiting for drift analysis to act", total=None)
            _wait(rolled_back, timeout=self.config.timeout_s, what="the automatic rollback")
        alert = next(a for a in self.admin.all("/alerts", deployment_id=rollout_id)
                     if a["evidence"].get("action") == "rolled_back")
        restored = next(d for d in self.admin.all("/deployments", endpoint=self.ids["endpoint"], stage="active"))
        self.ids["restored"] = restored["id"]
        self.say(f"ALERT #{alert['id']} ({alert['severity']}, {alert['metric']}): {alert['message']}")
        self.say(f"automatic rollback: deployment #{rollout_id} rolled back; deployment #{restored['id']} serves the "
                 f"last known-good engine #{restored['engine_id']} again")
        self.serving("active", restored["id"])
        return alert

    def viewer_key(self) -> str:
        return self.admin.call("POST", "/api-keys", json={
            "owner": "demo-viewer", "role": "viewer", "reason": "looking at the demo in the dashboard"})["key"]


def run_demo(config: DemoConfig, target: Target, console: Console | None = None) -> dict:
    """Tells the story against `target`; writes the report and returns its summary."""
    from controlplane.demo_report import write_report

    console = console or Console(stderr=True)
    story = Story(target, config, console)
    started = time.monotonic()
    story.register()
    story.build_candidates()
    story.rollout()
    alert = story.drift()
    summary = write_report(story.admin, config.home.resolve() / "report", candidates=story.candidates,
                           chosen=story.ids["chosen"], rollout_id=story.ids["rollout"], alert=alert,
                           events=story.events, endpoint=story.ids["endpoint"])
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["viewer_key"] = story.viewer_key()
    summary["look"] = [line.replace("{viewer_key}", summary["viewer_key"]) for line in target.look]
    return summary
