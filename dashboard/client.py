"""The one module that calls the control plane's REST API (`/v1`). Pages get their data and act through it."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

MAX_PAGE = 500  # the API's largest `limit`
MAX_ROWS = 20_000  # a list read stops here: a dashboard table longer than this is not read by anyone


class ApiError(Exception):
    """A refused or failed call: the HTTP status and the server's `detail` errors (each naming its field)."""

    def __init__(self, status: int, errors: list[dict[str, Any]], *, method: str = "", path: str = ""):
        self.status, self.errors, self.method, self.path = status, errors, method, path
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = []
        for e in self.errors:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header"))
            parts.append(f"{loc}: {e.get('msg', '')}" if loc else str(e.get("msg", "")))
        return f"{self.status} " + ("; ".join(parts) or "error")


def _errors(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list):
        return [d if isinstance(d, dict) else {"msg": str(d)} for d in detail]
    return [{"loc": (), "msg": str(detail) if detail else response.reason_phrase or "error"}]


class PopsClient:
    """A typed-enough wrapper over `/v1`: lists follow pagination, writes send the version they read."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=f"{self.base_url}/v1", headers=headers, timeout=timeout_s,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    # --- plumbing -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, [{"loc": (), "msg": f"control plane at {self.base_url} is unreachable "
                                                   f"({type(exc).__name__})"}], method=method, path=path) from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _errors(response), method=method, path=path)
        return response.json()

    def _get(self, path: str, **params) -> Any:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def _post(self, path: str, body: dict) -> Any:
        return self._call("POST", path, json=body)

    def _pages(self, path: str, *, limit: int = MAX_ROWS, **params) -> Iterator[dict]:
        offset = 0
        while offset < limit:
            page = self._get(path, limit=min(MAX_PAGE, limit - offset), offset=offset, **params)
            yield from page["data"]
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                return

    def list_all(self, path: str, *, limit: int = MAX_ROWS, **params) -> list[dict]:
        """Every row of a list endpoint (newest first, as the API orders them), up to `limit`."""
        return list(self._pages(path, limit=limit, **params))

    # --- reads --------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._get("/health")

    def whoami(self) -> dict:
        return self._get("/api-keys/me")

    def deployments(self, *, endpoint: str | None = None, stage: str | None = None) -> list[dict]:
        return self.list_all("/deployments", endpoint=endpoint, stage=stage)

    def deployment(self, deployment_id: int) -> dict:
        return self._get(f"/deployments/{deployment_id}")

    def approvals(self, deployment_id: int) -> list[dict]:
        return self.list_all(f"/deployments/{deployment_id}/approvals")

    def drift_policy(self, deployment_id: int) -> dict:
        return self._get(f"/deployments/{deployment_id}/drift-policy")

    def canary_windows(self, deployment_id: int, *, since: str | None = None) -> list[dict]:
        return self.list_all(f"/deployments/{deployment_id}/canary-windows", since=since)

    def canary_samples(self, deployment_id: int, *, limit: int = MAX_PAGE) -> list[dict]:
        return self.list_all(f"/deployments/{deployment_id}/canary-samples", limit=limit)

    def drift_analyses(self, deployment_id: int) -> list[dict]:
        return self.list_all(f"/deployments/{deployment_id}/analyses")

    def traffic_profile(self, deployment_id: int) -> dict:
        return self._get(f"/deployments/{deployment_id}/traffic-profile")

    def alerts(self, *, deployment_id: int | None = None, status: str | None = None) -> list[dict]:
        return self.list_all("/alerts", deployment_id=deployment_id, status=status)

    def engines(self) -> list[dict]:
        return self.list_all("/engines")

    def engine(self, engine_id: int) -> dict:
        return self._get(f"/engines/{engine_id}")

    def recipes(self) -> list[dict]:
        return self.list_all("/recipes")

    def recipe(self, recipe_id: int) -> dict:
        return self._get(f"/recipes/{recipe_id}")

    def recipe_diff(self, name: str, from_version: int, to_version: int) -> dict:
        return self._get(f"/recipes/by-name/{name}/diff", from_version=from_version, to_version=to_version)

    def models(self) -> list[dict]:
        return self.list_all("/models")

    def corpora(self) -> list[dict]:
        return self.list_all("/corpora")

    def calibrations(self) -> list[dict]:
        return self.list_all("/calibrations")

    def accelerators(self) -> list[dict]:
        return self.list_all("/accelerators")

    def compatibility(self) -> list[dict]:
        return self.list_all("/accelerators/compatibility")

    def evaluations(self, *, engine_id: int | None = None) -> list[dict]:
        return self.list_all("/evaluations", engine_id=engine_id)

    def evaluation(self, evaluation_id: int) -> dict:
        return self._get(f"/evaluations/{evaluation_id}")

    def audit_events(self, *, actor: str | None = None, action: str | None = None, object_type: str | None = None,
                     object_id: str | None = None, since: str | None = None, until: str | None = None,
                     limit: int = MAX_PAGE) -> tuple[list[dict], int]:
        """One page of audit events matching the filters, and how many match in all."""
        page = self._get("/audit-events", actor=actor, action=action, object_type=object_type, object_id=object_id,
                         since=since, until=until, limit=min(limit, MAX_PAGE))
        return page["data"], page["count"]

    # --- rollout actions (the server checks the caller's role and the version) ----------------
    def promote(self, deployment_id: int, *, expected_version: int, reason: str,
                traffic_share: float | None = None) -> dict:
        body = {"expected_version": expected_version, "reason": reason}
        if traffic_share is not None:
            body["traffic_share"] = traffic_share
        return self._post(f"/deployments/{deployment_id}/promote", body)

    def set_traffic(self, deployment_id: int, *, expected_version: int, reason: str, traffic_share: float) -> dict:
        return self._post(f"/deployments/{deployment_id}/traffic",
                          {"expected_version": expected_version, "reason": reason, "traffic_share": traffic_share})

    def pause(self, deployment_id: int, *, expected_version: int, reason: str) -> dict:
        return self._post(f"/deployments/{deployment_id}/pause", {"expected_version": expected_version, "reason": reason})

    def resume(self, deployment_id: int, *, expected_version: int, reason: str) -> dict:
        return self._post(f"/deployments/{deployment_id}/resume", {"expected_version": expected_version, "reason": reason})

    def rollback(self, deployment_id: int, *, expected_version: int, reason: str) -> dict:
        return self._post(f"/deployments/{deployment_id}/rollback",
                          {"expected_version": expected_version, "reason": reason})
