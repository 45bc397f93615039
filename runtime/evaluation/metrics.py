"""Token-level metrics of a candidate against its reference: KL, top-1 agreement, perplexity, SQNR.

All computed in fp32 or wider whatever the input dtype, since bf16 logits differ in the third
significant digit and would swamp the differences being measured.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from runtime.errors import InputError

IGNORE_INDEX = -100


def _same_shape(ref: torch.Tensor, cand: torch.Tensor, what: str) -> None:
    if ref.shape != cand.shape:
        raise InputError(f"{what} shapes differ: reference {tuple(ref.shape)}, candidate {tuple(cand.shape)}",
                         loc=("candidate",))


def kl_divergence(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || candidate) per token, in nats.

    Args:
        ref_logits, cand_logits: [..., vocab] logits of the same tokens.
    Returns:
        [...] fp32: sum_v p_ref(v) * (log p_ref(v) - log p_cand(v)); rounding below zero is clamped to 0.
    """
    _same_shape(ref_logits, cand_logits, "logits")
    return kl_from_log_probs(F.log_softmax(ref_logits.float(), dim=-1), F.log_softmax(cand_logits.float(), dim=-1))


def kl_from_log_probs(ref_logp: torch.Tensor, cand_logp: torch.Tensor) -> torch.Tensor:
    """kl_divergence from log-softmax outputs, for callers that reuse them."""
    return (ref_logp.exp() * (ref_logp - cand_logp)).sum(dim=-1).clamp(min=0.0)


def top1_match(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    """[...] bool: the candidate's most likely token is the reference's."""
    _same_shape(ref_logits, cand_logits, "logits")
    return ref_logits.argmax(dim=-1) == cand_logits.argmax(dim=-1)


def top1_agreement(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> float:
    """Share of tokens whose argmax agrees, in [0, 1]."""
    return float(top1_match(ref_logits, cand_logits).float().mean())


def token_nll(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Negative log-likelihood of each label, fp32; 0 where the label is `ignore_index`.

    Args:
        logits: [..., vocab]; position t is the prediction for labels[..., t] (already shifted:
            for a causal LM pass logits[:, :-1] and input_ids[:, 1:]).
        labels: [...] int token ids.
    """
    if logits.shape[:-1] != labels.shape:
        raise InputError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}[:-1]",
                         loc=("labels",))
    return nll_from_log_probs(F.log_softmax(logits.float(), dim=-1), labels, ignore_index=ignore_index)


def nll_from_log_probs(logp: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """token_nll from log-softmax outputs, for callers that reuse them."""
    keep = labels != ignore_index
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, -picked, torch.zeros_like(picked))


def perplexity(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> float:
    """exp(mean NLL) over the labels that are not `ignore_index` (aligned as in token_nll)."""
    keep = labels != ignore_index
    if not bool(keep.any()):
        raise InputError("no labels to score: every label is ignore_index", loc=("labels",))
    nll = token_nll(logits, labels, ignore_index=ignore_index)
    return math.exp(float(nll.double().sum() / keep.sum()))


def sqnr_db(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(||ref||^2 / ||ref - cand||^2) in dB, in fp64.

    inf when the tensors are identical; -inf when the reference is all zero and they differ.
    """
    _same_shape(reference, candidate, "tensor")
    return sqnr_from_energies(float(reference.double().pow(2).sum()),
                              float((reference.double() - candidate.double()).pow(2).sum()))


def sqnr_from_energies(signal: float, noise: float) -> float:
    """10 log10(signal / noise) from accumulated energies, with the edge cases of sqnr_db."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


class Metrics(BaseModel):
    """Metrics of one group of tokens (the whole run, one slice or one length bucket).

    A value is None when it cannot be computed: no scored tokens, or NaN/inf logits.
    """

    model_config = ConfigDict(extra="forbid")

    samples: int
    tokens: int = Field(description="tokens compared (KL, top-1)")
    kl_mean: float | None = Field(description="mean per-token KL(reference || candidate), nats")
    kl_p95: float | None = Field(description="95th percentile of per-token KL")
    kl_max: float | None = Field(description="largest per-token KL")
    top1_agreement: float | None = Field(description="share of tokens whose argmax agrees")
    ppl_reference: float | None = Field(description="reference perplexity on the next tokens")
    ppl_candidate: float | None = Field(description="candidate perplexity on the same tokens")
    ppl_delta: float | None = Field(description="ppl_candidate - ppl_reference")
    ppl_delta_pct: float | None = Field(description="100 * (ppl_candidate / ppl_reference - 1)")
    nonfinite_tokens: int = Field(0, description="tokens where the candidate's logits had NaN or inf")
