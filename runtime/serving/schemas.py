"""OpenAI-style completion requests and responses (the subset PrecisionOps serves)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Tokenizing happens before the first token; a bound keeps one request from holding the server for long.
MAX_PROMPT_CHARS = 1_000_000
Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


class CompletionRequest(BaseModel):
    """`POST /v1/completions`. Unsupported OpenAI parameters are refused by name rather than ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="The endpoint name (or an engine id it serves); default: the endpoint.")
    prompt: Prompt | list[Prompt] = Field(description="A prompt, or a list of prompts (one choice each; not with stream).")
    max_tokens: int = Field(16, ge=1, le=65_536, description="Most tokens to generate per prompt.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy; higher is more random.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: the smallest token set reaching top_p.")
    stop: list[str] = Field(default_factory=list, description="A string or up to 4 strings that end the completion "
                                                              "(not returned).")
    stream: bool = Field(False, description="Server-sent events, one per text delta, then `data: [DONE]`.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Makes sampling repeatable.")
    n: int = Field(1, ge=1, le=1, description="Choices per prompt (only 1).")
    user: str | None = Field(None, max_length=256, description="An end-user id, for your own accounting.")
    slice: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^\x00]+$",
                              description="PrecisionOps: tag the request's traffic slice in canary samples.")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 64:
            raise ValueError("give 1 to 64 prompts")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_is_a_list(cls, value):
        return [value] if isinstance(value, str) else [] if value is None else value

    @field_validator("stop")
    @classmethod
    def _stops(cls, stops: list[str]) -> list[str]:
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("give at most 4 non-empty stop strings")
        return stops

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
