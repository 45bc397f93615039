"""Decode attention on the GPU through the runtime's own kernel, as a transformers attention function.

transformers' SDPA path expands the KV cache from its KV heads to every query head (repeat_kv)
on each step before attending: with Llama-3-8B's 8 KV heads for 32 query heads that copies the
whole cache four times over per layer. kernels/decode_attention.py reads each KV head once for
its whole query group. A step with one query token per sequence takes that kernel; prefill, masked
batches and anything else go to transformers' SDPA function unchanged.
"""
from __future__ import annotations

import torch

from kernels.decode_attention import KV_DTYPES
from kernels.ops import decode_attention_op

ATTN_IMPLEMENTATION = "precisionops_decode"


def decode_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, Hq, Q, D], key / value [B, Hkv, S, D] (the cache
    after this step's update); returns ([B, Q, Hq, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cache_position = kwargs.get("cache_position")
    # The kernel attends to positions < cache_position + 1 of every sequence: right for one new
    # token of unpadded sequences. A mask could hide positions (left padding), so only batch 1
    # (a single sequence is never padded) or a step with no mask takes it; fp32 caches too go to SDPA.
    if (query.shape[2] == 1 and cache_position is not None and dropout == 0.0
            and key.dtype in KV_DTYPES and query.dtype == key.dtype
            and (attention_mask is None or query.shape[0] == 1)):
        batch = query.shape[0]
        seq_lens = (cache_position[-1:] + 1).to(torch.int32).expand(batch).contiguous()
        sm_scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = decode_attention_op(query[:, :, 0].contiguous(), key, value, seq_lens, None, None, float(sm_scale))
        return out.unsqueeze(1), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def use_decode_kernel(model) -> None:
    """Registers the attention function with transformers and switches ``model`` to it."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, decode_attention_forward)
    model.config._attn_implementation = ATTN_IMPLEMENTATION
