"""Serving against a real control plane: engines follow the deployments, samples arrive in batches, outages are
buffered up to a bound and serving never stops."""
from __future__ import annotations

from fastapi.testclient import TestClient

from runtime.serving import Routes, Slot, create_app
from runtime.serving.client import ControlPlaneClient
from runtime.serving.shipper import SampleShipper


def greedy(prompt: str, max_tokens: int = 4) -> dict:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}


# The tiny random model's fp8 engine drifts far past the default thresholds: drift analysis (the control plane's
# business, tested there) would roll it back mid-test. These limits keep every analysis inconclusive and quiet.
QUIET_POLICY = {"kl_mean_max": 100.0, "kl_p95_max": 100.0, "top1_agreement_min": 0.0, "saturation_max": 1.0,
                "amax_ratio_max": 1e6, "min_samples": 1_000_000}


def _deploy(http, engine_id: int, reason: str) -> dict:
    r = http.post("/deployments", json={"endpoint": "tiny", "engine_id": engine_id, "reason": reason,
                                        "drift_policy": QUIET_POLICY})
    assert r.status_code == 201, r.text
    return r.json()


def _promote(http, deployment: dict, **extra) -> dict:
    r = http.post(f"/deployments/{deployment['id']}/promote",
                  json={"expected_version": deployment["version"], "reason": "tests", **extra})
    assert r.status_code == 200, r.text
    return r.json()["promoted"]


def _samples(http, deployment_id: int) -> list[dict]:
    r = http.get(f"/deployments/{deployment_id}/canary-samples", params={"limit": 500})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_engines_follow_deployments_and_samples_arrive(control_plane, engine_dirs, reference_dir, make_service,
                                                       wait_until):
    cp, http = control_plane, control_plane.client()
    bf16_id = cp.register_engine(engine_dirs["bf16"], reference_dir)
    fp8_id = cp.register_engine(engine_dirs["fp8"], reference_dir)
    active = _promote(http, _promote(http, _deploy(http, bf16_id, "first engine")))
    shadow = _deploy(http, fp8_id, "fp8 candidate")
    assert (active["stage"], shadow["stage"]) == ("active", "shadow")

    service = make_service(control_plane_url=cp.url, api_key=cp.keys["submitter"], poll_interval_s=0.1,
                           flush_interval_s=0.1, batch_size=4, sample_share=0.0, canary_sample_share=1.0)
    with TestClient(create_app(service)) as c:
        wait_until(lambda: service.router.routes.shadow and service.router.routes.active, timeout=30,
                   what="the active and shadow engines to load")
        assert c.get("/healthz").json()["engines"]["shadow"]["deployment_id"] == shadow["id"]

        # Shadow: the active engine answers every request and the fp8 engine is compared on every one.
        ids = [f"shadow-{i}" for i in range(6)]
        for rid in ids:
            r = c.post("/v1/completions", json=greedy("The quick brown fox"), headers={"X-Request-ID": rid})
            assert r.status_code == 200 and r.headers["x-deployment-id"] == str(active["id"])
        rows = wait_until(lambda: (lambda s: s if len(s) == 6 else None)(_samples(http, shadow["id"])), timeout=60,
                          what="six shadow samples at the control plane")
        assert {s["request_id"] for s in rows} == set(ids)
        assert all(s["engine_id"] == fp8_id and s["kl_mean"] > 0 and 0 < s["top1_agreement"] <= 1 for s in rows)
        assert all(s["length_bucket"] == "0-128" and s["script"] == "Latin" and s["slice"] == "Latin/0-128"
                   for s in rows)
        assert all(len(s["saturation"]) == 14 for s in rows)
        assert _samples(http, active["id"]) == []  # sample_share 0: the active engine is not re-run

        # Canary at 50%: requests that hash to the canary are served by it, and each is sampled.
        canary = _promote(http, shadow, traffic_share=0.5)
        wait_until(lambda: service.router.routes.canary and not service.router.routes.shadow, timeout=30,
                   what="the canary route")
        routes = service.router.routes
        ids = [f"canary-{i}" for i in range(8)]
        to_canary = [rid for rid in ids if routes.pick(rid)[0] == "canary"]
        assert 0 < len(to_canary) < len(ids)
        for rid in ids:
            r = c.post("/v1/completions", json=greedy("def add(a, b):"), headers={"X-Request-ID": rid})
            assert r.status_code == 200
            assert r.headers["x-deployment-id"] == str(canary["id"] if rid in to_canary else active["id"])
        wait_until(lambda: len(_samples(http, canary["id"])) == 6 + len(to_canary), timeout=60,
                   what="the canary's samples")

        # The control plane goes down: serving goes on, samples wait in the buffer, and arrive once it is back.
        cp.stop()
        ids = [f"outage-{i}" for i in range(8)]
        outage_canary = [rid for rid in ids if routes.pick(rid)[0] == "canary"]
        for rid in ids:
            assert c.post("/v1/completions", json=greedy("hi"), headers={"X-Request-ID": rid}).status_code == 200
        assert service.worker.wait_idle(60)
        assert service.shipper.depth == len(outage_canary) > 0
        wait_until(lambda: 'pops_control_plane_up 0.0' in c.get("/metrics").text, timeout=30,
                   what="the failed poll to show")
        cp.start()
        wait_until(lambda: len(_samples(http, canary["id"])) == 6 + len(to_canary) + len(outage_canary),
                   timeout=60, what="the buffered samples after the outage")
        assert service.shipper.dropped == 0
        assert c.get("/healthz").json()["sample_buffer"] == 0

        # A paused canary keeps its share; once rolled back it serves nobody and its metric series go.
        canary = http.get(f"/deployments/{canary['id']}").json()
        paused = http.post(f"/deployments/{canary['id']}/pause",
                           json={"expected_version": canary["version"], "reason": "hold"}).json()
        assert paused["stage"] == "paused"
        polls = service.watcher.polls
        wait_until(lambda: service.watcher.polls >= polls + 2, timeout=30, what="two polls after the pause")
        assert service.router.routes.canary.deployment_id == canary["id"]
        assert service.router.routes.canary_share == 0.5
        assert f'engine="{routes.canary.engine.engine_id}"' in c.get("/metrics").text
        r = http.post(f"/deployments/{canary['id']}/rollback",
                      json={"expected_version": paused["version"], "reason": "drifted"})
        assert r.status_code == 200, r.text
        wait_until(lambda: service.router.routes.canary is None, timeout=30, what="the rolled-back canary to go")
        assert service.router.routes.active.deployment_id == active["id"]
        assert f'engine="{routes.canary.engine.engine_id}"' not in c.get("/metrics").text


def test_unreachable_control_plane_buffers_to_the_bound(make_service, load_engine_dir, unreachable_url, wait_until):
    engine = load_engine_dir("fp8", registry_id=5)
    service = make_service(Routes(active=Slot(engine, 7), sample_share=1.0), control_plane_url=unreachable_url,
                           api_key="pops_00000000_" + "x" * 40, sample_buffer_size=5, batch_size=2,
                           flush_interval_s=0.02, poll_interval_s=60.0)
    service.shipper.backoff_s = service.shipper.max_backoff_s = 0.01
    with TestClient(create_app(service)) as c:
        for i in range(12):
            r = c.post("/v1/completions", json=greedy("hi"), headers={"X-Request-ID": f"r{i}"})
            assert r.status_code == 200  # serving never waits for the control plane
        assert service.worker.wait_idle(60)
        assert service.shipper.depth == 5 and service.shipper.dropped == 7 and service.shipper.sent == 0
        metrics = c.get("/metrics").text
        assert 'pops_shadow_samples_dropped_total{reason="buffer_full"} 7.0' in metrics
        assert 'pops_shadow_samples_taken_total{role="active"} 12.0' in metrics
        assert "pops_control_plane_up 0.0" in metrics
        assert c.get("/healthz").json()["sample_buffer"] == 5


def test_refused_batches_are_dropped_not_retried(control_plane, load_engine_dir):
    """A 4xx cannot succeed on resend (here: an unknown key); the batch is counted as rejected."""
    from runtime.serving.shadow import CanarySample

    shipper = SampleShipper(lambda: ControlPlaneClient(control_plane.url, "pops_00000000_" + "y" * 40),
                            capacity=10, batch_size=1, flush_interval_s=0.01)
    sample = CanarySample(request_id="r1", role="canary", deployment_id=1, engine_id="e", registry_id=1,
                          kl_mean=0.1, kl_max=0.2, top1_agreement=0.9, saturation={}, amax_ratio={},
                          length_bucket="0-128", script="Latin", slice="Latin/0-128", num_tokens=3)
    shipper.start()
    try:
        shipper.offer(sample)
        assert shipper.wait_empty(30)
    finally:
        shipper.stop()
    assert (shipper.sent, shipper.dropped) == (0, 1)
