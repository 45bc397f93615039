"""W8A8 int8 GEMM: int32 accumulation, per-token x per-channel scales in the epilogue.

The Triton kernel lives in :mod:`kernels._w8a8` (shared with fp8). Unlike ``torch._int_mm``
it serves any M, including decode's M <= 16.
"""
import torch

from kernels._launch import use_triton
from kernels._w8a8 import check_w8a8, w8a8_gemm_triton


def gemm_int8_reference(xq, xs, wq, ws, bias=None, out_dtype=torch.bfloat16):
    """Pure-torch :func:`gemm_int8`; the integer sum is exact (float64 holds 127² · K for any real K)."""
    check_w8a8(xq, xs, wq, ws, bias, out_dtype, torch.int8)
    # read MK + NK + M + N ; write MN
    acc = (xq.double() @ wq.double().t()).to(torch.int32)
    out = acc.float() * xs * ws.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def gemm_int8(xq, xs, wq, ws, bias=None, out_dtype=torch.bfloat16, *, backend: str = "auto"):
    """``(xq * xs) @ (wq * ws).T + bias`` with int8 inputs and int32 accumulation.

    Args:
        xq: int8 [M, K] quantized activations (any M, including M <= 16).
        xs: fp32 [M, 1] per-token or [1, 1] per-tensor activation scales.
        wq: int8 [N, K] quantized weights.
        ws: fp32 [N, 1] per-channel weight scales.
        bias: [N] or None, added after the scales.
        out_dtype: bf16 (default), fp16 or fp32.
        backend: ``auto``, ``triton`` or ``reference``.

    Returns:
        [M, N] in ``out_dtype``.
    """
    if use_triton(xq, backend):
        return w8a8_gemm_triton(xq, xs, wq, ws, bias, out_dtype, torch.int8)
    return gemm_int8_reference(xq, xs, wq, ws, bias, out_dtype)
