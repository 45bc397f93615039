"""The serving process: routes, generation, shadow worker, sample shipper and deployment watcher, wired together."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from runtime.serving.client import ControlPlaneClient
from runtime.serving.config import ServeConfig
from runtime.serving.generation import Completion, SamplingParams
from runtime.serving.handles import ReferencePool, ServedEngine
from runtime.serving.metrics import ServingMetrics
from runtime.serving.router import Router, Routes, Slot
from runtime.serving.shadow import CanarySample, ShadowJob, ShadowWorker
from runtime.serving.shipper import SampleShipper
from runtime.serving.watcher import DeploymentWatcher, engine_folders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assignment:
    """Where one request runs: its id, the routes it saw, its route and engine."""

    request_id: str
    routes: Routes
    route: str
    slot: Slot


class ServingService:
    """Everything `pops serve` runs besides HTTP. `start` launches the background threads, `stop` ends them."""

    def __init__(self, config: ServeConfig, *, client_factory: Callable[[], ControlPlaneClient] | None = None):
        self.config = config
        self.metrics = ServingMetrics()
        self.router = Router()
        self.router.on_swap(self._on_swap)
        self.references = ReferencePool(device=config.device, override=config.reference_path)
        self.client_factory = client_factory or (
            None if config.standalone else
            lambda: ControlPlaneClient(config.control_plane_url, config.api_key, timeout=config.request_timeout_s))
        self.shipper = None if config.standalone else SampleShipper(
            self.client_factory, capacity=config.sample_buffer_size, batch_size=config.batch_size,
            flush_interval_s=config.flush_interval_s, metrics=self.metrics)
        self.worker = ShadowWorker(self.references, self._sink, queue_size=config.shadow_queue_size,
                                   metrics=self.metrics)
        self.watcher = None if config.standalone else DeploymentWatcher(
            self.router, self.client_factory, endpoint=config.endpoint, poll_interval_s=config.poll_interval_s,
            references=self.references, sample_share=config.sample_share,
            canary_sample_share=config.canary_sample_share, local_engines=engine_folders(config.engine_paths),
            device=config.device, fuse=config.fuse_siblings, metrics=self.metrics)
        self._samples_lock = threading.Lock()
        self._started = False

    # --- lifecycle ----------------------------------------------------------------------------------
    def load_local(self) -> Routes:
        """Standalone: loads the engine folders of the config and serves them."""
        c = self.config
        load = lambda p: ServedEngine.load(p, device=c.device, fuse=c.fuse_siblings)  # noqa: E731
        routes = Routes(active=Slot(load(c.engine_paths[0])),
                        canary=Slot(load(c.canary_path)) if c.canary_path else None, canary_share=c.canary_share,
                        shadow=Slot(load(c.shadow_path)) if c.shadow_path else None,
                        sample_share=c.sample_share, canary_sample_share=c.canary_sample_share)
        self.router.swap(routes)
        return self.router.routes

    def start(self) -> None:
        """Loads standalone engines (unless routes were installed already) and starts the background threads."""
        if self._started:
            return
        if self.config.standalone and not self.router.routes.slots():
            self.load_local()
        self.worker.start()
        if self.shipper:
            self.shipper.start()
        if self.watcher:
            self.watcher.start()
        self._started = True

    def stop(self) -> None:
        """Stops polling, drops pending shadow jobs, makes a last attempt to send buffered samples."""
        if self.watcher:
            self.watcher.stop()
        self.worker.stop()
        if self.shipper:
            self.shipper.stop()
        self._started = False

    def _on_swap(self, old: Routes, new: Routes) -> None:
        self.metrics.swaps.inc()
        self.metrics.set_routes(new)

    # --- requests --------------------------------------------------------------------------------------
    def assign(self, request_id: str) -> Assignment:
        """Takes the routes once: the request keeps this engine even if a swap happens while it runs."""
        routes = self.router.routes
        route, slot = routes.pick(request_id)
        return Assignment(request_id, routes, route, slot)

    def complete(self, a: Assignment, prompts: list[tuple[str, list[int]]], params: SamplingParams,
                 slice_: str | None = None) -> list[Completion]:
        """Generates one completion per prompt on the assigned engine (blocking; run it in a worker thread)."""
        started = time.perf_counter()
        done = []
        try:
            for i, (prompt, ids) in enumerate(prompts):
                completion = Completion(a.slot.engine, ids, params).run()
                done.append(completion)
                self._after(a, f"{a.request_id}-{i}" if len(prompts) > 1 else a.request_id, prompt, completion, slice_)
        except Exception:
            self.metrics.requests.labels(a.route, "error").inc()
            raise
        self._count(a, "ok", started)
        return done

    def stream(self, a: Assignment, prompt: str, ids: list[int], params: SamplingParams,
               render: Callable[[Completion, str | None], str], slice_: str | None = None) -> Iterator[str]:
        """Server-sent events of one completion; `render(completion, delta)` formats each (None: the last)."""
        started = time.perf_counter()
        completion = Completion(a.slot.engine, ids, params)
        status = "cancelled"  # the client went away before the end
        try:
            for delta in completion:
                yield render(completion, delta)
            status = "ok"  # generated to the end: measured even if the client leaves before the last event
            self._after(a, a.request_id, prompt, completion, slice_)
            yield render(completion, None)
        except Exception:
            status = "error"
            log.exception("streamed completion %s failed", a.request_id)
            raise
        finally:
            self._count(a, status, started)

    def _count(self, a: Assignment, status: str, started: float) -> None:
        self.metrics.requests.labels(a.route, status).inc()
        if status == "ok":
            self.metrics.latency.labels(a.route).observe(time.perf_counter() - started)

    def _after(self, a: Assignment, request_id: str, prompt: str, completion: Completion, slice_: str | None) -> None:
        """Counts tokens and hands the request to the shadow worker when it is sampled (never waits)."""
        self.metrics.tokens.labels("prompt").inc(len(completion.prompt_ids))
        self.metrics.tokens.labels("completion").inc(len(completion.completion_ids))
        targets = a.routes.shadow_targets(request_id, a.route, a.slot)
        if targets:
            self.worker.submit(ShadowJob(request_id, tuple(completion.token_ids), prompt, tuple(targets), slice_))

    # --- samples ----------------------------------------------------------------------------------------
    def _sink(self, sample: CanarySample) -> None:
        if self.config.samples_out is not None:
            with self._samples_lock, open(self.config.samples_out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(sample.record()) + "\n")
        if self.shipper is not None and sample.deployment_id is not None and sample.registry_id is not None:
            self.shipper.offer(sample)

    def health(self) -> dict:
        """What /healthz reports: whether a request can be answered, and by what."""
        routes = self.router.routes
        body = {
            "status": "ok" if routes.active or routes.canary else "unavailable",
            "endpoint": self.config.endpoint,
            "routes_version": routes.version,
            "engines": {role: {"engine_id": s.engine.engine_id, "deployment_id": s.deployment_id,
                               **({"traffic_share": routes.canary_share} if role == "canary" else {})}
                        for role, s in routes.slots()},
            "shadow_queue": self.worker.depth,
        }
        if self.shipper is not None:
            body["sample_buffer"] = self.shipper.depth
        if self.watcher is not None:
            body["control_plane"] = {"url": self.config.control_plane_url, "polls": self.watcher.polls,
                                     "last_error": self.watcher.last_error}
        return body
