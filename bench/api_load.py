"""Load on the control plane's write paths: batched canary-sample ingestion and job submission.

Starts the real service (uvicorn, `--workers` processes) on a fresh PostgreSQL database with Redis
as the Celery broker, seeds one canary deployment, then drives concurrent HTTP requests with httpx
and reports requests/s and p50/p99 latency per scenario. No Celery worker runs: job submissions
are measured up to the point where the job row is committed and the task is queued in Redis.

    PYTHONPATH=. python bench/api_load.py                  # defaults below
    PYTHONPATH=. python bench/api_load.py --requests 500   # quicker

Needs PostgreSQL at 127.0.0.1:5432 (trust auth, database `test` to connect to) and Redis at
127.0.0.1:6379. Uses its own database `pops_bench_<random>` (dropped afterwards) and Redis db 13
(flushed afterwards). The load generator shares the machine with the server: on a small host the
numbers are a floor for the service, not a ceiling. Writes bench/results/api-load.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from controlplane.demo.targets import free_port  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_DB = 13
PEPPER = "bench-pepper-0123456789abcdef"
REFERENCE_MODEL = REPO / "assets" / "models" / "pops-llama-tiny"
CORPUS = REPO / "assets" / "corpora" / "calib-en-short.jsonl"
RESULT = REPO / "bench" / "results" / "api-load.json"
RECIPE = {"name": "bench-fp8", "model": "pops-llama-tiny", "default": {
    "weights": {"format": "fp8_e4m3", "strategy": "channel"},
    "input_activations": {"format": "fp8_e4m3", "strategy": "token", "dynamic": True}}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _env(database_url: str, tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "POPS_DATABASE_URL": database_url,
            "POPS_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}", "POPS_API_KEY_PEPPER": PEPPER,
            "POPS_ARTIFACT_ROOT": str(tmp / "artifacts"), "POPS_MLFLOW_TRACKING_URI": (tmp / "mlruns").as_uri(),
            "POPS_MODELS_ROOTS": json.dumps([str(REFERENCE_MODEL.parent)]), "POPS_LOG_LEVEL": "WARNING"}


def _prepare(database_url: str, tmp: Path) -> str:
    """Migrates the bench database, syncs accelerators and returns an admin key (all via the CLI)."""
    env = _env(database_url, tmp)
    cli = [sys.executable, "-c", "from controlplane.cli import app; app()"]
    subprocess.run(cli + ["db", "upgrade"], env=env, check=True, capture_output=True, cwd=tmp)
    made = subprocess.run(cli + ["admin", "create-key", "--owner", "bench", "--role", "admin"], env=env, check=True,
                          capture_output=True, text=True, cwd=tmp)
    return made.stdout.strip().splitlines()[-1]


def _seed(client: httpx.Client, database_url: str) -> dict[str, int]:
    """Registers the reference model, a recipe and a corpus over the API; adds a built engine's rows."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from controlplane.engines.models import Engine
    from controlplane.evaluations.models import Evaluation, Verdict
    from controlplane.registry import load_all_models

    load_all_models()  # every table the engine row's foreign keys point at

    model = client.post("/v1/models", json={"name": "pops-llama-tiny", "path": str(REFERENCE_MODEL)}).json()
    recipe = client.post("/v1/recipes", content=json.dumps(RECIPE), headers={"Content-Type": "application/json"}).json()
    with CORPUS.open("rb") as fh:
        corpus = client.post("/v1/corpora", data={"name": "calib-en-short", "tokenizer_model_id": str(model["id"])},
                             files={"file": (CORPUS.name, fh, "application/x-ndjson")}).json()
    accelerator = client.get("/v1/accelerators", params={"name": "cpu"}).json()["data"][0]
    # The engine row a build job would write; the bench measures the API, not the build.
    engine = create_engine(database_url)
    with Session(engine) as db:
        row = Engine(content_hash=f"sha256:{uuid.uuid4().hex * 2}", uri="/bench/engine", size_bytes=0,
                     manifest={"seeded_by": "bench/api_load.py"}, model_id=model["id"], recipe_id=recipe["id"],
                     accelerator_id=accelerator["id"])
        db.add(row)
        db.flush()
        db.add(Evaluation(engine_id=row.id, corpus_id=corpus["id"], metrics={}, verdict=Verdict.passed))
        db.commit()
        engine_id = row.id
    engine.dispose()
    deployment = client.post("/v1/deployments", json={"endpoint": "bench", "engine_id": engine_id,
                                                      "reason": "load test"}).json()
    promoted = client.post(f"/v1/deployments/{deployment['id']}/promote",
                           json={"expected_version": 1, "reason": "load test", "traffic_share": 0.1})
    promoted.raise_for_status()
    return {"model_id": model["id"], "recipe_id": recipe["id"], "corpus_id": corpus["id"],
            "accelerator_id": accelerator["id"], "engine_id": engine_id, "deployment_id": deployment["id"]}


def _samples(engine_id: int, n: int, rng: random.Random) -> list[dict]:
    layers = [f"model.layers.{i}.{p}" for i in range(4) for p in ("self_attn.q_proj", "mlp.down_proj")]
    out = []
    for _ in range(n):
        kl = rng.uniform(1e-4, 0.05)
        out.append({"engine_id": engine_id, "request_id": uuid.uuid4().hex, "kl_mean": kl,
                    "kl_max": kl * rng.uniform(1, 10), "top1_agreement": rng.uniform(0.9, 1.0),
                    "saturation": {layer: rng.uniform(0, 1e-3) for layer in layers},
                    "amax_ratio": {layer: rng.uniform(0.5, 1.5) for layer in layers},
                    "slice": rng.choice(["en-short", "zh-long", "code"]), "length_bucket": "128-512",
                    "script": "Latin", "num_tokens": rng.randint(16, 512)})
    return out


async def _drive(base_url: str, headers: dict, requests: list[tuple[str, str, dict, dict]],
                 concurrency: int) -> dict:
    """Sends (method, path, json, extra headers) requests with `concurrency` in flight; returns latency stats."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    queue: asyncio.Queue = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            method, path, body, extra = queue.get_nowait()
            start = time.perf_counter()
            try:
                response = await client.request(method, path, json=body, headers=extra)
                outcome = str(response.status_code)
            except httpx.TransportError as exc:  # counted, not fatal: the report shows it
                outcome = type(exc).__name__
            latencies.append(time.perf_counter() - start)
            statuses[outcome] = statuses.get(outcome, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"requests": len(latencies), "concurrency": concurrency, "seconds": round(elapsed, 3),
            "requests_per_s": round(sum(v for k, v in statuses.items() if k.startswith("2")) / elapsed, 1),  # 2xx only
            "p50_ms": round(_percentile(latencies, 50) * 1000, 2), "p99_ms": round(_percentile(latencies, 99) * 1000, 2),
            "statuses": dict(sorted(statuses.items()))}


def _wait_ready(base_url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {server.returncode}")
        try:
            if httpx.get(f"{base_url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the API did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600, help="requests per scenario and concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated requests in flight")
    parser.add_argument("--batch", type=int, default=50, help="canary samples per ingestion request")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    args = parser.parse_args()

    import redis

    levels = [int(c) for c in args.concurrency.split(",")]

    database = f"pops_bench_{uuid.uuid4().hex[:10]}"
    database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = None
    with tempfile.TemporaryDirectory(prefix="pops-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            key = _prepare(database_url, tmp)
            server = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "controlplane.main:app", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", str(args.workers), "--log-level", "warning", "--no-access-log",
                 "--timeout-keep-alive", "30"],
                env=_env(database_url, tmp), cwd=tmp)
            _wait_ready(base_url, server)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
                ids = _seed(client, database_url)
            rng = random.Random(0)
            ingest_path = f"/v1/deployments/{ids['deployment_id']}/canary-samples"
            warmup = [("POST", ingest_path, _samples(ids["engine_id"], args.batch, rng), {}) for _ in range(50)]
            asyncio.run(_drive(base_url, headers, warmup, max(levels)))

            build = {"model_id": ids["model_id"], "recipe_id": ids["recipe_id"], "accelerator_id": ids["accelerator_id"]}
            results: dict[str, list[dict]] = {"canary_ingest": [], "job_submit": []}
            for concurrency in levels:
                canary = [("POST", ingest_path, _samples(ids["engine_id"], args.batch, rng), {})
                          for _ in range(args.requests)]
                run = asyncio.run(_drive(base_url, headers, canary, concurrency))
                run.update(batch=args.batch, samples_per_s=round(run["requests_per_s"] * args.batch))
                results["canary_ingest"].append(run)
                jobs = [("POST", "/v1/jobs/build", {**build, "reason": "bench"}, {"Idempotency-Key": uuid.uuid4().hex})
                        for _ in range(args.requests)]
                results["job_submit"].append(asyncio.run(_drive(base_url, headers, jobs, concurrency)))
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()

    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    report = {
        "benchmark": "api_load",
        "tree": commit.stdout.strip(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
                 "load_average_1m_after": round(os.getloadavg()[0], 2)},
        "setup": {"server": f"uvicorn --workers {args.workers}", "database": "PostgreSQL 127.0.0.1:5432",
                  "broker": f"Redis 127.0.0.1:6379/{REDIS_DB}", "client": "httpx.AsyncClient on the same host",
                  "warmup_requests": 50},
        "scenarios": results,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    for name, runs in results.items():
        for r in runs:
            extra = f", {r['samples_per_s']} samples/s (batch {r['batch']})" if "batch" in r else ""
            print(f"{name:14s} {r['requests']} requests, concurrency {r['concurrency']:>3}: {r['requests_per_s']} req/s"
                  f"{extra}; p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; statuses {r['statuses']}")
    print(f"wrote {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
