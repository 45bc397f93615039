"""KV-cache quantization: keys and values stored in fp8/int8 with one scale per KV head.

Emulated at the key/value projection outputs (keys before RoPE): the cache then holds exactly
the values a quantized cache would dequantize to, so quality is measured faithfully without a
custom cache class per transformers version. Scales come from calibration or from each step's
amax (dynamic); never a silent 1.0.
"""
from __future__ import annotations

import torch
from torch import nn

from runtime.formats import get_format


class KVCacheQuant(nn.Module):
    """Per-head fake quantization of one attention layer's keys and values."""

    def __init__(self, fmt: str, num_kv_heads: int, head_dim: int, *, dynamic: bool,
                 k_scale: list[float] | None = None, v_scale: list[float] | None = None):
        super().__init__()
        self.fmt, self.num_kv_heads, self.head_dim, self.dynamic = fmt, num_kv_heads, head_dim, dynamic
        if not dynamic:
            if k_scale is None or v_scale is None:
                raise ValueError("a static KV cache needs calibrated k and v scales")
            self.register_buffer("k_scale", torch.tensor(k_scale, dtype=torch.float32))
            self.register_buffer("v_scale", torch.tensor(v_scale, dtype=torch.float32))
        self.n_saturated = 0
        self.numel = 0

    def quantize(self, t: torch.Tensor, which: str) -> torch.Tensor:
        """Round-trips [..., heads*head_dim] through the cache format, one scale per head."""
        f = get_format(self.fmt)
        shape = t.shape
        h = t.float().reshape(*shape[:-1], self.num_kv_heads, self.head_dim)
        if self.dynamic:
            amax = h.abs().amax(dim=tuple(range(h.dim() - 2)) + (h.dim() - 1,), keepdim=True)
            scale = amax.clamp(min=1e-12) / f.fmax
        else:
            scale = getattr(self, f"{which}_scale").reshape(self.num_kv_heads, 1)
        y = h / scale
        sat = y.abs() > f.fmax
        self.n_saturated += int(sat.sum())
        self.numel += y.numel()
        y = y.clamp(-f.fmax, f.fmax)
        q = torch.round(y) if not f.is_float else y.to(f.storage_dtype).float()
        return (q * scale).reshape(shape).to(t.dtype)


def kv_projections(attn: nn.Module) -> list[tuple[nn.Module, str, slice | None]]:
    """(module, 'k'|'v', column slice) for an attention module: Llama-style k_proj/v_proj, or GPT-2's c_attn."""
    if hasattr(attn, "k_proj") and hasattr(attn, "v_proj"):
        return [(attn.k_proj, "k", None), (attn.v_proj, "v", None)]
    if hasattr(attn, "c_attn"):
        e = attn.embed_dim
        return [(attn.c_attn, "k", slice(e, 2 * e)), (attn.c_attn, "v", slice(2 * e, 3 * e))]
    raise ValueError(f"no key/value projections found on {type(attn).__name__}")


def kv_geometry(attn: nn.Module, config) -> tuple[int, int]:
    """(number of KV heads, head dim) of an attention module."""
    heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None) \
        or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // (getattr(config, "num_attention_heads", None) or config.n_head)
    return heads, head_dim


def attach(attn: nn.Module, kvq: KVCacheQuant) -> None:
    """Installs `kvq` as `attn.kv_quant` and hooks the key/value projections to pass through it."""
    attn.kv_quant = kvq
    for proj, which, cols in kv_projections(attn):
        def hook(_m, _inp, out, which=which, cols=cols):
            if cols is None:
                return kvq.quantize(out, which)
            out = out.clone()
            out[..., cols] = kvq.quantize(out[..., cols], which)
            return out
        proj.register_forward_hook(hook)
