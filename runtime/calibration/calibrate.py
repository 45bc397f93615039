"""Running a corpus through a model to gather activation and KV-cache statistics."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from runtime.calibration.errors import CalibrationError
from runtime.calibration.observers import get_observer
from runtime.calibration.result import Calibration, CalibrationMeta
from runtime.calibration.statistics import KVStats, StatsAccumulator
from runtime.corpora import Corpus
from runtime.corpora.batches import token_batches
from runtime.errors import InputError
from runtime.models import attention_layers, linear_ops
from runtime.modules.kv_cache import kv_geometry, kv_projections

DEFAULT_SAMPLES = 64
DEFAULT_SEQ_LEN = 256
DEFAULT_OBSERVER = "minmax"


def calibrate(
    model: nn.Module,
    tokenizer,
    corpus: Corpus | str | Path,
    recipe=None,
    *,
    samples: int | None = None,
    seq_len: int | None = None,
    observer: str | None = None,
    observer_kwargs: dict | None = None,
    batch_size: int = 8,
    model_hash: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Runs the first `samples` corpus samples (each truncated to `seq_len` tokens) through
    `model` under no_grad and records, per linear/Conv1D input, amax, per-channel amax,
    percentiles, a log2 histogram and outlier channels, and per attention layer the amax of
    each KV head's keys and values.

    Args:
        model: a transformers causal LM (any device and dtype; statistics are fp32).
        tokenizer: its tokenizer; padding uses pad_token_id (or 0) and is masked out.
        corpus: a Corpus or the path of a JSONL corpus.
        recipe: optional runtime.recipes.Recipe; its `calibration` source supplies samples and
            seq_len, and its default input-activation observer (and format, for `mse`) the
            observer, wherever the arguments below are left as None.
        samples, seq_len: default 64 and 256.
        observer: minmax | percentile | mse | amax_history (default minmax); one update per batch.
        observer_kwargs: arguments of the observer, e.g. {"q": 99.9} or {"length": 16}.
        batch_size: samples per forward pass; statistics do not depend on it except
            through amax_history, whose steps are batches.
        model_hash: recorded in the metadata, so engines can check what was calibrated.
        progress: called as progress(samples_done, samples_total) after each batch.
    """
    if not isinstance(corpus, Corpus):
        corpus = Corpus.load(corpus)
    samples, seq_len, observer, observer_kwargs = _settings(recipe, samples, seq_len, observer, observer_kwargs)
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}", loc=("samples",))
    get_observer(observer, **observer_kwargs)  # fail on a bad observer before any forward pass
    chosen = list(corpus.samples[:samples])

    linears = {op.name: op.module for op in linear_ops(model)}
    if not linears:
        raise CalibrationError(f"{type(model).__name__} has no nn.Linear or Conv1D modules to calibrate",
                               loc=("model",))
    accumulators = {name: StatsAccumulator(get_observer(observer, **observer_kwargs)) for name in linears}
    kv_amax: dict[str, dict[str, torch.Tensor]] = {}
    kv_shape: dict[str, tuple[int, int]] = {}
    current_mask: list[_Padding] = []  # the batch's padding, read by the hooks

    def linear_hook(name: str):
        def hook(_module, args, _output):
            accumulators[name].update(_real_rows(args[0], current_mask[0], name))
        return hook

    def kv_hook(layer: str, which: str, cols: slice | None, heads: int, head_dim: int):
        def hook(_module, _args, output):
            rows = _real_rows(output, current_mask[0], layer)
            rows = rows if cols is None else rows[:, cols]
            lo, hi = torch.aminmax(rows.detach().float().reshape(-1, heads * head_dim), dim=0)
            amax = torch.maximum(hi, lo.neg()).reshape(heads, head_dim).amax(dim=1).cpu()
            if not torch.isfinite(amax).all():
                raise CalibrationError(f"{layer}: {which} projection output has NaN or infinite values",
                                       loc=("model", layer))
            seen = kv_amax.setdefault(layer, {})
            seen[which] = amax if which not in seen else torch.maximum(seen[which], amax)
        return hook

    handles = [m.register_forward_hook(linear_hook(name)) for name, m in linears.items()]
    for layer in attention_layers(model):
        attn = model.get_submodule(layer)
        try:
            projections = kv_projections(attn)
        except ValueError:
            continue  # no separable K/V projections (e.g. cross-attention): no KV statistics
        heads, head_dim = kv_geometry(attn, model.config)
        kv_shape[layer] = (heads, head_dim)
        for proj, which, cols in projections:
            handles.append(proj.register_forward_hook(kv_hook(layer, which, cols, heads, head_dim)))

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    done = tokens = 0
    try:
        with torch.no_grad():
            for batch in token_batches(tokenizer, chosen, seq_len=seq_len, batch_size=batch_size):
                current_mask[:] = [_Padding(batch.mask.to(device))]
                model(input_ids=batch.input_ids.to(device), attention_mask=batch.mask.long().to(device),
                      use_cache=False)
                done += len(batch.samples)
                tokens += batch.tokens
                if progress is not None:
                    progress(done, len(chosen))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if tokens == 0:
        raise CalibrationError("no sample produced any tokens; nothing was calibrated", loc=("corpus",))

    return Calibration(
        meta=CalibrationMeta(
            corpus_name=corpus.name, corpus_hash=corpus.content_hash, samples=done, seq_len=seq_len,
            tokens=tokens, observer=observer, observer_kwargs=observer_kwargs, model_hash=model_hash,
        ),
        tensors={name: acc.finalize() for name, acc in accumulators.items() if acc.tokens},
        kv_heads={
            layer: KVStats(heads=kv_shape[layer][0], head_dim=kv_shape[layer][1],
                           k_amax=seen["k"].tolist(), v_amax=seen["v"].tolist())
            for layer, seen in kv_amax.items() if {"k", "v"} <= seen.keys()
        },
    )


class _Padding:
    """A batch's [B, T] padding mask, with the flat indices of its real tokens (None: no padding)."""

    def __init__(self, mask: torch.Tensor):
        self.shape = mask.shape
        self.index = None if bool(mask.all()) else mask.reshape(-1).nonzero().squeeze(1)


def _real_rows(t: torch.Tensor, padding: _Padding, name: str) -> torch.Tensor:
    """[tokens, features] of a [B, T, features] activation, padding rows dropped (index_select:
    one gather, cheaper than a boolean mask)."""
    if t.dim() >= 3 and t.shape[:2] == padding.shape:
        flat = t.reshape(-1, t.shape[-1])
        return flat if padding.index is None else flat.index_select(0, padding.index)
    if padding.index is None:
        return t.reshape(-1, t.shape[-1])
    raise CalibrationError(
        f"{name}: activation of shape {tuple(t.shape)} does not line up with the [batch, tokens] padding mask "
        f"{tuple(padding.shape)}; calibrate with batch_size=1", loc=("batch_size",))


def _settings(recipe, samples, seq_len, observer, observer_kwargs):
    """Explicit arguments win, then the recipe, then the defaults."""
    source = getattr(recipe, "calibration", None)
    act = getattr(getattr(recipe, "default", None), "input_activations", None)
    samples = samples if samples is not None else getattr(source, "samples", DEFAULT_SAMPLES)
    seq_len = seq_len if seq_len is not None else getattr(source, "seq_len", DEFAULT_SEQ_LEN)
    kwargs = dict(observer_kwargs or {})
    if observer is None and act is not None:
        observer = getattr(act.observer, "value", act.observer)
        kwargs = {**dict(act.observer_kwargs), **kwargs}
        if observer == "mse":
            kwargs.setdefault("fmt", act.format)
    observer = observer or DEFAULT_OBSERVER
    return int(samples), int(seq_len), observer, kwargs
