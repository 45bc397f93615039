"""Decode attention on the GPU through the runtime's own kernel.

transformers' SDPA path expands the KV cache from its KV heads to every query head (repeat_kv)
on each step before attending: with Llama-3-8B's 8 KV heads for 32 query heads that copies the
whole cache four times over per layer. kernels/decode_attention.py reads each KV head once for
its whole query group. Two ways in:

- a transformers attention function: a step with one query token per sequence takes the kernel;
  prefill, masked batches and anything else go to transformers' SDPA function unchanged;
- a decode step of a Llama attention layer over a static cache runs RoPE, the cache write and the
  attention as one kernel (kernels.decode_attention.decode_attention_update), where transformers
  runs four element-wise kernels (query RoPE, key RoPE and write, value write, lengths) before
  the attention and one more for the cache's fill count: ~1.3 µs each on the H100, ~60 µs a
  step over 8 Llama-3-8B layers (bench/e2e_decode.py's kernel breakdown).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from kernels.decode_attention import KV_DTYPES
from kernels.ops import decode_attention_op, decode_attention_update_op

ATTN_IMPLEMENTATION = "precisionops_decode"
# Attention layers whose forward is transformers' Llama one (projections, rotate-half RoPE over the
# whole head, cache update, attention, o_proj), so a decode step may take the fused kernel.
FUSED_STEP_CLASSES = ("LlamaAttention",)


def decode_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, Hq, Q, D], key / value [B, Hkv, S, D] (the cache
    after this step's update); returns ([B, Q, Hq, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = _new_positions(kwargs.get("position_ids"), kwargs.get("cache_position"))
    # The kernel attends to positions < position + 1 of each sequence: right for one new token of
    # unpadded sequences. A mask could hide positions (left padding), so only batch 1 (a single
    # sequence is never padded) or a step with no mask takes it; fp32 caches too go to SDPA.
    if (query.shape[2] == 1 and positions is not None and dropout == 0.0
            and key.dtype in KV_DTYPES and query.dtype == key.dtype
            and (attention_mask is None or query.shape[0] == 1)):
        batch = query.shape[0]
        seq_lens = (positions + 1).to(torch.int32).expand(batch).contiguous()
        sm_scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = decode_attention_op(query[:, :, 0].contiguous(), key, value, seq_lens, None, None, float(sm_scale))
        return out.unsqueeze(1), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _static_layer(module: nn.Module, cache):
    """The cache layer a fused step may write: a static (fixed-capacity) layer already allocated."""
    layers = getattr(cache, "layers", None)
    idx = getattr(module, "layer_idx", None)
    if layers is None or idx is None or idx >= len(layers):
        return None
    layer = layers[idx]
    if type(layer).__name__ != "StaticLayer" or not getattr(layer, "is_initialized", False):
        return None
    fill = getattr(layer, "cumulative_length", None)
    if fill is not None and not isinstance(fill, torch.Tensor):
        return None
    return layer


def fused_step(module: nn.Module, hidden_states: torch.Tensor, position_embeddings, attention_mask, cache,
               positions) -> torch.Tensor | None:
    """One decode step of a Llama attention layer as one attention kernel with its RoPE and cache
    write; None where the step does not qualify (then transformers' forward runs). The new key and
    value go to ``positions`` ([B] or [1]: the position RoPE rotated them for, which the attention
    reads up to) and the layer's fill count grows by one, as its own update does."""
    b, q_len = hidden_states.shape[:2]
    if (q_len != 1 or cache is None or positions is None or position_embeddings is None
            or (attention_mask is not None and b > 1) or module.training):
        return None
    layer = _static_layer(module, cache)
    if layer is None:
        return None
    keys, values = layer.keys, layer.values
    d = module.head_dim
    cos, sin = position_embeddings
    if (keys.dtype not in (torch.bfloat16, torch.float16) or keys.dtype != hidden_states.dtype
            or keys.shape[0] != b or keys.shape[-1] != d or keys.device != hidden_states.device
            or cos.shape[-1] != d or cos.numel() // d not in (1, b)):
        return None
    q = module.q_proj(hidden_states).view(b, -1, d)
    k = module.k_proj(hidden_states).view(b, -1, d)
    v = module.v_proj(hidden_states).view(b, -1, d)
    # One row of factors serves every sequence (position ids of batch 1, as transformers derives them).
    cos, sin = cos.reshape(-1, d).expand(b, d), sin.reshape(-1, d).expand(b, d)
    out = decode_attention_update_op(q, k, v, cos, sin, keys, values,
                                     positions, getattr(layer, "cumulative_length", None),
                                     float(module.scaling))
    return module.o_proj(out.reshape(b, 1, -1))


def _new_positions(position_ids, cache_position) -> torch.Tensor | None:
    """The new token's position per sequence: from the position ids RoPE was computed for (every
    transformers version passes them), else the cache position."""
    if position_ids is not None and position_ids.dim() == 2:
        return position_ids[:, -1]
    return cache_position[-1:] if cache_position is not None else None


def _fused_step_forward(module: nn.Module, forward):
    def step_forward(hidden_states, position_embeddings=None, attention_mask=None, *args, **kwargs):
        # The cache is `past_key_values` (transformers <= 5.2x) or `cache`, by keyword or 4th.
        cache = args[0] if args else kwargs.get("past_key_values", kwargs.get("cache"))
        out = fused_step(module, hidden_states, position_embeddings, attention_mask, cache,
                         _new_positions(kwargs.get("position_ids"), kwargs.get("cache_position")))
        if out is None:
            return forward(hidden_states, position_embeddings, attention_mask, *args, **kwargs)
        return out, None

    return step_forward


def use_decode_kernel(model: nn.Module) -> list[str]:
    """Registers the attention function with transformers and switches ``model`` to it; gives each
    Llama attention layer the fused decode step (unless ``PRECISIONOPS_FUSED_STEP=0``). Returns the
    names of the layers that have it."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, decode_attention_forward)
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    fused = []
    if os.environ.get("PRECISIONOPS_FUSED_STEP", "1") == "0":
        return fused
    for name, module in model.named_modules():
        if type(module).__name__ in FUSED_STEP_CLASSES and "forward" not in vars(module):
            module.forward = _fused_step_forward(module, module.forward)
            fused.append(name)
    return fused
