"""Following an endpoint's deployments: poll the control plane, load what changed, then swap the routes."""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from runtime.serving.client import ControlPlaneClient, ControlPlaneRejected, ControlPlaneUnavailable, local_path
from runtime.serving.handles import ReferencePool, ServedEngine
from runtime.serving.metrics import ServingMetrics
from runtime.serving.router import Router, Routes, Slot

log = logging.getLogger(__name__)


def engine_folders(paths: list[Path]) -> dict[str, Path]:
    """Engine content hash -> folder, for engine folders given on the command line."""
    out = {}
    for path in paths:
        manifest = Path(path) / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"no engine at {str(path)!r} (manifest.json missing)")
        out[json.loads(manifest.read_text())["engine_id"]] = Path(path)
    return out


class DeploymentWatcher:
    """Polls `GET /v1/deployments?endpoint=...` every few seconds and keeps the router in step.

    New engines are loaded fully before the swap; an engine that fails to load leaves its role as
    it was (the old engine keeps serving) and is retried at the next poll.
    """

    def __init__(self, router: Router, client_factory: Callable[[], ControlPlaneClient], *, endpoint: str,
                 poll_interval_s: float, references: ReferencePool, sample_share: float,
                 canary_sample_share: float, local_engines: dict[str, Path] | None = None, device: str = "cpu",
                 fuse: bool | None = None, metrics: ServingMetrics | None = None):
        self.router, self.client_factory, self.endpoint = router, client_factory, endpoint
        self.poll_interval_s, self.references, self.device, self.metrics = poll_interval_s, references, device, metrics
        self.fuse = fuse
        self.sample_share, self.canary_sample_share = sample_share, canary_sample_share
        self.local_engines = local_engines or {}
        self._engines: dict[int, ServedEngine] = {}  # by the control plane's engine id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: ControlPlaneClient | None = None
        self.last_error: str | None = None
        self.polls = 0

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="pops-deployment-watcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        self._client = self.client_factory()
        try:
            while not self._stop.is_set():
                self.poll_once()
                self._stop.wait(self.poll_interval_s)
        finally:
            self._client.close()

    def poll_once(self) -> bool:
        """One poll: True when the routes changed. Errors are logged and leave the routes as they are."""
        client = self._client or self.client_factory()
        try:
            deployments = client.deployments(self.endpoint)
            routes = self._routes_for(client, deployments)
        except (ControlPlaneUnavailable, ControlPlaneRejected) as exc:
            self.last_error = str(exc)
            log.warning("deployment poll of endpoint %r failed: %s", self.endpoint, exc)
            if self.metrics:
                self.metrics.control_plane_up.set(0)
            return False
        finally:
            if client is not self._client:
                client.close()
        self.polls += 1
        self.last_error = None
        if self.metrics:
            self.metrics.control_plane_up.set(1)
        changed = self.router.swap(routes)
        if changed:
            kept = {e.registry_id for e in routes.engines()}
            for registry_id in [i for i in self._engines if i not in kept]:
                dropped = self._engines.pop(registry_id)
                if self.metrics:
                    self.metrics.forget_engine(dropped.engine_id)
            self.references.retain(routes.engines())
            log.info("endpoint %r now serves %s", self.endpoint,
                     ", ".join(f"{role}={s.engine.engine_id} (deployment {s.deployment_id})"
                               for role, s in routes.slots()) or "nothing")
        return changed

    def _routes_for(self, client: ControlPlaneClient, deployments: list[dict]) -> Routes:
        current = self.router.routes
        active = next((d for d in deployments if d["stage"] == "active"), None)
        rollout = next((d for d in deployments if d["stage"] in ("shadow", "canary", "paused")), None)
        stage = rollout and (rollout["paused_from"] if rollout["stage"] == "paused" else rollout["stage"])
        slots = {"active": active, "canary": rollout if stage == "canary" else None,
                 "shadow": rollout if stage == "shadow" else None}
        filled = {}
        for role, deployment in slots.items():
            if deployment is None:
                filled[role] = None
                continue
            engine = self._engine(client, deployment["engine_id"])
            if engine is not None:
                filled[role] = Slot(engine, deployment["id"])
            else:  # failed to load: keep whatever serves this role now
                filled[role] = getattr(current, role)
        return Routes(active=filled["active"], canary=filled["canary"],
                      canary_share=float(rollout["traffic_share"]) if filled["canary"] is not None else 0.0,
                      shadow=filled["shadow"], sample_share=self.sample_share,
                      canary_sample_share=self.canary_sample_share)

    def _engine(self, client: ControlPlaneClient, registry_id: int) -> ServedEngine | None:
        engine = self._engines.get(registry_id)
        if engine is not None:
            return engine
        row = client.engine(registry_id)
        path = self.local_engines.get(row["content_hash"]) or local_path(row["uri"])
        try:
            engine = ServedEngine.load(path, registry_id=registry_id, device=self.device, fuse=self.fuse)
            if engine.engine_id != row["content_hash"]:
                raise ValueError(f"folder {str(path)!r} holds engine {engine.engine_id}, the control plane's "
                                 f"engine {registry_id} is {row['content_hash']}")
        except Exception as exc:  # a bad artifact must not take serving down
            log.error("engine %s (%s) did not load from %s: %s", registry_id, row["content_hash"], path, exc)
            return None
        try:
            self.references.get(engine)  # load the reference now, off the request path
        except Exception as exc:
            log.error("reference model of engine %s did not load (shadow samples will fail): %s", registry_id, exc)
        self._engines[registry_id] = engine
        return engine
