"""W8A8 fp8 e4m3 GEMM: per-token x per-channel scales applied in the epilogue, fp32 accumulation."""
import torch

from kernels._launch import check_2d, check_dtype, check_shape, use_triton

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check_w8a8(xq, xs, wq, ws, bias, out_dtype, qdtype: torch.dtype) -> None:
    """Validates the shared W8A8 contract (also used by the int8 GEMM)."""
    check_2d("xq", xq)
    check_2d("wq", wq)
    check_dtype("xq", xq, qdtype)
    check_dtype("wq", wq, qdtype)
    m, k = xq.shape
    n = wq.shape[0]
    if wq.shape[1] != k:
        raise ValueError(f"wq must be [N, K] with K={k} (from xq), got {list(wq.shape)}")
    check_dtype("xs", xs, torch.float32)
    check_shape("xs", xs, (m, 1), (1, 1))
    check_dtype("ws", ws, torch.float32)
    check_shape("ws", ws, (n, 1))
    if bias is not None:
        check_shape("bias", bias, (n,))
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


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
    # TODO(issue 3 step 2): the Triton kernel takes the use_triton(xq, backend) branch.
    use_triton(xq, backend)
    return gemm_fp8_reference(xq, xs, wq, ws, bias, out_dtype)
