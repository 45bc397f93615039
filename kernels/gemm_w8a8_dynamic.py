"""W8A8 GEMM with the activations quantized inside it: per-token dynamic fp8 e4m3 or int8.

Decode runs act_quant and then the GEMM for every linear op; at a few tokens the quantization is
a ~2 µs launch of its own (14 of them per step of a 2-layer Llama-3-8B stack cost 24 µs on the
H100). Here each GEMM program computes the token scales from x itself and quantizes each x tile
as it reads it, with act_quant's arithmetic, so the result is act_quant followed by the GEMM.
"""
import torch

from kernels._launch import use_triton
from kernels._w8a8 import QUANT_X_MAX_M, w8a8_gemm_quant_x_triton
from kernels.act_quant import act_quant_reference
from kernels.gemm_fp8 import gemm_fp8_reference
from kernels.gemm_int8 import gemm_int8_reference

QDTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "int8": torch.int8}
__all__ = ["QUANT_X_MAX_M", "gemm_w8a8_dynamic", "gemm_w8a8_dynamic_reference"]


def gemm_w8a8_dynamic_reference(x, wq, ws, bias, fmt: str, out_dtype):
    """Pure-torch :func:`gemm_w8a8_dynamic`: act_quant's reference, then the GEMM's."""
    xq, xs, _, _ = act_quant_reference(x, fmt)
    gemm = gemm_fp8_reference if fmt == "fp8_e4m3" else gemm_int8_reference
    return gemm(xq, xs, wq, ws, bias, out_dtype)


def gemm_w8a8_dynamic(x, wq, ws, bias=None, fmt: str = "fp8_e4m3", out_dtype=torch.bfloat16, *,
                      backend: str = "auto"):
    """``act_quant(x, fmt)`` (per token, dynamic) then the W8A8 GEMM, in one launch on the GPU.

    Args:
        x: [M, K] bf16 or fp16 activations, M <= QUANT_X_MAX_M (decode).
        wq: [N, K] weights in ``fmt``'s storage dtype; ws: fp32 [N, 1] per-channel scales.
        bias: [N] or None. fmt: ``fp8_e4m3`` or ``int8``. out_dtype: bf16, fp16 or fp32.
        backend: ``auto``, ``triton`` or ``reference``.

    Returns:
        [M, N] in ``out_dtype``.
    """
    if fmt not in QDTYPES:
        raise ValueError(f"fmt must be one of {sorted(QDTYPES)}, got {fmt!r}")
    if use_triton(x, backend):
        return w8a8_gemm_quant_x_triton(x, wq, ws, bias, out_dtype, QDTYPES[fmt])
    return gemm_w8a8_dynamic_reference(x, wq, ws, bias, fmt, out_dtype)
