"""Sensitivity: how much KL to the reference grows when one unit (an op, or one output feature) drops to a format.

Two estimates, used together:

* **Fisher proxy, per output feature.** KL(p_ref || p_ref+d) ~ 1/2 d^T F d, with F the Fisher of
  the model's own predictive distribution (the Hessian of KL at the reference). Sampling labels
  from the model and back-propagating sum_t log p(y_t) gives, for each linear op, the gradient
  g[t, j] at its output; a format's error on that op's output is e[t, j] = y_q[t, j] - y[t, j]
  (the quantized op run on the same input, activation quantization included). Then
  h_j = sum_t g[t, j] e[t, j] is the directional derivative of the sampled log-likelihood along
  "row j drops to the format", and E[h_j^2] / 2 is the KL it costs. One forward and `draws`
  backward passes per batch give every row of every op for every format: cheap enough for the
  thousands of output features a MixLLM-style global allocation ranks. The whole op's proxy
  uses (sum_j h_j)^2, which keeps the cross-feature terms.
* **Direct measurement, per op.** Swap the op for its quantized module, run the calibration
  tokens, average KL per token against cached reference log-probabilities. Exact for that op
  alone (no second-order or diagonal approximation, no label-sampling noise), but one forward
  pass per (op, format): affordable per op, not per output feature.

The proxy decides everything per output feature; the measurement calibrates it per op. With
`measure="cheapest"` (the default) each op is measured once, at its cheapest candidate: the
format the allocation starts from, with the largest errors, where a second-order estimate is
least safe. The ratio measured / proxy rescales every format's rows of that op, so the rows of
an op add up to its measured KL and the per-op scale (how far an op's error travels through the
network) comes from the network itself. `measure="all"` measures and rescales each format on
its own (one forward pass per op and format); `measure="none"` keeps the raw proxy. On the
reference model the proxy agrees with direct measurement to within about 20% per op and format
(docs/search-report.md), so "cheapest" costs one pass per op and buys the check.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtime.corpora import Corpus
from runtime.corpora.batches import TokenBatch, token_batches
from runtime.errors import InputError
from runtime.models import LinearOp, linear_ops
from runtime.modules import QuantLinear
from runtime.plans import OpPlan
from runtime.search.candidates import Candidate

MEASURE_MODES = ("none", "cheapest", "all")


@dataclass
class OpSensitivity:
    """One op's sensitivity to each candidate format, in nats of KL per token."""

    name: str
    in_features: int
    out_features: int
    is_lm_head: bool
    candidates: list[str]  # the candidates this op may take (admitted and fitting its shape)
    rows: dict[str, np.ndarray]  # candidate -> [out]: KL when that output feature alone drops to it
    op: dict[str, float]  # candidate -> KL when the whole op drops to it (measured where measured)
    fisher_rows: dict[str, np.ndarray]  # the raw proxy per row, before rescaling
    fisher_op: dict[str, float]  # the raw proxy for the whole op (cross-feature terms included)
    measured: dict[str, float] = field(default_factory=dict)  # direct measurements
    scale: float = 1.0  # measured / proxy at the cheapest measured format: what rescaled the rows

    def summary(self) -> dict:
        return {"name": self.name, "in_features": self.in_features, "out_features": self.out_features,
                "op": dict(self.op), "fisher_op": dict(self.fisher_op),
                "fisher_rows_sum": {c: float(v.sum()) for c, v in self.fisher_rows.items()},
                "measured": dict(self.measured), "scale": self.scale}


@dataclass
class Sensitivity:
    """Every searched op's sensitivity, and how it was measured."""

    ops: list[OpSensitivity]
    samples: int
    tokens: int
    seq_len: int
    draws: int
    measure: str  # none | cheapest | all
    corpus_hash: str
    seconds: float

    def op(self, name: str) -> OpSensitivity:
        return next(o for o in self.ops if o.name == name)

    def to_dict(self) -> dict:
        """Per-op numbers (per-row arrays left out): what a job logs."""
        return {"samples": self.samples, "tokens": self.tokens, "seq_len": self.seq_len, "draws": self.draws,
                "measure": self.measure, "corpus_hash": self.corpus_hash, "seconds": round(self.seconds, 2),
                "ops": [o.summary() for o in self.ops]}


def quantized_module(op: LinearOp, candidate: Candidate) -> QuantLinear:
    """The op as the engine would run it in a candidate's formats (same quantizers, same kernels)."""
    w_args = None if candidate.weights.is_wide else candidate.weights
    a_args = candidate.input_activations
    plan = OpPlan(name=op.name, op_kind="lm_head" if op.is_lm_head else "linear", weight=candidate.weights.format,
                  activation=a_args.format if a_args else "bf16", weight_args=w_args, activation_args=a_args,
                  kernel="search", rule="search", reason="search", in_features=op.in_features,
                  out_features=op.out_features)
    w = op.module.weight.detach()
    w = w.t() if op.transposed else w
    return QuantLinear.from_float(w.float(), op.module.bias, plan)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def measure_sensitivity(
    model: nn.Module,
    tokenizer,
    corpus: Corpus,
    candidates: dict[str, list[Candidate]],
    *,
    samples: int = 64,
    seq_len: int = 128,
    batch_size: int = 8,
    draws: int = 2,
    measure: str = "cheapest",
    measure_samples: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Sensitivity:
    """Sensitivity of each op in `candidates` to each of its candidate formats.

    Args:
        model: the reference causal LM (fp32, as engines are built from); left unchanged.
        tokenizer: its tokenizer.
        corpus: calibration corpus; its first `samples` samples, truncated to `seq_len` tokens.
        candidates: op name -> the candidates that op may take.
        batch_size: samples per forward pass.
        draws: label samples per token for the Fisher proxy (one backward pass each).
        measure: "cheapest" measures each op at its cheapest candidate and rescales its rows by
            measured / proxy; "all" measures and rescales every (op, non-wide format); "none"
            keeps the raw proxy.
        measure_samples: samples the direct measurement runs (default: min(samples, 16)).
        seed: seeds the label sampling, so a search is reproducible.
        progress: progress(done, total) over forward passes.
    """
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}", loc=("samples",))
    if draws < 1:
        raise InputError(f"draws must be >= 1, got {draws}", loc=("draws",))
    if measure not in MEASURE_MODES:
        raise InputError(f"measure must be one of {', '.join(MEASURE_MODES)}, got {measure!r}", loc=("measure",))
    start = time.monotonic()
    by_name = {op.name: op for op in linear_ops(model)}
    missing = [n for n in candidates if n not in by_name]
    if missing:
        raise InputError(f"ops {missing[:5]} are not linear ops of the model", loc=("ops",))
    ops = [by_name[n] for n in candidates]
    device = next(model.parameters()).device
    batches = list(token_batches(tokenizer, corpus.samples[:samples], seq_len=seq_len, batch_size=batch_size))
    if not batches:
        raise InputError("no calibration sample produced any tokens", loc=("corpus",))
    n_measure = min(samples, 16) if measure_samples is None else measure_samples
    measure_batches = [] if measure == "none" else list(token_batches(
        tokenizer, corpus.samples[:n_measure], seq_len=seq_len, batch_size=batch_size))
    modules = {op.name: {c.name: quantized_module(op, c).to(device) for c in candidates[op.name]} for op in ops}
    pairs = []
    for op in ops:
        narrow = [c for c in candidates[op.name] if not c.is_wide]
        if measure == "cheapest" and narrow:
            narrow = [min(narrow, key=lambda c: c.row_bits(op.in_features))]
        pairs += [(op, c) for c in narrow] if measure != "none" else []
    total = len(batches) + len(measure_batches) * (1 + len(pairs))
    tick = _Ticker(progress, total)

    was_training = model.training
    model.eval()
    try:
        proxy_rows, proxy_op, tokens = _fisher(model, ops, modules, batches, draws, seed, device, tick)
        measured = _measure(model, ops, modules, pairs, measure_batches, device, tick) if pairs else {}
    finally:
        model.train(was_training)

    result = [_combine(op, [c.name for c in candidates[op.name]], proxy_rows[op.name], proxy_op[op.name],
                       measured.get(op.name, {}), candidates[op.name]) for op in ops]
    return Sensitivity(ops=result, samples=min(samples, len(corpus.samples)), tokens=tokens, seq_len=seq_len,
                       draws=draws, measure=measure, corpus_hash=corpus.content_hash,
                       seconds=time.monotonic() - start)


def _combine(op: LinearOp, names: list[str], raw_rows: dict[str, np.ndarray], raw_op: dict[str, float],
             measured: dict[str, float], cands: list[Candidate]) -> OpSensitivity:
    """Rows from the proxy, rescaled so an op's rows add up to its measured KL (see the module docstring)."""
    def ratio(c: str) -> float:
        total = float(raw_rows[c].sum())
        return measured[c] / total if total > 0 else 1.0

    cheapest = [c.name for c in sorted(cands, key=lambda c: c.row_bits(op.in_features)) if c.name in measured]
    scale = ratio(cheapest[0]) if cheapest else 1.0
    rows, whole = {}, {}
    for c in names:
        if c in measured:
            rows[c], whole[c] = raw_rows[c] * ratio(c), measured[c]
        elif measured:
            rows[c] = raw_rows[c] * scale
            whole[c] = float(rows[c].sum())
        else:
            rows[c], whole[c] = raw_rows[c].copy(), raw_op[c]
    return OpSensitivity(name=op.name, in_features=op.in_features, out_features=op.out_features,
                         is_lm_head=op.is_lm_head, candidates=names, rows=rows, op=whole, fisher_rows=raw_rows,
                         fisher_op=raw_op, measured=measured, scale=scale)


def recombine(sens: Sensitivity, candidates: dict[str, Candidate], measure: str) -> Sensitivity:
    """The same measurement combined as another `measure` mode would have (e.g. "all" -> "cheapest").

    Only narrows: a mode needs measurements the original took ("none" always works).
    """
    from dataclasses import replace

    if measure not in MEASURE_MODES:
        raise InputError(f"measure must be one of {', '.join(MEASURE_MODES)}, got {measure!r}", loc=("measure",))
    ops = []
    for o in sens.ops:
        cands = [candidates[c] for c in o.candidates]
        measured = dict(o.measured)
        if measure == "none":
            measured = {}
        elif measure == "cheapest" and measured:
            narrow = [c for c in cands if not c.is_wide]
            cheapest = min(narrow, key=lambda c: c.row_bits(o.in_features)).name
            if cheapest not in measured:
                raise InputError(f"{o.name} was not measured at {cheapest}", loc=("measure",))
            measured = {cheapest: measured[cheapest]}
        op = LinearOp(o.name, None, o.in_features, o.out_features, False, o.is_lm_head)
        ops.append(_combine(op, list(o.candidates), o.fisher_rows, o.fisher_op, measured, cands))
    return replace(sens, ops=ops, measure=measure)


class _Ticker:
    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _fisher(model, ops: list[LinearOp], modules, batches: list[TokenBatch], draws: int, seed: int, device, tick):
    """Per-row and per-op Fisher proxies of KL, nats per token, for every op and candidate."""
    rows = {op.name: {c: np.zeros(op.out_features) for c in modules[op.name]} for op in ops}
    whole = {op.name: {c: 0.0 for c in modules[op.name]} for op in ops}
    saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    grads: dict[str, list[torch.Tensor]] = {}

    def op_hook(name: str):
        def hook(_module, args, output):
            saved[name] = (args[0].detach(), output.detach())
            output.register_hook(lambda g: grads.setdefault(name, []).append(g.detach()))
        return hook

    # Gradients flow through activations only: the parameters never need theirs.
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False)
    emb = model.get_input_embeddings()
    handles = [emb.register_forward_hook(lambda _m, _a, out: out.detach().requires_grad_(True))]
    handles += [op.module.register_forward_hook(op_hook(op.name)) for op in ops]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = 0
    try:
        for batch in batches:
            saved.clear()
            grads.clear()
            mask = batch.mask.to(device)
            with torch.enable_grad():
                logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.mask.long().to(device),
                               use_cache=False).logits
                logp = F.log_softmax(logits.float(), dim=-1)
                probs = logp.detach().exp().reshape(-1, logp.shape[-1]).cpu()
                for d in range(draws):
                    # Labels drawn from the model itself: E[score score^T] is then the Fisher, KL's Hessian.
                    labels = torch.multinomial(probs, 1, generator=gen).reshape(mask.shape).to(device)
                    ll = (logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) * mask).sum()
                    ll.backward(retain_graph=d < draws - 1)
            tokens += int(mask.sum())
            with torch.no_grad():
                for op in ops:
                    x, y = saved[op.name]
                    g = torch.stack(grads[op.name]).double()  # [draws, B, T, N]
                    for c, qmod in modules[op.name].items():
                        e = (qmod(x) - y).double()  # [B, T, N]: the format's error on this op's output
                        h = (g * e).sum(dim=2)  # [draws, B, N]: per sequence, per row
                        rows[op.name][c] += h.pow(2).sum(dim=(0, 1)).cpu().numpy()
                        whole[op.name][c] += float(h.sum(dim=2).pow(2).sum())
            tick()
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(requires[n])
    scale = 0.5 / (draws * tokens)
    for op in ops:
        for c in modules[op.name]:
            rows[op.name][c] *= scale
            whole[op.name][c] *= scale
    return rows, whole, tokens


def _measure(model, ops: list[LinearOp], modules, pairs, batches: list[TokenBatch], device, tick):
    """Mean KL per token with one op swapped for its quantized module, for each (op, candidate)."""
    with torch.no_grad():
        reference = []
        for batch in batches:
            logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.mask.long().to(device),
                           use_cache=False).logits
            # fp64: KL of two nearly equal distributions cancels to ~1e-7 nats/token in fp32, the size
            # of what a robust op costs; in fp64 the floor is far below anything a format does.
            reference.append(F.log_softmax(logits.double(), dim=-1))
            tick()
        out: dict[str, dict[str, float]] = {}
        for op, cand in pairs:
            _set_module(model, op.name, modules[op.name][cand.name])
            try:
                kl_sum, n = 0.0, 0
                for batch, ref in zip(batches, reference):
                    mask = batch.mask.to(device)
                    logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.mask.long().to(device),
                                   use_cache=False).logits
                    logp = F.log_softmax(logits.double(), dim=-1)
                    kl = (ref.exp() * (ref - logp)).sum(dim=-1).clamp(min=0.0)
                    kl_sum += float((kl * mask).sum())
                    n += int(mask.sum())
                    tick()
            finally:
                _set_module(model, op.name, op.module)
            out.setdefault(op.name, {})[cand.name] = kl_sum / n
    return out
