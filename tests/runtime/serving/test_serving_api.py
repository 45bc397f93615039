"""/v1/completions end to end through the ASGI app: generation, streaming, stop strings, errors, health, metrics."""
from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

from runtime.serving import Routes, Slot, create_app


def greedy(prompt: str, max_tokens: int = 8, **extra) -> dict:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


@pytest.fixture
def fp8(load_engine_dir):
    return load_engine_dir("fp8")


@pytest.fixture
def client(make_service, fp8):
    service = make_service(Routes(active=Slot(fp8)), sample_share=0.0)
    with TestClient(create_app(service)) as c:
        c.service = service
        yield c


def _events(response) -> list:
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_greedy_completion_is_the_engines_argmax_continuation(client, fp8):
    r = client.post("/v1/completions", json=greedy("The quick brown fox", 12, model="tiny"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["id"] == f"cmpl-{r.headers['x-request-id']}" and r.headers["x-engine-id"] == fp8.engine_id
    choice, usage = body["choices"][0], body["usage"]
    prompt_ids = fp8.tokenizer("The quick brown fox")["input_ids"]
    assert usage["prompt_tokens"] == len(prompt_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 12
    assert choice["finish_reason"] == ("length" if usage["completion_tokens"] == 12 else "stop")
    # An uncached greedy loop (a full forward per token) gives the same text: the cached decode loop is exact.
    ids = list(prompt_ids)
    with torch.inference_mode():
        for _ in range(usage["completion_tokens"]):
            ids.append(int(fp8.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert fp8.tokenizer.decode(ids[len(prompt_ids):], skip_special_tokens=True) == choice["text"]


def test_stream_sends_the_same_text_in_deltas(client):
    whole = client.post("/v1/completions", json=greedy("Calibration records", 10)).json()
    with client.stream("POST", "/v1/completions", json=greedy("Calibration records", 10, stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert "".join(e["choices"][0]["text"] for e in events) == whole["choices"][0]["text"]
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
    assert events[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert events[-1]["usage"] == whole["usage"]


def test_stop_string_ends_the_completion_before_it(client):
    full = client.post("/v1/completions", json=greedy("Precision is", 16)).json()["choices"][0]["text"]
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    cut = client.post("/v1/completions", json=greedy("Precision is", 16, stop=stop)).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == full[: full.index(stop)]


def test_prompt_list_gives_one_choice_each(client):
    body = client.post("/v1/completions", json=greedy(["def add(a, b):", "The lazy dog"], 4)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    single = client.post("/v1/completions", json=greedy("The lazy dog", 4)).json()
    assert body["choices"][1]["text"] == single["choices"][0]["text"]


def test_seeded_sampling_repeats(client):
    req = {"prompt": "The quick", "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    a, b = (client.post("/v1/completions", json=req).json()["choices"][0]["text"] for _ in range(2))
    assert a == b


@pytest.mark.parametrize("body, loc, status", [
    (greedy("hi", 2000), ["body", "max_tokens"], 422),  # over the server's limit
    (greedy("hi", 256), ["body", "max_tokens"], 422),  # prompt + max_tokens beyond the model's 256 positions
    ({**greedy("hi"), "logprobs": 3}, ["body", "logprobs"], 422),  # unsupported: refused, not ignored
    (greedy(["a", "b"], stream=True), ["body", "prompt"], 422),
    (greedy("hi", model="gpt-4"), ["body", "model"], 404),
    ({**greedy("hi"), "stop": ["a", "b", "c", "d", "e"]}, ["body", "stop"], 422),
])
def test_bad_requests_name_the_field(client, body, loc, status):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    assert r.json()["detail"][0]["loc"] == loc


def test_request_id_header_is_checked_and_echoed(client):
    r = client.post("/v1/completions", json=greedy("hi", 1), headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    r = client.post("/v1/completions", json=greedy("hi", 1), headers={"X-Request-ID": "no spaces allowed"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "x-request-id"]


def test_health_models_and_metrics(client, fp8):
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["engines"]["active"]["engine_id"] == fp8.engine_id
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    client.post("/v1/completions", json=greedy("hi", 3))
    text = client.get("/metrics").text
    assert 'pops_requests_total{route="active",status="ok"} 1.0' in text
    assert "pops_request_latency_seconds_count" in text and 'pops_tokens_total{kind="completion"}' in text
    assert f'pops_engine_info{{deployment="",engine="{fp8.engine_id}",role="active"}} 1.0' in text


def test_no_engine_is_503_and_unhealthy(make_service, load_engine_dir):
    service = make_service(Routes(shadow=Slot(load_engine_dir("bf16"))))
    with TestClient(create_app(service)) as c:
        assert c.get("/healthz").status_code == 503
        r = c.post("/v1/completions", json=greedy("hi"))
        assert r.status_code == 503 and "shadow" in r.json()["detail"][0]["msg"]


def test_sampled_requests_are_logged_with_their_slice(make_service, fp8, tmp_path):
    samples = tmp_path / "samples.jsonl"
    service = make_service(Routes(active=Slot(fp8), sample_share=1.0), samples_out=samples)
    with TestClient(create_app(service)) as c:
        r = c.post("/v1/completions", json=greedy("The quick brown fox", 6, slice="support-tickets"),
                   headers={"X-Request-ID": "tagged"})
        assert r.status_code == 200
        assert service.worker.wait_idle(30)
    record = json.loads(samples.read_text().splitlines()[0])
    assert (record["request_id"], record["role"], record["slice"]) == ("tagged", "active", "support-tickets")
    assert record["engine_id"] == fp8.engine_id and record["deployment_id"] is None
    assert record["num_tokens"] == r.json()["usage"]["total_tokens"]


def test_fused_siblings_serve_the_unfused_text(make_service, engine_dirs):
    # `fuse_siblings` (`pops serve --fuse-siblings/--no-fuse-siblings`): on the CPU engines load unfused unless
    # asked; asked, q/k/v and gate/up run as one GEMM each and the cached greedy decode writes the same text.
    texts = []
    for fuse in (None, True):
        service = make_service(engine_paths=[engine_dirs["fp8"]], fuse_siblings=fuse, sample_share=0.0)
        with TestClient(create_app(service)) as c:
            model = service.router.routes.active.engine.model
            assert any(getattr(m, "siblings", None) is not None for m in model.modules()) is bool(fuse)
            r = c.post("/v1/completions", json=greedy("The quick brown fox", 12))
            assert r.status_code == 200, r.text
            texts.append(r.json()["choices"][0]["text"])
    assert texts[0] == texts[1]
