"""W8A8 fp8 e4m3 GEMM: per-token x per-channel scales applied in the epilogue, fp32 accumulation.

The Triton kernel lives in :mod:`kernels._w8a8` (shared with int8). On Hopper, Triton's fp8
tl.dot accumulates with wgmma's fast fp32 accumulation by default, as ``torch._scaled_mm`` does
with ``use_fast_accum=True``.
"""
import torch

from kernels._launch import use_triton
from kernels._w8a8 import check_w8a8, w8a8_gemm_triton


def gemm_fp8_reference(xq, xs, wq, ws, bias=None, out_dtype=torch.bfloat16):
    """Pure-torch :func:`gemm_fp8`: fp32 matmul of the fp8 values, then the scales."""
    check_w8a8(xq, xs, wq, ws, bias, out_dtype, torch.float8_e4m3fn)
    # read MK + NK + M + N ; write MN
    acc = xq.float() @ wq.float().t()
    out = acc * xs * ws.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def gemm_fp8(xq, xs, wq, ws, bias=None, out_dtype=torch.bfloat16, *, backend: str = "auto"):
    """``(xq * xs) @ (wq * ws).T + bias`` with fp8 inputs and fp32 accumulation.

    Args:
        xq: float8_e4m3fn [M, K] quantized activations.
        xs: fp32 [M, 1] per-token or [1, 1] per-tensor activation scales.
        wq: float8_e4m3fn [N, K] quantized weights.
        ws: fp32 [N, 1] per-channel weight scales.
        bias: [N] or None, added after the scales.
        out_dtype: bf16 (default), fp16 or fp32.
        backend: ``auto``, ``triton`` or ``reference``.

    Returns:
        [M, N] in ``out_dtype``.
    """
    if use_triton(xq, backend):
        return w8a8_gemm_triton(xq, xs, wq, ws, bias, out_dtype, torch.float8_e4m3fn)
    return gemm_fp8_reference(xq, xs, wq, ws, bias, out_dtype)
