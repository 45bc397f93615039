"""Canary samples to the control plane in batches, from a bounded buffer that never blocks serving.

While the control plane is unreachable samples stay buffered up to `capacity`; past it the oldest
are dropped and counted (drift analysis wants the freshest). A batch is retried with exponential
backoff (tenacity); a batch the API refuses (4xx) is dropped and counted, since resending cannot
help. Each sample carries its request id, so a batch resent after a lost reply is counted once.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from runtime.serving.client import ControlPlaneClient, ControlPlaneRejected, ControlPlaneUnavailable
from runtime.serving.metrics import ServingMetrics
from runtime.serving.shadow import CanarySample

log = logging.getLogger(__name__)


class SampleShipper:
    """One background thread posting batches of samples, grouped by deployment."""

    def __init__(self, client_factory: Callable[[], ControlPlaneClient], *, capacity: int, batch_size: int,
                 flush_interval_s: float, metrics: ServingMetrics | None = None, attempts: int = 3,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0):
        self.client_factory, self.metrics = client_factory, metrics
        self.capacity, self.batch_size, self.flush_interval_s = capacity, batch_size, flush_interval_s
        self.attempts, self.backoff_s, self.max_backoff_s = attempts, backoff_s, max_backoff_s
        self._buffer: deque[tuple[float, CanarySample]] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._sending = 0
        self._outage = False
        self._thread: threading.Thread | None = None
        self.sent = self.dropped = 0

    @property
    def depth(self) -> int:
        """Samples waiting (buffered or in the batch being sent)."""
        return len(self._buffer) + self._sending

    def offer(self, sample: CanarySample) -> None:
        """Buffers a sample; drops the oldest when full. Never blocks on the network."""
        if sample.deployment_id is None or sample.registry_id is None:
            raise ValueError("only samples of a control-plane deployment can be shipped")
        with self._cond:
            self._buffer.append((time.monotonic(), sample))
            self._trim()
            if len(self._buffer) >= self.batch_size:
                self._cond.notify()
        self._gauge()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="pops-sample-shipper", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Makes one last attempt to send what is buffered, then stops."""
        if self._thread is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self._thread.join(timeout)
        self._thread = None

    def wait_empty(self, timeout: float) -> bool:
        """True once every buffered sample has been sent or dropped (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while self.depth:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # --- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        client = self.client_factory()
        outage_backoff = self.backoff_s
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                final = self._stop.is_set()
                if self._send(client, batch, final=final):
                    outage_backoff = self.backoff_s
                elif final:
                    break  # unreachable while stopping: what is left is counted below
                else:
                    # Still unreachable after the retries: wait longer before the next round.
                    self._stop.wait(outage_backoff)
                    outage_backoff = min(outage_backoff * 2, self.max_backoff_s)
        finally:
            with self._cond:
                lost = len(self._buffer)
                self._buffer.clear()
            if lost:
                log.warning("stopping with %d canary samples unsent", lost)
                self._drop("shutdown", lost)
            client.close()

    def _next_batch(self) -> list[CanarySample] | None:
        """The next batch to send: a full one, or whatever has waited `flush_interval_s`; None to stop."""
        with self._cond:
            while True:
                if self._buffer:
                    age = time.monotonic() - self._buffer[0][0]
                    if self._stop.is_set() or len(self._buffer) >= self.batch_size or age >= self.flush_interval_s:
                        break
                    self._cond.wait(self.flush_interval_s - age)
                elif self._stop.is_set():
                    return None
                else:
                    self._cond.wait(self.flush_interval_s)
            deployment = self._buffer[0][1].deployment_id
            batch, rest = [], deque()
            while self._buffer and len(batch) < self.batch_size:
                item = self._buffer.popleft()
                (batch if item[1].deployment_id == deployment else rest).append(item)
            self._buffer.extendleft(reversed(rest))
            self._sending = len(batch)
            return batch

    def _send(self, client: ControlPlaneClient, batch: list[tuple[float, CanarySample]], *, final: bool) -> bool:
        deployment = batch[0][1].deployment_id
        payload = [s.payload() for _, s in batch]
        retrying = Retrying(stop=stop_after_attempt(1 if final else self.attempts),
                            wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
                            retry=retry_if_exception_type(ControlPlaneUnavailable), reraise=True,
                            sleep=self._stop.wait)
        try:
            retrying(client.post_samples, deployment, payload)
        except ControlPlaneUnavailable as exc:
            if not self._outage:  # once per outage: retries go on quietly with growing backoff
                log.warning("control plane unreachable, canary samples buffered (at most %d): %s", self.capacity, exc)
                self._outage = True
            with self._cond:
                self._buffer.extendleft(reversed(batch))  # oldest first again
                self._sending = 0
                self._trim()
            self._gauge()
            return False
        except ControlPlaneRejected as exc:
            log.error("control plane refused %d canary samples for deployment %s: %s", len(batch), deployment, exc)
            self._finish_batch()
            self._drop("rejected", len(batch))
            return True
        self._finish_batch()
        if self._outage:
            log.warning("control plane reachable again; sending buffered canary samples")
            self._outage = False
        self.sent += len(batch)
        if self.metrics:
            self.metrics.samples_sent.inc(len(batch))
        return True

    # --- bookkeeping ----------------------------------------------------------------------------
    def _finish_batch(self) -> None:
        with self._cond:
            self._sending = 0
        self._gauge()

    def _trim(self) -> None:
        """Drops the oldest samples past capacity (caller holds the condition)."""
        over = min(len(self._buffer) + self._sending - self.capacity, len(self._buffer))
        for _ in range(max(over, 0)):
            self._buffer.popleft()
        if over > 0:
            self._drop("buffer_full", over)

    def _drop(self, reason: str, n: int) -> None:
        self.dropped += n
        if self.metrics:
            self.metrics.samples_dropped.labels(reason).inc(n)

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.sample_buffer_depth.set(self.depth)
