"""The story, step by step, over the REST API and serving's completions endpoint."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from controlplane.demo.config import APPROVER, BASELINE, CORPORA, MODEL, DemoConfig, DemoError, candidate_recipes
from controlplane.demo.targets import Api, Target, wait

DRIFT_ROUNDS = 3  # most passes over the drifting prompts before the demo gives up on a rollback


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
        wait(routed, timeout=self.config.timeout_s, what=f"serving to route {role} to deployment {deployment_id}")

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
            analysis = wait(analysed, timeout=self.config.timeout_s, what=f"{label}: a successful analysis",
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

        # Rollback takes consecutive failed analyses, and analyses run as samples arrive: while the engine still
        # serves, the drifting traffic goes on (in rounds, each measured and shipped before the next).
        for round_ in range(1, DRIFT_ROUNDS + 1):
            self.replay(drifting, f"drift: long multiscript traffic (round {round_})", stop=rolled_back)
            with self.progress() as bar:
                bar.add_task("waiting for serving to measure and ship the samples", total=None)
                wait(lambda: rolled_back() or self.drained(), timeout=self.config.timeout_s,
                     what="serving to ship its canary samples")
            if rolled_back():
                break
        else:
            raise DemoError(f"{DRIFT_ROUNDS} rounds of drifting traffic and deployment {rollout_id} still serves; see "
                            f"its analyses at /v1/deployments/{rollout_id}/analyses")
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
    from controlplane.demo.report import write_report

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
