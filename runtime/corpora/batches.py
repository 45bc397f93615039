"""Tokenized, right-padded batches of corpus samples, for calibration and evaluation runs."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from runtime.corpora.corpus import Sample
from runtime.errors import InputError


@dataclass
class TokenBatch:
    """Samples padded on the right to a common length; `mask` is True on real tokens."""

    input_ids: torch.Tensor  # [B, T] int64
    mask: torch.Tensor  # [B, T] bool
    samples: list[Sample]
    indices: list[int]  # positions of the samples in the list given to token_batches
    lengths: list[int]  # real tokens per row

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


def tokenize(tokenizer, samples: Sequence[Sample], seq_len: int) -> list[list[int]]:
    """Token ids of each sample, truncated to `seq_len` (the tokenizer's special tokens included)."""
    if seq_len < 1:
        raise InputError(f"seq_len must be >= 1, got {seq_len}", loc=("seq_len",))
    encoded = tokenizer([s.text for s in samples], truncation=True, max_length=seq_len)["input_ids"]
    return [list(ids)[:seq_len] for ids in encoded]


def token_batches(
    tokenizer, samples: Sequence[Sample], *, seq_len: int, batch_size: int,
) -> Iterator[TokenBatch]:
    """Batches of up to `batch_size` samples, grouped by length so little is padding.

    Right padding keeps every real token's causal context identical to an unpadded run.
    Samples that tokenize to nothing are skipped.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}", loc=("batch_size",))
    ids = tokenize(tokenizer, samples, seq_len)
    order = sorted((i for i in range(len(samples)) if ids[i]), key=lambda i: len(ids[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, i in enumerate(chunk):
            input_ids[row, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
            mask[row, :len(ids[i])] = True
        yield TokenBatch(input_ids, mask, [samples[i] for i in chunk], chunk, [len(ids[i]) for i in chunk])
