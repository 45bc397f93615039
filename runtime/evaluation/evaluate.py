"""Evaluating a candidate (an engine's model) against its reference precision on a corpus."""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from runtime.calibration.sampling import percentile
from runtime.corpora import BUCKET_LABELS, Corpus, length_bucket
from runtime.corpora.batches import token_batches
from runtime.errors import InputError
from runtime.evaluation.gates import Gate, GateResult, apply_gates, parse_gates
from runtime.evaluation.metrics import Metrics, kl_from_log_probs, nll_from_log_probs, sqnr_from_energies, top1_match
from runtime.models import linear_ops

# Identical outputs have infinite SQNR; reports store this ceiling instead so they stay plain
# JSON (PostgreSQL's json type has no Infinity). fp32 rounding noise alone sits near 140 dB.
SQNR_CEILING_DB = 300.0


class EvaluationReport(BaseModel):
    """A candidate measured against its reference: overall, per slice, per length bucket, per layer."""

    model_config = ConfigDict(extra="forbid")

    corpus_name: str
    corpus_hash: str
    samples: int
    seq_len: int
    metrics: Metrics
    by_slice: dict[str, Metrics]
    by_bucket: dict[str, Metrics] = Field(description="by token-length bucket, as in corpus coverage")
    layers: dict[str, float] = Field(description=f"SQNR (dB) of each linear's output, capped at {SQNR_CEILING_DB}")
    unmatched_layers: list[str] = Field(
        default_factory=list, description="reference linears with no same-named, same-shaped candidate output")
    gate_results: list[GateResult] = Field(default_factory=list)
    passed: bool = Field(True, description="every gate passed (True when there are no gates)")

    @property
    def sqnr_min_db(self) -> float | None:
        """The worst layer's SQNR."""
        return min(self.layers.values()) if self.layers else None

    def has_group(self, *, slice: str | None = None, bucket: str | None = None) -> bool:
        """Whether the run has samples in that slice or bucket (the whole run always does)."""
        if slice is not None:
            return slice in self.by_slice
        if bucket is not None:
            return bucket in self.by_bucket
        return True

    def metric(self, name: str, *, slice: str | None = None, bucket: str | None = None) -> float | None:
        """A metric overall or of one slice / bucket; None where it was not measured."""
        if name == "sqnr_min_db":
            return self.sqnr_min_db
        group = self.by_slice.get(slice) if slice is not None else \
            self.by_bucket.get(bucket) if bucket is not None else self.metrics
        return None if group is None else getattr(group, name)

    def with_gates(self, gates: Iterable[Gate | dict]) -> "EvaluationReport":
        """A copy with `gates` applied: gate_results and passed replaced."""
        results = apply_gates(self, gates)
        return self.model_copy(update={"gate_results": results, "passed": all(r.passed for r in results)})

    def failures(self) -> list[GateResult]:
        return [r for r in self.gate_results if not r.passed]


@dataclass
class _SampleScores:
    slice: str
    bucket: str
    kl: torch.Tensor  # [L] per token
    top1: torch.Tensor  # [L] bool
    nll_ref: torch.Tensor  # [L - 1] next-token NLL
    nll_cand: torch.Tensor
    nonfinite: int


def evaluate(
    reference_model: nn.Module,
    candidate_model: nn.Module,
    tokenizer,
    corpus: Corpus | str | Path,
    *,
    gates: Iterable[Gate | dict] | None = None,
    max_samples: int = 64,
    seq_len: int = 256,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationReport:
    """Runs up to `max_samples` corpus samples, taken round-robin across slices so every slice
    is measured (see Corpus.balanced), truncated to `seq_len` tokens, through both models and
    compares them token by token and layer by layer.

    Args:
        reference_model: the model in its reference precision (or anything with a `.model`).
        candidate_model: the model under test; its linears keep the reference's module names.
        tokenizer: the reference tokenizer; both models see the same ids.
        corpus: a Corpus or a JSONL path; slices give `by_slice`, token lengths `by_bucket`.
        gates: Gates (or dicts) applied to the report; `passed` is all of them passing.
        batch_size: samples per forward pass; padding is masked out of every metric.
        progress: called as progress(samples_done, samples_total) after each batch.
    """
    reference_model, candidate_model = _module(reference_model), _module(candidate_model)
    if not isinstance(corpus, Corpus):
        corpus = Corpus.load(corpus)
    if max_samples < 1:
        raise InputError(f"max_samples must be >= 1, got {max_samples}", loc=("max_samples",))
    gates = parse_gates(gates or [])  # fail on a bad gate before any forward pass
    chosen = corpus.balanced(max_samples)

    candidate_modules = dict(candidate_model.named_modules())
    layer_names = [op.name for op in linear_ops(reference_model)]
    matched = [n for n in layer_names if n in candidate_modules]
    signal: dict[str, float] = defaultdict(float)
    noise: dict[str, float] = defaultdict(float)
    mismatched: set[str] = set()
    scores: list[_SampleScores] = []
    ref_training, cand_training = reference_model.training, candidate_model.training
    reference_model.eval()
    candidate_model.eval()
    done = 0
    try:
        with torch.no_grad():
            for batch in token_batches(tokenizer, chosen, seq_len=seq_len, batch_size=batch_size):
                captured: dict[str, torch.Tensor] = {}

                index = None if bool(batch.mask.all()) else batch.mask.reshape(-1).nonzero().squeeze(1)

                def keep_reference(name, out, mask=batch.mask, index=index):
                    # A copy: the reference's later ops may reuse the output's memory in place.
                    captured[name] = _rows(out, mask, index).to(dtype=torch.float32, copy=True)

                def compare_candidate(name, out, mask=batch.mask, index=index):
                    ref = captured.pop(name, None)
                    if ref is None:  # called more often than in the reference: not comparable
                        return
                    cand = _rows(out, mask, index).to(device=ref.device, dtype=torch.float32, copy=True)
                    if cand.shape != ref.shape:  # same name, different layer: not comparable
                        mismatched.add(name)
                        return
                    # Identical outputs give an exact 0 noise energy, hence the SQNR ceiling.
                    signal[name] += float(torch.linalg.vector_norm(ref)) ** 2
                    noise[name] += float(torch.linalg.vector_norm(cand.sub_(ref))) ** 2

                with _output_hooks(reference_model, matched, keep_reference):
                    ref_logits = _logits(reference_model, batch)
                with _output_hooks(candidate_model, matched, compare_candidate):
                    cand_logits = _logits(candidate_model, batch).to(ref_logits.device)
                if cand_logits.shape[-1] != ref_logits.shape[-1]:
                    raise InputError(f"candidate vocabulary is {cand_logits.shape[-1]} tokens, the reference's "
                                     f"{ref_logits.shape[-1]}", loc=("candidate_model",))
                scores.extend(_score(batch, ref_logits, cand_logits))
                done += len(batch.samples)
                if progress is not None:
                    progress(done, len(chosen))
    finally:
        reference_model.train(ref_training)
        candidate_model.train(cand_training)
    if not scores:
        raise InputError("no sample produced any tokens; nothing was evaluated", loc=("corpus",))

    by_slice: dict[str, list[_SampleScores]] = defaultdict(list)
    by_bucket: dict[str, list[_SampleScores]] = defaultdict(list)
    for s in scores:
        by_slice[s.slice].append(s)
        by_bucket[s.bucket].append(s)
    report = EvaluationReport(
        corpus_name=corpus.name,
        corpus_hash=corpus.content_hash,
        samples=len(scores),
        seq_len=seq_len,
        metrics=_summarize(scores),
        by_slice={name: _summarize(group) for name, group in by_slice.items()},
        by_bucket={label: _summarize(by_bucket[label]) for label in BUCKET_LABELS if label in by_bucket},
        layers={name: _layer_sqnr(signal[name], noise[name])
                for name in matched if name in signal and name not in mismatched},
        unmatched_layers=[n for n in layer_names if n not in candidate_modules or n in mismatched],
    )
    return report.with_gates(gates) if gates else report


def _module(model) -> nn.Module:
    # LoadedModel / LoadedEngine carry the nn.Module as `.model`.
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        return model.model
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch model, got {type(model).__name__}", loc=("model",))
    return model


def _logits(model: nn.Module, batch) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.mask.long().to(device), use_cache=False)
    return out.logits.float()


def _rows(t: torch.Tensor, mask: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Real-token rows [tokens, features] of a [B, T, features] output; `index` holds the flat
    positions of the real tokens (None: no padding)."""
    flat = t.reshape(-1, t.shape[-1])
    if index is None or not (t.dim() >= 3 and t.shape[:2] == mask.shape):
        return flat
    return flat.index_select(0, index.to(t.device))


@contextmanager
def _output_hooks(model: nn.Module, names: list[str], fn) -> Iterator[None]:
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _a, out, n=n: fn(n, out)) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _score(batch, ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> list[_SampleScores]:
    # One log-softmax per model serves KL and NLL: at a 3k vocabulary it costs as much as a layer.
    ref_logp = F.log_softmax(ref_logits, dim=-1)
    cand_logp = F.log_softmax(cand_logits, dim=-1)
    kl = kl_from_log_probs(ref_logp, cand_logp)
    top1 = top1_match(ref_logits, cand_logits)
    ids = batch.input_ids.to(ref_logits.device)
    nll_ref = nll_from_log_probs(ref_logp[:, :-1], ids[:, 1:])
    nll_cand = nll_from_log_probs(cand_logp[:, :-1], ids[:, 1:])
    nonfinite = (~torch.isfinite(cand_logits)).any(dim=-1)
    out = []
    for row, (sample, n) in enumerate(zip(batch.samples, batch.lengths)):
        out.append(_SampleScores(
            slice=sample.slice, bucket=length_bucket(n),
            kl=kl[row, :n].cpu(), top1=top1[row, :n].cpu(),
            nll_ref=nll_ref[row, :n - 1].cpu(), nll_cand=nll_cand[row, :n - 1].cpu(),
            nonfinite=int(nonfinite[row, :n].sum()),
        ))
    return out


def _summarize(group: list[_SampleScores]) -> Metrics:
    kl = torch.cat([s.kl for s in group]).double()
    top1 = torch.cat([s.top1 for s in group])
    nll_ref = torch.cat([s.nll_ref for s in group]).double()
    nll_cand = torch.cat([s.nll_cand for s in group]).double()
    ppl_ref = _finite(math.exp(min(float(nll_ref.mean()), 700.0))) if nll_ref.numel() else None
    ppl_cand = _finite(math.exp(min(float(nll_cand.mean()), 700.0))) if nll_cand.numel() else None
    both = ppl_ref is not None and ppl_cand is not None
    return Metrics(
        samples=len(group),
        tokens=int(kl.numel()),
        kl_mean=_finite(float(kl.mean())),
        kl_p95=_finite(float(percentile(kl.sort().values, 95.0))),
        kl_max=_finite(float(kl.max())),
        top1_agreement=float(top1.double().mean()),
        ppl_reference=ppl_ref,
        ppl_candidate=ppl_cand,
        ppl_delta=ppl_cand - ppl_ref if both else None,
        ppl_delta_pct=100.0 * (ppl_cand / ppl_ref - 1.0) if both else None,
        nonfinite_tokens=sum(s.nonfinite for s in group),
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _layer_sqnr(signal: float, noise: float) -> float:
    value = sqnr_from_energies(signal, noise)
    if math.isnan(value):  # NaN outputs in the candidate: the worst score there is
        return -SQNR_CEILING_DB
    return max(-SQNR_CEILING_DB, min(SQNR_CEILING_DB, value))
