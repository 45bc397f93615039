"""MLflow tracking: each job is one MLflow run, and a tracking failure never fails the job.

`POPS_MLFLOW_TRACKING_URI` is either a server (`http(s)://...`) or a local folder (`file://...` or
a path). MLflow 3 refuses its old file store, so a local folder holds an SQLite tracking database
(`mlflow.db`) beside an `artifacts/` folder: still one local directory and no server.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

log = logging.getLogger(__name__)

EXPERIMENT = "precisionops-jobs"
_PARAM_MAX = 6000  # MLflow's limit on a parameter value
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_CLIENTS: dict[str, tuple[Any, str]] = {}
_CLIENTS_LOCK = threading.Lock()


def store_uris(tracking_uri: str) -> tuple[str, str | None]:
    """(tracking store URI, artifact location for a new experiment) for the configured URI."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("http", "https", "databricks", "sqlite", "postgresql", "mysql"):
        return tracking_uri, None
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"mlflow_tracking_uri scheme {parsed.scheme!r} is not supported")
    folder = Path(unquote(parsed.path) if parsed.scheme == "file" else tracking_uri).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def _check_server(uri: str) -> None:
    """Fails fast when a tracking server is down (MLflow's own client retries for about two minutes)."""
    response = httpx.get(uri.rstrip("/") + "/health", timeout=5.0)
    response.raise_for_status()


def _client(tracking_uri: str) -> tuple[Any, str]:
    """A cached (MlflowClient, experiment id) per tracking URI; creating the store is slow (~1-2 s)."""
    with _CLIENTS_LOCK:
        if tracking_uri in _CLIENTS:
            return _CLIENTS[tracking_uri]
        store_uri, artifact_location = store_uris(tracking_uri)
        if store_uri.startswith("http"):
            _check_server(store_uri)
        from mlflow.tracking import MlflowClient  # heavy import (seconds), only where jobs run

        client = MlflowClient(tracking_uri=store_uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
            except Exception:  # another process created it first
                experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        else:
            experiment_id = experiment.experiment_id
        _CLIENTS[tracking_uri] = (client, experiment_id)
        return client, experiment_id


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers as dotted metric names; non-finite and non-numeric values are left out."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = _UNSAFE_KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, bool):
            flat[name] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            flat[name] = float(value)
    return flat


class JobRun:
    """One job's MLflow run. Every call is best effort: the first failure is logged, kept, and stops tracking."""

    def __init__(self, client: Any | None, run_id: str | None, failure: str | None = None):
        self._client = client
        self.run_id = run_id
        self.failure = failure

    @property
    def active(self) -> bool:
        return self._client is not None and self.run_id is not None and self.failure is None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            getattr(self._client, method)(self.run_id, *args, **kwargs)
        except Exception as exc:  # tracking must never fail the job
            self.failure = f"MLflow {method} failed: {type(exc).__name__}: {exc}"[:500]
            log.warning("job run %s: %s", self.run_id, self.failure)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs flat parameters (values are stringified and truncated to MLflow's limit)."""
        from mlflow.entities import Param

        items = [Param(_UNSAFE_KEY.sub("_", k), str(v)[:_PARAM_MAX]) for k, v in params.items() if v is not None]
        self._call("log_batch", params=items)

    def log_metrics(self, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
        """Logs every finite number in a nested mapping as a metric named by its dotted path."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, 0) for k, v in _flatten(metrics, prefix).items()]
        for start in range(0, len(items), 900):  # MLflow takes at most 1000 metrics per batch
            self._call("log_batch", metrics=items[start:start + 900])

    def log_dict(self, payload: Mapping[str, Any], artifact_file: str) -> None:
        """Stores a JSON or YAML artifact (the format follows the file name)."""
        self._call("log_dict", dict(payload), artifact_file)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        """Copies a folder of reports into the run's artifacts."""
        self._call("log_artifacts", str(local_dir), artifact_path)

    def finish(self, *, succeeded: bool) -> None:
        """Ends the run as FINISHED or FAILED."""
        self._call("set_terminated", "FINISHED" if succeeded else "FAILED")


def start_job_run(*, tracking_uri: str, job_id: int, kind: str, run_id: str | None = None) -> JobRun:
    """Opens the job's run, or reopens `run_id` when a redelivered job resumes its run."""
    try:
        client, experiment_id = _client(tracking_uri)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return JobRun(client, run_id)
        run = client.create_run(
            experiment_id, run_name=f"{kind}-{job_id}", tags={"pops.job_id": str(job_id), "pops.kind": kind}
        )
        return JobRun(client, run.info.run_id)
    except Exception as exc:
        failure = f"MLflow unavailable at {tracking_uri}: {type(exc).__name__}: {exc}"[:500]
        log.warning("job %s: %s", job_id, failure)
        return JobRun(None, run_id, failure)
