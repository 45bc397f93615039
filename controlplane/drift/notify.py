"""Optional webhook notification of drift alerts: sent after the transaction commits, from a background thread.

A flow queues a payload on its session (`on_commit`); it is sent only if that transaction commits, and dropped
if it rolls back. Delivery never blocks a request: the queue is bounded (overflow is logged and dropped) and one
daemon thread posts each payload with retries and exponential backoff.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)

_PENDING = "pops_drift_notifications"
QUEUE_SIZE = 1000


class _Retryable(Exception):
    """A 5xx or 429 answer, or no answer at all."""


class WebhookNotifier:
    """Posts JSON payloads to one URL from a daemon thread."""

    def __init__(self, url: str, *, attempts: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 timeout_s: float = 5.0, transport: httpx.BaseTransport | None = None):
        self.url, self.attempts, self.backoff_s, self.max_backoff_s = url, attempts, backoff_s, max_backoff_s
        self._client = httpx.Client(timeout=timeout_s, transport=transport,
                                    headers={"User-Agent": "pops-control-plane"})
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="pops-drift-webhook", daemon=True)
        self._thread.start()
        self.sent = self.failed = self.dropped = 0

    def submit(self, payload: dict[str, Any]) -> bool:
        """Queues a payload; False (and logged) when the queue is full. Never waits."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.dropped += 1
            log.error("drift webhook queue full (%d); alert %s not notified", QUEUE_SIZE, payload.get("alert_id"))
            return False
        return True

    def wait_idle(self, timeout: float) -> bool:
        """True once every queued payload was sent or given up on (tests)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def _post(self, payload: dict[str, Any]) -> None:
        try:
            response = self._client.post(self.url, json=payload)
        except httpx.HTTPError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(f"answered {response.status_code}")
        response.raise_for_status()

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                Retrying(stop=stop_after_attempt(self.attempts), reraise=True,
                         wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
                         retry=retry_if_exception_type(_Retryable))(self._post, payload)
                self.sent += 1
            except Exception as exc:  # a receiver's failure must never reach the control plane
                self.failed += 1
                log.error("drift webhook for alert %s failed after %d attempts: %s", payload.get("alert_id"),
                          self.attempts, exc)
            finally:
                self._queue.task_done()


_notifier: WebhookNotifier | None = None
_configured = False
_lock = threading.Lock()


def configure(url: str | None, **options: Any) -> WebhookNotifier | None:
    """Sets (or, with None, turns off) the webhook alerts go to; by default `POPS_ALERT_WEBHOOK_URL`."""
    global _notifier, _configured
    with _lock:
        _notifier = WebhookNotifier(url, **options) if url else None
        _configured = True
        return _notifier


def notifier() -> WebhookNotifier | None:
    """The process's webhook notifier, set up from the settings on first use."""
    if not _configured:
        from controlplane.settings import get_settings

        configure(get_settings().alert_webhook_url)
    return _notifier


def on_commit(db: Session, payload: dict[str, Any]) -> None:
    """Sends `payload` to the webhook once `db`'s transaction commits (nothing if it rolls back)."""
    db.info.setdefault(_PENDING, []).append(payload)


@event.listens_for(Session, "after_commit")
def _send_pending(db: Session) -> None:
    pending = db.info.pop(_PENDING, None)
    if pending and (target := notifier()) is not None:
        for payload in pending:
            target.submit(payload)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(db: Session, _transaction: Any) -> None:
    db.info.pop(_PENDING, None)
