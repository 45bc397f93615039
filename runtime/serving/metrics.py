"""Prometheus metrics of one serving process, in a registry of its own (several apps may share a process)."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Generation on a CPU takes seconds; on a GPU tens of milliseconds: buckets span both.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)
KL_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)


class ServingMetrics:
    """Requests, latency, tokens, shadow samples (taken, sent, dropped), queue depths and per-layer saturation."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pops_requests", "Completion requests by route and outcome.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("pops_request_latency_seconds", "Time from request to last token.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("pops_tokens", "Tokens processed, by kind (prompt or completion).", ["kind"], registry=r)
        self.samples_taken = Counter("pops_shadow_samples_taken", "Canary samples measured by the shadow worker.",
                                     ["role"], registry=r)
        self.samples_sent = Counter("pops_shadow_samples_sent", "Canary samples the control plane accepted.",
                                    registry=r)
        self.samples_dropped = Counter(
            "pops_shadow_samples_dropped",
            "Shadow jobs or samples dropped: shadow_queue_full, buffer_full (control plane unreachable too long), "
            "rejected (the control plane refused the batch), error (the measurement failed), shutdown (unsent at exit).", ["reason"], registry=r)
        self.shadow_queue_depth = Gauge("pops_shadow_queue_depth", "Shadow jobs waiting for the worker.", registry=r)
        self.sample_buffer_depth = Gauge("pops_sample_buffer_depth", "Samples waiting to be sent.", registry=r)
        self.shadow_kl = Histogram("pops_shadow_kl_mean", "Per-request mean KL(reference || engine), nats.",
                                   ["engine"], buckets=KL_BUCKETS, registry=r)
        self.shadow_top1 = Gauge("pops_shadow_top1_agreement", "Top-1 agreement of the latest sample.", ["engine"],
                                 registry=r)
        self.layer_saturation = Gauge("pops_layer_saturation",
                                      "Share of an op's input values clipped at the format's max (latest sample).",
                                      ["engine", "layer"], registry=r)
        self.layer_amax_ratio = Gauge("pops_layer_amax_ratio", "Observed / calibrated input amax (latest sample).",
                                      ["engine", "layer"], registry=r)
        self.saturated_values = Counter("pops_layer_saturated_values",
                                        "Input values clipped at the format's max, summed over samples: "
                                        "rate(saturated) / rate(observed) is the saturation over any window.",
                                        ["engine", "layer"], registry=r)
        self.observed_values = Counter("pops_layer_observed_values", "Input values seen by shadow samples.",
                                       ["engine", "layer"], registry=r)
        self.engine_info = Gauge("pops_engine_info", "1 for each engine serving a role.",
                                 ["role", "engine", "deployment"], registry=r)
        self.swaps = Counter("pops_engine_swaps", "Route changes (engines loaded or moved between roles).", registry=r)
        self.control_plane_up = Gauge("pops_control_plane_up", "1 if the last deployment poll succeeded.", registry=r)
        self._layers: dict[str, set[str]] = {}  # engine -> layers with series, to drop them with the engine

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)

    def record_sample(self, sample) -> None:
        """Folds one canary sample into the shadow metrics."""
        engine = sample.engine_id
        self._layers.setdefault(engine, set()).update(sample.saturation, sample.amax_ratio)
        self.samples_taken.labels(sample.role).inc()
        self.shadow_kl.labels(engine).observe(sample.kl_mean)
        self.shadow_top1.labels(engine).set(sample.top1_agreement)
        for layer, share in sample.saturation.items():
            self.layer_saturation.labels(engine, layer).set(share)
        for layer, (n_saturated, numel) in sample.counts.items():
            self.saturated_values.labels(engine, layer).inc(n_saturated)
            self.observed_values.labels(engine, layer).inc(numel)
        for layer, ratio in sample.amax_ratio.items():
            self.layer_amax_ratio.labels(engine, layer).set(ratio)

    def set_routes(self, routes) -> None:
        """Replaces the engine_info series with the routes now served."""
        self.engine_info.clear()
        for role, slot in routes.slots():
            self.engine_info.labels(role, slot.engine.engine_id, str(slot.deployment_id or "")).set(1)

    def forget_engine(self, engine_id: str) -> None:
        """Drops the series of an engine no longer served, so label sets stay bounded across swaps."""
        if engine_id not in self._layers:
            return
        for layer in self._layers.pop(engine_id):
            for metric in (self.layer_saturation, self.layer_amax_ratio, self.saturated_values, self.observed_values):
                try:
                    metric.remove(engine_id, layer)
                except KeyError:  # a layer with a saturation but no amax ratio, or the reverse
                    pass
        for metric in (self.shadow_top1, self.shadow_kl):
            metric.remove(engine_id)
