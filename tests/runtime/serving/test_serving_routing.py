"""Canary routing by request-id hash, engine hot swap without dropped requests, shadow work off the request path."""
from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from runtime.serving import Routes, Slot, create_app, unit_hash
from runtime.serving.generation import Completion, SamplingParams, encode_prompt
from runtime.serving.router import NoEngine


def greedy(prompt: str, max_tokens: int = 8, **extra) -> dict:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


def expected_text(engine, prompt: str, max_tokens: int) -> str:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return Completion(engine, encode_prompt(engine, prompt, max_tokens=max_tokens), params).run().text


@pytest.fixture
def engines(load_engine_dir):
    return {name: load_engine_dir(name) for name in ("fp8", "fp8_narrow")}


# --- routing ------------------------------------------------------------------------------------------


def test_unit_hash_is_deterministic_uniform_and_salted():
    ids = [f"req-{i}" for i in range(20_000)]
    values = [unit_hash(i, "canary") for i in ids]
    assert values == [unit_hash(i, "canary") for i in ids]
    assert all(0.0 <= v < 1.0 for v in values)
    for share in (0.01, 0.1, 0.5):  # binomial sd at n=20000 is at most 0.0035
        assert abs(sum(v < share for v in values) / len(ids) - share) < 0.012
    # A different salt gives an independent draw: canary routing and shadow sampling do not pick the same requests.
    both = sum(v < 0.1 and unit_hash(i, "shadow") < 0.1 for i, v in zip(ids, values)) / len(ids)
    assert abs(both - 0.01) < 0.004


def test_canary_share_routes_close_to_configured_and_stably(engines):
    routes = Routes(active=Slot(engines["fp8"], 1), canary=Slot(engines["fp8_narrow"], 2), canary_share=0.2)
    ids = [f"r{i}" for i in range(20_000)]
    picks = [routes.pick(i)[0] for i in ids]
    assert abs(picks.count("canary") / len(ids) - 0.2) < 0.012
    assert picks == [routes.pick(i)[0] for i in ids]
    # Raising the share only moves requests to the canary: nobody flips back and forth between engines.
    wider = Routes(active=routes.active, canary=routes.canary, canary_share=0.3)
    assert all(wider.pick(i)[0] == "canary" for i, p in zip(ids, picks) if p == "canary")


def test_roles_without_an_active_engine(engines):
    assert Routes(canary=Slot(engines["fp8"]), canary_share=0.05).pick("x")[0] == "canary"
    with pytest.raises(NoEngine, match="shadow"):
        Routes(shadow=Slot(engines["fp8"])).pick("x")
    shadow = Slot(engines["fp8_narrow"], 9)
    routes = Routes(active=Slot(engines["fp8"], 8), shadow=shadow, sample_share=0.0)
    assert routes.shadow_targets("any", "active", routes.active) == [("shadow", shadow)]  # every request


def test_http_requests_follow_their_request_id(make_service, engines):
    routes = Routes(active=Slot(engines["fp8"]), canary=Slot(engines["fp8_narrow"]), canary_share=0.3)
    service = make_service(routes)
    with TestClient(create_app(service)) as c:
        seen = {}
        for i in range(40):
            rid = f"user-{i}"
            r = c.post("/v1/completions", json=greedy("hi", 1), headers={"X-Request-ID": rid})
            assert r.status_code == 200
            seen[rid] = r.headers["x-route"]
            engine = engines["fp8_narrow" if seen[rid] == "canary" else "fp8"]
            assert r.headers["x-engine-id"] == engine.engine_id
    assert seen == {rid: routes.pick(rid)[0] for rid in seen}
    assert set(seen.values()) == {"active", "canary"}


# --- hot swap -----------------------------------------------------------------------------------------


def test_swap_mid_stream_finishes_on_the_old_engine(make_service, engines):
    old, new = engines["fp8"], engines["fp8_narrow"]
    service = make_service(Routes(active=Slot(old)))
    want_old, want_new = expected_text(old, "The quick", 16), expected_text(new, "The quick", 16)
    assert want_old != want_new
    step, steps = old.step, []

    def step_then_swap(ids, cache):  # the swap lands while this stream is being generated
        steps.append(1)
        if len(steps) == 3:
            service.router.swap(Routes(active=Slot(new)))
        return step(ids, cache)

    old.step = step_then_swap
    with TestClient(create_app(service)) as c:
        with c.stream("POST", "/v1/completions", json=greedy("The quick", 16, stream=True)) as r:
            assert r.status_code == 200 and r.headers["x-engine-id"] == old.engine_id
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and len(steps) > 3
        text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
        assert text == want_old
        after = c.post("/v1/completions", json=greedy("The quick", 16))
        assert after.headers["x-engine-id"] == new.engine_id and after.json()["choices"][0]["text"] == want_new


def test_concurrent_requests_survive_repeated_swaps(make_service, engines):
    """Requests in flight while the routes flip every few ms: all answered, each wholly by one engine."""
    a, b = engines["fp8"], engines["fp8_narrow"]
    want = {a.engine_id: expected_text(a, "Precision is", 8), b.engine_id: expected_text(b, "Precision is", 8)}
    assert len(set(want.values())) == 2
    service = make_service(Routes(active=Slot(a)))
    app = create_app(service)
    stop = threading.Event()

    def flip():
        i = 0
        while not stop.is_set():
            i += 1
            service.router.swap(Routes(active=Slot(b if i % 2 else a)))
            stop.wait(0.003)

    async def fire():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            return await asyncio.gather(*(client.post("/v1/completions", json=greedy("Precision is", 8))
                                          for _ in range(16)))

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        responses = asyncio.run(fire())
    finally:
        stop.set()
        flipper.join()
    assert service.router.routes.version > 10
    assert all(r.status_code == 200 for r in responses)
    assert all(r.json()["choices"][0]["text"] == want[r.headers["x-engine-id"]] for r in responses)


# --- shadow work stays off the request path -----------------------------------------------------------


def test_slow_shadow_worker_never_delays_responses(make_service, engines):
    service = make_service(Routes(active=Slot(engines["fp8"]), sample_share=1.0), shadow_queue_size=3)
    entered, release, sunk = threading.Event(), threading.Event(), []

    def slow_sink(sample):  # the worker is stuck here until the test lets it go
        entered.set()
        release.wait(60)
        sunk.append(sample.request_id)

    service.worker.sink = slow_sink
    with TestClient(create_app(service)) as c:
        ids = [f"r{i}" for i in range(8)]
        assert c.post("/v1/completions", json=greedy("hi", 4), headers={"X-Request-ID": ids[0]}).status_code == 200
        assert entered.wait(30)
        for rid in ids[1:]:
            r = c.post("/v1/completions", json=greedy("hi", 4), headers={"X-Request-ID": rid})
            assert r.status_code == 200
        # Every response came back while the worker was still stuck on the first sample.
        assert sunk == [] and service.worker.depth == 3
        metrics = c.get("/metrics").text
        assert 'pops_shadow_samples_dropped_total{reason="shadow_queue_full"} 4.0' in metrics
        assert "pops_shadow_queue_depth 3.0" in metrics
        release.set()
        assert service.worker.wait_idle(30)
    assert sunk == ids[:4]  # the job in hand, then the three queued, in order
