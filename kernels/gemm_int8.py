"""W8A8 int8 GEMM: int32 accumulation, per-token x per-channel scales in the epilogue.

The Triton kernel lives in :mod:`kernels._w8a8` (shared with fp8). Unlike ``torch._int_mm``
it serves any M, including decode's M <= 16.
"""
import torch

from kernels._launch import use_triton
from kernels._w8a8 import check_w8a8, w8a8_gemm_triton

_EXACT_K = 1024  # 1024 * 127**2 < 2**24: every partial sum is an exact fp32 integer


def gemm_int8_reference(xq, xs, wq, ws, bias=None, out_dtype=torch.bfloat16):
    """Pure-torch :func:`gemm_int8`; the integer sum is exact.

    fp32 holds integers up to 2^24 exactly and one product is at most 127² = 16129, so a K-chunk
    of 1024 sums exactly in an fp32 matmul; chunks add up in int32. (float64 matmuls were exact
    too, but 5-6x slower on the CPU, where this reference serves engines.)
    """
    check_w8a8(xq, xs, wq, ws, bias, out_dtype, torch.int8)
    # read MK + NK + M + N ; write MN
    k = xq.shape[1]
    acc = torch.zeros(xq.shape[0], wq.shape[0], dtype=torch.int32, device=xq.device)
    for k0 in range(0, k, _EXACT_K):
        acc += (xq[:, k0:k0 + _EXACT_K].float() @ wq[:, k0:k0 + _EXACT_K].float().t()).to(torch.int32)
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
