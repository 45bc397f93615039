"""Token generation on a served engine: a cached decode loop yielding text as it is produced."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from runtime.errors import InputError
from runtime.serving.handles import ServedEngine


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens: greedy at temperature 0, else sampling with nucleus `top_p`."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


def encode_prompt(engine: ServedEngine, prompt: str, *, max_tokens: int, loc: tuple = ("body", "prompt")) -> list[int]:
    """Prompt token ids as the engine's tokenizer gives them (BOS included where it adds one), checked for length."""
    ids = list(engine.tokenizer(prompt)["input_ids"])
    if not ids:
        bos = engine.tokenizer.bos_token_id
        if bos is None:
            raise InputError("the prompt is empty and the tokenizer has no BOS token to start from", loc=loc)
        ids = [bos]
    if len(ids) + max_tokens > engine.max_positions:
        raise InputError(f"the prompt has {len(ids)} tokens; with max_tokens={max_tokens} that exceeds the model's "
                         f"context of {engine.max_positions} tokens", loc=("body", "max_tokens"))
    return ids


def _eos_ids(engine: ServedEngine) -> set[int]:
    ids = set()
    for value in (engine.tokenizer.eos_token_id, getattr(engine.model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


class Completion:
    """One generation. Iterate for text deltas; afterwards `text`, `completion_ids`, `finish_reason` hold the result.

    Each forward holds the engine's lock only for that step, so concurrent completions interleave.
    """

    def __init__(self, engine: ServedEngine, prompt_ids: list[int], params: SamplingParams):
        self.engine, self.prompt_ids, self.params = engine, list(prompt_ids), params
        self.completion_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self._eos = _eos_ids(engine)
        self._generator = None
        if params.temperature > 0 and params.seed is not None:
            self._generator = torch.Generator().manual_seed(params.seed)

    @property
    def token_ids(self) -> list[int]:
        """Prompt and generated tokens: what the shadow canary re-runs."""
        return self.prompt_ids + self.completion_ids

    def run(self) -> "Completion":
        """Generates to the end without streaming."""
        for _ in self:
            pass
        return self

    def __iter__(self) -> Iterator[str]:
        p = self.params
        holdback = max((len(s) for s in p.stop), default=1) - 1  # a stop string may be split across tokens
        emitted, cache = 0, None
        ids = torch.tensor([self.prompt_ids])
        self.finish_reason = "length"
        for _ in range(p.max_tokens):
            logits, cache = self.engine.step(ids, cache)
            token = self._pick(logits)
            self.completion_ids.append(token)
            if token in self._eos:
                self.finish_reason = "stop"
                break
            text = self.engine.tokenizer.decode(self.completion_ids, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in p.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish_reason = text[:cut], "stop"
                break
            self.text = text
            # Hold back a possible stop-string prefix and a half-decoded UTF-8 character.
            safe = len(text.rstrip("\ufffd")) - holdback
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            ids = torch.tensor([[token]])
        if len(self.text) > emitted:
            yield self.text[emitted:]

    def _pick(self, logits: torch.Tensor) -> int:
        p = self.params
        if p.temperature <= 0.0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float().cpu() / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < p.top_p  # the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=self._generator))
