"""Serving throughput with shadow canaries: requests/s at 0%, 1%, 10% and 100% shadow sampling.

    PYTHONPATH=. python bench/canary_overhead.py --out bench/results/canary-overhead.json

An engine is built from the reference model (assets/models/pops-llama-tiny, fp8 W8A8 on the `cpu`
profile by default) and served by `pops serve`'s app under uvicorn on a local port. A closed loop of
`--concurrency` HTTP clients sends greedy completions of eval-en prompts; for each sampling share the
same engine serves `--requests` requests and the shadow worker re-runs the sampled ones teacher-forced
through the reference and the engine, as in production (bounded queue, drops counted). Shares are
interleaved over `--rounds` rounds; each ratio is the median over rounds of requests/s at that share
divided by requests/s at 0% in the same round, so slow drifts of a shared machine cancel.
Target (issue 5): at most 5% throughput loss at 1%.

Wall-clock throughput on a shared machine moves by tens of percent between identical rounds (the
report gives that spread), far more than 1% sampling can cost. So the process's CPU seconds per request
(server, clients and shadow worker, queued shadow work included) are measured too; from them the cost of
one shadow sample, and the overhead a CPU-bound server sees at each share: share x sample / request.

Shadow work still queued when a share's last request completes is finished before the next share
starts and is not counted against either; at 100% the queue is full and most jobs are dropped, so the
100% row measures the cost of a saturated shadow worker, not of re-running every request.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

DEFAULT_SHARES = (0.0, 0.01, 0.1, 1.0)


def build_engine(model: Path, recipe_name: str, out_root: Path) -> Path:
    """Builds (or finds, by content hash) the engine to serve."""
    from runtime.accelerators import get_profile
    from runtime.engines import build
    from runtime.recipes import preset

    return build(model, preset(recipe_name), get_profile("cpu"), out_root=out_root).path


def prompts(corpus: Path, n: int) -> list[str]:
    lines = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [lines[i % len(lines)] for i in range(n)]


class Server:
    """The serving app under uvicorn in a thread of this process."""

    def __init__(self, app, port: int):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)


async def load(url: str, texts: list[str], *, concurrency: int, max_tokens: int, tag: str) -> tuple[float, list[float]]:
    """Sends every prompt through `concurrency` clients; returns (wall seconds, per-request latencies)."""
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for i, text in enumerate(texts):
        queue.put_nowait((i, text))
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            i, text = queue.get_nowait()
            started = time.perf_counter()
            r = await http.post("/v1/completions", json={"prompt": text, "max_tokens": max_tokens, "temperature": 0},
                                headers={"X-Request-ID": f"{tag}-{i}"})
            r.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def counter(metric, *labels) -> float:
    return metric.labels(*labels)._value.get() if labels else metric._value.get()


def measure(args, recipe: str, engines_root: Path) -> dict:
    """Throughput and CPU per request of one engine at each shadow share (see the module docstring)."""
    from runtime.serving import Routes, ServeConfig, ServedEngine, ServingService, Slot, create_app

    engine_path = build_engine(args.model, recipe, engines_root)
    service = ServingService(ServeConfig(endpoint="bench", engine_paths=[engine_path],
                                         shadow_queue_size=args.queue_size))
    engine = ServedEngine.load(engine_path)
    service.router.swap(Routes(active=Slot(engine)))
    service.references.get(engine)  # the reference loads before timing, as the watcher does in production
    url = f"http://127.0.0.1:{args.port}"
    texts = prompts(args.corpus, args.requests)
    rows = {share: {"rps": [], "cpu": [], "cpu_drained": [], "latencies": [], "taken": 0, "dropped": 0}
            for share in args.shares}
    with Server(create_app(service), args.port):
        asyncio.run(load(url, texts[: args.warmup], concurrency=args.concurrency, max_tokens=args.max_tokens,
                         tag="warmup"))
        for r in range(args.rounds):
            order = list(args.shares[r % len(args.shares):]) + list(args.shares[: r % len(args.shares)])
            for share in order:
                service.router.swap(Routes(active=Slot(engine), sample_share=share))
                taken0 = counter(service.metrics.samples_taken, "active")
                dropped0 = counter(service.metrics.samples_dropped, "shadow_queue_full")
                cpu0 = time.process_time()
                wall, latencies = asyncio.run(load(url, texts, concurrency=args.concurrency,
                                                   max_tokens=args.max_tokens, tag=f"{recipe}-r{r}-s{share}"))
                cpu1 = time.process_time()
                service.worker.wait_idle(600)  # leftovers are not charged to the next share
                cpu2 = time.process_time()
                row = rows[share]
                row["rps"].append(len(texts) / wall)
                # CPU seconds of this process (server, clients, shadow worker) per request: far less sensitive
                # than wall time to other tenants of a shared machine. "drained" adds the queued shadow work.
                row["cpu"].append((cpu1 - cpu0) / len(texts))
                row["cpu_drained"].append((cpu2 - cpu0) / len(texts))
                row["latencies"].extend(latencies)
                row["taken"] += counter(service.metrics.samples_taken, "active") - taken0
                row["dropped"] += counter(service.metrics.samples_dropped, "shadow_queue_full") - dropped0
                print(f"{recipe} round {r} share {share:>5.0%}: {len(texts) / wall:6.2f} req/s, "
                      f"{1000 * row['cpu'][-1]:6.1f} CPU ms/request", flush=True)
    service.stop()
    report = summarize(args, recipe, engine.engine_id, rows)
    report["isolated_cost"] = iso = isolated_cost(args, service, engine, texts)
    if "0.01" in iso["bounded_loss_pct"]:
        report["target"]["met_isolated_bound"] = iso["bounded_loss_pct"]["0.01"] <= 5.0
    return report


def isolated_cost(args, service, engine, texts: list[str]) -> dict:
    """One generation, then the shadow measurement of it, back to back, `--cost-pairs` times, nothing else running.

    Pairs taken seconds apart see the same machine, so their ratio is steady where throughput is not. The
    generation leaves out HTTP, so the ratio (and the loss it bounds, share x ratio) errs on the high side.
    """
    from runtime.serving import ShadowJob, Slot
    from runtime.serving.generation import Completion, SamplingParams, encode_prompt

    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    wall, cpu = [], []
    for i in range(args.cost_pairs):
        ids = encode_prompt(engine, texts[i % len(texts)], max_tokens=args.max_tokens)
        t0, c0 = time.perf_counter(), time.process_time()
        completion = Completion(engine, ids, params).run()
        t1, c1 = time.perf_counter(), time.process_time()
        service.worker.process(ShadowJob(f"cost-{i}", tuple(completion.token_ids), texts[i % len(texts)],
                                         (("active", Slot(engine)),)))
        t2, c2 = time.perf_counter(), time.process_time()
        wall.append((t2 - t1) / (t1 - t0))
        cpu.append((c2 - c1) / (c1 - c0))
    ratio = statistics.median(wall)
    return {"pairs": args.cost_pairs, "sample_over_request_wall": ratio, "sample_over_request_cpu": statistics.median(cpu),
            "sample_over_request_wall_p10_p90": [sorted(wall)[len(wall) // 10], sorted(wall)[len(wall) * 9 // 10]],
            "bounded_loss_pct": {f"{share:g}": 100 * share * ratio / (1 + share * ratio) for share in args.shares}}


def summarize(args, recipe: str, engine_id: str, rows: dict) -> dict:
    base = rows[args.shares[0]]
    cpu0 = statistics.median(base["cpu_drained"])
    # What one shadow sample costs, from the share with the most samples: extra CPU (queued work included) / samples.
    most = max(rows.values(), key=lambda row: row["taken"])
    per_sample = ((statistics.median(most["cpu_drained"]) - cpu0) * args.requests * args.rounds / most["taken"]
                  if most["taken"] else None)
    results = []
    for share, row in rows.items():
        ratios = [rps / b for rps, b in zip(row["rps"], base["rps"])]
        lat = sorted(row["latencies"])
        results.append({
            "shadow_share": share,
            "requests_per_s_median": statistics.median(row["rps"]), "requests_per_s_rounds": row["rps"],
            "throughput_ratio_vs_0": statistics.median(ratios), "throughput_ratios_by_round": ratios,
            "throughput_loss_pct": 100 * (1 - statistics.median(ratios)),
            "cpu_s_per_request_median": statistics.median(row["cpu"]),
            "cpu_per_request_ratio_vs_0": statistics.median(c / b for c, b in zip(row["cpu"], base["cpu"])),
            "cpu_per_request_ratio_vs_0_drained": statistics.median(
                c / b for c, b in zip(row["cpu_drained"], base["cpu_drained"])),
            # share x (CPU of one sample / CPU of one request): the loss a CPU-bound server sees at this share.
            "projected_cpu_overhead_pct": None if per_sample is None else 100 * share * per_sample / cpu0,
            "latency_p50_s": lat[len(lat) // 2], "latency_p95_s": lat[int(len(lat) * 0.95)],
            "shadow_samples_taken": int(row["taken"]), "shadow_jobs_dropped": int(row["dropped"]),
        })
    at_1pct = next((x for x in results if x["shadow_share"] == 0.01), None)
    def cv(values: list[float]) -> float:
        return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0

    return {
        "engine": {"engine_id": engine_id, "recipe": recipe, "model": _rel(args.model), "device": "cpu"},
        "shadow_cpu_s_per_sample": per_sample, "cpu_s_per_request_at_0": cpu0,
        # The same configuration measured round after round: how much the machine alone moves each measure.
        "noise_at_0": {"requests_per_s_cv": cv(base["rps"]), "cpu_s_per_request_cv": cv(base["cpu"])},
        "results": results,
        "target": {"max_throughput_loss_pct_at_1pct": 5.0,
                   "met_measured": None if at_1pct is None else at_1pct["throughput_loss_pct"] <= 5.0,
                   "met_projected": None if at_1pct is None or at_1pct["projected_cpu_overhead_pct"] is None
                   else at_1pct["projected_cpu_overhead_pct"] <= 5.0},
    }


def _rel(path: Path) -> str:
    return str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO) else str(path)


def run(args) -> dict:
    """Every recipe's measurements, with the machine and settings they were taken under."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = {recipe: measure(args, recipe, Path(args.engines or tmp)) for recipe in args.recipe}
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "PYTHONPATH=. python " + " ".join([_rel(Path(sys.argv[0]))] + sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_average_at_end": os.getloadavg()},
        "settings": {"requests_per_share_per_round": args.requests, "concurrency": args.concurrency,
                     "max_tokens": args.max_tokens, "rounds": args.rounds, "shadow_queue_size": args.queue_size,
                     "corpus": _rel(args.corpus)},
        "engines": runs,
    }


def print_table(report: dict) -> None:
    for recipe, run_ in report["engines"].items():
        noise = run_["noise_at_0"]
        print(f"\n{recipe} (engine {run_['engine']['engine_id']}): one shadow sample costs "
              f"{1000 * (run_['shadow_cpu_s_per_sample'] or 0):.0f} CPU ms, a request "
              f"{1000 * run_['cpu_s_per_request_at_0']:.0f} CPU ms; round-to-round spread at 0%: "
              f"{100 * noise['requests_per_s_cv']:.0f}% in req/s, {100 * noise['cpu_s_per_request_cv']:.0f}% in CPU")
        print(f"{'share':>6} {'req/s':>7} {'vs 0%':>6} {'cpu/req vs 0%':>14} {'projected':>10} "
              f"{'p50 s':>6} {'p95 s':>6} {'samples':>8} {'dropped':>8}")
        for x in run_["results"]:
            projected = x["projected_cpu_overhead_pct"]
            print(f"{x['shadow_share']:>6.0%} {x['requests_per_s_median']:7.2f} {x['throughput_ratio_vs_0']:6.3f} "
                  f"{x['cpu_per_request_ratio_vs_0_drained']:14.3f} "
                  f"{'-' if projected is None else f'{projected:.2f}%':>10} "
                  f"{x['latency_p50_s']:6.2f} {x['latency_p95_s']:6.2f} "
                  f"{x['shadow_samples_taken']:8d} {x['shadow_jobs_dropped']:8d}")
        t = run_["target"]
        iso = run_["isolated_cost"]
        print(f"isolated: a shadow sample takes {iso['sample_over_request_wall']:.3f}x the time of the generation it "
              f"measures (p10-p90 {iso['sample_over_request_wall_p10_p90'][0]:.3f}-"
              f"{iso['sample_over_request_wall_p10_p90'][1]:.3f}); loss bound at 1%: "
              f"{iso['bounded_loss_pct'].get('0.01', float('nan')):.2f}%")
        print(f"target <= 5% loss at 1%: measured {'met' if t['met_measured'] else 'NOT met'}, "
              f"projected from CPU cost {'met' if t['met_projected'] else 'NOT met'}, "
              f"isolated bound {'met' if iso['bounded_loss_pct'].get('0.01', 100) <= 5.0 else 'NOT met'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "assets" / "models" / "pops-llama-tiny")
    p.add_argument("--recipe", nargs="+", default=["fp8_w8a8", "bf16"], help="Presets of the engines to serve.")
    p.add_argument("--engines", type=Path, default=None, help="Engines folder (default: a temporary one).")
    p.add_argument("--corpus", type=Path, default=REPO / "assets" / "corpora" / "eval-en.jsonl")
    p.add_argument("--shares", type=float, nargs="+", default=list(DEFAULT_SHARES))
    p.add_argument("--requests", type=int, default=200, help="Requests per share per round.")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument("--cost-pairs", type=int, default=30, help="Generation + shadow pairs timed in isolation.")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
    p.add_argument("--port", type=int, default=8931)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.shares[0] != 0.0:
        p.error("--shares must start with 0 (the baseline)")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    print_table(report)
    if args.out:
        # The file is shared: the drift-to-rollback timing lives beside this section; keep what else it holds.
        existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
        existing.update({"bench": "canary_overhead", "serving_throughput": report})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(existing, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
