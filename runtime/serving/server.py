"""The HTTP face of serving: OpenAI-style /v1/completions, /v1/models, /healthz and /metrics."""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from runtime.errors import InputError
from runtime.serving.config import ServeConfig
from runtime.serving.generation import Completion, SamplingParams, encode_prompt
from runtime.serving.router import NoEngine
from runtime.serving.schemas import CompletionChoice, CompletionRequest, CompletionResponse, Usage
from runtime.serving.service import Assignment, ServingService

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def _error(status: int, loc: tuple, msg: str, type_: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": list(loc), "msg": msg, "type": type_}]}, status_code=status)


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given is None:
        return uuid.uuid4().hex
    if not _REQUEST_ID.match(given):
        raise InputError("X-Request-ID must be 1-100 characters of letters, digits and . _ : -",
                         loc=("header", "x-request-id"))
    return given


def _served_names(service: ServingService, a: Assignment) -> set[str]:
    return {service.config.endpoint, a.slot.engine.engine_id}


def create_app(service: ServingService | ServeConfig) -> FastAPI:
    """The app for a service (or a config to build one from); its lifespan starts and stops the service."""
    if isinstance(service, ServeConfig):
        service = ServingService(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)  # standalone engines load here, off the event loop
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="PrecisionOps serving", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-style completions from the endpoint's engines, with shadow canaries that keep "
                              "measuring them against reference precision.")
    app.state.service = service

    @app.exception_handler(InputError)
    async def _input_error(_request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": [{**e, "loc": list(e["loc"])} for e in exc.errors]}, status_code=422)

    @app.post("/v1/completions", response_model=CompletionResponse, tags=["completions"])
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """Generates text for a prompt (or a list of prompts); `stream: true` sends server-sent events."""
        request_id = _request_id(request)
        try:
            a = service.assign(request_id)
        except NoEngine as exc:
            return _error(503, ("endpoint",), str(exc), "no_engine")
        if body.model is not None and body.model not in _served_names(service, a):
            return _error(404, ("body", "model"), f"model {body.model!r} is not served here; this endpoint is "
                                                  f"{service.config.endpoint!r}", "model_not_found")
        if body.max_tokens > service.config.max_tokens_limit:
            raise InputError(f"max_tokens may be at most {service.config.max_tokens_limit}", loc=("body", "max_tokens"))
        if body.stream and len(body.prompts) > 1:
            raise InputError("stream takes a single prompt", loc=("body", "prompt"))
        params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                stop=tuple(body.stop), seed=body.seed)
        prompts = [(p, encode_prompt(a.slot.engine, p, max_tokens=body.max_tokens,
                                     loc=("body", "prompt") + ((i,) if len(body.prompts) > 1 else ())))
                   for i, p in enumerate(body.prompts)]
        headers = {"X-Request-ID": request_id, "X-Engine-Id": a.slot.engine.engine_id, "X-Route": a.route}
        if a.slot.deployment_id is not None:
            headers["X-Deployment-Id"] = str(a.slot.deployment_id)
        created = int(time.time())
        if body.stream:
            render = _sse_renderer(f"cmpl-{request_id}", created, service.config.endpoint)
            events = service.stream(a, prompts[0][0], prompts[0][1], params, render, body.slice)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        done = await run_in_threadpool(service.complete, a, prompts, params, body.slice)
        prompt_tokens = sum(len(c.prompt_ids) for c in done)
        completion_tokens = sum(len(c.completion_ids) for c in done)
        response = CompletionResponse(
            id=f"cmpl-{request_id}", created=created, model=service.config.endpoint,
            choices=[CompletionChoice(text=c.text, index=i, finish_reason=c.finish_reason) for i, c in enumerate(done)],
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens))
        return JSONResponse(response.model_dump(mode="json"), headers=headers)

    @app.get("/v1/models", tags=["completions"])
    async def models() -> dict:
        """The endpoint, as the one model this server answers for."""
        routes = service.router.routes
        data = [{"id": service.config.endpoint, "object": "model", "owned_by": "precisionops",
                 "engines": {role: s.engine.engine_id for role, s in routes.slots()}}]
        return {"object": "list", "data": data}

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> JSONResponse:
        """200 when an engine can answer requests, else 503; with what serves and the queues' depths."""
        body = service.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        """Prometheus text exposition."""
        service.metrics.shadow_queue_depth.set(service.worker.depth)
        if service.shipper is not None:
            service.metrics.sample_buffer_depth.set(service.shipper.depth)
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return app


def _sse_renderer(completion_id: str, created: int, model: str):
    """Formats stream events as OpenAI does: a chunk per delta, a last chunk with finish_reason and usage, [DONE]."""

    def render(completion: Completion, delta: str | None) -> str:
        chunk = {"id": completion_id, "object": "text_completion", "created": created, "model": model,
                 "choices": [{"text": delta or "", "index": 0, "logprobs": None,
                              "finish_reason": None if delta is not None else completion.finish_reason}]}
        if delta is None:
            n_prompt, n_completion = len(completion.prompt_ids), len(completion.completion_ids)
            chunk["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                              "total_tokens": n_prompt + n_completion}
            return f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
        return f"data: {json.dumps(chunk)}\n\n"

    return render
