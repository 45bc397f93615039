"""Webhook notification of drift alerts: retried with backoff, never blocking, sent only for what committed."""
from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controlplane.auth.models import Role
from controlplane.drift import flows, notify
from controlplane.drift.notify import WebhookNotifier

from .conftest import sample


class Receiver:
    """A local HTTP endpoint that answers 503 to its first `failures` POSTs, then 204, and keeps the bodies."""

    def __init__(self, failures: int = 0):
        self.failures, self.bodies, self.attempts = failures, [], 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.attempts += 1
                if receiver.attempts <= receiver.failures:
                    self.send_response(503)
                else:
                    receiver.bodies.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/pops"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(failures: int = 0) -> Receiver:
        made.append(Receiver(failures))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def webhook(receiver):
    """The process's webhook pointed at a receiver for one test, then off again."""
    target = receiver()
    configured = notify.configure(target.url, backoff_s=0.01)
    yield target, configured
    notify.configure(None)


def test_delivery_is_retried_with_backoff(receiver):
    target = receiver(failures=2)
    notifier = WebhookNotifier(target.url, attempts=4, backoff_s=0.01)
    assert notifier.submit({"alert_id": 1, "message": "drift"})
    assert notifier.wait_idle(10)
    assert target.attempts == 3 and target.bodies == [{"alert_id": 1, "message": "drift"}]
    assert (notifier.sent, notifier.failed) == (1, 0)


def test_an_unreachable_receiver_never_blocks(receiver):
    target = receiver()
    url = target.url
    target.close()  # nothing listens there now
    notifier = WebhookNotifier(url, attempts=2, backoff_s=0.05)
    started = time.perf_counter()
    assert all(notifier.submit({"alert_id": i}) for i in range(5))
    assert time.perf_counter() - started < 0.05  # queued, not sent, on the caller's thread
    assert notifier.wait_idle(30)
    assert (notifier.sent, notifier.failed) == (0, 5)


@pytest.fixture
def backend() -> str:
    """SQLite only: the notification path does not depend on the database."""
    return "sqlite"


def test_committed_alerts_are_notified_and_rolled_back_ones_are_not(client, session, as_role, rollout, webhook,
                                                                     monkeypatch):
    target, notifier = webhook
    rng, active = random.Random(1), rollout.active
    post = lambda n, tag: client.post(  # noqa: E731
        f"/v1/deployments/{active.id}/canary-samples", headers=as_role(Role.submitter),
        json=[sample(active.engine_id, rng, drift=True, request_id=f"{tag}{i}") for i in range(n)])

    assert post(8, "a").status_code == 201  # the coverage warning commits with this batch
    monkeypatch.setattr(flows.deployment_flows, "rollback",
                        lambda **kwargs: (_ for _ in ()).throw(RuntimeError("broken")))
    assert post(8, "b").status_code == 500  # its drift alert rolled back with the transaction
    monkeypatch.undo()
    assert post(8, "c").status_code == 201  # the rollback commits, and its alert is sent
    assert notifier.wait_idle(10)
    kinds = [body["evidence"]["kind"] for body in target.bodies]
    assert kinds == ["calibration_coverage", "drift_failed"]
    failed = target.bodies[1]
    assert failed["deployment_id"] == active.id and failed["endpoint"] == rollout.endpoint
    assert failed["severity"] == "critical" and "rolled back" in failed["message"]
    assert failed["evidence"]["saturating_layers"][0]["layer"] == "model.layers.1.mlp.down_proj"
