"""The shadow canary: served tokens re-run teacher-forced in reference precision, off the request path.

A request hands a ShadowJob to a bounded queue without waiting (a full queue drops the job and
counts it); one background thread runs the reference and each target engine with `observe` on
and turns what it measured into a CanarySample for the sink (the shipper to the control plane).
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.corpora.coverage import length_bucket, text_script
from runtime.evaluation.metrics import kl_divergence, top1_match
from runtime.serving.handles import ReferencePool, ServedEngine
from runtime.serving.metrics import ServingMetrics
from runtime.serving.router import Slot

log = logging.getLogger(__name__)

# Non-finite logits give a NaN KL: it is reported as this cap (drift at its worst), never as a batch the API refuses.
KL_CAP = 1e6
RATIO_CAP = 1e12  # the control plane's bound on amax ratios


@dataclass(frozen=True)
class ShadowJob:
    """One served request to re-run: its tokens (prompt + generated) and the engines to compare."""

    request_id: str
    token_ids: tuple[int, ...]
    prompt: str
    targets: tuple[tuple[str, Slot], ...]  # (role, slot): active/canary when sampled, shadow always
    slice: str | None = None


@dataclass
class CanarySample:
    """A request measured on one engine against its reference (the control plane's CanarySampleIn, plus counts)."""

    request_id: str
    role: str
    deployment_id: int | None
    engine_id: str  # content hash
    registry_id: int | None  # the control plane's engine id
    kl_mean: float
    kl_max: float
    top1_agreement: float
    saturation: dict[str, float]
    amax_ratio: dict[str, float]
    length_bucket: str
    script: str
    slice: str
    num_tokens: int
    counts: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # layer -> (saturated, numel)

    def payload(self) -> dict:
        """The JSON body of one sample for `POST /v1/deployments/{id}/canary-samples`."""
        return {"engine_id": self.registry_id, "request_id": self.request_id, "kl_mean": self.kl_mean,
                "kl_max": self.kl_max, "top1_agreement": self.top1_agreement, "saturation": self.saturation,
                "amax_ratio": self.amax_ratio, "slice": self.slice, "length_bucket": self.length_bucket,
                "script": self.script, "num_tokens": self.num_tokens}

    def record(self) -> dict:
        """Everything, for a local JSONL log."""
        return {**self.payload(), "engine_id": self.engine_id, "registry_id": self.registry_id, "role": self.role,
                "deployment_id": self.deployment_id}


def _finite(value: float, cap: float) -> float:
    return value if math.isfinite(value) and value <= cap else cap


def measure(reference_logits, engine: ServedEngine, token_ids: list[int]) -> dict:
    """KL(reference || engine) mean and max, top-1 agreement, per-layer saturation and amax ratio for one sequence."""
    logits, stats = engine.observed_forward(token_ids)
    kl = kl_divergence(reference_logits, logits)
    kl_mean, kl_max = float(kl.mean()), float(kl.max())
    kl_mean, kl_max = _finite(kl_mean, KL_CAP), _finite(kl_max, KL_CAP)
    saturation, counts, amax_ratio = {}, {}, {}
    for name, s in stats.items():
        if (name in engine.quantized_inputs or name in engine.kv_ops) and s.numel:
            saturation[name] = s.n_saturated / s.numel
            counts[name] = (s.n_saturated, s.numel)
        if name in engine.calibrated_amax and s.amax is not None:
            amax_ratio[name] = _finite(s.amax / engine.calibrated_amax[name], RATIO_CAP)
    return {"kl_mean": kl_mean, "kl_max": max(kl_max, kl_mean), "saturation": saturation, "counts": counts,
            "top1_agreement": float(top1_match(reference_logits, logits).float().mean()), "amax_ratio": amax_ratio}


def request_slice(prompt: str, num_tokens: int, given: str | None = None) -> tuple[str, str, str]:
    """(length bucket, dominant script, slice): the slice is the client's tag, else `<script>/<bucket>`."""
    bucket, script = length_bucket(num_tokens), text_script(prompt)
    return bucket, script, given or f"{script}/{bucket}"


class ShadowWorker:
    """One background thread measuring shadow jobs from a bounded queue; `submit` never blocks."""

    def __init__(self, references: ReferencePool, sink: Callable[[CanarySample], None], *, queue_size: int,
                 metrics: ServingMetrics | None = None):
        self.references, self.sink, self.metrics = references, sink, metrics
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._pending = 0  # jobs queued or in hand
        self._pending_lock = threading.Lock()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, job: ShadowJob) -> bool:
        """Queues a job, or drops it (counted) when the queue is full; never waits."""
        try:
            with self._pending_lock:
                self._queue.put_nowait(job)
                self._pending += 1
        except queue.Full:
            if self.metrics:
                self.metrics.samples_dropped.labels("shadow_queue_full").inc(len(job.targets))
            return False
        if self.metrics:
            self.metrics.shadow_queue_depth.set(self._queue.qsize())
        return True

    def process(self, job: ShadowJob) -> list[CanarySample]:
        """Measures a job on each of its targets (the reference runs once per distinct reference model)."""
        tokens = list(job.token_ids)
        bucket, script, slice_ = request_slice(job.prompt, len(tokens), job.slice)
        reference_logits: dict[int, object] = {}
        samples = []
        for role, slot in job.targets:
            try:
                reference = self.references.get(slot.engine)
                if id(reference) not in reference_logits:
                    reference_logits[id(reference)] = reference.logits(tokens)
                m = measure(reference_logits[id(reference)], slot.engine, tokens)
            except Exception:  # a broken engine must not stop the worker; the drop is counted
                log.exception("shadow measurement of request %s on engine %s failed", job.request_id,
                              slot.engine.engine_id)
                if self.metrics:
                    self.metrics.samples_dropped.labels("error").inc()
                continue
            counts = m.pop("counts")
            samples.append(CanarySample(request_id=job.request_id, role=role, deployment_id=slot.deployment_id,
                                        engine_id=slot.engine.engine_id, registry_id=slot.engine.registry_id,
                                        length_bucket=bucket, script=script, slice=slice_, num_tokens=len(tokens),
                                        counts=counts, **m))
        return samples

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pops-shadow-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes the job in hand, drops the rest (their requests were answered long ago) and stops."""
        if self._thread is None:
            return
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            self._done()
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def wait_idle(self, timeout: float) -> bool:
        """True once the queue is empty and no job is in hand (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while self._pending:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                if self.metrics:
                    self.metrics.shadow_queue_depth.set(self._queue.qsize())
                for sample in self.process(job):
                    if self.metrics:
                        self.metrics.record_sample(sample)
                    self.sink(sample)
            except Exception:
                log.exception("shadow job of request %s failed", job.request_id)
            finally:
                self._done()

    def _done(self) -> None:
        with self._pending_lock:
            self._pending -= 1
