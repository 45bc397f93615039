"""The kernels as ``torch.library`` custom ops, so ``torch.compile`` can keep them whole.

Traced as plain Python, a Triton launch either breaks the graph or is traced into; as a custom op
with a fake (shape-only) implementation it stays one opaque node, and the compiler fuses what lies
between (norms, RoPE, residual adds, the KV-cache writes) around it. Each op calls the public
function of its module, which picks the Triton kernel on a GPU and the torch reference elsewhere.
"""
import torch

from kernels.act_quant import act_quant
from kernels.decode_attention import decode_attention, decode_attention_update
from kernels.gemm_fp8 import gemm_fp8
from kernels.gemm_int8 import gemm_int8
from kernels.gemm_w4a16 import gemm_w4a16, output_width

_QDTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "int8": torch.int8}


@torch.library.custom_op("precisionops::act_quant", mutates_args=())
def act_quant_op(x: torch.Tensor, fmt: str, scale: torch.Tensor | None) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, s, amax, n_saturated = act_quant(x, fmt, scale)
    # A custom op may not return its input's storage; a static scale comes back as a fresh tensor.
    return q, s.clone() if scale is not None else s, amax, n_saturated


@act_quant_op.register_fake
def _(x, fmt, scale):
    if fmt not in _QDTYPES:
        raise ValueError(f"fmt must be one of {sorted(_QDTYPES)}, got {fmt!r}")
    m, k = x.shape
    rows = m if scale is None else 1
    return (x.new_empty(m, k, dtype=_QDTYPES[fmt]), x.new_empty(rows, 1, dtype=torch.float32),
            x.new_empty(m, 1, dtype=torch.float32), x.new_empty((), dtype=torch.int64))


@torch.library.custom_op("precisionops::gemm_w8a8", mutates_args=())
def gemm_w8a8_op(xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor,
                 bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    gemm = gemm_fp8 if xq.dtype == torch.float8_e4m3fn else gemm_int8
    return gemm(xq, xs, wq, ws, bias, out_dtype=out_dtype)


@gemm_w8a8_op.register_fake
def _(xq, xs, wq, ws, bias, out_dtype):
    return xq.new_empty(xq.shape[0], wq.shape[0], dtype=out_dtype)


@torch.library.custom_op("precisionops::gemm_w4a16", mutates_args=())
def gemm_w4a16_op(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                  group_size: int, bias: torch.Tensor | None, gated: bool = False,
                  integer_zeros: bool = False) -> torch.Tensor:
    return gemm_w4a16(x, packed, scales, zeros, group_size, bias, gated=gated, integer_zeros=integer_zeros)


@gemm_w4a16_op.register_fake
def _(x, packed, scales, zeros, group_size, bias, gated=False, integer_zeros=False):
    return x.new_empty(x.shape[0], output_width(packed.shape[0], gated))


@torch.library.custom_op("precisionops::decode_attention", mutates_args=())
def decode_attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                        k_scale: torch.Tensor | None, v_scale: torch.Tensor | None, sm_scale: float) -> torch.Tensor:
    return decode_attention(q, k_cache, v_cache, seq_lens, k_scale=k_scale, v_scale=v_scale, sm_scale=sm_scale)


@decode_attention_op.register_fake
def _(q, k_cache, v_cache, seq_lens, k_scale, v_scale, sm_scale):
    return torch.empty_like(q)


@torch.library.custom_op("precisionops::decode_attention_update", mutates_args=("k_cache", "v_cache", "fill"))
def decode_attention_update_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                               k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
                               fill: torch.Tensor | None, sm_scale: float) -> torch.Tensor:
    return decode_attention_update(q, k, v, cos, sin, k_cache, v_cache, positions, sm_scale=sm_scale, fill=fill)


@decode_attention_update_op.register_fake
def _(q, k, v, cos, sin, k_cache, v_cache, positions, fill, sm_scale):
    return q.new_empty(q.shape)
