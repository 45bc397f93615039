"""The control plane as serving sees it: three HTTP calls with the API's JSON shapes (no controlplane imports)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

# Deployment stages that put an engine on an endpoint; a paused rollout keeps its exposure until resumed.
SERVED_STAGES = ("active", "canary", "shadow", "paused")


class ControlPlaneUnavailable(Exception):
    """Unreachable, timed out, or answered 5xx/429: worth retrying later."""


class ControlPlaneRejected(Exception):
    """Answered 4xx: the same request will fail again (bad key, closed deployment, invalid samples)."""

    def __init__(self, status_code: int, detail):
        self.status_code, self.detail = status_code, detail
        super().__init__(f"control plane answered {status_code}: {detail}")


class ControlPlaneClient:
    """A thread's own connection to the control plane's /v1 API, authenticated with a bearer key."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(base_url=base_url.rstrip("/") + "/v1", timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}", "User-Agent": "pops-serve"})

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, url: str, **kwargs) -> dict:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:  # connect errors, timeouts, broken connections
            raise ControlPlaneUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise ControlPlaneUnavailable(f"{method} {url}: {response.status_code} {response.text[:200]}")
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ControlPlaneRejected(response.status_code, detail)
        return response.json()

    def deployments(self, endpoint: str) -> list[dict]:
        """The endpoint's deployments in a serving stage (DeploymentPublic dicts), newest first."""
        rows = []
        for stage in SERVED_STAGES:
            page = self._call("GET", "/deployments", params={"endpoint": endpoint, "stage": stage, "limit": 50})
            rows.extend(page["data"])
        return sorted(rows, key=lambda d: d["id"], reverse=True)

    def engine(self, engine_id: int) -> dict:
        """One engine (EnginePublic: content_hash, uri, manifest)."""
        return self._call("GET", f"/engines/{engine_id}")

    def post_samples(self, deployment_id: int, samples: list[dict]) -> dict:
        """Posts a batch of canary samples; returns the CanaryIngestResult."""
        return self._call("POST", f"/deployments/{deployment_id}/canary-samples", json=samples)


def local_path(uri: str) -> Path:
    """The folder a `file://` URI (or a plain path) names."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
